"""On-device image augmentation, pure and batched (runs inside jit).

Images enter as uint8 NHWC and leave as float32 in [0, 1]; models normalise
(mean/std) themselves, so attacks and generators work in [0, 1] pixel space.
"""

from typing import Tuple

import jax
import jax.numpy as jnp


def to_float(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [0, 1]; float input passes through."""
  if jnp.issubdtype(images.dtype, jnp.integer):
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def random_crop(images: jax.Array, key: jax.Array, padding: int) -> jax.Array:
  """Zero-pads by `padding` on each side, then crops back at a random offset per image."""
  if padding <= 0:
    return images
  n, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)
  crop = lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (h, w, c))
  return jax.vmap(crop)(padded, offsets)


def random_flip(images: jax.Array, key: jax.Array) -> jax.Array:
  """Flips each image left-right with probability 1/2."""
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def rotate(images: jax.Array, angles: jax.Array) -> jax.Array:
  """Rotates image i about its centre by angles[i] radians (positive: clockwise as displayed,
  row 0 on top), bilinear, zeros outside; differentiable in the pixel values."""
  _, h, w, _ = images.shape
  rows, cols = jnp.meshgrid(jnp.arange(h) - (h - 1) / 2, jnp.arange(w) - (w - 1) / 2,
                            indexing="ij")

  def one(image, angle):
    cos, sin = jnp.cos(angle), jnp.sin(angle)  # where each output pixel samples the input
    src_rows = cos * rows - sin * cols + (h - 1) / 2
    src_cols = sin * rows + cos * cols + (w - 1) / 2
    channel = lambda c: jax.scipy.ndimage.map_coordinates(c, [src_rows, src_cols], order=1,
                                                          mode="constant", cval=0.0)
    return jax.vmap(channel, in_axes=-1, out_axes=-1)(image)

  return jax.vmap(one)(images, angles)


def random_rotate(images: jax.Array, key: jax.Array, max_degrees: float) -> jax.Array:
  """`rotate` by angles ~ U(-max_degrees, max_degrees) per image (generated images pass
  through it inside PCR, so it stays differentiable)."""
  if max_degrees <= 0:
    return images
  angles = jax.random.uniform(key, (images.shape[0],), minval=-max_degrees, maxval=max_degrees)
  return rotate(images, jnp.deg2rad(angles))


def cutout(images: jax.Array, key: jax.Array, size: int) -> jax.Array:
  """Zeroes one size x size square per image at a random centre (clipped at the borders;
  DeVries & Taylor 2017, the last op of FixMatch's strong augmentation)."""
  if size <= 0:
    return images
  n, h, w, _ = images.shape
  centres = jax.random.randint(key, (n, 2), 0, jnp.array([h, w]))
  rows = jnp.arange(h)[None, :, None] - centres[:, 0, None, None]
  cols = jnp.arange(w)[None, None, :] - centres[:, 1, None, None]
  half = size // 2
  inside = (rows >= -half) & (rows < size - half) & (cols >= -half) & (cols < size - half)
  return jnp.where(inside[..., None], 0.0, images)


def augment(images: jax.Array, key: jax.Array, *, crop_padding: int = 0,
            flip: bool = False, rotation: float = 0.0, cutout_size: int = 0,
            noise: float = 0.0) -> jax.Array:
  """Random shift (zero-pad + crop), left-right flip, rotation (degrees), cutout and additive
  Gaussian pixel noise (std `noise`, clipped to [0, 1]), each optional."""
  crop_key, flip_key = jax.random.split(key)
  images = random_rotate(images, jax.random.fold_in(key, 2), rotation)
  images = random_crop(images, crop_key, crop_padding)
  if flip:
    images = random_flip(images, flip_key)
  images = cutout(images, jax.random.fold_in(key, 3), cutout_size)
  if noise > 0:
    images = jnp.clip(images + noise * jax.random.normal(jax.random.fold_in(key, 4),
                                                         images.shape), 0.0, 1.0)
  return images


def weak_and_strong(images: jax.Array, rng: jax.Array, config) -> Tuple[jax.Array, jax.Array]:
  """FixMatch's two views (arXiv 2001.07685) of float images: weak = `config.aug`'s shift (+
  flip); strong = the same ops + rotation, cutout and pixel noise of `config.ssl.strong_*`
  (FixMatch-lite: no RandAugment). Shared by the SSL families."""
  weak_key, strong_key = jax.random.split(rng)
  weak = augment(images, weak_key, crop_padding=config.aug.crop_padding, flip=config.aug.flip)
  strong = augment(images, strong_key, crop_padding=config.aug.crop_padding,
                   flip=config.aug.flip, rotation=config.ssl.strong_rotation,
                   cutout_size=config.ssl.strong_cutout, noise=config.ssl.strong_noise)
  return weak, strong
