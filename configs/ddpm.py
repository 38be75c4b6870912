"""Class-conditional DDPM presets (`ddpm`, jaxlab/methods/diffusion.py): the diffusion models
of the reconstruction-gap study (docs/specs/generative_and_finetuning.md §5) and frozen
generators for GDA / PCR / MGR, P-SSL and meta-gen-SSL (`generator.kind=ddpm`).

  python -m jaxlab.main --config=configs/erm.py:digits --workdir=runs/digits_classifier
  python -m jaxlab.main --config=configs/ddpm.py:digits \
      --config.inputs.score_classifier=runs/digits_classifier --workdir=runs/ddpm_digits

Epsilon prediction with the simple loss, classifier-free guidance's label dropout 0.1, EMA of
the weights (0.999 at CPU scale, 0.9999 on CIFAR as DDPM), Adam; samples by the DDPM ancestral
sampler over every step (the report's `diffusion.sampler`, `sample_steps`, `guidance`).

Presets (`:name[,steps=N]`):
  digits          §5(g): the 8x8 MLP noise predictor (width 256, 3 residual blocks, sinusoidal
                  time + class embeddings), T = 200, linear betas (1e-4..0.02 at T = 1000,
                  scaled to T as improved DDPM), Adam 1e-3, batch 128, `steps` (20,000) on
                  the full digits training split (1,438 images).
  glyphs16        100 glyphs characters at 16x16 (15 training images each, the cgan
                  glyphs16 data), U-Net 32 channels x (1, 2), 2 blocks a level, attention at
                  8x8, T = 200; `steps` (20,000).
  glyphs_color32  glyphs/color32 (32x32x3), U-Net 64 x (1, 2, 2), attention at 8x8, T = 1000,
                  Adam 2e-4; `steps` (100,000; an accelerator's work).
  cifar10         TFDS cifar10 (prepare it first), DDPM's CIFAR-10 U-Net shape at 128 x
                  (1, 2, 2, 2), attention at 16x16, 2 blocks, T = 1000, Adam 2e-4 with 5,000
                  warm-up steps, batch 128, flips, EMA 0.9999 (no dropout); `steps` (800,000).
  tiny            a few steps of a 32-wide MLP on digits, T = 20, cosine schedule; for tests.
"""

import ml_collections

from jaxlab.config import base_config, presets


def _ddpm(c, model, steps, timesteps=200, learning_rate=1e-3, ema_decay=0.999):
  c.method = "ddpm"
  c.model = ml_collections.ConfigDict(model)
  c.diffusion = ml_collections.ConfigDict(dict(
      timesteps=timesteps, schedule="linear", beta_start=1e-4, beta_end=0.02,
      scale_betas=True,    # betas x 1000 / T (improved DDPM), so x_T is close to pure noise
      p_uncond=0.1,        # label dropout: the null class, for classifier-free guidance
      ema_decay=ema_decay,
      # the report's samples (and quality score): ddpm (ancestral) | ddim; 0 = every step
      sampler="ddpm", sample_steps=0, eta=0.0, guidance=1.0, clip=True, variance="small",
      score_split="test"))
  c.inputs.score_classifier = ""  # a classifier run on the same data: the quality score
  c.optimizer.update(dict(name="adam", learning_rate=learning_rate, grad_clip_norm=1.0))
  c.train.update(dict(steps=steps, batch_size=128, eval_every=0,
                      checkpoint_every=max(1, steps // 4), log_every=max(1, steps // 20)))
  return c


def digits(steps=20000):
  c = base_config()
  c.data.name = "digits"
  return _ddpm(c, dict(name="eps_mlp", hidden=256, blocks=3), steps)


def glyphs16(steps=20000):
  c = base_config()
  c.data.name = "glyphs"
  c.data.image_size = 16
  c.data.classes = "first:100"
  c.data.per_class = 15
  c.data.rest_as_test = True
  c = _ddpm(c, dict(name="unet", channels=32, multipliers=(1, 2), res_blocks=2,
                    attention=(8,)), steps)
  c.train.batch_size = 64
  return c


def glyphs_color32(steps=100000):
  c = base_config()
  c.data.name = "glyphs/color32"
  return _ddpm(c, dict(name="unet", channels=64, multipliers=(1, 2, 2), res_blocks=2,
                       attention=(8,)), steps, timesteps=1000, learning_rate=2e-4)


def cifar10(steps=800000):
  c = base_config()
  c.data.name = "cifar10"
  c.aug.flip = True
  c = _ddpm(c, dict(name="unet", channels=128, multipliers=(1, 2, 2, 2), res_blocks=2,
                    attention=(16,)), steps, timesteps=1000, learning_rate=2e-4,
            ema_decay=0.9999)
  c.optimizer.warmup_steps = 5000
  return c


def tiny(steps=20):
  c = base_config()
  c.data.name = "digits"
  c = _ddpm(c, dict(name="eps_mlp", hidden=32, blocks=1), steps, timesteps=20)
  c.diffusion.schedule = "cosine"  # (the scaled linear one needs T >= 50)
  c.train.batch_size = 32
  return c


DEFAULT = "digits"
# the presets in rows of `jaxlab presets` and the README's table (jaxlab.catalog)
ROWS = [
    ("digits", "class-conditional DDPM (epsilon prediction, CFG label dropout, EMA) with the "
     "8x8 MLP noise predictor, T = 200; sample grid and quality score"),
    ("glyphs16", "100 glyphs characters at 16x16, a small U-Net (attention at 8x8)"),
    ("glyphs_color32, cifar10", "U-Nets at 32x32x3, T = 1000 (cifar10: DDPM's CIFAR-10 shape)"),
    ("tiny", "a few steps of a 32-wide MLP, T = 20 (cosine schedule); for tests"),
]

PRESETS = {"digits": digits, "glyphs16": glyphs16, "glyphs_color32": glyphs_color32,
           "cifar10": cifar10, "tiny": tiny}


def get_config(arg=None):
  return presets(arg, PRESETS, DEFAULT, "configs/ddpm.py")
