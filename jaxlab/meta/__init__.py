"""Differentiable inner loops for meta-learning (MAML family, Meta-ticket, MGR, meta-SSL) and
the episodic machinery (task parallelism, adapt-then-evaluate) the episodic families share."""

from jaxlab.meta import episodic
from jaxlab.meta.inner import adapt, leaf_paths, path_mask
from jaxlab.meta.lookahead import HVP_MODES, lookahead_gradient, lookahead_loss

__all__ = ["adapt", "episodic", "leaf_paths", "path_mask", "HVP_MODES", "lookahead_gradient",
           "lookahead_loss"]
