"""`randreg`: random feature regularisation with a fixed class-agnostic prior (RandReg, Zhong
& Maki, arXiv 1908.05997, as AdaRand's code runs it).

Spec: shared/methods/generative_and_finetuning.md §1. Loss: CE + lambda mean((F - Z)^2), Z
drawn fresh each step from `finetune.prior`: uniform U(0,1)^d, normal N(0, I), or
pretrained N(m, diag s^2) with the pretrained backbone's marginal feature statistics on
the target train split (RandReg-Pre). The step, the state and the evaluation are the
shared fine-tuning ones (`_finetune_core`).
"""

from jaxlab.methods._finetune_core import eval_step, init, make_task, start_from, train_step

__all__ = ["make_task", "init", "start_from", "train_step", "eval_step"]
