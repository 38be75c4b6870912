"""Flax linen models, built by name from `config.model`.

`build(model_config, num_classes)` takes `model_config.name` (one of `MODELS`)
and passes every other field of `model_config` to the module's constructor.
"""

from typing import Dict, Type

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxlab.errors import UserError, unknown
from jaxlab.models.layers import INITS, NORMS, BatchStatNorm, Conv, Dense, kernel_init
from jaxlab.models.nets import (MLP, Conv4, Conv6, ConvNet, ResNet12, ResNet18, ResNet50,
                                WideResNet)

MODELS: Dict[str, Type[nn.Module]] = {"mlp": MLP, "cnn": ConvNet, "conv4": Conv4, "conv6": Conv6,
                                      "resnet12": ResNet12, "resnet18": ResNet18,
                                      "resnet50": ResNet50,
                                      "wide_resnet": WideResNet}


def build(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  kwargs = dict(model_config)
  name = kwargs.pop("name")
  if name not in MODELS:
    raise unknown("model", name, MODELS)
  if kwargs.get("weight_init", "flax") not in INITS:
    raise unknown("initialiser (model.weight_init)", kwargs["weight_init"], INITS)
  if kwargs.get("norm", "none") not in NORMS:
    raise unknown("norm (model.norm)", kwargs["norm"], NORMS)
  for key in ("hidden", "channels", "mean", "std"):
    if key in kwargs:
      kwargs[key] = tuple(kwargs[key])
  cls = MODELS[name]
  fields = set(cls.__dataclass_fields__) - {"parent", "name"}
  extra = set(kwargs) - fields
  if extra:
    raise UserError(f"model {name!r} takes no field(s) {', '.join(sorted(extra))}; "
                    f"valid fields: {', '.join(sorted(fields - {'num_classes'}))}")
  return cls(num_classes=num_classes, **kwargs)


__all__ = ["MODELS", "build", "eval_features", "feature_dim", "logits_and_features", "logits_fn", "MLP", "ConvNet", "Conv4", "Conv6",
           "ResNet12", "ResNet18", "ResNet50", "WideResNet", "Dense", "Conv", "BatchStatNorm",
           "kernel_init", "INITS", "NORMS"]


def logits_and_features(model: nn.Module, variables, x, *, train: bool, mutable=(), rngs=None):
  """(logits, penultimate features, updated `mutable` collections) from one forward pass.

  The features are what `return_features=True` returns (sown by every backbone as
  `intermediates/features`); one pass means BatchNorm statistics are updated once.
  """
  out, state = model.apply(variables, x, train=train, mutable=["intermediates", *mutable],
                           rngs=rngs or {})
  state = dict(state)
  features = state.pop("intermediates")["features"][0]
  return out, features, state


def logits_fn(model: nn.Module, variables, *, train: bool = False):
  """The model as a function of its input only, e.g. for an attack. With `train=True` it
  normalises with batch statistics but never keeps the updated running ones."""
  if not train:
    return lambda x: model.apply(variables, x, train=False)
  mutable = [k for k in variables if k != "params"]
  return lambda x: model.apply(variables, x, train=True, mutable=mutable)[0]


def feature_dim(model: nn.Module, input_shape) -> int:
  """d of the penultimate representation (`return_features=True`), traced, not run."""
  features = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((1,) + tuple(input_shape)), return_features=True)[0])
  return features.shape[-1]


def eval_features(model: nn.Module, variables, images: jax.Array, chunk: int = 256) -> jax.Array:
  """Eval-mode penultimate features [n, d] of `images` (uint8 scaled to [0, 1], float as is),
  `chunk` images at a time under lax.map (padded to whole chunks)."""
  import math  # pylint: disable=g-import-not-at-top
  n = images.shape[0]
  padded = chunk * math.ceil(n / chunk)
  images = jnp.concatenate([images, jnp.zeros((padded - n,) + images.shape[1:], images.dtype)])
  scale = (lambda x: x.astype(jnp.float32) / 255.0) if jnp.issubdtype(
      images.dtype, jnp.integer) else (lambda x: x.astype(jnp.float32))
  features = jax.lax.map(
      lambda x: model.apply(variables, scale(x), train=False, return_features=True),
      images.reshape((-1, chunk) + images.shape[1:]))
  return features.reshape(padded, -1)[:n]
