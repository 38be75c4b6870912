"""The reconstruction-gap study of arXiv 2311.13090 (docs/specs/generative_and_finetuning.md
§5(g)): classifiers trained on reconstructed training sets D^(t) of a `ddpm` run
(configs/ddpm.py), and the analysis of D^(t) in a reference classifier's features.

  python -m jaxlab.main --config=configs/ddpm.py:digits --workdir=runs/ddpm_digits
  python -m jaxlab.main --config=configs/diffusion_gap.py:digits,t=0.5,seed=1 \
      --config.data.reconstruct.run=runs/ddpm_digits --workdir=runs/gap_t0.5_s1
  python -m jaxlab.main --config=configs/diffusion_gap.py:digits,t=0 --workdir=runs/reference
  python -m jaxlab.main --config=configs/diffusion_gap.py:digits_metrics \
      --config.inputs.diffusion=runs/ddpm_digits --config.inputs.reference=runs/reference \
      --workdir=runs/gap_metrics

`data.reconstruct` (jaxlab.data.reconstruction) replaces the training split by R_t of it:
`t` the start step as a fraction of T, the sampler (`ddpm` ancestral over every remaining
step by default, or `ddim`), `guidance` (classifier-free guidance scale: 1 = none, the
published default of §5(d) [R]; the spec's second factor "s = 2" in Ho & Salimans' w is
guidance=3 here), and `seed`, the dataset's own seed (the presets set it to the run's seed:
each seed trains on its own draw of D^(t)). The test split stays real.

Presets (`:name[,t=...,seed=...,guidance=...,sampler=...]`):
  digits          §5(g): the 2-conv CNN (32-64) trained on D^(t) of the digits training split
                  (80% of the data, 1,438 images), tested on the real 20%; Adam 1e-3,
                  batch 128, 2,000 steps. t=0 (or no run) is the real-data baseline and the
                  reference classifier of the analysis.
  digits_metrics  the analysis (`diffusion_gap`, train.steps=0): t/T in {0, 0.1, 0.25, 0.5,
                  0.75, 1.0}; inputs `diffusion` (the ddpm run) and `reference` (a digits
                  run at t=0); k = 5 for the k-NN manifolds.
  glyphs16, glyphs16_metrics
                  the same on the 100 glyphs characters at 16x16 of configs/ddpm.py:glyphs16
                  (15 training images each, the other 5 the test split), CNN 32-64-128.
  tiny, tiny_metrics
                  a few steps of an 8-8 CNN on digits; for tests.
"""

import ml_collections

from jaxlab.config import base_config, presets

T_GRID = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


def _reconstruct(c, t, seed, guidance, sampler, run=""):
  c.data.reconstruct = ml_collections.ConfigDict(dict(
      run=run, t=float(t), sampler=sampler, steps=0, eta=0.0, guidance=float(guidance),
      seed=seed))
  return c


def _classifier(c, channels, steps, t, seed, guidance, sampler):
  c.seed = seed
  c.model = ml_collections.ConfigDict(dict(name="cnn", channels=channels))
  c.optimizer.learning_rate = 1e-3
  c.train.update(dict(steps=steps, batch_size=128, eval_every=0, checkpoint_every=steps,
                      log_every=max(1, steps // 10)))
  return _reconstruct(c, t, seed, guidance, sampler)


def _metrics(c, seed, guidance, sampler):
  c.method = "diffusion_gap"
  c.seed = seed
  c.train.update(dict(steps=0, checkpoint_every=0))
  c.inputs = ml_collections.ConfigDict(dict(diffusion="", reference=""))
  c.gap = ml_collections.ConfigDict(dict(
      t_grid=T_GRID, k=5, shown=12,
      manifold_examples=0, manifold_seed=0))  # 0: every training example in the k-NN sets
  return _reconstruct(c, 0.0, seed, guidance, sampler)


def _digits():
  c = base_config()
  c.data.name = "digits"
  return c


def _glyphs16():
  c = base_config()
  c.data.name = "glyphs"
  c.data.image_size = 16
  c.data.classes = "first:100"
  c.data.per_class = 15
  c.data.rest_as_test = True
  return c


def digits(t=0.0, seed=0, guidance=1.0, sampler="ddpm"):
  return _classifier(_digits(), (32, 64), 2000, t, seed, guidance, sampler)


def digits_metrics(seed=0, guidance=1.0, sampler="ddpm"):
  return _metrics(_digits(), seed, guidance, sampler)


def glyphs16(t=0.0, seed=0, guidance=1.0, sampler="ddpm"):
  c = _classifier(_glyphs16(), (32, 64, 128), 3000, t, seed, guidance, sampler)
  c.train.batch_size = 64
  return c


def glyphs16_metrics(seed=0, guidance=1.0, sampler="ddpm"):
  return _metrics(_glyphs16(), seed, guidance, sampler)


def tiny(t=0.0, seed=0, guidance=1.0, sampler="ddpm"):
  c = _classifier(_digits(), (8, 8), 5, t, seed, guidance, sampler)
  c.train.batch_size = 32
  return c


def tiny_metrics(seed=0, guidance=1.0, sampler="ddpm"):
  c = _metrics(_digits(), seed, guidance, sampler)
  c.gap.update(dict(t_grid=(0.0, 1.0), shown=4))
  return c


DEFAULT = "digits"
# the presets in rows of `jaxlab presets` and the README's table (jaxlab.catalog)
ROWS = [
    ("digits", "a CNN trained on the reconstructed digits training set D^(t) of a "
     "ddpm run (`t`, `seed`, `guidance`, `sampler`; t=0: real data), tested on real digits"),
    ("digits_metrics", "the §5 analysis of D^(t) over a t grid in a reference classifier's "
     "features: centroid distance, confidence, precision / recall / density / coverage, FD"),
    ("glyphs16, glyphs16_metrics", "the same on 100 glyphs characters at 16x16"),
    ("tiny, tiny_metrics", "a few steps; for tests"),
]

PRESETS = {"digits": digits, "digits_metrics": digits_metrics, "glyphs16": glyphs16,
           "glyphs16_metrics": glyphs16_metrics, "tiny": tiny, "tiny_metrics": tiny_metrics}


def get_config(arg=None):
  return presets(arg, PRESETS, DEFAULT, "configs/diffusion_gap.py")
