"""Noise-prediction networks of the class-conditional DDPM (`jaxlab.models.diffusion`).

`eps(x_t, t, c) -> epsilon`: x_t [B, H, W, C] in the model's [-1, 1] space, t [B] integer
steps in 1..T, c [B, K + 1] the class condition with one extra slot for "no class" (the
classifier-free guidance null label, Ho & Salimans 2022, arXiv 2207.12598). The class enters
only through `c @ E` (a Dense layer without bias), so a probability vector over the K classes
conditions on the convex combination of class embeddings, as the GAN generator's does
(docs/specs/generative_and_finetuning.md §0.4).

  `eps_mlp`  the 8x8 network of §5(g): the flattened image, a sinusoidal time embedding and
             the class embedding, residual SiLU MLP blocks.
  `unet`     a small DDPM U-Net (Ho et al. 2020, arXiv 2006.11239): residual blocks with
             group norm and the time + class embedding added inside each block, self-attention
             at the resolutions in `attention` (low ones), strided-conv downsampling,
             nearest-neighbour + conv upsampling, skip connections by concatenation.
"""

import math
from typing import Sequence, Tuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab.errors import unknown
from jaxlab.models.layers import Conv


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding [B, dim] of integer or real steps t [B] (the Transformer's, as DDPM)."""
  half = dim // 2
  frequencies = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = t.astype(jnp.float32)[:, None] * frequencies[None]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class Conditioning(nn.Module):
  """emb [B, dim] = MLP(sinusoid(t)) + c @ E."""
  dim: int

  @nn.compact
  def __call__(self, t, c):
    emb = nn.Dense(self.dim)(timestep_embedding(t, self.dim))
    emb = nn.Dense(self.dim)(nn.silu(emb))
    return emb + nn.Dense(self.dim, use_bias=False, name="class_embedding")(c.astype(emb.dtype))


class EpsMLP(nn.Module):
  """The MLP noise predictor for small images (flattened)."""
  num_classes: int
  image_shape: Tuple[int, int, int]
  hidden: int = 256
  blocks: int = 3

  @nn.compact
  def __call__(self, x, t, c):
    chex.assert_shape(c, (x.shape[0], self.num_classes + 1))
    emb = Conditioning(self.hidden)(t, c)
    h = nn.Dense(self.hidden)(x.reshape(x.shape[0], -1))
    for _ in range(self.blocks):
      r = nn.Dense(self.hidden)(nn.silu(nn.LayerNorm()(h)))
      r = r + nn.Dense(self.hidden)(nn.silu(emb))
      r = nn.Dense(self.hidden)(nn.silu(nn.LayerNorm()(r)))
      h = h + r
    out = nn.Dense(math.prod(self.image_shape), kernel_init=nn.initializers.zeros)(
        nn.silu(nn.LayerNorm()(h)))
    return out.reshape(x.shape)


def _groups(channels: int) -> int:
  """32 groups as DDPM where the width allows, else the largest divisor <= channels // 4."""
  return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0 and channels // g >= 4
              or g == 1)


class ResBlock(nn.Module):
  channels: int

  @nn.compact
  def __call__(self, x, emb):
    h = Conv(self.channels, 3)(nn.silu(nn.GroupNorm(_groups(x.shape[-1]))(x)))
    h = h + nn.Dense(self.channels)(nn.silu(emb))[:, None, None, :]
    h = nn.silu(nn.GroupNorm(_groups(self.channels))(h))
    h = Conv(self.channels, 3)(h)
    skip = x if x.shape[-1] == self.channels else Conv(self.channels, 1)(x)
    return skip + h


class Attention(nn.Module):
  """Single-head self-attention over the H x W positions, with a residual."""

  @nn.compact
  def __call__(self, x):
    b, h, w, ch = x.shape
    y = nn.GroupNorm(_groups(ch))(x).reshape(b, h * w, ch)
    q, k, v = (nn.Dense(ch, name=name)(y) for name in ("query", "key", "value"))
    weights = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k) / math.sqrt(ch), axis=-1)
    out = nn.Dense(ch, name="out")(jnp.einsum("bqk,bkc->bqc", weights, v))
    return x + out.reshape(b, h, w, ch)


class UNet(nn.Module):
  """The DDPM U-Net at small scale: `channels` x `multipliers` per resolution, `res_blocks`
  blocks each, attention where the side length is in `attention`."""
  num_classes: int
  image_shape: Tuple[int, int, int]
  channels: int = 64
  multipliers: Sequence[int] = (1, 2, 2)
  res_blocks: int = 2
  attention: Sequence[int] = (8,)

  @nn.compact
  def __call__(self, x, t, c):
    chex.assert_rank(x, 4)
    chex.assert_shape(c, (x.shape[0], self.num_classes + 1))
    emb = Conditioning(4 * self.channels)(t, c)
    h = Conv(self.channels, 3)(x)
    skips = [h]
    for level, mult in enumerate(self.multipliers):
      for _ in range(self.res_blocks):
        h = ResBlock(self.channels * mult)(h, emb)
        if h.shape[1] in self.attention:
          h = Attention()(h)
        skips.append(h)
      if level != len(self.multipliers) - 1:
        h = Conv(h.shape[-1], 3, strides=2)(h)
        skips.append(h)
    h = ResBlock(h.shape[-1])(h, emb)
    h = Attention()(h)
    h = ResBlock(h.shape[-1])(h, emb)
    for level, mult in reversed(list(enumerate(self.multipliers))):
      for _ in range(self.res_blocks + 1):
        h = ResBlock(self.channels * mult)(jnp.concatenate([h, skips.pop()], -1), emb)
        if h.shape[1] in self.attention:
          h = Attention()(h)
      if level:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        h = Conv(h.shape[-1], 3)(h)
    h = nn.silu(nn.GroupNorm(_groups(h.shape[-1]))(h))
    return Conv(self.image_shape[-1], 3)(h)


NETS = {"eps_mlp": EpsMLP, "unet": UNet}


def build_net(model_config, num_classes: int, image_shape: Sequence[int]) -> nn.Module:
  """The noise predictor `config.model` names (`eps_mlp` or `unet`, its other fields)."""
  kwargs = dict(model_config)
  name = kwargs.pop("name")
  if name not in NETS:
    raise unknown("diffusion network (model.name)", name, NETS)
  for key in ("multipliers", "attention"):
    if key in kwargs:
      kwargs[key] = tuple(kwargs[key])
  return NETS[name](num_classes=num_classes, image_shape=tuple(image_shape), **kwargs)
