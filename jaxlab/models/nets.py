"""Backbones: MLP, the few-shot Conv-4, Conv-6 (edge-popup/IteRand), ResNet-18/50 and WRN.

All take NHWC float images in [0, 1] (MLP flattens), normalise them with
optional per-channel `mean`/`std`, and return logits, or with
`return_features=True` the penultimate representation (also sown as
`intermediates/features`, so `models.logits_and_features` gets both from one pass). The
head is the submodule named `head`, so methods can tell body from head by parameter path
(ANIL/BOIL, fine-tuning).
Conv-4 variants (docs/specs/meta_learning_and_sparse.md §1(e)):
  `strided` MAML-TF Omniglot: 4 x [3x3 conv stride 2 SAME -> BN -> ReLU],
            spatial mean, linear head.
  `pool`    torchmeta/BOIL: 4 x [3x3 conv pad 1 -> BN -> ReLU -> 2x2 max-pool],
            flatten, linear head.
"""

from typing import Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from jaxlab.errors import unknown
from jaxlab.models.layers import Conv, Dense, make_norm


def features_or_logits(module: nn.Module, features, return_features: bool, **head_kwargs):
  """The tail every backbone shares: the features themselves, or the logits of the head
  (`Dense` named `head`) with the features sown as `intermediates/features`."""
  if return_features:
    return features
  module.sow("intermediates", "features", features)
  return Dense(module.num_classes, name="head", **head_kwargs)(features)


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
  use_bias: bool = True
  weight_init: str = "flax"
  mean: Tuple[float, ...] = ()
  std: Tuple[float, ...] = ()
  # "none": a deep linear network (the learning-transfer code's MNIST MLP, arXiv 2305.14122)
  activation: str = "relu"

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    if self.activation not in ("relu", "none"):
      raise unknown("MLP activation (model.activation)", self.activation, ("relu", "none"))
    x = _normalise(x, self.mean, self.std).reshape(x.shape[0], -1)
    for width in self.hidden:
      x = Dense(width, use_bias=self.use_bias, weight_init=self.weight_init)(x)
      x = make_norm(self.norm, train, self.norm_epsilon)(x)
      x = nn.relu(x) if self.activation == "relu" else x
    return features_or_logits(self, x, return_features, use_bias=self.use_bias,
                              weight_init=self.weight_init)


class Conv4(nn.Module):
  num_classes: int
  filters: int = 64
  variant: str = "pool"
  norm: str = "batch_stats"
  norm_epsilon: float = 1e-5
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
      x = nn.relu(make_norm(self.norm, train, self.norm_epsilon)(x))
      if self.variant != "strided":
        x = max_pool_2x2(x)
    x = x.mean((1, 2)) if self.variant == "strided" else x.reshape(x.shape[0], -1)
    return features_or_logits(self, x, return_features, weight_init=self.weight_init)


class Conv6(nn.Module):
  """Conv-6 of edge-popup / IteRand (CIFAR-10), width factor `width`:
  [conv 64w, conv 64w, pool] [128w x2, pool] [256w x2, pool], then 256w -> 256w -> classes
  as dense layers (the references' 1x1 convs on a 1x1 map). 3x3 convs, padding 1."""
  num_classes: int
  width: float = 1.0
  norm: str = "none"
  use_bias: bool = False
  weight_init: str = "kaiming_uniform"
  mean: Tuple[float, ...] = ()
  std: Tuple[float, ...] = ()

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    x = _normalise(x, self.mean, self.std)
    for channels in (64, 128, 256):
      for _ in range(2):
        x = Conv(int(channels * self.width), 3, padding=1, use_bias=self.use_bias,
                 weight_init=self.weight_init)(x)
        x = nn.relu(make_norm(self.norm, train)(x))
      x = max_pool_2x2(x)
    x = x.reshape(x.shape[0], -1)
    for _ in range(2):
      x = Dense(int(256 * self.width), use_bias=self.use_bias, weight_init=self.weight_init)(x)
      x = nn.relu(make_norm(self.norm, train)(x))
    return features_or_logits(self, x, return_features, use_bias=self.use_bias,
                              weight_init=self.weight_init)


def max_pool_2x2(x):
  """2x2 max-pool, stride 2, VALID, as a reshape + max (its gradient avoids XLA:CPU's slow
  select-and-scatter)."""
  n, h, w, c = x.shape
  x = x[:, :h - h % 2, :w - w % 2]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max((2, 4))


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


class ResNet12(nn.Module):
  """ResNet-12 of BOIL / Meta-ticket (docs/specs/meta_learning_and_sparse.md §1(e)):
  4 stages of widths 64-128-256-512 (x `width`/64), each 3 x [3x3 conv (no bias) -> BN],
  LeakyReLU(0.1) after the first two, a 1x1 conv + BN projection shortcut, add ->
  LeakyReLU -> 2x2 max-pool; global average pool; linear head. BN uses batch statistics
  (B1); convs kaiming_normal(fan_out), head PyTorch default."""
  num_classes: int
  width: int = 64
  norm: str = "batch_stats"
  weight_init: str = "kaiming_normal_fan_out"
  mean: Tuple[float, ...] = ()
  std: Tuple[float, ...] = ()

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    x = _normalise(x, self.mean, self.std)
    for stage in range(4):
      filters = self.width * 2**stage
      y = x
      for i in range(3):
        y = Conv(filters, 3, padding=1, use_bias=False, weight_init=self.weight_init)(y)
        y = make_norm(self.norm, train)(y)
        if i < 2:
          y = nn.leaky_relu(y, 0.1)
      shortcut = Conv(filters, 1, padding=0, use_bias=False, weight_init=self.weight_init)(x)
      x = max_pool_2x2(nn.leaky_relu(y + make_norm(self.norm, train)(shortcut), 0.1))
    x = x.mean((1, 2))
    return features_or_logits(self, x, return_features, weight_init="torch")


class Bottleneck(nn.Module):
  """ResNet-50 block as torchvision's (v1.5): 1x1 -> 3x3 (stride here) -> 1x1 (x4), BN after
  each, projection shortcut when the shape changes."""
  filters: int
  strides: int
  norm: str
  weight_init: str

  @nn.compact
  def __call__(self, x, train: bool):
    conv = lambda f, k, s, p: Conv(f, k, s, padding=p, use_bias=False, weight_init=self.weight_init)
    y = nn.relu(make_norm(self.norm, train)(conv(self.filters, 1, 1, 0)(x)))
    y = nn.relu(make_norm(self.norm, train)(conv(self.filters, 3, self.strides, 1)(y)))
    y = make_norm(self.norm, train)(conv(4 * self.filters, 1, 1, 0)(y))
    if self.strides != 1 or x.shape[-1] != 4 * self.filters:
      x = make_norm(self.norm, train)(conv(4 * self.filters, 1, self.strides, 0)(x))
    return nn.relu(x + y)


class ResNet18(nn.Module):
  """ResNet-18 (He et al. 2016); `depth=50` makes it ResNet-50 (bottleneck blocks 3-4-6-3,
  model name `resnet50`). `stem='cifar'`: 3x3 stride-1 stem, no max-pool (32x32 inputs);
  `stem='imagenet'`: 7x7 stride-2 stem and 3x3 max-pool (224x224 inputs)."""
  num_classes: int
  depth: int = 18
  width: int = 64
  stem_width: int = 0  # 0: `width`; IteRand's CIFAR ResNets keep a 64-channel stem at any width
  stem: str = "cifar"
  norm: str = "batch_norm"
  weight_init: str = "kaiming_normal_fan_out"
  mean: Tuple[float, ...] = ()
  std: Tuple[float, ...] = ()

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    x = _normalise(x, self.mean, self.std)
    stem_width = self.stem_width or self.width
    if self.stem == "imagenet":
      x = Conv(stem_width, 7, 2, padding=3, use_bias=False, weight_init=self.weight_init)(x)
      x = nn.relu(make_norm(self.norm, train)(x))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    else:
      x = Conv(stem_width, 3, 1, padding=1, use_bias=False, weight_init=self.weight_init)(x)
      x = nn.relu(make_norm(self.norm, train)(x))
    if self.depth not in (18, 50):
      raise ValueError(f"ResNet depth must be 18 or 50, got {self.depth}")
    block, stages = (BasicBlock, (2, 2, 2, 2)) if self.depth == 18 else (Bottleneck, (3, 4, 6, 3))
    for stage, blocks in enumerate(stages):
      for b in range(blocks):
        strides = 2 if stage > 0 and b == 0 else 1
        x = block(self.width * 2**stage, strides, self.norm, self.weight_init)(x, train)
    x = x.mean((1, 2))
    return features_or_logits(self, x, return_features, weight_init="torch")


class ResNet50(ResNet18):
  depth: int = 50


class WideBlock(nn.Module):
  """Pre-activation wide basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3, 1x1 projection
  (of the activated input) when the shape changes."""
  filters: int
  strides: int
  norm: str
  weight_init: str

  @nn.compact
  def __call__(self, x, train: bool):
    activated = nn.relu(make_norm(self.norm, train)(x))
    y = Conv(self.filters, 3, self.strides, padding=1, use_bias=False,
             weight_init=self.weight_init)(activated)
    y = nn.relu(make_norm(self.norm, train)(y))
    y = Conv(self.filters, 3, 1, padding=1, use_bias=False, weight_init=self.weight_init)(y)
    if self.strides != 1 or x.shape[-1] != self.filters:
      x = Conv(self.filters, 1, self.strides, padding=0, use_bias=False,
               weight_init=self.weight_init)(activated)
    return x + y


class WideResNet(nn.Module):
  """WRN-depth-k (Zagoruyko & Komodakis 2016, arXiv 1605.07146) for 32x32 inputs: a 16-
  channel 3x3 stem, three stages of (depth - 4) / 6 pre-activation blocks of 16k, 32k, 64k
  channels (strides 1, 2, 2), BN-ReLU, global mean. WRN-34-10 and WRN-28-10 are the
  adversarial-robustness standards."""
  num_classes: int
  depth: int = 28
  widen: int = 10
  norm: str = "batch_norm"
  weight_init: str = "kaiming_normal_fan_out"
  mean: Tuple[float, ...] = ()
  std: Tuple[float, ...] = ()

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    if (self.depth - 4) % 6:
      raise ValueError(f"WideResNet depth must be 6n + 4 (e.g. 28, 34), got {self.depth}")
    x = _normalise(x, self.mean, self.std)
    x = Conv(16, 3, 1, padding=1, use_bias=False, weight_init=self.weight_init)(x)
    for stage in range(3):
      for b in range((self.depth - 4) // 6):
        strides = 2 if stage > 0 and b == 0 else 1
        x = WideBlock(16 * self.widen * 2**stage, strides, self.norm, self.weight_init)(x, train)
    x = nn.relu(make_norm(self.norm, train)(x)).mean((1, 2))
    return features_or_logits(self, x, return_features, weight_init="torch")


class ConvNet(nn.Module):
  """A small CNN: per entry of `channels`, [3x3 conv pad 1 -> norm -> ReLU -> 2x2 max-pool]
  (the pool skipped once the map is 1 pixel), then the global average as features
  (d = channels[-1]) and a linear head. Default: the 2-conv CNN (d = 64) of the MGR
  small-scale reproduction (docs/specs/generative_and_finetuning.md §2(g))."""
  num_classes: int
  channels: Sequence[int] = (32, 64)
  norm: str = "none"
  weight_init: str = "flax"
  mean: Tuple[float, ...] = ()
  std: Tuple[float, ...] = ()

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    x = _normalise(x, self.mean, self.std)
    for channels in self.channels:
      x = Conv(channels, 3, padding=1, weight_init=self.weight_init)(x)
      x = nn.relu(make_norm(self.norm, train)(x))
      if min(x.shape[1:3]) >= 2:
        x = max_pool_2x2(x)
    return features_or_logits(self, x.mean((1, 2)), return_features,
                              weight_init=self.weight_init)
