"""Supermasks: binary masks over frozen random weights, learned through scores.

Shared by edge-popup (Ramanujan et al. 2020, arXiv 1911.13299), IteRand (Chijiwa
et al. 2021, arXiv 2106.09269) and Meta-ticket (Chijiwa et al. 2022, arXiv
2205.15619); building blocks B2-B5 of docs/specs/meta_learning_and_sparse.md §0.4.

Masking is a transformation of a model's parameter pytree, so every model in
`jaxlab.models` (MLP, Conv-4, Conv-6, ResNet-18) becomes a masked network without
a second set of layer classes: for each selected kernel (a flat path such as
"Dense_1/kernel"), the layer computes with W * m(S) instead of W, where S are the
scores (same shape as W) and m their binary mask.

Threshold policies (`POLICIES`, B3); p is the fraction of a layer PRUNED:
  topk_raw         per layer, prune the round(p (n-1)) lowest raw scores (IteRand:
                   keep s >= the k-th smallest score, k = 1 + round(p (n-1)));
  topk_abs         per layer, prune the floor(p n) lowest |s| (edge-popup, whose
                   `prune_rate` k is the kept fraction 1 - p);
  global_abs       prune the floor(p N) lowest |s| over all selected layers together
                   (the frozen-SLT paper's global edge-popup);
  fixed_threshold  keep s >= tau_l, tau_l fixed once from the initial scores
                   (Meta-ticket's "SparseModule2"; tau_l = the k-th smallest initial
                   score with k = 1 + round(q (n-1)), q = `init_sparsity`), so the
                   sparsity floats during training.
The top-k policies rank by a stable sort, so the kept count is exact and ties
are broken by position, deterministically.

Frozen networks (Otsuka, Chijiwa et al., arXiv 2402.14029; spec §4): a ternary mask F per
layer (`freeze_masks`; -1 prune-frozen, +1 lock-frozen, 0 free, drawn from a key with the
layer ratios of `layer_densities`) fixes part of the supermask; `masks(..., frozen=F)` with
`global_abs` ranks +inf (locked) / -inf (pruned) / |s| (free) globally, then forces F. Only
the free entries' bits need storing (`pack_ticket` / `unpack_ticket`; `free_bits` counts
them): the weights and F come back from the seed.

Gradient (B2): the mask is a straight-through estimator implemented with
`jax.custom_vjp`: the forward pass returns the hard 0/1 mask exactly and the
backward pass hands the cotangent to the scores unchanged, as the PyTorch
autograd functions of the references do. So dL/dS = (dL/dW_eff) * W, times
sign(S) for the |s| policies (the STE is applied to |S| and autodiff
differentiates the abs, as in edge-popup's code).
"""

from typing import Callable, Dict, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.errors import UserError, unknown
from jaxlab.models.layers import kernel_init

POLICIES = ("topk_raw", "topk_abs", "global_abs", "fixed_threshold")
Flat = Dict[str, jax.Array]


@jax.custom_vjp
def straight_through(scores: jax.Array, hard: jax.Array) -> jax.Array:
  """Returns `hard`; its cotangent flows to `scores` unchanged."""
  del scores
  return hard


def _st_fwd(scores, hard):
  del scores
  return hard, None


def _st_bwd(_, cotangent):
  return cotangent, jnp.zeros_like(cotangent)


straight_through.defvjp(_st_fwd, _st_bwd)


def flatten(tree) -> Flat:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


def unflatten(flat: Flat):
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def select(params, include: str = "kernel", exclude: str = "") -> list:
  """Flat paths of the leaves to mask: paths containing an `include` keyword and no
  `exclude` keyword (comma-separated substrings)."""
  inc = [k.strip() for k in include.split(",") if k.strip()]
  exc = [k.strip() for k in exclude.split(",") if k.strip()]
  return sorted(p for p in flatten(params)
                if any(k in p for k in inc) and not any(k in p for k in exc))


def init_scores(rng: jax.Array, params, paths, init_name: str) -> Flat:
  """Scores for `paths` drawn with the initialiser `init_name` (`models.layers.kernel_init`):
  hidden-networks' edge-popup uses kaiming_uniform(a=sqrt(5)), U(+-1/sqrt(fan_in)) ("torch");
  IteRand and Meta-ticket kaiming_uniform, U(+-sqrt(6/fan_in)) ("kaiming_uniform")."""
  flat = flatten(params)
  keys = jax.random.split(rng, max(1, len(paths)))
  init = kernel_init(init_name)
  return {p: init(k, flat[p].shape, flat[p].dtype) for p, k in zip(paths, keys)}


def _ordered_bits(values: jax.Array) -> jax.Array:
  """uint32 keys with the same order as the float32 values (sign-magnitude -> offset)."""
  # + 0.0 turns -0.0 into +0.0: equal floats must get equal keys
  bits = jax.lax.bitcast_convert_type(values.astype(jnp.float32) + 0.0, jnp.uint32)
  sign = bits >> 31
  return jnp.where(sign == 1, ~bits, bits | jnp.uint32(0x80000000))


def _kth_key(keys: jax.Array, k) -> jax.Array:
  """The k-th smallest (0-based) of uint32 `keys`, by bisection: 32 counting passes.

  XLA:CPU sorts slowly (30 ms for 65k floats, here); counting is a fused reduction."""
  def body(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    enough = (keys <= mid).sum() >= k + 1
    return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)
  lo, _ = jax.lax.fori_loop(0, 32, body, (keys.min(), keys.max()))
  return lo


def _keep_all_but_lowest(values: jax.Array, num_pruned: int) -> jax.Array:
  """0 for the `num_pruned` smallest entries, 1 elsewhere; among entries equal to the
  threshold, the lowest positions are pruned first (as a stable argsort would)."""
  if num_pruned <= 0:
    return jnp.ones_like(values)
  if num_pruned >= values.size:
    return jnp.zeros_like(values)
  keys = _ordered_bits(values.ravel())
  tau = _kth_key(keys, num_pruned)                   # the smallest kept value
  below = (keys < tau).sum()
  ties = keys == tau
  tie_rank = jnp.cumsum(ties) - 1                    # position among the tied entries
  keep = (keys > tau) | (ties & (tie_rank >= num_pruned - below))
  return keep.astype(values.dtype).reshape(values.shape)


def kth_smallest(values: jax.Array, fraction: float) -> jax.Array:
  """PyTorch's kthvalue with k = 1 + round(fraction * (n - 1))."""
  k = 1 + round(fraction * (values.size - 1))
  return jnp.sort(values.ravel())[k - 1]


def thresholds(scores: Flat, init_sparsity: float) -> Flat:
  """Per-layer fixed thresholds for `fixed_threshold` (from the initial scores)."""
  return {p: kth_smallest(s, init_sparsity) for p, s in scores.items()}


def masks(scores: Flat, policy: str, sparsity: float = 0.0,
          fixed: Optional[Mapping[str, jax.Array]] = None,
          frozen: Optional[Mapping[str, jax.Array]] = None) -> Flat:
  """Straight-through masks (forward: exact 0/1) of every scored layer. `frozen` (ternary
  F per layer, `global_abs` only): locked entries always on, pruned always off, the global
  threshold taken over +inf / -inf / |s| (the frozen-SLT code's set_kthvalue)."""
  if policy not in POLICIES:
    raise unknown("supermask policy", policy, POLICIES)
  if frozen is not None and policy != "global_abs":
    raise UserError(f"a frozen network takes supermask.policy=global_abs (it is {policy!r})")
  if policy == "topk_raw":
    return {p: straight_through(s, _keep_all_but_lowest(jax.lax.stop_gradient(s),
                                                         round(sparsity * (s.size - 1))))
            for p, s in scores.items()}
  if policy == "topk_abs":
    return {p: straight_through(jnp.abs(s), _keep_all_but_lowest(
        jax.lax.stop_gradient(jnp.abs(s)), int(sparsity * s.size))) for p, s in scores.items()}
  if policy == "global_abs":
    paths = sorted(scores)
    ranked = {p: jnp.abs(jax.lax.stop_gradient(scores[p])) for p in paths}
    if frozen is not None:
      ranked = {p: jnp.where(frozen[p] > 0, jnp.inf, jnp.where(frozen[p] < 0, -jnp.inf, r))
                for p, r in ranked.items()}
    flat = jnp.concatenate([ranked[p].ravel() for p in paths])
    hard = _keep_all_but_lowest(flat, int(sparsity * flat.size))
    out, start = {}, 0
    for p in paths:
      size = scores[p].size
      layer = hard[start:start + size].reshape(scores[p].shape)
      magnitude = jnp.abs(scores[p])
      if frozen is not None:
        layer = jnp.where(frozen[p] > 0, 1.0, jnp.where(frozen[p] < 0, 0.0, layer))
        # a frozen entry's score never matters: no gradient reaches it
        magnitude = jnp.where(frozen[p] == 0, magnitude, jax.lax.stop_gradient(magnitude))
      out[p] = straight_through(magnitude, layer.astype(scores[p].dtype))
      start += size
    return out
  return {p: straight_through(s, (jax.lax.stop_gradient(s) >= fixed[p]).astype(s.dtype))
          for p, s in scores.items()}


def apply(params, layer_masks: Mapping[str, jax.Array]):
  """The parameter pytree with every masked kernel W replaced by W * m."""
  flat = flatten(params)
  for path, m in layer_masks.items():
    flat[path] = flat[path] * m
  return unflatten(flat)


def rerandomize(rng: jax.Array, params, hard_masks: Mapping[str, jax.Array], rate: float,
                init: str):
  """B5: W <- m W + (1 - m) [(1 - b) W + b W~], b ~ Bernoulli(rate), W~ ~ the init `init`.

  Only pruned entries (m = 0) can change. Not differentiated (an in-place reset)."""
  flat = flatten(params)
  draw = kernel_init(init)
  for i, (path, m) in enumerate(sorted(hard_masks.items())):
    k_bern, k_new = jax.random.split(jax.random.fold_in(rng, i))
    w = flat[path]
    b = jax.random.bernoulli(k_bern, rate, w.shape).astype(w.dtype)
    m = jax.lax.stop_gradient(m)
    flat[path] = m * w + (1 - m) * ((1 - b) * w + b * draw(k_new, w.shape, w.dtype))
  return unflatten(flat)


def rerandomize_on_schedule(rng: jax.Array, step: jax.Array, params,
                            current_masks: Callable[[], Mapping[str, jax.Array]], *,
                            period: int, rate: float, init: str):
  """B5 on a schedule: `rerandomize` in the step taken at t with (t + 1) % period == 0, with
  the masks `current_masks()` returns; `params` unchanged in other steps, and always when
  period or rate is 0. IteRand calls it before the step's forward pass (with the step's
  masks), Meta-ticket after the step's update (with the updated masks: MT's counter reaches
  a multiple of the period once t + 1 steps are done)."""
  if not period or not rate:
    return params
  hard = current_masks()
  return jax.lax.cond((step + 1) % period == 0,
                      lambda w: rerandomize(rng, w, hard, rate, init), lambda w: w, params)


def sparsity(layer_masks: Mapping[str, jax.Array]) -> Dict[str, jax.Array]:
  """Fraction of pruned entries per layer and over all layers (`all`)."""
  out = {p: 1.0 - jax.lax.stop_gradient(m).mean() for p, m in layer_masks.items()}
  total = sum(m.size for m in layer_masks.values())
  if total:
    out["all"] = 1.0 - sum(jax.lax.stop_gradient(m).sum() for m in layer_masks.values()) / total
  return out


# -- frozen networks (arXiv 2402.14029) ------------------------------------------------------

DISTRIBUTIONS = ("uniform", "erk")


def layer_densities(shapes: Mapping[str, tuple], density: float, dist: str) -> Dict[str, float]:
  """Per-layer kept fractions whose weighted mean is `density`: `uniform` (the same in every
  layer) or `erk` (Erdos-Renyi-Kernel, RigL: proportional to sum(shape) / prod(shape), a layer
  that would exceed 1 is kept dense and the rest rescaled)."""
  if dist not in DISTRIBUTIONS:
    raise unknown("layerwise distribution (supermask.freeze_dist)", dist, DISTRIBUTIONS)
  if dist == "uniform" or density >= 1.0:
    return {p: float(min(density, 1.0)) for p in shapes}
  sizes = {p: float(np.prod(s)) for p, s in shapes.items()}
  raw = {p: float(np.sum(s)) / sizes[p] for p, s in shapes.items()}
  dense: set = set()
  while True:
    budget = density * sum(sizes.values()) - sum(sizes[p] for p in dense)
    scale = budget / sum(raw[p] * sizes[p] for p in shapes if p not in dense)
    over = [p for p in shapes if p not in dense and scale * raw[p] > 1.0]
    if not over:
      return {p: 1.0 if p in dense else scale * raw[p] for p in shapes}
    dense.add(max(over, key=lambda p: raw[p]))


def freeze_masks(rng: jax.Array, shapes: Mapping[str, tuple], prune: float, lock: float,
                 dist: str = "uniform") -> Dict[str, jax.Array]:
  """Ternary int8 masks F (-1 prune-frozen, +1 lock-frozen, 0 free): in layer l,
  floor(n_l p_l) pruned and floor(n_l r_l) locked positions of one uniform permutation, with
  p_l = 1 - Dist(1 - p)_l and r_l = (1 - Dist(1 - p - r)_l) - p_l (spec §4(b))."""
  if prune < 0 or lock < 0 or prune + lock > 1:
    raise UserError(f"freeze ratios prune={prune}, lock={lock} must be >= 0 with sum <= 1")
  kept = layer_densities(shapes, 1.0 - prune, dist)
  free = layer_densities(shapes, 1.0 - prune - lock, dist)
  out = {}
  for index, path in enumerate(sorted(shapes)):
    n = int(np.prod(shapes[path]))
    num_pruned = int(np.floor(n * (1.0 - kept[path]) + 1e-9))
    num_locked = max(0, int(np.floor(n * (kept[path] - free[path]) + 1e-9)))
    order = jax.random.permutation(jax.random.fold_in(rng, index), n)
    ternary = jnp.zeros((n,), jnp.int8).at[order[:num_pruned]].set(-1)
    ternary = ternary.at[order[num_pruned:num_pruned + num_locked]].set(1)
    out[path] = ternary.reshape(shapes[path])
  return out


def free_bits(frozen: Mapping[str, jax.Array]) -> int:
  """The mask bits a frozen ticket stores: one per free entry."""
  return int(sum(int(jnp.sum(f == 0)) for f in frozen.values()))


def pack_ticket(hard_masks: Mapping[str, jax.Array], frozen: Mapping[str, jax.Array]) -> np.ndarray:
  """The free entries' mask bits, layers in path order, packed 8 to a byte."""
  bits = [np.asarray(hard_masks[p]).ravel()[np.asarray(frozen[p]).ravel() == 0] > 0.5
          for p in sorted(frozen)]
  return np.packbits(np.concatenate(bits).astype(np.uint8))


def unpack_ticket(packed: np.ndarray, frozen: Mapping[str, jax.Array]) -> Dict[str, np.ndarray]:
  """The 0/1 masks a packed ticket and its freeze masks stand for."""
  bits = np.unpackbits(packed)[:free_bits(frozen)]
  out, start = {}, 0
  for p in sorted(frozen):
    f = np.asarray(frozen[p])
    layer = (f > 0).astype(np.float32)
    count = int((f == 0).sum())
    layer[f == 0] = bits[start:start + count]
    out[p] = layer
    start += count
  return out
