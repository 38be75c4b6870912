"""Linear interpolation between two models and the loss / accuracy barrier along it.

lerp(lam, A, B) = (1 - lam) A + lam B over the whole variable tree. `curve` evaluates a
metric at a grid of lam in one vmapped pass (every lam's model at once); `barrier` is
max over the grid of [f(lam) - ((1 - lam) f(0) + lam f(1))] (Frankle et al. 2020, arXiv
1912.05671; the linear-mode-connectivity papers of docs/specs/robustness_tta_merging.md §6).
"""

from typing import Callable

import jax
import jax.numpy as jnp


def lerp(lam, variables_a, variables_b):
  return jax.tree.map(lambda a, b: (1.0 - lam) * a + lam * b, variables_a, variables_b)


def curve(metric: Callable, variables_a, variables_b, lams: jax.Array) -> jax.Array:
  """[len(lams)] metric(lerp(lam, A, B)) for every lam, vmapped."""
  return jax.vmap(lambda lam: metric(lerp(lam, variables_a, variables_b)))(lams)


def barrier(values: jax.Array, lams: jax.Array) -> jax.Array:
  """max_lam values(lam) - the chord between the endpoints (lams[0] = 0, lams[-1] = 1)."""
  chord = (1.0 - lams) * values[0] + lams * values[-1]
  return jnp.max(values - chord)


def grid(points: int = 25) -> jax.Array:
  """The merging code's 25 equispaced lam in [0, 1]."""
  return jnp.linspace(0.0, 1.0, points)

