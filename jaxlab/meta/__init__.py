"""Differentiable inner loops for meta-learning (MAML family, Meta-ticket, MGR, meta-SSL)."""

from jaxlab.meta.inner import adapt, leaf_paths, path_mask
from jaxlab.meta.lookahead import HVP_MODES, lookahead_gradient, lookahead_loss

__all__ = ["adapt", "leaf_paths", "path_mask", "HVP_MODES", "lookahead_gradient",
           "lookahead_loss"]
