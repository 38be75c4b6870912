"""Exact linear assignment inside jit: the Hungarian method with potentials (shortest
augmenting paths, Kuhn-Munkres as Jonker & Volgenant organise it), O(n^3), in `lax` loops.

`linear_sum_assignment(cost)` returns, for a square cost matrix, the column of each row in an
assignment of minimal total cost (`maximize=True`: maximal), as
`scipy.optimize.linear_sum_assignment` does (tested against it, ties and degenerate matrices
included). It is jittable and vmappable, so weight matching can run inside a jitted step
(the straight-through merge re-solves every step); `jax.pure_callback` to scipy is the
alternative where a host round trip is acceptable (`solve_on_host`).

One row is added at a time: a Dijkstra search over the columns with reduced costs
cost[i, j] - u[i] - v[j] >= 0 finds the cheapest augmenting path from the new row to a free
column, the potentials move by the path's slack, and the path flips. Each search step is one
vectorised pass over the columns.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np


def linear_sum_assignment(cost: jax.Array, maximize: bool = False) -> jax.Array:
  """cols[i]: the column assigned to row i in an optimal assignment of the square `cost`."""
  chex.assert_rank(cost, 2)
  n = cost.shape[0]
  chex.assert_shape(cost, (n, n))
  a = -cost if maximize else cost
  a = a.astype(jnp.promote_types(a.dtype, jnp.float32))
  inf = jnp.asarray(jnp.inf, a.dtype)
  # column 0 is a virtual column holding the row being inserted; rows are numbered 1..n
  padded = jnp.concatenate([jnp.full((n, 1), inf, a.dtype), a], axis=1)
  columns = jnp.arange(n + 1)

  def insert_row(i, carry):
    u, v, p, way, taken = carry
    active = ~taken[i - 1]  # a row the column reduction matched is left as it is
    p = p.at[0].set(i)

    def search_continues(state):
      _, _, p, _, j0, _, _ = state
      return active & (p[j0] != 0)

    def search_step(state):
      u, v, p, way, j0, minv, used = state
      used = used.at[j0].set(True)
      i0 = p[j0]
      reduced = padded[i0 - 1] - u[i0] - v
      better = ~used & (reduced < minv)
      minv = jnp.where(better, reduced, minv)
      way = jnp.where(better, j0, way)
      slack = jnp.where(used, inf, minv)
      j1 = jnp.argmin(slack)
      delta = slack[j1]
      u = u.at[p].add(jnp.where(used, delta, 0.0))
      v = jnp.where(used, v - delta, v)
      minv = jnp.where(used, minv, minv - delta)
      return u, v, p, way, j1, minv, used

    state = (u, v, p, way, jnp.int32(0), jnp.full((n + 1,), inf, a.dtype),
             jnp.zeros((n + 1,), bool))
    u, v, p, way, j0, _, _ = jax.lax.while_loop(search_continues, search_step, state)

    def flip(state):  # along `way` back to the virtual column
      p, j0 = state
      j1 = way[j0]
      return p.at[j0].set(p[j1]), j1

    p, _ = jax.lax.while_loop(lambda s: active & (s[1] != 0), flip, (p, j0))
    return u, v, p, way, taken

  # Jonker-Volgenant's column reduction: v[j] = min_i a[i, j] keeps every reduced cost >= 0,
  # and each column takes its cheapest row while that row is free (tight edges, so the
  # partial matching and the potentials are consistent); only the rows left over are
  # inserted by search. On tie-heavy matrices this saves most of the searches.
  v = jnp.concatenate([jnp.zeros((1,), a.dtype), a.min(0)])
  cheapest = jnp.argmin(a, axis=0)

  def reduce_column(j, carry):
    p, taken = carry
    row = cheapest[j - 1]
    free = ~taken[row]
    return (p.at[j].set(jnp.where(free, row + 1, 0)), taken.at[row].set(taken[row] | free))

  p, taken = jax.lax.fori_loop(1, n + 1, reduce_column,
                               (jnp.zeros((n + 1,), jnp.int32), jnp.zeros((n,), bool)))
  start = (jnp.zeros((n + 1,), a.dtype), v, p, jnp.zeros((n + 1,), jnp.int32), taken)
  _, _, p, _, _ = jax.lax.fori_loop(1, n + 1, insert_row, start)
  # p[j] = row (1-based) of column j; invert to the column of each row
  return jnp.zeros((n,), jnp.int32).at[p[1:] - 1].set(columns[1:].astype(jnp.int32) - 1)


def solve_on_host(cost: jax.Array, maximize: bool = False) -> jax.Array:
  """The same through `jax.pure_callback` to scipy (a host round trip per call)."""
  def solve(c):
    import scipy.optimize  # pylint: disable=g-import-not-at-top
    rows, cols = scipy.optimize.linear_sum_assignment(np.asarray(c), maximize=maximize)
    out = np.zeros(len(rows), np.int32)
    out[rows] = cols
    return out
  return jax.pure_callback(solve, jax.ShapeDtypeStruct(cost.shape[:1], jnp.int32), cost)
