"""Importance-weighted PGD adversarial training: the weighted-CE arms SOVR is compared with.

Spec: shared/methods/robustness_tta_merging.md §2(b) (importance-aware baselines, [K]).
PGD-AT's adversarial batch, then CE on it with per-example weights w_i (stop-gradient,
normalised to mean 1 over the batch, i.e. the loss is sum_i w_i CE_i / sum_i w_i). The
weights are the method's (`gairat`, `mail`); for the first `importance.burn_in` fraction of
the steps every weight is 1, i.e. the step is PGD-AT's (both papers start so).
Evaluation is `erm`'s.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from jaxlab import models
from jaxlab.data import tasks
from jaxlab.eval import attacks
from jaxlab.methods import erm, pgd_at
from jaxlab.train import losses, optim
from jaxlab.train.state import TrainState

make_task = erm.make_task
init = erm.init
eval_step = erm.eval_step

# (adversarial logits, labels, PGD iterates still classified correctly, config) -> weights
WeightsFn = Callable[[jax.Array, jax.Array, jax.Array, object], jax.Array]


def train_step(state: TrainState, batch, rng: jax.Array, *, config, spec: tasks.Spec,
               weights_fn: WeightsFn):
  a = config.adv
  attack_rng, dropout_rng = jax.random.split(rng)
  x, y = batch["image"], batch["label"]
  x_adv, correct_steps = attacks.pgd(
      pgd_at.logits_fn(state, config, spec, a.attack_train_mode), x, y, attack_rng,
      eps=a.train_eps, step_size=a.step_size, steps=a.steps, count_correct_steps=True)
  x_adv = jax.lax.stop_gradient(x_adv)
  model = models.build(config.model, spec.num_classes)
  burned_in = state.step >= int(config.importance.burn_in * config.train.steps)

  def loss_fn(params):
    logits, model_state = model.apply(
        {"params": params, **state.model_state}, x_adv, train=True,
        mutable=list(state.model_state), rngs={"dropout": dropout_rng})
    raw = jax.lax.stop_gradient(weights_fn(logits, y, correct_steps, config))
    weights = jnp.where(burned_in, raw / jnp.maximum(raw.mean(), 1e-12), 1.0)
    loss = jnp.mean(weights * losses.cross_entropy(logits, y))
    return loss, (logits, weights, dict(model_state))

  (loss, (logits, weights, model_state)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  tx = optim.make_optimizer(config.optimizer, config.train.steps)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  metrics = {"loss": loss, "accuracy": losses.correct(logits, y).mean(),
             "weight_max": weights.max(), "weight_min": weights.min(),
             "correct_steps": correct_steps.mean(dtype=jnp.float32),
             "grad_norm": optax.tree.norm(grads)}
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       model_state=model_state, opt_state=opt_state), metrics
