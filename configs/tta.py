"""Test-time adaptation presets: source, BN-adapt, Tent, CAFe on corrupted test streams.

  python -m jaxlab.main --config=configs/tta.py:digits_source --workdir=runs/tta_source
  python -m jaxlab.main --config=configs/tta.py:digits,method=cafe,protocol=mixed \
      --config.init_from=runs/tta_source --workdir=runs/tta_cafe_mixed

A run adapts the model of `init_from` (a source run's workdir) on the test split streamed in
order (jaxlab.data.adaptation; `train.steps=-1`: the stream's length) and writes the online
error per corruption x severity (results.json, tta_errors.png), the offline accuracy on the
last reset span (`stream/accuracy`) and on the clean test split (`test/accuracy`).
Preset arguments: method (source | bn_adapt | tent | cafe), protocol (single | continual |
mixed), batch (the stream's batch size; 1 is allowed), severities (one, e.g. 3; several with
--config.tta.severities=5,4,3,2,1), class_order (shuffled | runs: label shift).
  digits_source    the §4(g) source: CNN 32-64 with BatchNorm (d = 64 features) trained on the
                   clean embedded digits, Adam 1e-3, 1,500 steps of 128.
  digits           the §4(g) CPU setting: the 359 test digits under the six digits-scale
                   corruptions at severity 5, batch 32 < d = 64; Tent's optimiser (Adam 1e-3,
                   one step per batch); CAFe with 8 groups of at most 16 features, lambda 1.
  glyphs_color32_source, glyphs_color32
                   the CIFAR-10-C corruptions (the 10 reproduced on device) on glyphs/color32
                   (32 x 32 colour, 9,436 test images): a CNN 64-128-256 with BatchNorm
                   (d = 256) instead of configs/erm.py's ResNet-18, which CPU time forbids
                   here; batch 128, severity 5, CAFe 32 groups.
  cifar10          Tent's CIFAR-10-C protocol on TFDS cifar10's test split corrupted on device
                   (the 10 reproduced corruptions, severities 5 -> 1, reset per pair, batch
                   200, Adam 1e-3); the source is a configs/erm.py:cifar10 run (ResNet-18).
  cifar10_corrupted
                   the same protocol on the released CIFAR-10-C arrays, all 15 corruptions
                   (TFDS `cifar10_corrupted`, 95 configs, one per corruption x severity, which
                   the user prepares: `tfds build cifar10_corrupted/<name>_<severity>`).
  tiny             a few batches of digits; for tests.
"""

import ml_collections

from jaxlab.config import base_config, presets


def tta_block(**overrides) -> ml_collections.ConfigDict:
  """The `tta` fields (jaxlab.data.adaptation, jaxlab.methods.tta) with their defaults."""
  block = dict(
      corruption_set="digits", corruptions="", severities="5", protocol="mixed",
      class_order="shuffled", corruption_seed=0, test_split="test", prepared="", episodic=False,
      feature_gap=True,
      cafe_groups=8, cafe_max_group_size=0, cafe_divergence="sym_kl", cafe_weight=1.0,
      cafe_im=True, cafe_eps=1e-4, cafe_shrinkage=0.0, cafe_params="bn_affine")
  block.update(overrides)
  return ml_collections.ConfigDict(block)


def _source(c, channels, steps):
  c.model = ml_collections.ConfigDict(dict(name="cnn", channels=channels, norm="batch_norm",
                                           weight_init="flax"))
  c.optimizer.learning_rate = 1e-3
  c.train.update(dict(steps=steps, batch_size=128, log_every=250, eval_every=0,
                      checkpoint_every=steps))
  return c


def digits_source():
  c = _source(base_config(), (32, 64), 1500)
  c.data.name = "digits"
  return c


def glyphs_color32_source():
  c = _source(base_config(), (64, 128, 256), 3000)
  c.data.name = "glyphs/color32"
  c.model.mean, c.model.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  return c


def _adapt(c, method, protocol, batch, severities, class_order, **tta):
  c.method = method
  c.tta = tta_block(protocol=protocol, severities=str(severities), class_order=class_order,
                    **tta)
  c.data.eval_splits = "stream,test"
  c.optimizer.update(dict(name="adam", learning_rate=1e-3, schedule="constant"))
  c.train.update(dict(steps=-1, batch_size=batch, eval_batch_size=batch, log_every=1,
                      eval_every=0, checkpoint_every=0))
  return c


def digits(method="tent", protocol="mixed", batch=32, severities="5", class_order="shuffled"):
  c = _adapt(digits_source(), method, protocol, batch, severities, class_order,
             corruption_set="digits", cafe_groups=8, cafe_max_group_size=16)
  return c


def glyphs_color32(method="tent", protocol="mixed", batch=128, severities="5",
                   class_order="shuffled"):
  c = _adapt(glyphs_color32_source(), method, protocol, batch, severities, class_order,
             corruption_set="cifar", cafe_groups=32)
  c.train.log_every = 10
  return c


def cifar10(method="tent", protocol="single", batch=200, severities="5,4,3,2,1",
            class_order="shuffled"):
  c = _adapt(base_config(), method, protocol, batch, severities, class_order,
             corruption_set="cifar", cafe_groups=32)
  c.data.name = "cifar10"
  c.model = ml_collections.ConfigDict(dict(
      name="resnet18", width=64, stem="cifar", norm="batch_norm",
      weight_init="kaiming_normal_fan_out", mean=(0.4914, 0.4822, 0.4465),
      std=(0.2470, 0.2435, 0.2616)))
  c.train.log_every = 10
  return c


CIFAR10_C = ("gaussian_noise,shot_noise,impulse_noise,defocus_blur,frosted_glass_blur,"
             "motion_blur,zoom_blur,snow,frost,fog,brightness,contrast,elastic,pixelate,"
             "jpeg_compression")  # the 15 of the benchmark, in TFDS's names


def cifar10_corrupted(method="tent", protocol="single", batch=200, severities="5,4,3,2,1",
                      class_order="shuffled"):
  c = cifar10(method, protocol, batch, severities, class_order)
  c.tta.prepared = "cifar10_corrupted"
  c.tta.corruptions = CIFAR10_C
  return c


def tiny(method="tent", protocol="single", batch=32, severities="5", class_order="shuffled"):
  c = digits(method, protocol, batch, severities, class_order)
  c.tta.corruptions = "gaussian_noise,contrast"
  c.model.channels = (8, 16)
  c.tta.cafe_groups, c.tta.cafe_max_group_size = 2, 8
  return c


def tiny_source():
  c = digits_source()
  c.model.channels = (8, 16)
  c.train.update(dict(steps=60, log_every=20, checkpoint_every=60))
  return c


DEFAULT = "digits"
ROWS = [
    ("digits_source, digits",
     "CNN with BatchNorm on clean digits, adapted on the six §4(g) corruptions (source / "
     "BN-adapt / Tent / CAFe; single, continual or mixed stream, label shift, any batch)"),
    ("glyphs_color32_source, glyphs_color32",
     "CNN on glyphs/color32, adapted under the 10 CIFAR-10-C corruptions reproduced on device"),
    ("cifar10", "Tent's CIFAR-10-C protocol (severities 5 -> 1, reset per pair, batch 200) on "
     "TFDS cifar10 corrupted on device; source from configs/erm.py:cifar10"),
    ("cifar10_corrupted", "the same on the released CIFAR-10-C arrays, all 15 corruptions "
     "(TFDS `cifar10_corrupted`, prepared by the user)"),
    ("tiny_source, tiny", "a few steps on digits; for tests and smoke runs"),
]

PRESETS = {"digits_source": digits_source, "digits": digits,
           "glyphs_color32_source": glyphs_color32_source, "glyphs_color32": glyphs_color32,
           "cifar10": cifar10, "cifar10_corrupted": cifar10_corrupted,
           "tiny_source": tiny_source, "tiny": tiny}


def get_config(arg=None):
  return presets(arg, PRESETS, DEFAULT, "configs/tta.py")
