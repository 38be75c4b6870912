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
  `VariableFeatureAttention` the VFSA network of meta-SSL across attribute spaces (§1(b) [R]):
                             a task's table (rows = labelled, unlabelled and query examples;
                             columns = its attributes and one label column a class) as a grid
                             of cells, each embedded from (value, missing flag) by an MLP per
                             column type and no column identity, then layers of attention
                             across examples within each column (keys: the support rows
                             only), across columns within each example (padded columns
                             masked) and a per-cell feed-forward, each residual + LayerNorm;
                             an example's embedding is W_o [mean of its attribute cells; mean
                             of its label cells]. Equivariant to attribute reorderings and
                             class relabelings by construction.
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


class VariableFeatureAttention(nn.Module):
  width: int = 64                    # H
  heads: int = 4
  layers: int = 3                    # B
  features: int = 32                 # K
  row_attention: bool = True         # False: each example embedded alone (the §1(g) ablation)

  @nn.compact
  def __call__(self, values: jax.Array, missing: jax.Array, is_label: jax.Array,
               column_mask: jax.Array, key_rows: jax.Array) -> jax.Array:
    """z [N, K] of a grid: values, missing [N, J]; is_label, column_mask [J]; key_rows [N]
    (1 for the rows others may read: the support)."""
    chex.assert_equal_shape([values, missing])
    chex.assert_shape([is_label, column_mask], (values.shape[1],))
    chex.assert_shape(key_rows, (values.shape[0],))
    cells = jnp.stack([values, missing], -1)                       # [N, J, 2]
    embed = lambda name: MLPNet((self.width,), self.width, name=name)(cells)
    h = jnp.where(is_label[None, :, None] > 0, embed("cell_label"), embed("cell_attribute"))
    attend = lambda name: nn.MultiHeadDotProductAttention(
        num_heads=self.heads, qkv_features=self.width, name=name)
    for i in range(self.layers):
      if self.row_attention:                                       # per column, over rows
        by_column = jnp.swapaxes(h, 0, 1)                          # [J, N, H]
        mask = jnp.broadcast_to(key_rows[None, None, None, :] > 0,
                                (1, 1, values.shape[0], values.shape[0]))
        by_column = nn.LayerNorm(name=f"ln_rows_{i}")(
            by_column + attend(f"rows_{i}")(by_column, by_column, mask=mask))
        h = jnp.swapaxes(by_column, 0, 1)
      mask = jnp.broadcast_to(column_mask[None, None, None, :] > 0,
                              (1, 1, values.shape[1], values.shape[1]))
      h = nn.LayerNorm(name=f"ln_columns_{i}")(h + attend(f"columns_{i}")(h, h, mask=mask))
      ffn = nn.Dense(self.width, name=f"ffn_out_{i}")(
          nn.relu(nn.Dense(2 * self.width, name=f"ffn_in_{i}")(h)))
      h = nn.LayerNorm(name=f"ln_ffn_{i}")(h + ffn)
    attribute = column_mask * (1.0 - is_label)
    pool = lambda w: (h * w[None, :, None]).sum(1) / jnp.maximum(w.sum(), 1e-12)
    return nn.Dense(self.features, name="out")(
        jnp.concatenate([pool(attribute), pool(is_label.astype(h.dtype))], -1))
