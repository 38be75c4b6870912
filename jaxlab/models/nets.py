"""Backbones: MLP, the few-shot Conv-4, and a CIFAR-style ResNet-18.

All take NHWC float images in [0, 1] (MLP flattens), normalise them with
optional per-channel `mean`/`std`, and return logits, or with
`return_features=True` the penultimate representation. The head is the
submodule named `head`, so
methods can tell body from head by parameter path (ANIL/BOIL, fine-tuning).
Conv-4 variants (shared/methods/meta_learning_and_sparse.md §1(e)):
  `strided` MAML-TF Omniglot: 4 x [3x3 conv stride 2 SAME -> BN -> ReLU],
            spatial mean, linear head.
  `pool`    torchmeta/BOIL: 4 x [3x3 conv pad 1 -> BN -> ReLU -> 2x2 max-pool],
            flatten, linear head.
"""

from typing import Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from jaxlab.models.layers import Conv, Dense, make_norm


def _normalise(x, mean: Tuple[float, ...], std: Tuple[float, ...]):
  if mean:
    x = x - jnp.asarray(mean, x.dtype)
  if std:
    x = x / jnp.asarray(std, x.dtype)
  return x


class MLP(nn.Module):
  num_classes: int
  hidden: Sequence[int] = (256, 256)
  norm: str = "none"
  norm_epsilon: float = 1e-5
  weight_init: str = "flax"
  mean: Tuple[float, ...] = ()
  std: Tuple[float, ...] = ()

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    x = _normalise(x, self.mean, self.std).reshape(x.shape[0], -1)
    for width in self.hidden:
      x = Dense(width, weight_init=self.weight_init)(x)
      x = make_norm(self.norm, train, self.norm_epsilon)(x)
      x = nn.relu(x)
    if return_features:
      return x
    return Dense(self.num_classes, weight_init=self.weight_init, name="head")(x)


class Conv4(nn.Module):
  num_classes: int
  filters: int = 64
  variant: str = "pool"
  norm: str = "batch_stats"
  weight_init: str = "flax"
  mean: Tuple[float, ...] = ()
  std: Tuple[float, ...] = ()

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    x = _normalise(x, self.mean, self.std)
    for _ in range(4):
      if self.variant == "strided":
        x = Conv(self.filters, 3, strides=2, padding="SAME", weight_init=self.weight_init)(x)
      else:
        x = Conv(self.filters, 3, padding=1, weight_init=self.weight_init)(x)
      x = nn.relu(make_norm(self.norm, train)(x))
      if self.variant != "strided":
        x = nn.max_pool(x, (2, 2), (2, 2), padding="VALID")
    x = x.mean((1, 2)) if self.variant == "strided" else x.reshape(x.shape[0], -1)
    if return_features:
      return x
    return Dense(self.num_classes, weight_init=self.weight_init, name="head")(x)


class BasicBlock(nn.Module):
  filters: int
  strides: int
  norm: str
  weight_init: str

  @nn.compact
  def __call__(self, x, train: bool):
    y = Conv(self.filters, 3, self.strides, padding=1, use_bias=False, weight_init=self.weight_init)(x)
    y = nn.relu(make_norm(self.norm, train)(y))
    y = Conv(self.filters, 3, 1, padding=1, use_bias=False, weight_init=self.weight_init)(y)
    y = make_norm(self.norm, train)(y)
    if self.strides != 1 or x.shape[-1] != self.filters:
      x = Conv(self.filters, 1, self.strides, padding=0, use_bias=False, weight_init=self.weight_init)(x)
      x = make_norm(self.norm, train)(x)
    return nn.relu(x + y)


class ResNet18(nn.Module):
  """ResNet-18 (He et al. 2016). `stem='cifar'`: 3x3 stride-1 stem, no max-pool (32x32 inputs);
  `stem='imagenet'`: 7x7 stride-2 stem and 3x3 max-pool (224x224 inputs)."""
  num_classes: int
  width: int = 64
  stem: str = "cifar"
  norm: str = "batch_norm"
  weight_init: str = "kaiming_normal_fan_out"
  mean: Tuple[float, ...] = ()
  std: Tuple[float, ...] = ()

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    x = _normalise(x, self.mean, self.std)
    if self.stem == "imagenet":
      x = Conv(self.width, 7, 2, padding=3, use_bias=False, weight_init=self.weight_init)(x)
      x = nn.relu(make_norm(self.norm, train)(x))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    else:
      x = Conv(self.width, 3, 1, padding=1, use_bias=False, weight_init=self.weight_init)(x)
      x = nn.relu(make_norm(self.norm, train)(x))
    for stage, blocks in enumerate((2, 2, 2, 2)):
      for b in range(blocks):
        strides = 2 if stage > 0 and b == 0 else 1
        x = BasicBlock(self.width * 2**stage, strides, self.norm, self.weight_init)(x, train)
    x = x.mean((1, 2))
    if return_features:
      return x
    return Dense(self.num_classes, weight_init="torch", name="head")(x)
