"""Differentiable inner loops for meta-learning (MAML family, Meta-ticket, MGR, meta-SSL)."""

from jaxlab.meta.inner import adapt, leaf_paths, path_mask

__all__ = ["adapt", "leaf_paths", "path_mask"]
