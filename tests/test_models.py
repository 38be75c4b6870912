"""Models: initialiser statistics, the CPU conv path against XLA's convolution, BatchNorm, shapes."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxlab import models
from jaxlab.models import layers


@pytest.mark.parametrize("name,check", [
    ("torch", lambda w, fan_in, fan_out: (np.abs(w).max() <= 1 / np.sqrt(fan_in))
     and abs(w.std() - 1 / np.sqrt(3 * fan_in)) < 0.05 / np.sqrt(fan_in)),
    ("kaiming_normal", lambda w, fan_in, fan_out: abs(w.std() - np.sqrt(2 / fan_in))
     < 0.03 * np.sqrt(2 / fan_in)),
    ("kaiming_normal_fan_out", lambda w, fan_in, fan_out: abs(w.std() - np.sqrt(2 / fan_out))
     < 0.03 * np.sqrt(2 / fan_out)),
    ("kaiming_uniform", lambda w, fan_in, fan_out: np.abs(w).max() <= np.sqrt(6 / fan_in)
     and abs(w.std() - np.sqrt(2 / fan_in)) < 0.03 * np.sqrt(2 / fan_in)),
    ("signed_constant", lambda w, fan_in, fan_out: np.allclose(np.abs(w), np.sqrt(2 / fan_in))),
])
def test_initialisers_follow_pytorch_fan_conventions(name, check):
  shape = (3, 3, 32, 64)  # HWIO: fan_in = 3*3*32, fan_out = 3*3*64
  w = np.asarray(layers.kernel_init(name)(jax.random.key(0), shape))
  assert check(w, 3 * 3 * 32, 3 * 3 * 64)


def test_torch_bias_init_uses_fan_in():
  params = layers.Dense(7, weight_init="torch").init(jax.random.key(0), jnp.ones((1, 400)))
  bias = np.asarray(params["params"]["bias"])
  assert np.abs(bias).max() <= 1 / 20 and np.abs(bias).max() > 0


@pytest.mark.parametrize("strides,padding,k", [(1, "SAME", 3), (2, "SAME", 3), (1, 1, 3),
                                               (2, 3, 7), (2, 0, 1), (1, "VALID", 3)])
def test_im2col_conv_matches_xla_conv_values_and_gradients(monkeypatch, strides, padding, k):
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
  module = layers.Conv(5, k, strides, padding)
  params = module.init(jax.random.key(1), x)
  def run(impl):
    monkeypatch.setenv("JAXLAB_CONV_IMPL", impl)  # read at trace time
    f = lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))
    return jax.jit(module.apply)(params, x), jax.jit(jax.grad(f, argnums=(0, 1)))(params, x)
  (y1, g1), (y2, g2) = run("xla"), run("im2col")
  np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_batch_stat_norm_uses_the_current_batch_only():
  x = jax.random.normal(jax.random.key(0), (6, 4, 4, 3)) * 3 + 2
  module = layers.BatchStatNorm()
  params = module.init(jax.random.key(0), x)
  y = np.asarray(module.apply(params, x))
  xn = np.asarray(x)
  expected = (xn - xn.mean((0, 1, 2))) / np.sqrt(xn.var((0, 1, 2)) + 1e-5)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
  assert set(params) == {"params"}  # no running statistics exist


@pytest.mark.parametrize("name,kwargs,shape,features", [
    ("mlp", dict(hidden=(16, 8)), (4, 8, 8, 1), 8),
    ("conv4", dict(variant="strided", filters=8), (4, 28, 28, 1), 8),
    ("conv4", dict(variant="pool", filters=8), (4, 84, 84, 3), 8 * 5 * 5),
    ("resnet18", dict(width=4), (4, 32, 32, 3), 32),
])
def test_model_shapes(name, kwargs, shape, features):
  import ml_collections
  model = models.build(ml_collections.ConfigDict(dict(name=name, **kwargs)), num_classes=5)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)  # shapes only: no compile
  assert jax.eval_shape(model.apply, variables, x).shape == (4, 5)
  assert jax.eval_shape(lambda v, x: model.apply(v, x, return_features=True),
                        variables, x).shape == (4, features)
  assert "head" in variables["params"]


@pytest.mark.parametrize("name,fields,shape,classes,count", [
    ("resnet18", dict(stem="imagenet"), (224, 224, 3), 1000, 11_689_512),  # torchvision
    ("resnet50", dict(stem="imagenet"), (224, 224, 3), 1000, 25_557_032),  # torchvision
    ("wide_resnet", dict(depth=28, widen=10), (32, 32, 3), 10, 36_479_194),  # WRN paper
    ("wide_resnet", dict(depth=34, widen=10), (32, 32, 3), 10, 46_160_474),
])
def test_parameter_counts_match_the_published_ones(name, fields, shape, classes, count):
  model = models.build(ml_collections.ConfigDict(dict(name=name, **fields)), classes)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + shape)))
  assert sum(p.size for p in jax.tree.leaves(shapes["params"])) == count
