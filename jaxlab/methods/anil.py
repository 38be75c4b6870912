"""`anil`: Almost No Inner Loop (Raghu, Raghu, Bengio, Vinyals, ICLR 2020, arXiv 1909.09157).

Second-order MAML whose inner loop adapts only the head; the body is learned by
the outer loop alone. Implementation: `jaxlab.methods._maml_core`.
"""

from jaxlab.methods._maml_core import init, make_task, method_functions

train_step, eval_step = method_functions(first_order=False, adapt="head")
__all__ = ["make_task", "init", "train_step", "eval_step"]
