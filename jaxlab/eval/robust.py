"""Robust accuracy under the attacks named in `config.adv.eval_attacks`.

Names: `pgd<k>` (PGD-CE, k steps of `adv.eval_step_size`, random start), `apgd_ce`,
`apgd_dlr` (`adv.apgd_iters` iterations), `aa_lite` (APGD-CE then APGD-T over 9 targets;
an upper bound on AutoAttack). A point counts as robust only if it is also classified
correctly without attack, as AutoAttack counts.

`adversarial_margin_histogram` bins the logit margins z_y - max_{k!=y} z_k at PGD-10
adversarial points (SOVR §2: bimodal under PGD-AT, one peak near 0 under weighted CE);
per-example bin indicators, so their test-set means are the histogram.
"""

from typing import Callable, Dict, Sequence

import jax
import jax.numpy as jnp

from jaxlab.errors import UserError
from jaxlab.eval import attacks
from jaxlab.train.losses import logit_margin


def _still_robust(name: str, f: Callable, x, y, key, a) -> jax.Array:
  if name.startswith("pgd") and name[3:].isdigit():
    x_adv = attacks.pgd(f, x, y, key, eps=a.eps, step_size=a.eval_step_size, steps=int(name[3:]))
    return jnp.argmax(f(x_adv), -1) == y
  if name in ("apgd_ce", "apgd_dlr"):
    return attacks.apgd(f, x, y, key, eps=a.eps, n_iter=a.apgd_iters, loss=name[5:]).robust
  if name == "aa_lite":
    return attacks.aa_lite(f, x, y, key, eps=a.eps, n_iter=a.apgd_iters)[1]
  raise UserError(f"unknown attack {name!r} in adv.eval_attacks; valid choices: pgd<steps> "
                  "(e.g. pgd10), apgd_ce, apgd_dlr, aa_lite")


def robust_accuracy(logits_fn: Callable, x: jax.Array, y: jax.Array, adv_config,
                    key: jax.Array) -> Dict[str, jax.Array]:
  """Per-example {`robust_accuracy/<attack>`: 0/1} for every attack configured."""
  correct = jnp.argmax(logits_fn(x), -1) == y
  names = [n.strip() for n in adv_config.eval_attacks.split(",") if n.strip()]
  return {f"robust_accuracy/{name}": (
      correct & _still_robust(name, logits_fn, x, y, jax.random.fold_in(key, i), adv_config)
  ).astype(jnp.float32) for i, name in enumerate(names)}


def bin_names(edges: Sequence[float]) -> list:
  """Names "lo..hi" of the len(edges) + 1 bins the edges cut the real line into."""
  bounds = [-float("inf"), *edges, float("inf")]
  return [f"{lo:g}..{hi:g}" for lo, hi in zip(bounds[:-1], bounds[1:])]


def parse_edges(text: str) -> list:
  try:
    edges = [float(e) for e in text.split(",") if e.strip()]
  except ValueError:
    edges = []
  if not edges or edges != sorted(set(edges)):
    raise UserError(f"adv.margin_bins={text!r} must be increasing comma-separated numbers, "
                    "e.g. '-2,0,2,4'")
  return edges


def adversarial_margin_histogram(logits_fn: Callable, x: jax.Array, y: jax.Array, adv_config,
                                 key: jax.Array) -> Dict[str, jax.Array]:
  """Per-example `adv_margin` at the PGD-10 point and one-hot `adv_margin_hist/<bin>`."""
  edges = parse_edges(adv_config.margin_bins)
  x_adv = attacks.pgd(logits_fn, x, y, key, eps=adv_config.eps,
                      step_size=adv_config.eval_step_size, steps=10)
  margin = logit_margin(logits_fn(x_adv), y)
  index = jnp.searchsorted(jnp.asarray(edges, margin.dtype), margin, side="right")
  out = {"adv_margin": margin}
  for i, name in enumerate(bin_names(edges)):
    out[f"adv_margin_hist/{name}"] = (index == i).astype(jnp.float32)
  return out
