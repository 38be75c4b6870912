"""Edge-popup / IteRand presets: supermasks over random weights, and weight training.

docs/specs/meta_learning_and_sparse.md §3, with the
weight-trained reference (`method=erm`: plain SGD on the same network).

  python -m jaxlab.main --config=configs/supermask.py:digits_mlp,method=iterand,width=0.5 \\
      --workdir=runs/iterand_digits

Preset arguments: method (edge_popup | iterand | erm), width (factor), sparsity
(fraction pruned per layer, p), rerand_rate (r, IteRand), init (kaiming_uniform |
signed_constant).
  digits_mlp         §3(g): MLP 64 -> 256w x 3 -> 10, no bias, non-affine BN with running
                     statistics, p = 0.5, SGD 0.1 (momentum 0.9, wd 1e-4, cosine), 50 epochs of
                     the embedded digits (batch 128), K_per = 4 steps (~1/3 epoch), r = 0.1.
  glyphs_color32_conv6  Conv-6 on glyphs/color32 (all 2,359 characters), p = 0.5.
  cifar10_conv6      Conv-6 on TFDS cifar10: lr 0.3 (SGD ref. 0.01), wd 1e-4, p = 0.5, 100
                     epochs, K_per 300 (IteRand Fig. 2); crop + flip (the references add
                     RandomResizedCrop, not reproduced).
  cifar10_resnet18   ResNet-18 (stem fixed at 64 channels), lr 0.1, wd 5e-4, p = 0.6.
edge_popup ranks |score| (topk_abs); iterand ranks raw scores (topk_raw), as the
references do. `supermask.score_init` "" draws the scores as each reference does (edge_popup:
kaiming_uniform with a = sqrt(5), i.e. U(+-1/sqrt(fan_in)), the `torch` initialiser; iterand:
U(+-sqrt(6/fan_in)), `kaiming_uniform`); any initialiser name overrides it.
"""

import ml_collections

from jaxlab.config import base_config, presets


def _common(method, sparsity, rerand_rate, steps, lr, weight_decay, rerand_period):
  c = base_config()
  c.method = method
  c.supermask = ml_collections.ConfigDict(dict(
      policy="topk_raw" if method == "iterand" else "topk_abs", sparsity=sparsity,
      include="kernel", exclude="", rerand_period=rerand_period if method == "iterand" else 0,
      rerand_rate=rerand_rate if method == "iterand" else 0.0, score_init=""))
  c.optimizer.update(dict(name="sgd", learning_rate=lr, momentum=0.9,
                          weight_decay=weight_decay, schedule="cosine"))
  c.train.update(dict(steps=steps, batch_size=128))
  return c


def digits_mlp(method="edge_popup", width=1.0, sparsity=0.5, rerand_rate=0.1,
               init="kaiming_uniform"):
  c = _common(method, sparsity, rerand_rate, steps=560, lr=0.1, weight_decay=1e-4,
              rerand_period=4)
  c.model = ml_collections.ConfigDict(dict(
      name="mlp", hidden=tuple(int(256 * width) for _ in range(3)),
      norm="batch_norm_nonaffine", use_bias=False, weight_init=init))
  c.train.update(dict(log_every=56, eval_every=0, checkpoint_every=280))
  return c


def _conv6(method, width, sparsity, rerand_rate, init, steps):
  c = _common(method, sparsity, rerand_rate, steps=steps,
              lr=0.01 if method == "erm" else 0.3, weight_decay=1e-4, rerand_period=300)
  c.model = ml_collections.ConfigDict(dict(name="conv6", width=width, norm="none",
                                           weight_init=init))
  c.aug.update(dict(crop_padding=4, flip=True))
  c.train.update(dict(log_every=100, eval_every=steps // 10, checkpoint_every=steps // 10))
  return c


def glyphs_color32_conv6(method="edge_popup", width=1.0, sparsity=0.5, rerand_rate=0.1,
                         init="kaiming_uniform"):
  c = _conv6(method, width, sparsity, rerand_rate, init, steps=30 * 295)
  c.data.name = "glyphs/color32"
  c.aug.flip = False  # mirrored characters are other characters
  c.model.mean, c.model.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  return c


def cifar10_conv6(method="edge_popup", width=1.0, sparsity=0.5, rerand_rate=0.1,
                  init="kaiming_uniform"):
  c = _conv6(method, width, sparsity, rerand_rate, init, steps=100 * 391)
  c.data.name = "cifar10"
  c.model.mean, c.model.std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
  c.train.eval_batch_size = 1000
  return c


def cifar10_resnet18(method="edge_popup", width=1.0, sparsity=0.6, rerand_rate=0.1,
                     init="kaiming_uniform"):
  steps = 100 * 391
  c = _common(method, sparsity, rerand_rate, steps=steps, lr=0.1, weight_decay=5e-4,
              rerand_period=300)
  c.data.name = "cifar10"
  c.model = ml_collections.ConfigDict(dict(
      name="resnet18", width=int(64 * width), stem_width=64,
      norm="batch_norm" if method == "erm" else "batch_norm_nonaffine", weight_init=init,
      mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)))
  c.aug.update(dict(crop_padding=4, flip=True))
  c.train.update(dict(eval_batch_size=1000, log_every=100, eval_every=steps // 10,
                      checkpoint_every=steps // 10))
  return c


DEFAULT = 'digits_mlp'
# the presets in rows of `jaxlab presets` and the README's table (jaxlab.catalog; a test checks
# that every preset is in one row and that the README shows these rows)
ROWS = [
    ('digits_mlp', 'edge-popup / IteRand / SGD on a bias-free MLP, embedded digits'),
    ('glyphs_color32_conv6', 'Conv-6 on embedded `glyphs/color32`'),
    ('cifar10_conv6, cifar10_resnet18', 'TFDS `cifar10`'),
]

PRESETS = {"digits_mlp": digits_mlp, "glyphs_color32_conv6": glyphs_color32_conv6,
           "cifar10_conv6": cifar10_conv6, "cifar10_resnet18": cifar10_resnet18}


def get_config(arg=None):
  return presets(arg, PRESETS, DEFAULT, "configs/supermask.py")
