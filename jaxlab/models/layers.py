"""Dense and conv layers with selectable initialisers, and batch-statistics BatchNorm.

Initialisers (docs/specs/meta_learning_and_sparse.md §0.4 B4), with
fan_in = input features (Dense, kernel (in, out)) or in_channels x kernel area
(Conv, kernel HWIO):
  `flax`            kernel lecun_normal, bias 0 (Flax's default).
  `torch`           kernel and bias U(+-1/sqrt(fan_in)) (PyTorch's default
                    Linear/Conv init, kaiming_uniform with a=sqrt(5)).
  `kaiming_normal`  kernel N(0, 2/fan_in), bias 0.
  `kaiming_normal_fan_out`  kernel N(0, 2/fan_out), bias 0 (ResNet convs).
  `kaiming_uniform` kernel U(+-sqrt(6/fan_in)), bias 0.
  `signed_constant` kernel sign(N(0,1)) * sqrt(2/fan_in), bias 0 (edge-popup).

`Conv` computes with XLA's convolution on GPU/TPU and, on CPU, as shifted
slices + one matmul (im2col): XLA:CPU's convolution-gradient kernels are slow
(measured here, 3x3 conv 64->64 on 128x32x32: forward+backward 2.5 s native vs
0.9 s im2col, same numbers to float rounding). `JAXLAB_CONV_IMPL=xla|im2col`
forces one.

`BatchStatNorm` is the "transductive" BN of the few-shot literature (B1): it
always normalises with the current batch's mean and biased variance and keeps
no running averages, in training and in evaluation alike.
"""

import os
from typing import Callable, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab.errors import unknown

INITS = ("flax", "torch", "kaiming_normal", "kaiming_normal_fan_out", "kaiming_uniform",
         "signed_constant")


def _fans(shape: Sequence[int]) -> Tuple[int, int]:
  receptive = 1
  for d in shape[:-2]:
    receptive *= d
  return shape[-2] * receptive, shape[-1] * receptive


def kernel_init(name: str) -> Callable:
  """Initialiser for a kernel of shape (..., in, out) under the convention `name`."""
  def init(key, shape, dtype=jnp.float32):
    fan_in, fan_out = _fans(shape)
    if name == "flax":
      return nn.initializers.lecun_normal()(key, shape, dtype)
    if name == "torch":
      bound = 1.0 / jnp.sqrt(fan_in)
      return jax.random.uniform(key, shape, dtype, -bound, bound)
    if name == "kaiming_normal":
      return jax.random.normal(key, shape, dtype) * jnp.sqrt(2.0 / fan_in)
    if name == "kaiming_normal_fan_out":
      return jax.random.normal(key, shape, dtype) * jnp.sqrt(2.0 / fan_out)
    if name == "kaiming_uniform":
      bound = jnp.sqrt(6.0 / fan_in)
      return jax.random.uniform(key, shape, dtype, -bound, bound)
    if name == "signed_constant":
      return jnp.sign(jax.random.normal(key, shape, dtype)) * jnp.sqrt(2.0 / fan_in)
    raise unknown("initialiser", name, INITS)
  if name not in INITS:
    raise unknown("initialiser", name, INITS)
  return init


def bias_init(name: str, fan_in: int) -> Callable:
  def init(key, shape, dtype=jnp.float32):
    if name == "torch":
      bound = 1.0 / jnp.sqrt(fan_in)
      return jax.random.uniform(key, shape, dtype, -bound, bound)
    return jnp.zeros(shape, dtype)
  return init


class Dense(nn.Module):
  features: int
  use_bias: bool = True
  weight_init: str = "flax"

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", kernel_init(self.weight_init), (x.shape[-1], self.features))
    y = x @ kernel
    if self.use_bias:
      y = y + self.param("bias", bias_init(self.weight_init, x.shape[-1]), (self.features,))
    return y


CONV_IMPLS = ("auto", "xla", "im2col")


def conv_impl() -> str:
  impl = os.environ.get("JAXLAB_CONV_IMPL", "auto")
  if impl not in CONV_IMPLS:
    raise unknown("JAXLAB_CONV_IMPL", impl, CONV_IMPLS)
  if impl == "auto":
    return "im2col" if jax.default_backend() == "cpu" else "xla"
  return impl


def conv2d(x: jax.Array, kernel: jax.Array, strides: int, padding) -> jax.Array:
  """NHWC x HWIO convolution; `padding` is 'SAME', 'VALID' or [(lo, hi), (lo, hi)]."""
  kh, kw, cin, cout = kernel.shape
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(x.shape[1:3], (kh, kw), (strides, strides), padding)
  if conv_impl() == "xla":
    return jax.lax.conv_general_dilated(x, kernel, (strides, strides), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  n, h, w, _ = x.shape
  ho, wo = (h - kh) // strides + 1, (w - kw) // strides + 1
  patches = jnp.concatenate(
      [x[:, i:i + strides * (ho - 1) + 1:strides, j:j + strides * (wo - 1) + 1:strides, :]
       for i in range(kh) for j in range(kw)], axis=-1)
  return (patches.reshape(-1, kh * kw * cin) @ kernel.reshape(kh * kw * cin, cout)).reshape(
      n, ho, wo, cout)


class Conv(nn.Module):
  """2-D convolution, NHWC input, HWIO kernel; padding 'SAME', 'VALID' or an int."""
  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: Union[str, int] = "SAME"
  use_bias: bool = True
  weight_init: str = "flax"

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param("kernel", kernel_init(self.weight_init), (k, k, x.shape[-1], self.features))
    padding = self.padding if isinstance(self.padding, str) else [(self.padding, self.padding)] * 2
    y = conv2d(x, kernel, self.strides, padding)
    if self.use_bias:
      y = y + self.param("bias", bias_init(self.weight_init, k * k * x.shape[-1]), (self.features,))
    return y


class BatchStatNorm(nn.Module):
  """BatchNorm with batch statistics only (PyTorch track_running_stats=False)."""
  epsilon: float = 1e-5
  use_scale: bool = True
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axes)
    var = jnp.square(x - mean).mean(axes)  # biased, as PyTorch uses for normalising
    y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
    if self.use_scale:
      y = y * self.param("scale", nn.initializers.ones, (x.shape[-1],))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (x.shape[-1],))
    return y


NORMS = ("none", "batch_stats", "batch_stats_offset", "batch_norm", "batch_norm_nonaffine")


def make_norm(kind: str, train: bool, epsilon: float = 1e-5, momentum: float = 0.9) -> Callable:
  """`none`; `batch_stats` (B1: batch statistics always, affine, no running averages);
  `batch_stats_offset` (batch statistics always, an offset but no scale: MAML-TF's
  tf.contrib batch_norm); `batch_norm` (running averages, affine); `batch_norm_nonaffine` (running averages, no
  scale or offset: edge-popup / IteRand)."""
  if kind == "none":
    return lambda x: x
  if kind in ("batch_stats", "batch_stats_offset"):
    return BatchStatNorm(epsilon=epsilon, use_scale=kind == "batch_stats")
  if kind in ("batch_norm", "batch_norm_nonaffine"):
    affine = kind == "batch_norm"
    return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon,
                        use_scale=affine, use_bias=affine)
  raise unknown("norm", kind, NORMS)
