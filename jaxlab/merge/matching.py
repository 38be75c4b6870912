"""Weight matching (Git Re-Basin, Ainsworth et al. 2023, arXiv 2209.04836; the merging paper's
`matching/weight_matching.py`, docs/specs/robustness_tta_merging.md §5(b)).

maximise over the permutations pi = {P_p} of `spec`
  sum over variables W of <W_A, pi(W_B)>_F
by coordinate ascent: sweep the permutations in a random order (a fresh order per sweep, from
`key`); for permutation p, with every other permutation applied to B, the objective is linear
in P_p: <C_p, P_p> with C_p = sum over the (variable, axis) of p of W_A (axis first, flattened)
times pi_{-p}(W_B) likewise transposed; P_p = the linear assignment maximising it. Stop when a
sweep improves no permutation by more than 1e-12, or after `max_iter` sweeps (300, the merging
code's default). Only the `params` collection enters C (the BatchNorm running statistics do
not, as in the code); `permutation.permute` moves every collection.
"""

from typing import Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxlab.merge import lap
from jaxlab.merge.permutation import Spec

_solve = jax.jit(lambda c: lap.linear_sum_assignment(c, maximize=True))


def _permuted_except(flat_b, spec: Spec, perms, path, skip: str):
  w = flat_b[path]
  for axis, group in spec.axes_of(path).items():
    if group != skip:
      w = jnp.take(w, perms[group], axis=axis)
  return w


def weight_matching(spec: Spec, variables_a, variables_b, key: jax.Array, max_iter: int = 300,
                    init: Optional[Dict[str, jax.Array]] = None) -> Dict[str, jax.Array]:
  """The permutations of B's units that best align B's weights with A's."""
  flat_a = traverse_util.flatten_dict(variables_a)
  flat_b = traverse_util.flatten_dict(variables_b)
  perms = dict(init) if init else {g: jnp.arange(n) for g, n in spec.sizes.items()}
  names = sorted(spec.groups)
  for sweep in range(max_iter):
    order = np.asarray(jax.random.permutation(jax.random.fold_in(key, sweep), len(names)))
    progress = False
    for index in order:
      group = names[index]
      n = spec.sizes[group]
      cost = jnp.zeros((n, n))
      for path, axis in spec.groups[group]:
        if path[0] != "params":
          continue
        wa = jnp.moveaxis(flat_a[path], axis, 0).reshape(n, -1)
        wb = jnp.moveaxis(_permuted_except(flat_b, spec, perms, path, group), axis, 0)
        cost = cost + wa @ wb.reshape(n, -1).T
      new = _solve(cost)
      old_value = jnp.sum(cost[jnp.arange(n), perms[group]])
      new_value = jnp.sum(cost[jnp.arange(n), new])
      if float(new_value - old_value) > 1e-12:
        progress = True
        perms[group] = new
    if not progress:
      break
  return perms
