"""`sovr`: switching one-vs-the-rest adversarial training (Kanai et al., arXiv 2207.10283).

Spec: shared/methods/robustness_tta_merging.md §2. PGD-AT's adversarial batch (the
`pgd_at` attack), then per example either the one-vs-the-rest loss (K logistic losses) or
the cross-entropy: the ceil(M B) examples of the batch with the smallest adversarial logit
margins (stop-gradient; ties by position) take OVR, the rest CE (`sovr.switch_rule =
"top_ratio"`, the spec's default, M = `sovr.fraction`); `"margin_threshold"` switches the
examples whose margin is below `sovr.kappa` instead. M = 0 is PGD-AT, M = 1 pure OVR.
Evaluation is `erm`'s (robust accuracies from `adv.eval_attacks`).
"""

import math

import jax
import jax.numpy as jnp
import optax

from jaxlab import models
from jaxlab.data import tasks
from jaxlab.errors import UserError
from jaxlab.methods import erm, pgd_at
from jaxlab.train import losses, optim
from jaxlab.train.state import TrainState

make_task = erm.make_task
init = erm.init
eval_step = erm.eval_step


def switched(margins: jax.Array, config) -> jax.Array:
  """Which examples take the OVR loss (bool per example)."""
  s = config.sovr
  if s.switch_rule == "top_ratio":
    count = math.ceil(s.fraction * margins.shape[0])
    rank = jnp.argsort(jnp.argsort(margins, stable=True), stable=True)
    return rank < count
  if s.switch_rule == "margin_threshold":
    return margins < s.kappa
  raise UserError(f"unknown sovr.switch_rule {s.switch_rule!r}; valid choices: top_ratio, "
                  "margin_threshold")


def train_step(state: TrainState, batch, rng: jax.Array, *, config, spec: tasks.Spec):
  attack_rng, dropout_rng = jax.random.split(rng)
  adversarial = pgd_at.adversarial_batch(state, batch, attack_rng, config=config, spec=spec)
  x, y = adversarial["image"], adversarial["label"]
  model = models.build(config.model, spec.num_classes)

  def loss_fn(params):
    logits, model_state = model.apply(
        {"params": params, **state.model_state}, x, train=True,
        mutable=list(state.model_state), rngs={"dropout": dropout_rng})
    margins = jax.lax.stop_gradient(losses.logit_margin(logits, y))
    use_ovr = switched(margins, config)
    per_example = jnp.where(use_ovr, losses.one_vs_rest(logits, y),
                            losses.cross_entropy(logits, y))
    return per_example.mean(), (logits, margins, use_ovr, dict(model_state))

  (loss, (logits, margins, use_ovr, model_state)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  tx = optim.make_optimizer(config.optimizer, config.train.steps)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  metrics = {"loss": loss, "accuracy": losses.correct(logits, y).mean(),
             "margin": margins.mean(), "ovr_fraction": use_ovr.mean(),
             "grad_norm": optax.tree.norm(grads)}
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       model_state=model_state, opt_state=opt_state), metrics
