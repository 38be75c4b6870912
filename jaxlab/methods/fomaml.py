"""`fomaml`: first-order MAML (Finn et al. 2017, arXiv 1703.03400, §5.2).

The inner gradients are treated as constants, so the meta-gradient is the query
gradient at the adapted parameters. Implementation: `jaxlab.methods._maml_core`.
"""

from jaxlab.methods._maml_core import init, make_task, method_functions

train_step, eval_step = method_functions(first_order=True, adapt="all")
__all__ = ["make_task", "init", "train_step", "eval_step"]
