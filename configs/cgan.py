"""Class-conditional GAN presets (`cgan`): the frozen generators of GDA / PCR / MGR
(docs/specs/generative_and_finetuning.md §0.4, §2).

  python -m jaxlab.main --config=configs/erm.py:digits --workdir=runs/digits_classifier
  python -m jaxlab.main --config=configs/cgan.py:digits \
      --config.inputs.score_classifier=runs/digits_classifier --workdir=runs/cgan_digits

Hinge loss, spectrally normalised projection discriminator, conditional-BatchNorm generator;
Adam 2e-4 with b1 = 0, b2 = 0.9 for both networks (the SNGAN/BigGAN setting), one
discriminator step per generator step, batch 64. The quality score (`quality/*` in
results.json) needs `inputs.score_classifier`, a classifier run on the same data.

Presets (`:name[,steps=N]`):
  digits           §2(g): latent d_w = 8, width 64, on the full digits training split (1,438
                   images); `steps` (default 3,000) sets how well it fits: MGR's
                   reproduction uses a deliberately weak one (steps=300).
  digits_source    the same on digits 0-4 only: the source generator G_s of PP + P-SSL
                   (configs/pp_pssl.py).
  glyphs16         §2(g) on glyphs at CPU scale: the first 100 characters of the embedded
                   glyphs' train split at 16x16, 15 instances each (the other 5 = `test`),
                   latent 8, width 32; `steps` default 500 (the weak generator of
                   configs/mgr.py:glyphs16).
  glyphs_color32   glyphs/color32 (32x32x3, 2,359 classes), latent 64, width 128.
  cifar10, cifar100
                   TFDS (prepare them first), latent 128, width 128.
"""

import ml_collections

from jaxlab.config import base_config, presets


def _gan(c, latent_dim, width, steps):
  c.method = "cgan"
  c.generator = ml_collections.ConfigDict(dict(latent_dim=latent_dim, width=width,
                                               discriminator_width=width))
  c.optimizer.update(dict(name="adam", learning_rate=2e-4, b1=0.0, b2=0.9, eps=1e-8))
  c.inputs.score_classifier = ""  # a classifier run on the same data: the quality score
  c.gan = ml_collections.ConfigDict(dict(
      disc_steps=1, score_split="test",
      disc_optimizer=ml_collections.ConfigDict(dict(c.optimizer))))
  c.train.update(dict(steps=steps, batch_size=64, eval_every=0, checkpoint_every=steps,
                      log_every=max(1, steps // 10)))
  return c


def digits(steps=3000):
  c = base_config()
  c.data.name = "digits"
  return _gan(c, latent_dim=8, width=64, steps=steps)


def digits_source(steps=3000):
  c = digits(steps)
  c.data.classes = "range:0-4"
  return c


def glyphs16(steps=500):
  c = base_config()
  c.data.name = "glyphs"
  c.data.image_size = 16
  c.data.classes = "first:100"
  c.data.per_class = 15
  c.data.rest_as_test = True
  return _gan(c, latent_dim=8, width=32, steps=steps)


def glyphs_color32(steps=20000):
  c = base_config()
  c.data.name = "glyphs/color32"
  return _gan(c, latent_dim=64, width=128, steps=steps)


def _tfds(name, steps):
  c = base_config()
  c.data.name = name
  return _gan(c, latent_dim=128, width=128, steps=steps)


DEFAULT = 'digits'
# the presets in rows of `jaxlab presets` and the README's table (jaxlab.catalog; a test checks
# that every preset is in one row and that the README shows these rows)
ROWS = [
    ('digits',
     'class-conditional GAN (hinge, spectral norm, conditional BN, projection '
     'discriminator); `steps`; sample grid and quality score'),
    ('digits_source',
     'the same on digits 0-4 only: the generator of PP / P-SSL (`configs/pp_pssl.py`)'),
    ('glyphs16', "100 glyphs characters at 16x16, width 32 (MGR's CPU-scale glyphs setting)"),
    ('glyphs_color32, cifar10, cifar100', 'the same at 32x32x3'),
]

PRESETS = {"digits": digits, "digits_source": digits_source, "glyphs16": glyphs16, "glyphs_color32": glyphs_color32,
           "cifar10": lambda steps=50000: _tfds("cifar10", steps),
           "cifar100": lambda steps=50000: _tfds("cifar100", steps)}


def get_config(arg=None):
  return presets(arg, PRESETS, DEFAULT, "configs/cgan.py")
