"""`pcr`: pseudo consistency regularisation of MGR (arXiv 2307.13899, §2 of
shared/methods/generative_and_finetuning.md) with uniform latents: CE(real) + lambda mean_j
||g(T1(x_p,j)) - g(T2(x_p,j))||^2 on the feature extractor g only, x_p = G(u, c) from a frozen
conditional generator. The step is `_generative_reg`'s.
"""

from jaxlab.methods._generative_reg import eval_step, init, make_task, train_step

__all__ = ["make_task", "init", "train_step", "eval_step"]
