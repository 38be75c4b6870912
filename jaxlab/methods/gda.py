"""`gda`: naive generative data augmentation, the baseline of MGR (arXiv 2307.13899, §2 of
shared/methods/generative_and_finetuning.md): CE(real) + lambda_g CE(f(G(u, c)), c) with
u ~ N(0, I) and c uniform, from a frozen conditional generator (`generative.generator`).
`generative.sampler="finder"` gives the GDA + MPS ablation. The step is `_generative_reg`'s.
"""

from jaxlab.methods._generative_reg import eval_step, init, make_task, train_step

__all__ = ["make_task", "init", "train_step", "eval_step"]
