"""A class-conditional GAN: generator with conditional BatchNorm, projection discriminator
with spectral normalisation (the SNGAN/BigGAN family: Miyato et al. 2018, arXiv 1802.05957;
Miyato & Koyama 2018, arXiv 1802.05637; Brock et al. 2019, arXiv 1809.11096).

The frozen conditional generator `G(z, c) -> x` of docs/specs/generative_and_finetuning.md
§0.4: `c` is a one-hot class vector or a probability vector. Every place `c` enters is linear
in it (the first layer sees concat(z, c); conditional BatchNorm's gain and shift are c @ W),
so a soft `c` is the convex combination of the class embeddings and a one-hot `c` is hard
conditioning exactly. Images come out in [0, 1] (sigmoid), as jaxlab's classifiers take them.

Resolution: the generator starts from a `base` x `base` map and doubles it `n_up` times,
with `n_up` the most doublings that keep base >= 4 (8x8: 4 -> 8; 28x28: 7 -> 14 -> 28;
32x32: 4 -> 8 -> 16 -> 32); the discriminator halves it as often.
"""

from typing import Tuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab.models.layers import Conv, conv2d


def num_doublings(size: int) -> int:
  """The most times `size` halves exactly while staying >= 4."""
  k = 0
  while size % (2 ** (k + 1)) == 0 and size // 2 ** (k + 1) >= 4:
    k += 1
  return k


class ConditionalBatchNorm(nn.Module):
  """BatchNorm without its own affine, then x * (1 + c W_gain) + c W_shift."""
  momentum: float = 0.9

  @nn.compact
  def __call__(self, x, c, train: bool):
    x = nn.BatchNorm(use_running_average=not train, momentum=self.momentum, use_scale=False,
                     use_bias=False)(x)
    gain = nn.Dense(x.shape[-1], use_bias=False, kernel_init=nn.initializers.zeros,
                    name="gain")(c)
    shift = nn.Dense(x.shape[-1], use_bias=False, kernel_init=nn.initializers.zeros,
                     name="shift")(c)
    return x * (1.0 + gain[:, None, None, :]) + shift[:, None, None, :]


class ConditionalGenerator(nn.Module):
  """z [B, latent_dim], c [B, K] -> images [B, H, W, C] in [0, 1]."""
  num_classes: int
  image_shape: Tuple[int, int, int]
  latent_dim: int = 8
  width: int = 64

  @nn.compact
  def __call__(self, z, c, train: bool = False):
    chex.assert_rank([z, c], 2)
    chex.assert_shape(c, (z.shape[0], self.num_classes))
    h, w, channels = self.image_shape
    n_up = min(num_doublings(h), num_doublings(w))
    base_h, base_w = h >> n_up, w >> n_up
    x = nn.Dense(base_h * base_w * self.width)(jnp.concatenate([z, c.astype(z.dtype)], -1))
    x = x.reshape(z.shape[0], base_h, base_w, self.width)
    for _ in range(n_up):
      x = nn.relu(ConditionalBatchNorm()(x, c, train))
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest-neighbour upsampling
      x = Conv(self.width, 3, padding=1)(x)
    x = nn.relu(ConditionalBatchNorm()(x, c, train))
    x = Conv(channels, 3, padding=1)(x)
    return nn.sigmoid(x)


def _spectral(module: nn.Module, kernel: jax.Array, update_stats: bool) -> jax.Array:
  """kernel / sigma, sigma the largest singular value of kernel as [fan_in, out], estimated
  by one power-iteration step per call from the persistent vector `spectral/u`."""
  matrix = kernel.reshape(-1, kernel.shape[-1])
  u = module.variable("spectral", "u", lambda: jax.random.normal(
      module.make_rng("params"), (matrix.shape[-1],)))
  normalise = lambda v: v / (jnp.linalg.norm(v) + 1e-12)
  u_value = jax.lax.stop_gradient(u.value)
  v = normalise(matrix @ u_value)
  u_new = jax.lax.stop_gradient(normalise(matrix.T @ v))
  v = jax.lax.stop_gradient(v)
  sigma = v @ matrix @ u_new
  if update_stats and not module.is_initializing():
    u.value = u_new
  return kernel / sigma


class SNDense(nn.Module):
  features: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, x, update_stats: bool):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
    y = x @ _spectral(self, kernel, update_stats)
    return y + self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else y


class SNConv(nn.Module):
  features: int
  kernel_size: int = 3

  @nn.compact
  def __call__(self, x, update_stats: bool):
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (k, k, x.shape[-1], self.features))
    y = conv2d(x, _spectral(self, kernel, update_stats), 1, [(k // 2, k // 2)] * 2)
    return y + self.param("bias", nn.initializers.zeros, (self.features,))


class ProjectionDiscriminator(nn.Module):
  """x [B, H, W, C] in [0, 1], c [B, K] -> scores [B]: psi(phi(x)) + <c E, phi(x)>, with
  phi the sum-pooled features of spectrally normalised convolutions."""
  num_classes: int
  width: int = 64

  @nn.compact
  def __call__(self, x, c, update_stats: bool = False):
    chex.assert_rank(x, 4)
    chex.assert_shape(c, (x.shape[0], self.num_classes))
    x = 2.0 * x - 1.0
    n_down = min(num_doublings(x.shape[1]), num_doublings(x.shape[2]))
    for _ in range(n_down):
      x = nn.leaky_relu(SNConv(self.width)(x, update_stats), 0.1)
      x = nn.leaky_relu(SNConv(self.width)(x, update_stats), 0.1)
      x = nn.avg_pool(x, (2, 2), (2, 2))
    x = nn.leaky_relu(SNConv(self.width)(x, update_stats), 0.1)
    features = x.sum((1, 2))
    unconditional = SNDense(1)(features, update_stats)[:, 0]
    projection = jnp.sum(SNDense(self.width, use_bias=False, name="embed")(
        c.astype(features.dtype), update_stats) * features, -1)
    return unconditional + projection


def build_generator(generator_config, num_classes: int,
                    image_shape: Tuple[int, ...]) -> ConditionalGenerator:
  """The generator `config.generator` describes (latent_dim, width) for this data."""
  return ConditionalGenerator(num_classes=num_classes, image_shape=tuple(image_shape),
                              latent_dim=generator_config.latent_dim,
                              width=generator_config.width)


def build_discriminator(generator_config, num_classes: int) -> ProjectionDiscriminator:
  return ProjectionDiscriminator(num_classes=num_classes,
                                 width=generator_config.discriminator_width)


def init_generator(generator: ConditionalGenerator, rng: jax.Array):
  """The generator's variables {"params", "batch_stats"}."""
  z = jnp.zeros((2, generator.latent_dim))
  c = jnp.zeros((2, generator.num_classes))
  return dict(generator.init(rng, z, c, train=False))


def sample_conditions(rng: jax.Array, batch: int, num_classes: int, latent_dim: int):
  """The generator's prior: z ~ N(0, I) [B, latent_dim], uniform classes [B] and their one-hot
  c [B, K]."""
  z_key, c_key = jax.random.split(rng)
  labels = jax.random.randint(c_key, (batch,), 0, num_classes)
  return (jax.random.normal(z_key, (batch, latent_dim)), labels,
          jax.nn.one_hot(labels, num_classes))
