"""The jittable linear-assignment solver against scipy's optimum on random and adversarial
cost matrices (ties, constant, rank-1, huge range), up to 1024 x 1024."""

import numpy as np
import pytest
import scipy.optimize

import jax
import jax.numpy as jnp

from jaxlab.merge import lap

SOLVE = jax.jit(lap.linear_sum_assignment, static_argnames="maximize")


def _matrices(n, rng):
  yield "normal", rng.normal(size=(n, n))
  yield "few integer levels (ties)", rng.integers(0, 3, (n, n)).astype(np.float64)
  yield "constant", np.ones((n, n))
  yield "rank 1", np.outer(rng.normal(size=n), rng.normal(size=n))
  yield "identity-like", np.eye(n) * 10 + rng.uniform(size=(n, n)) * 1e-3
  yield "wide range", rng.normal(size=(n, n)) * np.logspace(-3, 3, n)[None]
  yield "duplicate rows", np.repeat(rng.normal(size=(1, n)), n, axis=0)


def _check(cost, maximize):
  n = len(cost)
  cols = np.asarray(SOLVE(jnp.asarray(cost, jnp.float32), maximize=maximize))
  assert sorted(cols.tolist()) == list(range(n))  # a permutation
  rows, ref_cols = scipy.optimize.linear_sum_assignment(cost.astype(np.float32),
                                                        maximize=maximize)
  ours, best = cost[np.arange(n), cols].sum(), cost[rows, ref_cols].sum()
  scale = np.abs(cost).sum() / max(n, 1) + 1e-9
  assert abs(ours - best) <= 1e-5 * scale * n, (ours, best)


@pytest.mark.parametrize("n", [1, 2, 3, 8, 33, 128])
@pytest.mark.parametrize("maximize", [False, True])
def test_optimum_equals_scipy(n, maximize):
  rng = np.random.default_rng(n)
  for _, cost in _matrices(n, rng):
    _check(cost, maximize)


def test_optimum_equals_scipy_at_1024():
  rng = np.random.default_rng(1024)
  _check(rng.normal(size=(1024, 1024)), maximize=True)
  _check(rng.integers(0, 4, (1024, 1024)).astype(np.float64), maximize=False)


def test_a_known_permutation_is_recovered_and_vmap_works():
  rng = np.random.default_rng(0)
  perms = np.stack([rng.permutation(50) for _ in range(3)])
  costs = np.stack([np.eye(50)[p] + 0.01 * rng.uniform(size=(50, 50)) for p in perms])
  cols = jax.vmap(lambda c: lap.linear_sum_assignment(c, maximize=True))(jnp.asarray(costs))
  np.testing.assert_array_equal(cols, perms)
  # the host fallback (scipy through pure_callback) agrees, inside jit
  host = jax.jit(lambda c: lap.solve_on_host(c, maximize=True))(jnp.asarray(costs[0]))
  np.testing.assert_array_equal(host, perms[0])
