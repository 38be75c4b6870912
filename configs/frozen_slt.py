"""Strong lottery tickets in partially frozen networks (jaxlab.methods.supermask `frozen_slt`;
Otsuka, Chijiwa et al., arXiv 2402.14029; docs/specs/meta_learning_and_sparse.md §4).

  python -m jaxlab.main --config=configs/frozen_slt.py:digits_mlp,sparsity=0.7,freeze=0.5 \\
      --workdir=runs/frozen_slt

Preset arguments: sparsity (s, the ticket's global fraction pruned), freeze (f, the fraction
of weights frozen), split (how f divides: all_prune p = f, the randomly pruned source of
Gadhikar et al.; balanced p = r = f / 2; all_lock r = f), dist (uniform | erk, the layerwise
ratios), width (factor of the hidden widths; a narrower dense-source SLT has fewer bits).
  digits_mlp            §4(g): MLP 64 -> 512w -> 512w -> 10 on the embedded digits, no bias,
                        non-affine BatchNorm, kaiming_uniform weights, kaiming_normal scores,
                        global edge-popup; SGD lr 0.1 momentum 0.9 wd 1e-4, cosine, batch 128,
                        30 epochs (337 steps). freeze=0: the dense-source SLT.
  glyphs_color32_conv6  Conv-6 on glyphs/color32 (the official CIFAR-10 Conv6 recipe: SGD 0.1,
                        cosine, s = 0.7), 30 epochs.
  tiny                  a few steps of a 32-unit MLP; for tests.
"""

import ml_collections

from jaxlab.config import base_config, presets
from jaxlab.errors import UserError

SPLITS = ("all_prune", "balanced", "all_lock")


def ratios(freeze: float, split: str):
  """(prune p, lock r) of a freezing ratio f under a split."""
  if split not in SPLITS:
    raise UserError(f"split={split!r} is not a freezing split; valid: {', '.join(SPLITS)}")
  return {"all_prune": (freeze, 0.0), "balanced": (freeze / 2, freeze / 2),
          "all_lock": (0.0, freeze)}[split]


def _frozen(c, sparsity, freeze, split, dist, steps, lr):
  prune, lock = ratios(freeze, split)
  c.method = "frozen_slt"
  c.supermask = ml_collections.ConfigDict(dict(
      policy="global_abs", sparsity=sparsity, include="kernel", exclude="", rerand_period=0,
      rerand_rate=0.0, score_init="", freeze_prune=prune, freeze_lock=lock, freeze_dist=dist))
  c.optimizer.update(dict(name="sgd", learning_rate=lr, momentum=0.9, weight_decay=1e-4,
                          schedule="cosine"))
  c.train.update(dict(steps=steps, batch_size=128))
  return c


def digits_mlp(sparsity=0.5, freeze=0.0, split="balanced", dist="uniform", width=1.0, seed=0):
  steps = 30 * 1438 // 128
  c = _frozen(base_config(), sparsity, freeze, split, dist, steps, lr=0.1)
  c.seed = seed
  c.model = ml_collections.ConfigDict(dict(
      name="mlp", hidden=(int(512 * width),) * 2, norm="batch_norm_nonaffine", use_bias=False,
      weight_init="kaiming_uniform"))
  c.train.update(dict(log_every=100, eval_every=0, checkpoint_every=steps))
  return c


def glyphs_color32_conv6(sparsity=0.7, freeze=0.5, split="balanced", dist="erk", width=1.0,
                         seed=0):
  steps = 30 * 295
  c = _frozen(base_config(), sparsity, freeze, split, dist, steps, lr=0.1)
  c.seed = seed
  c.data.name = "glyphs/color32"
  c.model = ml_collections.ConfigDict(dict(name="conv6", width=width, norm="none",
                                           weight_init="kaiming_uniform",
                                           mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
  c.aug.update(dict(crop_padding=4, flip=False))
  c.train.update(dict(log_every=100, eval_every=steps // 5, checkpoint_every=steps // 5))
  return c


def tiny(sparsity=0.5, freeze=0.5, split="balanced", dist="uniform"):
  c = digits_mlp(sparsity, freeze, split, dist)
  c.model.hidden = (32, 32)
  c.train.update(dict(steps=30, log_every=10, checkpoint_every=30))
  return c


DEFAULT = "digits_mlp"
ROWS = [
    ("digits_mlp", "frozen-network SLT (edge-popup over the free weights of a partially "
     "pruned / locked random MLP), embedded digits; freeze, split, sparsity, width"),
    ("glyphs_color32_conv6", "the same with Conv-6 on embedded `glyphs/color32`"),
    ("tiny", "a few steps of a 32-unit MLP; for tests"),
]

PRESETS = {"digits_mlp": digits_mlp, "glyphs_color32_conv6": glyphs_color32_conv6,
           "tiny": tiny}


def get_config(arg=None):
  return presets(arg, PRESETS, DEFAULT, "configs/frozen_slt.py")
