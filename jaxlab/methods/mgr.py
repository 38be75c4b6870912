"""`mgr`: meta generative regularisation (Yamaguchi et al., NeurIPS 2023, arXiv 2307.13899;
§2 of shared/methods/generative_and_finetuning.md) = PCR + meta pseudo sampling: a finder MLP
maps noise u to generator latents w = u + F_phi(u) and is meta-learned through the
classifier's one-step look-ahead validation loss (`jaxlab.meta.lookahead_gradient`, exact
second order or finite differences). The step is `_generative_reg`'s.
"""

from jaxlab.methods._generative_reg import eval_step, init, make_task, train_step

__all__ = ["make_task", "init", "train_step", "eval_step"]
