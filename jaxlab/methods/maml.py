"""`maml`: Model-Agnostic Meta-Learning (Finn, Abbeel, Levine, ICML 2017, arXiv 1703.03400).

Second-order meta-gradient through the inner SGD steps; every parameter adapts.
Implementation and options: `jaxlab.methods._maml_core`.
"""

from jaxlab.methods._maml_core import init, make_task, method_functions

train_step, eval_step = method_functions(first_order=False, adapt="all")
__all__ = ["make_task", "init", "train_step", "eval_step"]
