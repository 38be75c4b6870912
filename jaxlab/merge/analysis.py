"""Weight-space analyses of linear mode connectivity via permutation (Ito, Yamada, Kumagai,
arXiv 2402.04051; robustness_tta_merging.md §6.1(b)).

Every kernel is read as a matrix W (out, in * kh * kw). With W = sum_i s_i u_i v_i^T:
  R(theta_a, theta_b) = sum_l <W_a, W_b>_F / sum_l sum_i s_i^a s_i^b    in [-1, 1]
(the von Neumann bound in the denominator: 1 iff the singular vectors coincide in order; the
spec's [R] reading of the paper's alignment index), and the top-k alignment
  A_k = 1/k sum_{i <= k} |u_i^a . u_i^b| |v_i^a . v_i^b|   (mean over layers).
Weight matching is expected to raise both sharply; the straight-through estimator much less.
A permutation leaves every singular value unchanged (`singular_values`, tested).
`alignment_matrix` is the full M_ij = |u_i^a . u_j^b| |v_i^a . v_j^b| (the heat maps);
`truncate` replaces every kernel by its rank-k truncation (§6.1(b)5: the directions of the
large singular values carry the function); `effective_rank` (exp of the entropy of
s / sum s) and `subspace_overlap` (||U_a,k^T U_b,k||_F^2 / k) are the low-rank measures of
§6.2(b)5.
"""

from typing import Dict, List

import jax
import jax.numpy as jnp
from flax import traverse_util


def matrices(variables) -> List[jax.Array]:
  """The kernels of `variables["params"]` as (out, rest) matrices, in path order."""
  flat = traverse_util.flatten_dict(variables["params"])
  return [_as_matrix(w) for _, w in sorted(flat.items()) if w.ndim >= 2]


def _as_matrix(w: jax.Array) -> jax.Array:
  return jnp.moveaxis(w, -1, 0).reshape(w.shape[-1], -1)


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


def alignment_matrix(w_a: jax.Array, w_b: jax.Array, k: int) -> jax.Array:
  """[k, k] M_ij = |u_i^a . u_j^b| |v_i^a . v_j^b| of two (out, in) matrices."""
  ua, _, vta = jnp.linalg.svd(w_a, full_matrices=False)
  ub, _, vtb = jnp.linalg.svd(w_b, full_matrices=False)
  k = min(k, ua.shape[1])
  return jnp.abs(ua[:, :k].T @ ub[:, :k]) * jnp.abs(vta[:k] @ vtb[:k].T)


def truncate(variables, k: int):
  """`variables` with every kernel (ndim >= 2) replaced by its best rank-k approximation."""
  def low_rank(w):
    if w.ndim < 2:
      return w
    matrix = _as_matrix(w)
    u, s, vt = jnp.linalg.svd(matrix, full_matrices=False)
    s = jnp.where(jnp.arange(s.shape[0]) < k, s, 0.0)
    kept = (u * s) @ vt
    moved = kept.reshape((w.shape[-1],) + w.shape[:-1])
    return jnp.moveaxis(moved, 0, -1)
  return {**variables, "params": jax.tree.map(low_rank, variables["params"])}


def energy_kept(variables, k: int) -> jax.Array:
  """sum_{i <= k} s_i^2 / sum_i s_i^2 over all kernels (the fraction `truncate` keeps)."""
  values = singular_values(variables)
  return (sum(jnp.sum(s[:k] ** 2) for s in values) / sum(jnp.sum(s ** 2) for s in values))


def effective_rank(w: jax.Array) -> jax.Array:
  """exp(H(s / sum s)) of the singular values s of an (out, in) matrix."""
  s = jnp.linalg.svd(w, compute_uv=False)
  p = s / jnp.sum(s)
  return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))


def subspace_overlap(w_a: jax.Array, w_b: jax.Array, k: int) -> jax.Array:
  """||U_a,k^T U_b,k||_F^2 / k of the top-k left singular subspaces (1: the same subspace)."""
  ua = jnp.linalg.svd(w_a, full_matrices=False)[0]
  ub = jnp.linalg.svd(w_b, full_matrices=False)[0]
  k = min(k, ua.shape[1])
  return jnp.sum((ua[:, :k].T @ ub[:, :k]) ** 2) / k
