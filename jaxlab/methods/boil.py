"""`boil`: Body Only update in Inner Loop (Oh, Yoo, Kim, Yun, ICLR 2021, arXiv 2008.08882).

Second-order MAML whose inner loop adapts every parameter but the head; the head
is learned by the outer loop alone. Implementation: `jaxlab.methods._maml_core`.
"""

from jaxlab.methods._maml_core import init, make_task, method_functions

train_step, eval_step = method_functions(first_order=False, adapt="body")
__all__ = ["make_task", "init", "train_step", "eval_step"]
