"""Weight matching and activation matching: the permutations of B's hidden units that align
B with A (Git Re-Basin, Ainsworth et al. 2023, arXiv 2209.04836; the merging paper's
`matching/weight_matching.py`, robustness_tta_merging.md §5(b)).

Weight matching maximises over the permutations pi = {P_p} of `spec`
  sum over variables W of <W_A, pi(W_B)>_F
by coordinate ascent: sweep the permutations in a random order (a fresh order per sweep,
from fold_in(key, sweep)); for permutation p, with every other permutation applied to B, the
objective is linear in P_p: <C_p, P_p> with C_p = sum over the (variable, axis) of p of W_A
(axis first, flattened) times pi_{-p}(W_B) likewise transposed; P_p = the linear assignment
maximising it, kept when it gains more than 1e-12. Stop when a sweep keeps no new
permutation, or after `max_iter` sweeps (300, the merging code's default; 100 inside STE).
Only the `params` collection enters C (the BatchNorm running statistics do not, as in the
code); `permutation.permute` moves every collection. The whole search is one
`lax.while_loop` (sweeps) over a `lax.fori_loop` (positions) dispatching to the group by
`lax.switch`, with the jittable solver of `jaxlab.merge.lap`: it runs inside a jitted train
step (STE re-solves it every step, warm-started from the previous permutations).

Matching a sum of pairs (the gradient matching of learning transfer, arXiv 2305.14122 §5(b):
sum over c of <A_c, pi(B_c)> over the cached gradient pairs) is the same search on stacks:
with `batch_dims=1` every leaf of A and B carries a leading pair axis that no permutation
touches, and C_p sums over it.

Activation matching (Git Re-Basin's `mnist_mlp_activation_matching.py`) solves each hidden
permutation on its own: the LAP maximising the uncentered cross-moment E[a_A_i a_B_j] of the
two models' post-ReLU activations of that layer on a batch of data (the code's default;
Pearson correlation is `correlation=True`).
"""

from typing import Dict, Optional

import jax
import jax.numpy as jnp
from flax import traverse_util

from jaxlab.errors import UserError
from jaxlab.merge import lap
from jaxlab.merge.permutation import Spec

Perms = Dict[str, jax.Array]


def identity(spec: Spec) -> Perms:
  return {g: jnp.arange(n, dtype=jnp.int32) for g, n in spec.sizes.items()}


def _permuted_except(flat_b, spec: Spec, perms: Perms, path, skip: str, batch_dims: int = 0):
  w = flat_b[path]
  for axis, group in spec.axes_of(path).items():
    if group != skip:
      w = jnp.take(w, perms[group], axis=axis + batch_dims)
  return w


def group_cost(spec: Spec, flat_a, flat_b, perms: Perms, group: str,
               batch_dims: int = 0) -> jax.Array:
  """C_p [n, n]: row i = A's unit i, column j = B's unit j (other groups permuted)."""
  n = spec.sizes[group]
  cost = jnp.zeros((n, n), jnp.float32)
  for path, axis in spec.groups[group]:
    if path[0] != "params" or path not in flat_a:
      continue
    wa = jnp.moveaxis(flat_a[path], axis + batch_dims, 0).reshape(n, -1)
    wb = jnp.moveaxis(_permuted_except(flat_b, spec, perms, path, group, batch_dims),
                      axis + batch_dims, 0)
    cost = cost + wa.astype(jnp.float32) @ wb.reshape(n, -1).astype(jnp.float32).T
  return cost


def objective(spec: Spec, variables_a, variables_b, perms: Perms,
              batch_dims: int = 0) -> jax.Array:
  """sum over params W of <W_A, pi(W_B)>: what weight matching maximises."""
  flat_a = traverse_util.flatten_dict(variables_a)
  flat_b = traverse_util.flatten_dict(variables_b)
  total = jnp.zeros((), jnp.float32)
  for path, wa in flat_a.items():
    if path[0] == "params":
      total = total + jnp.vdot(wa, _permuted_except(flat_b, spec, perms, path, "", batch_dims))
  return total


def weight_matching(spec: Spec, variables_a, variables_b, key: jax.Array, max_iter: int = 300,
                    init: Optional[Perms] = None, batch_dims: int = 0) -> Perms:
  """The permutations of B's units that best align B's weights with A's (jittable); with
  `batch_dims` leading axes on every leaf, of the sum over them."""
  flat_a = traverse_util.flatten_dict(variables_a)
  flat_b = traverse_util.flatten_dict(variables_b)
  names = sorted(spec.groups)
  start = identity(spec) if init is None else {g: jnp.asarray(init[g], jnp.int32)
                                                for g in names}

  def solver(group: str):
    def solve(perms: Perms):
      cost = group_cost(spec, flat_a, flat_b, perms, group, batch_dims)
      rows = jnp.arange(spec.sizes[group])
      new = lap.linear_sum_assignment(cost, maximize=True).astype(jnp.int32)
      gain = jnp.sum(cost[rows, new]) - jnp.sum(cost[rows, perms[group]])
      better = gain > 1e-12
      return {**perms, group: jnp.where(better, new, perms[group])}, better
    return solve

  branches = [solver(g) for g in names]

  def sweep(carry):
    count, perms, _ = carry
    order = jax.random.permutation(jax.random.fold_in(key, count), len(names))

    def visit(position, inner):
      perms, progress = inner
      perms, better = jax.lax.switch(order[position], branches, perms)
      return perms, progress | better

    perms, progress = jax.lax.fori_loop(0, len(names), visit, (perms, jnp.bool_(False)))
    return count + 1, perms, progress

  if not names:
    return {}
  _, perms, _ = jax.lax.while_loop(lambda c: (c[0] < max_iter) & c[2], sweep,
                                   (jnp.int32(0), start, jnp.bool_(True)))
  return perms


def _producers(spec: Spec, variables) -> Dict[str, tuple]:
  """{group: the module whose output carries its units}: the one layer whose kernel's last
  (output) axis is in the group, or its normalisation layer when the group has one."""
  flat = traverse_util.flatten_dict(variables)
  producers = {}
  for group, members in spec.groups.items():
    layers = [p[1:-1] for p, axis in members
              if p[0] == "params" and p[-1] == "kernel" and axis == flat[p].ndim - 1]
    norms = [p[1:-1] for p, _ in members if p[0] == "params" and p[-1] == "scale"]
    if len(layers) != 1 or len(norms) > 1:
      raise UserError(f"activation matching needs every hidden permutation produced by one "
                      f"layer; {group} is shared by {len(layers)} layers (a residual stream): "
                      "use weight matching (merge.matching=weight) for this model")
    producers[group] = norms[0] if norms else layers[0]
  return producers


def activation_matching(spec: Spec, model, variables_a, variables_b, images: jax.Array,
                        correlation: bool = False) -> Perms:
  """Per hidden permutation, the LAP maximising the cross-moment of the two models' post-ReLU
  activations on `images` (every non-channel position a sample; jittable)."""
  producers = _producers(spec, variables_a)

  def activations(variables):
    _, state = model.apply(variables, images, train=False, capture_intermediates=True,
                           mutable=["intermediates"])
    found = traverse_util.flatten_dict(state["intermediates"])
    return {g: jax.nn.relu(found[where + ("__call__",)][0]).reshape(-1, spec.sizes[g])
            for g, where in producers.items()}

  acts_a, acts_b = activations(variables_a), activations(variables_b)
  perms = {}
  for group in spec.groups:
    a, b = acts_a[group].astype(jnp.float32), acts_b[group].astype(jnp.float32)
    if correlation:
      a = (a - a.mean(0)) / (a.std(0) + 1e-12)
      b = (b - b.mean(0)) / (b.std(0) + 1e-12)
    moment = a.T @ b / a.shape[0]
    perms[group] = lap.linear_sum_assignment(moment, maximize=True).astype(jnp.int32)
  return perms
