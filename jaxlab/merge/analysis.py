"""Weight-space analyses of linear mode connectivity via permutation (Ito, Yamada, Kumagai,
arXiv 2402.04051; robustness_tta_merging.md §6.1(b)).

Every kernel is read as a matrix W (out, in * kh * kw). With W = sum_i s_i u_i v_i^T:
  R(theta_a, theta_b) = sum_l <W_a, W_b>_F / sum_l sum_i s_i^a s_i^b    in [-1, 1]
(the von Neumann bound in the denominator: 1 iff the singular vectors coincide in order; the
spec's [R] reading of the paper's alignment index), and the top-k alignment
  A_k = 1/k sum_{i <= k} |u_i^a . u_i^b| |v_i^a . v_i^b|   (mean over layers).
Weight matching is expected to raise both sharply; the straight-through estimator much less.
A permutation leaves every singular value unchanged (`singular_values`, tested).
"""

from typing import Dict, List

import jax
import jax.numpy as jnp
from flax import traverse_util


def matrices(variables) -> List[jax.Array]:
  """The kernels of `variables["params"]` as (out, rest) matrices, in path order."""
  flat = traverse_util.flatten_dict(variables["params"])
  return [jnp.moveaxis(w, -1, 0).reshape(w.shape[-1], -1) for path, w in sorted(flat.items())
          if w.ndim >= 2]


def singular_values(variables) -> List[jax.Array]:
  return [jnp.linalg.svd(w, compute_uv=False) for w in matrices(variables)]


def alignment(variables_a, variables_b, k: int = 5) -> Dict[str, jax.Array]:
  """{"R": R over all layers, "A_k": mean over layers of the top-k alignment}."""
  inner, bound, tops = 0.0, 0.0, []
  for wa, wb in zip(matrices(variables_a), matrices(variables_b)):
    ua, sa, vta = jnp.linalg.svd(wa, full_matrices=False)
    ub, sb, vtb = jnp.linalg.svd(wb, full_matrices=False)
    inner = inner + jnp.vdot(wa, wb)
    bound = bound + jnp.sum(sa * sb)
    top = min(k, sa.shape[0])
    tops.append(jnp.mean(jnp.abs(jnp.sum(ua[:, :top] * ub[:, :top], 0))
                         * jnp.abs(jnp.sum(vta[:top] * vtb[:top], 1))))
  return {"R": inner / bound, "A_k": jnp.mean(jnp.stack(tops))}
