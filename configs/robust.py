"""Adversarial robustness presets (docs/specs/robustness_tta_merging.md §1-§3).

  python -m jaxlab.main --config=configs/robust.py:digits,method=trades --workdir=runs/trades
  python -m jaxlab.main --config=configs/robust.py:digits,method=arrest \
      --config.init_from=runs/erm --workdir=runs/arrest      # fine-tunes a finished erm run

Preset arguments: method (erm | pgd_at | trades | sovr | gairat | mail | arrest), eps (l-inf
radius on [0, 1] images; default 0.1 on digits, 8/255 otherwise).
  digits          §3(g): MLP 256-256 on the embedded 8x8 digits, Adam 1e-3, 2,000 steps of
                  128 (ARREST: 1,000 steps of adversarial fine-tuning); training attack PGD-10
                  with step eps/4 (TRADES: 10 steps of eps/4 on the KL, beta 6); evaluation on
                  the test split: clean accuracy, robust accuracy under PGD-10, PGD-100 (step
                  eps/4), APGD-CE (100 iterations) and AA-lite (APGD-CE + APGD-T), and the
                  histogram of adversarial logit margins (PGD-10 points).
  glyphs_color32  CIFAR-style ResNet-18 on glyphs/color32, eps 8/255, SGD 0.1 cosine, 3,000
                  steps; evaluation PGD-20 and AA-lite.
  cifar10         TFDS cifar10 (prepare it first), eps 8/255, step 2/255, PGD-10 training,
                  SGD 0.1 momentum 0.9 wd 5e-4, 110 epochs; arch=resnet18 (default) or
                  wrn34_10 / wrn28_10; evaluation PGD-20 and AA-lite.
Method settings: SOVR M = 0.4 (smallest adversarial margins of each batch take the one-vs-
the-rest loss); GAIRAT lambda -1, MAIL gamma 10, beta 0, both weighting after a burn-in of
half the steps; ARREST lambda_RGKD 1 on 1 - cos of penultimate features, noisy replay below
cos 0.9 with U[-eps, eps] noise. `erm` trains normally and is evaluated under the same attacks. `adv.logit_scale` multiplies the
logits the evaluation attacks see (predictions unchanged): the gradient-masking check.
"""

import ml_collections

from jaxlab.config import base_config, presets
from jaxlab.errors import unknown


def _robust(c, method, eps, step_size, eval_attacks, margin_bins=""):
  c.method = method
  c.adv = ml_collections.ConfigDict(dict(
      eps=eps, train_eps=eps, step_size=step_size, steps=10, attack_train_mode=False,
      beta=6.0, eval_step_size=step_size, apgd_iters=100, eval_attacks=eval_attacks,
      margin_bins=margin_bins, logit_scale=1.0))
  c.sovr = ml_collections.ConfigDict(dict(fraction=0.4, switch_rule="top_ratio", kappa=0.0))
  c.importance = ml_collections.ConfigDict(dict(
      burn_in=0.5, gairat_lambda=-1.0, mail_gamma=10.0, mail_beta=0.0))
  c.inputs.teacher = ""  # ARREST's frozen teacher; "" = the init_from run
  c.arrest = ml_collections.ConfigDict(dict(
      rgkd_weight=1.0, rgkd_distance="one_minus_cos", rgkd_student_input="same_as_ce",
      noisy_replay=True, nr_threshold=0.9, nr_scope="per_sample", nr_noise="uniform",
      nr_sigma=0.05))
  return c


def digits(method="pgd_at", eps=0.1):
  c = _robust(base_config(), method, eps, eps / 4, "pgd10,pgd100,apgd_ce,aa_lite",
              margin_bins="-4,-2,-1,0,1,2,4,8")
  c.data.name = "digits"
  c.model.hidden = (256, 256)
  steps = 1000 if method == "arrest" else 2000
  c.train.update(dict(steps=steps, batch_size=128, eval_every=0, checkpoint_every=1000,
                      log_every=250))
  return c


def _cifar_like(c, arch, num_steps):
  archs = {"resnet18": dict(name="resnet18", width=64, stem="cifar"),
           "wrn34_10": dict(name="wide_resnet", depth=34, widen=10),
           "wrn28_10": dict(name="wide_resnet", depth=28, widen=10)}
  if arch not in archs:
    raise unknown("arch", arch, archs, "configs/robust.py")
  c.model = ml_collections.ConfigDict(dict(norm="batch_norm",
                                           weight_init="kaiming_normal_fan_out",
                                           mean=(), std=(), **archs[arch]))
  c.aug.crop_padding = 4
  c.optimizer.update(dict(name="sgd", learning_rate=0.1, momentum=0.9, weight_decay=5e-4,
                          schedule="cosine", warmup_steps=0))
  c.train.update(dict(steps=num_steps, batch_size=128, eval_every=num_steps // 10,
                      checkpoint_every=num_steps // 20, log_every=50))
  return c


def glyphs_color32(method="pgd_at", eps=8 / 255, arch="resnet18"):
  c = _robust(base_config(), method, eps, eps / 4, "pgd20,aa_lite")
  c = _cifar_like(c, arch, num_steps=3000)
  c.data.name = "glyphs/color32"
  return c


def cifar10(method="pgd_at", eps=8 / 255, arch="resnet18"):
  c = _robust(base_config(), method, eps, 2 / 255, "pgd20,aa_lite")
  c = _cifar_like(c, arch, num_steps=110 * 50000 // 128)
  c.data.name = "cifar10"
  c.aug.flip = True
  c.train.eval_batch_size = 500
  return c


DEFAULT = 'digits'
# the presets in rows of `jaxlab presets` and the README's table (jaxlab.catalog; a test checks
# that every preset is in one row and that the README shows these rows)
ROWS = [
    ('digits',
     'PGD-AT / TRADES / SOVR / GAIRAT / MAIL / ARREST / standard training, eps 0.1, robust'
     ' evaluation, margin histograms'),
    ('glyphs_color32, cifar10', 'eps 8/255; `arch=resnet18`, `wrn34_10` or `wrn28_10`'),
]

PRESETS = {"digits": digits, "glyphs_color32": glyphs_color32, "cifar10": cifar10}


def get_config(arg=None):
  return presets(arg, PRESETS, DEFAULT, "configs/robust.py")
