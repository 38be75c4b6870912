"""Set networks of the closed-form meta-learners (docs/specs/closed_form_meta_learning.md §9.2):
embeddings of a task's instances conditioned on a permutation-invariant summary of its sets.

  `SetConditionedEmbedding`  phi(x; S_1..S_m) = MLP([x; v]) with v = rho([mean_{S_1} eta_1;
                             ...; mean_{S_m} eta_m]) (DeepSets, Zaheer et al. 2017, arXiv
                             1703.06114; masked means over each set's real rows): the
                             embedding of meta PU learning (P and U, §3(b)) and of meta
                             relative density-ratio estimation (A and B, §4(b)). `shared_eta`
                             uses one eta for every set (§4's eta), else one per set (§3's
                             eta_P, eta_U); `nonnegative` ends with a softplus (§3's optional
                             non-negative basis) [R].
"""

from typing import Optional, Sequence, Tuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp


class MLPNet(nn.Module):
  """ReLU hidden layers, a linear output."""
  hidden: Sequence[int]
  out: int

  @nn.compact
  def __call__(self, x):
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.out)(x)


def masked_mean(x: jax.Array, w: Optional[jax.Array]) -> jax.Array:
  if w is None:
    return x.mean(0)
  return (x * w[:, None]).sum(0) / jnp.maximum(w.sum(), 1e-12)


class SetConditionedEmbedding(nn.Module):
  features: int                      # K
  hidden: Sequence[int] = (64, 64)
  summary: int = 32                  # the width of each set's pooled eta
  sets: int = 2
  shared_eta: bool = False
  nonnegative: bool = False

  def setup(self):
    n_eta = 1 if self.shared_eta else self.sets
    self.etas = [MLPNet(self.hidden, self.summary, name=f"eta_{i}") for i in range(n_eta)]
    self.rho = MLPNet(self.hidden, self.summary, name="rho")
    self.phi = MLPNet(self.hidden, self.features, name="phi")

  def summarise(self, sets: Tuple, weights: Optional[Tuple] = None) -> jax.Array:
    """v [summary] of the sets (each [N_i, D], with optional 0/1 row weights)."""
    chex.assert_equal(len(sets), self.sets)
    weights = weights or (None,) * self.sets
    pooled = [masked_mean(self.etas[0 if self.shared_eta else i](s), w)
              for i, (s, w) in enumerate(zip(sets, weights))]
    return self.rho(jnp.concatenate(pooled))

  def embed(self, x: jax.Array, v: jax.Array) -> jax.Array:
    """phi(x; v) [M, K] of rows x [M, D]."""
    out = self.phi(jnp.concatenate([x, jnp.broadcast_to(v, (x.shape[0],) + v.shape)], -1))
    return jax.nn.softplus(out) if self.nonnegative else out

  def __call__(self, x, sets, weights=None):
    return self.embed(x, self.summarise(sets, weights))
