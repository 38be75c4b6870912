"""Generative regularisation presets: Base, GDA, PCR and MGR with a frozen generator.

Base (`erm`), GDA, PCR and MGR with a frozen class-conditional generator (docs/specs/generative_and_finetuning.md §2).

  python -m jaxlab.main --config=configs/cgan.py:digits,steps=300 --workdir=runs/cgan_weak
  python -m jaxlab.main --config=configs/mgr.py:digits,method=mgr,fraction=0.05 \
      --config.inputs.generator=runs/cgan_weak --workdir=runs/mgr_f05

Preset arguments: method (erm = Base | gda | pcr | mgr), fraction (of the training split),
sampler ('' = the method's: uniform for gda/pcr, finder for mgr; `gda,sampler=finder` is
GDA + MPS), and for digits steps (default 3,000).
  digits          §2(g): the fixed 80/20 digits split, `fraction` in {0.05, 0.1, 0.25, 1.0} of
                  the training part per class, 10% of it (at least 1 per class) held out as
                  validation (split seed 42); the 2-conv CNN (32, 64; d = 64) from scratch,
                  SGD-Nesterov 0.01 (x0.1 at 50/75%), `steps` steps, batch 64 real + 64
                  synthetic, 1-pixel shift on real images; PCR's T = 1-pixel shift + +-10
                  degree rotation, its squared gap averaged over the feature dimensions
                  (`pcr_reduction=mean`, see below); lambda 1; finder 8 -> 32 -> 32 -> 8,
                  Adam 1e-4; validation and test every 100 steps, test reported at the lowest validation loss
                  (`selected/test/accuracy`). The generator: configs/cgan.py:digits.
  glyphs16        the same on glyphs at CPU scale: the first 100 characters of the embedded
                  glyphs' train split (28x28 resized to 16x16), `n` (default 15) instances
                  per character for training + validation (10%, at least 1), the other
                  20 - n as test; SGD 0.1 (0.01 stays near chance on 100 classes); shifts of
                  2 pixels (real images and PCR's T). Generator: configs/cgan.py:glyphs16.
  glyphs_color32, cifar10
                  CIFAR-style ResNet-18 on glyphs/color32 (2,359 classes) or TFDS cifar10 at
                  `fraction` of the training split, crop+flip, SGD-Nesterov 0.1 cosine; PCR's T
                  = 4-pixel shift + flip; generators from configs/cgan.py:glyphs_color32 /
                  cifar10.

PCR's reduction: the spec's first reconstruction sums the squared feature gap over the d
feature dimensions (`pcr_reduction=sum`), its alternative (iv) averages it (`mean`, PyTorch's
mse_loss, the convention of the same group's AdaRand code). The presets use `mean`: with the
sum at lambda = 1 the term is d = 64 times larger and on digits it kept the training CE at
0.5-0.95 and PCR/MGR 3-8 points below Base (seed 0, docs/mgr.md); `sum` stays a flag.
"""

import ml_collections

from jaxlab.config import base_config, presets, generator_config


def _generative(c, method, fraction, sampler, latent_dim, width, steps, eval_every):
  c.method = method
  c.generator = generator_config(latent_dim, width)
  c.inputs.generator = ""  # the frozen generator: a cgan run on the same classes
  c.generative = ml_collections.ConfigDict(dict(
      weight=1.0, real_weight=1.0, sampler=sampler, synthetic_batch=64,
      pcr_shift=1, pcr_rotation=10.0, pcr_flip=False, pcr_views="two_augmented",
      pcr_stop_gradient=False, pcr_reduction="mean",
      finder_hidden=(32, 32), finder_class_input=False, finder_lr=1e-4,
      hvp_mode="exact", fd_epsilon=0.01, lookahead_lr=0.0, lookahead_exclude="",
      meta_every=1, meta_val="validation", reuse_noise=False, log_meta_gain=False))
  c.data.train_fraction = fraction
  c.data.val_fraction = 0.1
  c.data.split_seed = 42
  c.data.eval_splits = "validation,test"
  c.train.update(dict(steps=steps, batch_size=64, eval_every=eval_every, log_every=eval_every,
                      checkpoint_every=steps, select_by="validation/loss"))
  return c


def digits(method="mgr", fraction=0.1, sampler="", steps=3000):
  c = base_config()
  c.data.name = "digits"
  return _small_cnn(c, method, fraction, sampler, steps, shift=1)


def glyphs16(method="mgr", n=15, sampler="", steps=3000):
  c = base_config()
  c.data.name = "glyphs"
  c.data.image_size = 16
  c.data.classes = "first:100"
  c.data.rest_as_test = True
  c = _small_cnn(c, method, 1.0, sampler, steps, shift=2)
  c.data.per_class = n
  c.optimizer.learning_rate = 0.1  # 0.01 stays near chance on 100 classes in 1,500 steps
  c.generator.update(dict(width=32, discriminator_width=32))  # configs/cgan.py:glyphs16
  return c


def _small_cnn(c, method, fraction, sampler, steps, shift):
  c.model = ml_collections.ConfigDict(dict(name="cnn", channels=(32, 64), norm="none",
                                           weight_init="flax"))
  c.aug.crop_padding = shift
  c.optimizer.update(dict(name="sgd", learning_rate=0.01, momentum=0.9, nesterov=True,
                          schedule="step", step_factor=0.1,
                          step_boundaries=(steps // 2, 3 * steps // 4)))
  c = _generative(c, method, fraction, sampler, latent_dim=8, width=64, steps=steps,
                  eval_every=100)
  c.generative.pcr_shift = shift
  c.generative.log_meta_gain = True
  return c


def _resnet18(name, method, fraction, sampler, steps=20000):
  c = base_config()
  c.data.name = name
  c.model = ml_collections.ConfigDict(dict(
      name="resnet18", width=64, stem="cifar", norm="batch_norm",
      weight_init="kaiming_normal_fan_out", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
  c.aug.crop_padding = 4
  c.aug.flip = True
  c.optimizer.update(dict(name="sgd", learning_rate=0.1, momentum=0.9, nesterov=True,
                          weight_decay=5e-4, schedule="cosine"))
  c = _generative(c, method, fraction, sampler, latent_dim=128 if name == "cifar10" else 64,
                  width=128, steps=steps, eval_every=steps // 20)
  c.generative.update(dict(pcr_shift=4, pcr_rotation=0.0, pcr_flip=True))
  return c


DEFAULT = 'digits'
# the presets in rows of `jaxlab presets` and the README's table (jaxlab.catalog; a test checks
# that every preset is in one row and that the README shows these rows)
ROWS = [
    ('digits',
     'Base (`method=erm`) / GDA / PCR / MGR with a frozen `cgan` generator, `fraction` of '
     'the training split, 2-conv CNN'),
    ('glyphs16', 'the same on 100 glyphs characters at 16x16, `n` per character'),
    ('glyphs_color32, cifar10', 'ResNet-18'),
]

PRESETS = {
    "digits": digits,
    "glyphs16": glyphs16,
    "glyphs_color32": lambda method="mgr", fraction=1.0, sampler="": _resnet18(
        "glyphs/color32", method, fraction, sampler),
    "cifar10": lambda method="mgr", fraction=0.1, sampler="": _resnet18(
        "cifar10", method, fraction, sampler),
}


def get_config(arg=None):
  return presets(arg, PRESETS, DEFAULT, "configs/mgr.py")
