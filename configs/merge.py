"""Merging presets: endpoints on two datasets, then weight matching, activation matching or
the STE permutation search (jaxlab.methods.merge; robustness_tta_merging.md §5(g)).

  python -m jaxlab.main --config=configs/merge.py:digits_endpoint,seed=0 --workdir=runs/a
  python -m jaxlab.main --config=configs/merge.py:digits_endpoint,shift=rotate:90,seed=1 \
      --workdir=runs/b
  python -m jaxlab.main --config=configs/merge.py:digits,method=merge_ste,b_shift=rotate:90 \
      --config.inputs.model_a=runs/a --config.inputs.model_b=runs/b --workdir=runs/ste

  digits_endpoint  the §5(g) endpoint: MLP 64-128-128-128-10 on the embedded digits (shift:
                   "" | rotate:DEGREES | permute_pixels:SEED, the second dataset), SGD lr 0.1
                   momentum 0.9, batch 128, 100 epochs (1,123 steps of the 1,438 images).
  digits           the merge of two digits endpoints (method: merge_wm | merge_am |
                   merge_ste, or merge_many for three with inputs.model_c; b_shift: B's
                   shift, which must match B's run; data: full | coreset | condensed). STE on the full union: 100 epochs of batch 500 over the 2,876
                   images (575 steps), SGD lr 0.05 momentum 0.9, wd 1e-4, weight matching 100
                   sweeps per step warm-started; on a coreset (10 per class per dataset, 200
                   images, the whole set each step; or the two DC sets of
                   merge.condensed_a / _b): 5,000 epochs at lr 0.5, x0.1 at 50% and 75%
                   (§5(d)). Endpoint 1,123 steps = 100 epochs of 128 (floor). Every merge
                   reports the §6.1 rank-k truncation (k = 1, 2, ..., 64) of both lines.
  digits_condense  DC (jaxlab.merge.condense) of digits or a shifted digits set (shift, ipc 10
                   or 1): 300 iterations with DC's settings and MLP (128-128); reports fresh
                   MLPs trained on the set and on a random coreset of the same size. Its
                   workdirs are merge.condensed_a / _b of `digits,data=condensed`.
  width_endpoint   §6.2: bias-free MLP 64-(32w)x3-10 on digits, Adam lr 1e-3 with L2 weight
                   decay wd (3e-3 the paper's main setting, 1e-4 its ablation), batch 128,
                   200 epochs (2,246 steps).
  width            §6.2: two width_endpoint runs of one w merged with no permutation (the
                   naive line) and by weight matching (the merged line); softmax temperature
                   calibrated per lam on the training sets, LEWC / additivity / orthogonality
                   probes on 500 test images, effective ranks and subspace overlaps.
  glyphs_endpoint  a BatchNorm Conv-4 (pool variant, 32 filters) on 20 characters of the
                   embedded glyphs (classes range:0-19, or range:20-39 relabelled 0-19 for
                   B), 15 training and 5 test images per character (300 / 100), SGD lr 0.05
                   momentum 0.9 wd 5e-4, batch 64, 100 epochs (468 steps).
  glyphs           the merge of a range:0-19 endpoint with a range:20-39 one (merge.b_classes)
                   under one 20-way head, the paper's MNIST <-> Fashion-MNIST design; STE on
                   the 600-image union, batch 100, 600 steps; BatchNorm statistics: the
                   batch's at the STE midpoint, reset on D_merge along the curves.
  tiny_endpoint, tiny, tiny_condense
                   a few steps with a 32-unit MLP; for tests.
"""

import ml_collections

from jaxlab.config import base_config, presets


def merge_block(**overrides) -> ml_collections.ConfigDict:
  """The `merge` fields (jaxlab.methods.merge) with their defaults."""
  block = dict(b_name="", b_shift="", b_classes="", data="full", ipc=10, coreset_seed=0, test_split="test",
               condensed_a="", condensed_b="", perms_b="", perms_c="",
               points=25, wm_max_iter=300, ste_max_iter=100, am_examples=0,
               am_correlation=False, repair=True, repair_batches=20,
               calibrate_on="test", truncation_ranks="", lewc_examples=0)
  block.update(overrides)
  return ml_collections.ConfigDict(block)


def condense_block(**overrides) -> ml_collections.ConfigDict:
  """The `condense` fields (jaxlab.merge.condense, DC's settings for 10 images per class)."""
  block = dict(ipc=10, outer_loop=10, inner_loop=50, batch_real=256, lr_img=0.1,
               momentum_img=0.5, lr_net=0.01, clip=True, eval_models=5, eval_steps=300,
               eval_lr=0.01, coreset_seed=0, test_split="test")
  block.update(overrides)
  return ml_collections.ConfigDict(block)


def _mlp(c, hidden):
  c.model = ml_collections.ConfigDict(dict(name="mlp", hidden=hidden, norm="none",
                                           weight_init="flax"))
  return c


def digits_endpoint(shift="", seed=0, epochs=100):
  c = _mlp(base_config(), (128, 128, 128))
  c.seed = seed
  c.data.name = "digits"
  c.data.shift = shift
  c.optimizer.update(dict(name="sgd", learning_rate=0.1, momentum=0.9, schedule="constant"))
  steps = epochs * 1438 // 128
  c.train.update(dict(steps=steps, batch_size=128, log_every=250, eval_every=0,
                      checkpoint_every=steps))
  return c


def digits(method="merge_ste", b_shift="rotate:90", data="full", seed=0):
  c = _mlp(base_config(), (128, 128, 128))
  c.method = method
  c.seed = seed
  c.data.name = "digits"
  c.data.eval_splits = "test_a,test_b"
  c.merge = merge_block(b_shift=b_shift, data=data, truncation_ranks="1,2,4,8,16,32,64")
  c.inputs = ml_collections.ConfigDict(dict(model_a="", model_b="", model_c=""))
  c.optimizer.update(dict(name="sgd", learning_rate=0.05, momentum=0.9, weight_decay=1e-4,
                          schedule="constant"))
  c.train.update(dict(steps=100 * 2876 // 500, batch_size=500, log_every=50, eval_every=0,
                      checkpoint_every=0))
  if data in ("coreset", "condensed"):
    epochs = 5000  # the 200-image union, one batch of all of it per step
    c.optimizer.update(dict(learning_rate=0.5, schedule="step",
                            step_boundaries=(epochs // 2, 3 * epochs // 4), step_factor=0.1))
    c.train.update(dict(steps=epochs, batch_size=200, log_every=500))
  if method != "merge_ste":
    c.train.steps = 0
  return c


def digits_condense(shift="", ipc=10, seed=0, iterations=300):
  c = _mlp(base_config(), (128, 128))  # DC's MLP
  c.method = "condense_dc"
  c.seed = seed
  c.data.name = "digits"
  c.data.shift = shift
  c.data.eval_splits = ""
  c.condense = condense_block(ipc=ipc, outer_loop=10 if ipc >= 10 else 1,
                              inner_loop=50 if ipc >= 10 else 1)
  c.train.update(dict(steps=iterations, log_every=50, eval_every=0,
                      checkpoint_every=iterations))
  return c


def width_endpoint(w=1, wd=3e-3, seed=0, epochs=200):
  c = digits_endpoint("", seed, epochs)
  c.model.update(dict(hidden=(32 * w,) * 3, use_bias=False))
  c.optimizer.update(dict(name="adam", learning_rate=1e-3, weight_decay=wd,
                          schedule="constant"))
  return c


def width(w=1, method="merge_wm", seed=0):
  c = digits(method, "", "full", seed)
  c.model.update(dict(hidden=(32 * w,) * 3, use_bias=False))
  c.merge.update(dict(lewc_examples=500, truncation_ranks=""))
  return c


def _glyphs(c, classes):
  c.data.update(dict(name="glyphs", classes=classes, per_class=15, rest_as_test=True))
  c.model = ml_collections.ConfigDict(dict(name="conv4", filters=32, variant="pool",
                                           norm="batch_stats"))
  return c


def glyphs_endpoint(classes="range:0-19", seed=0, epochs=100):
  c = _glyphs(base_config(), classes)
  c.seed = seed
  c.optimizer.update(dict(name="sgd", learning_rate=0.05, momentum=0.9, weight_decay=5e-4,
                          schedule="constant"))
  steps = epochs * 300 // 64
  c.train.update(dict(steps=steps, batch_size=64, log_every=100, eval_every=0,
                      checkpoint_every=steps))
  return c


def glyphs(method="merge_ste", seed=0):
  c = digits(method, "", "full", seed)
  c = _glyphs(c, "range:0-19")
  c.merge.update(dict(b_classes="range:20-39", truncation_ranks="1,2,4,8,16,32"))
  if method == "merge_ste":
    c.train.update(dict(steps=100 * 600 // 100, batch_size=100))
  return c


def tiny_endpoint(shift="", seed=0):
  c = digits_endpoint(shift, seed)
  c.model.hidden = (32, 32)
  c.train.update(dict(steps=60, log_every=20, checkpoint_every=60))
  return c


def tiny(method="merge_ste", b_shift="rotate:90", data="full"):
  c = digits(method, b_shift, data)
  c.model.hidden = (32, 32)
  c.merge.update(dict(points=5, repair_batches=2, wm_max_iter=20, ste_max_iter=10,
                      truncation_ranks="2,8"))
  if method == "merge_ste":
    c.train.update(dict(steps=80, log_every=20))
  return c


def tiny_condense(shift=""):
  c = digits_condense(shift, ipc=2, iterations=4)
  c.model.hidden = (16,)
  c.condense.update(dict(outer_loop=3, inner_loop=2, batch_real=16, eval_models=2,
                         eval_steps=20))
  return c


DEFAULT = "digits"
ROWS = [
    ("digits_endpoint", "MLP 64-128-128-128-10 on digits, rotated or pixel-permuted digits: "
     "the endpoints of the §5(g) merges"),
    ("digits", "merging two digits endpoints: weight matching, activation matching or the "
     "STE permutation search on the union or a random coreset; curves over 25 lambda"),
    ("digits_condense", "dataset condensation by gradient matching (DC) of digits or a shifted "
     "digits set, 10 (or 1) images per class, with its fresh-model and random-coreset "
     "accuracies"),
    ("width_endpoint", "bias-free MLP 64-32w-32w-32w-10 on digits (w: width multiplier, wd: "
     "weight decay), Adam 1e-3, 200 epochs: the endpoints of the §6.2 width sweep"),
    ("width", "merging two width_endpoint runs with no permutation (the naive line) and with "
     "weight matching: temperature-calibrated loss barrier and the LEWC probes"),
    ("glyphs_endpoint", "BatchNorm Conv-4 (32 filters) on 20 glyphs characters (0-19 or "
     "20-39 relabelled), 15 training images each: the endpoints of the glyphs merges"),
    ("glyphs", "merging a characters 0-19 endpoint with a 20-39 one under one head (the "
     "MNIST <-> Fashion-MNIST design): WM, AM or STE with BatchNorm statistics reset"),
    ("tiny_endpoint, tiny, tiny_condense", "a few steps of 32-unit MLPs; for tests and smoke runs"),
]

PRESETS = {"digits_endpoint": digits_endpoint, "digits": digits,
           "digits_condense": digits_condense, "width_endpoint": width_endpoint,
           "width": width, "glyphs_endpoint": glyphs_endpoint,
           "glyphs": glyphs, "tiny_endpoint": tiny_endpoint, "tiny": tiny,
           "tiny_condense": tiny_condense}


def get_config(arg=None):
  return presets(arg, PRESETS, DEFAULT, "configs/merge.py")
