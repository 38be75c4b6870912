"""Adversarial robustness presets (shared/methods/robustness_tta_merging.md §3).

  python -m jaxlab.main --config=configs/robust.py:digits,method=trades --workdir=runs/trades

Preset arguments: method (pgd_at | trades | sovr | erm), eps (l-inf radius on [0, 1] images).
  digits   §3(g): MLP 256-256 on the embedded 8x8 digits, eps 0.1, Adam 1e-3, 2,000 steps
           of 128; training attack PGD-10 with step eps/4 (TRADES: 10 steps of eps/4 on the
           KL, beta 6); evaluation on the test split: clean accuracy and robust accuracy
           under PGD-10, PGD-100 (step eps/4), APGD-CE (100 iterations) and AA-lite
           (APGD-CE + APGD-T). SOVR: M = 0.4 of each batch (smallest adversarial
           margins) on the one-vs-the-rest loss.
`erm` trains normally and is evaluated under the same attacks.
"""

import ml_collections

from jaxlab.config import base_config, presets


def _adv(eps, steps=10, beta=6.0):
  return ml_collections.ConfigDict(dict(
      eps=eps, train_eps=eps, step_size=eps / 4, steps=steps, attack_train_mode=False,
      beta=beta, eval_step_size=eps / 4, apgd_iters=100,
      eval_attacks="pgd10,pgd100,apgd_ce,aa_lite"))


def digits(method="pgd_at", eps=0.1):
  c = base_config()
  c.method = method
  c.data.name = "digits"
  c.model.hidden = (256, 256)
  c.adv = _adv(eps)
  c.sovr = ml_collections.ConfigDict(dict(fraction=0.4, switch_rule="top_ratio", kappa=0.0))
  c.train.update(dict(steps=2000, batch_size=128, eval_every=0, checkpoint_every=1000,
                      log_every=250))
  return c


PRESETS = {"digits": digits}


def get_config(arg=None):
  return presets(arg, PRESETS, "digits", "configs/robust.py")
