"""Robust accuracy under the attacks named in `config.adv.eval_attacks`.

Names: `pgd<k>` (PGD-CE, k steps of `adv.eval_step_size`, random start), `apgd_ce`,
`apgd_dlr` (`adv.apgd_iters` iterations), `aa_lite` (APGD-CE then APGD-T over 9 targets;
an upper bound on AutoAttack). A point counts as robust only if it is also classified
correctly without attack, as AutoAttack counts.
"""

from typing import Callable, Dict

import jax
import jax.numpy as jnp

from jaxlab.errors import UserError
from jaxlab.eval import attacks


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
