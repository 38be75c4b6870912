"""On-device image augmentation, pure and batched (runs inside jit).

Images enter as uint8 NHWC and leave as float32 in [0, 1]; models normalise
(mean/std) themselves, so attacks and generators work in [0, 1] pixel space.
"""

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


def augment(images: jax.Array, key: jax.Array, *, crop_padding: int = 0,
            flip: bool = False) -> jax.Array:
  crop_key, flip_key = jax.random.split(key)
  images = random_crop(images, crop_key, crop_padding)
  if flip:
    images = random_flip(images, flip_key)
  return images
