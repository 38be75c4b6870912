"""Adversarial training of a classifier from scratch: PGD-AT and the losses built on it.

Papers and variants:
  `pgd_at`  PGD adversarial training, Madry et al., ICLR 2018 (arXiv 1706.06083): each step
            replaces the batch by its PGD-CE adversarial examples (l-inf ball of
            `adv.train_eps`, random start, `adv.steps` steps of `adv.step_size`) and takes
            the cross-entropy step on them (`jaxlab.train.supervised`). With
            `adv.train_eps=0` the step is exactly `erm`'s (the standard-training arm);
  `trades`  TRADES, Zhang et al., ICML 2019 (arXiv 1901.08573), as its official code does it
            (§3(b)): CE(f(x), y) + beta * sum_i KL(p(x_i) || p(x'_i)) / B, x' maximising the
            KL inside the l-inf ball: start at x + 0.001 N(0, I), `adv.steps` signed steps of
            `adv.step_size`, each clipped to the ball and to [0, 1], with the model in eval
            mode; the outer loss is in train mode with gradients through both p(x) and p(x'),
            from the reference's three forward passes (x, x', x: BatchNorm's running
            statistics end on the natural batch; a dropout key per pass);
  `sovr`    switching one-vs-the-rest, Kanai et al. (arXiv 2207.10283, §2): PGD-AT's
            adversarial batch, then per example either the one-vs-the-rest loss (K logistic
            losses) or the cross-entropy: the ceil(M B) examples of the batch with the
            smallest adversarial logit margins (stop-gradient; ties by position) take OVR, the
            rest CE (`sovr.switch_rule = "top_ratio"`, the spec's default, M =
            `sovr.fraction`); `"margin_threshold"` switches the examples whose margin is below
            `sovr.kappa` instead. M = 0 is PGD-AT, M = 1 pure OVR;
  `gairat`  GAIRAT, Zhang et al., ICLR 2021 (arXiv 2010.01736), and
  `mail`    MAIL-AT, Wang et al., NeurIPS 2021 (arXiv 2106.07904): the importance-weighted CE
            arms of SOVR's comparison (§2(b) [K]), bound option `weighting`: PGD-AT's
            adversarial batch, then CE with per-example weights w_i (stop-gradient,
            normalised to mean 1 over the batch, i.e. sum_i w_i CE_i / sum_i w_i); for the
            first `importance.burn_in` fraction of the steps every weight is 1 (both papers
            start so). GAIRAT: kappa_i = the number of the K PGD iterates still classified
            correctly, w_i = (1 + tanh(lambda + 5 (1 - 2 kappa_i / K))) / 2, lambda =
            `importance.gairat_lambda` (-1, the paper's fixed schedule). MAIL: PM_i = p_y(x'_i)
            - max_{k != y} p_k(x'_i), w_i = sigmoid(-gamma (PM_i - beta)), gamma =
            `importance.mail_gamma`, beta = `importance.mail_beta` (our defaults 10 and 0:
            [R], the paper's values were not read).
Spec: docs/specs/robustness_tta_merging.md §2-§3. The attacks run with the model in eval
mode (BatchNorm running statistics), the choice of this codebase; `adv.attack_train_mode=True`
attacks with batch statistics as much Madry-style code does (§3(h)1). Evaluation is the
classifier's (`jaxlab.eval.classification`), with robust accuracies from `adv.eval_attacks`.
ARREST (adversarial fine-tuning of a trained model) is `methods/arrest.py`.
"""

import math
from typing import Dict

import jax
import jax.numpy as jnp
import optax

from jaxlab import models
from jaxlab.data import tasks
from jaxlab.errors import UserError, unknown
from jaxlab.eval import attacks, classification
from jaxlab.train import losses, optim, supervised
from jaxlab.train.protocol import Variant
from jaxlab.train.state import TrainState

WEIGHTINGS = ("gairat", "mail")

make_task = tasks.supervised
init = supervised.init
eval_step = classification.eval_step


def logits_fn(state: TrainState, config, spec: tasks.Spec, train: bool = False):
  """The model as a function of its input only; attacks never update BN statistics."""
  model = models.build(config.model, spec.num_classes)
  return models.logits_fn(model, {"params": state.params, **state.model_state}, train=train)


def adversarial_batch(state: TrainState, batch, rng: jax.Array, *, config, spec) -> Dict:
  """The batch with its images replaced by their PGD-CE adversarial examples."""
  a = config.adv
  x_adv = attacks.pgd(logits_fn(state, config, spec, a.attack_train_mode), batch["image"],
                      batch["label"], rng, eps=a.train_eps, step_size=a.step_size,
                      steps=a.steps)
  return {**batch, "image": jax.lax.stop_gradient(x_adv)}


def train_step(state: TrainState, batch, rng: jax.Array, *, config, spec: tasks.Spec):
  """PGD-AT."""
  attack_rng, step_rng = jax.random.split(rng)
  adversarial = adversarial_batch(state, batch, attack_rng, config=config, spec=spec)
  return supervised.classification_step(state, adversarial, step_rng, config=config, spec=spec)


def _loss_step(state: TrainState, loss_fn, config, **metrics):
  """The optimizer step on `loss_fn(params) -> (loss, (logits, model_state, aux metrics))`."""
  (loss, (logits, model_state, aux)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  return optim.apply_gradients(state, grads, config, model_state=model_state), {
      "loss": loss, **aux, "grad_norm": optax.tree.norm(grads), **metrics}


# -- TRADES -----------------------------------------------------------------------------

def trades_maximisation(state: TrainState, x, rng, *, config, spec):
  a = config.adv
  f = logits_fn(state, config, spec)
  clean = jax.lax.stop_gradient(f(x))
  grad_kl = jax.grad(lambda z: losses.kl_divergence(clean, f(z)).sum())

  def body(_, x_adv):
    return attacks.project_linf(x_adv + a.step_size * jnp.sign(grad_kl(x_adv)), x, a.train_eps)

  start = x + 0.001 * jax.random.normal(rng, x.shape, x.dtype)
  return jax.lax.stop_gradient(jax.lax.fori_loop(0, a.steps, body, start))


def trades_step(state: TrainState, batch, rng: jax.Array, *, config, spec: tasks.Spec):
  attack_rng, dropout_rng = jax.random.split(rng)
  x, y = batch["image"], batch["label"]
  x_adv = trades_maximisation(state, x, attack_rng, config=config, spec=spec)
  model = models.build(config.model, spec.num_classes)

  def loss_fn(params):
    # three train-mode passes in the reference's order (trades.py: model(x) for the CE, then
    # model(x_adv) and model(x) inside the KL), each with its own dropout key: BatchNorm's
    # running statistics end on the natural batch, and the KL's natural branch is the third
    # pass (the same logits as the first without dropout)
    def forward(images, variables_state, index):
      return model.apply({"params": params, **variables_state}, images, train=True,
                         mutable=list(state.model_state),
                         rngs={"dropout": jax.random.fold_in(dropout_rng, index)})
    natural, model_state = forward(x, state.model_state, 0)
    adversarial, model_state = forward(x_adv, model_state, 1)
    natural_for_kl, model_state = forward(x, model_state, 2)
    ce = losses.cross_entropy(natural, y).mean()
    robust = losses.kl_divergence(natural_for_kl, adversarial).sum() / x.shape[0]
    metrics = {"ce": ce, "kl": robust, "accuracy": losses.correct(natural, y).mean()}
    return ce + config.adv.beta * robust, (natural, dict(model_state), metrics)

  return _loss_step(state, loss_fn, config)


# -- SOVR -------------------------------------------------------------------------------

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


def sovr_step(state: TrainState, batch, rng: jax.Array, *, config, spec: tasks.Spec):
  attack_rng, dropout_rng = jax.random.split(rng)
  adversarial = adversarial_batch(state, batch, attack_rng, config=config, spec=spec)
  x, y = adversarial["image"], adversarial["label"]
  model = models.build(config.model, spec.num_classes)

  def loss_fn(params):
    logits, model_state = supervised.train_forward(model, state, params, x, dropout_rng)
    margins = jax.lax.stop_gradient(losses.logit_margin(logits, y))
    use_ovr = switched(margins, config)
    per_example = jnp.where(use_ovr, losses.one_vs_rest(logits, y),
                            losses.cross_entropy(logits, y))
    metrics = {"accuracy": losses.correct(logits, y).mean(), "margin": margins.mean(),
               "ovr_fraction": use_ovr.mean()}
    return per_example.mean(), (logits, model_state, metrics)

  return _loss_step(state, loss_fn, config)


# -- importance-weighted CE (GAIRAT, MAIL) ----------------------------------------------

def gairat_weights(logits, labels, correct_steps, config):
  del logits, labels
  k = config.adv.steps
  u = config.importance.gairat_lambda + 5.0 * (1.0 - 2.0 * correct_steps / k)
  return jax.nn.sigmoid(2.0 * u)  # = (1 + tanh(u)) / 2 without float32 cancellation


def mail_weights(logits, labels, correct_steps, config):
  del correct_steps
  margin = losses.logit_margin(jax.nn.softmax(logits), labels)
  return jax.nn.sigmoid(-config.importance.mail_gamma * (margin - config.importance.mail_beta))


def importance_step(state: TrainState, batch, rng: jax.Array, *, config, spec: tasks.Spec,
                    weighting: str):
  if weighting not in WEIGHTINGS:
    raise unknown("importance weighting", weighting, WEIGHTINGS)
  weights_fn = gairat_weights if weighting == "gairat" else mail_weights
  a = config.adv
  attack_rng, dropout_rng = jax.random.split(rng)
  x, y = batch["image"], batch["label"]
  x_adv, correct_steps = attacks.pgd(
      logits_fn(state, config, spec, a.attack_train_mode), x, y, attack_rng,
      eps=a.train_eps, step_size=a.step_size, steps=a.steps, count_correct_steps=True)
  x_adv = jax.lax.stop_gradient(x_adv)
  model = models.build(config.model, spec.num_classes)
  burned_in = state.step >= int(config.importance.burn_in * config.train.steps)

  def loss_fn(params):
    logits, model_state = supervised.train_forward(model, state, params, x_adv, dropout_rng)
    raw = jax.lax.stop_gradient(weights_fn(logits, y, correct_steps, config))
    weights = jnp.where(burned_in, raw / jnp.maximum(raw.mean(), 1e-12), 1.0)
    loss = jnp.mean(weights * losses.cross_entropy(logits, y))
    metrics = {"accuracy": losses.correct(logits, y).mean(), "weight_max": weights.max(),
               "weight_min": weights.min()}
    return loss, (logits, model_state, metrics)

  return _loss_step(state, loss_fn, config,
                    correct_steps=correct_steps.mean(dtype=jnp.float32))


VARIANTS = {
    "pgd_at": Variant(blocks=("adv",)),
    "trades": Variant(blocks=("adv",), functions={"train_step": trades_step}),
    "sovr": Variant(blocks=("adv", "sovr"), functions={"train_step": sovr_step}),
    "gairat": Variant(weighting="gairat", blocks=("adv", "importance"),
                      functions={"train_step": importance_step}),
    "mail": Variant(weighting="mail", blocks=("adv", "importance"),
                    functions={"train_step": importance_step}),
}
