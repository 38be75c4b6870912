"""`edge_popup`: finding a strong lottery ticket in a random network (Ramanujan, Wortsman,
Kembhavi, Farhadi, Rastegari, CVPR 2020, arXiv 1911.13299).

The weights keep their random initial values; only one score per weight is trained
(SGD on the scores), and each masked layer computes with the weights whose scores
survive the threshold policy (`jaxlab.models.supermask`; edge-popup: per-layer top-k
of |score|). IteRand (`iterand`) is this step plus periodic re-randomisation of pruned
weights. Spec: shared/methods/meta_learning_and_sparse.md §3.

Config (`config.supermask`): policy, sparsity (fraction pruned per layer), include /
exclude (path keywords of the masked kernels; default every kernel, the head
included, as IteRand's `linear_sparsity` = conv sparsity), rerand_period (K_per,
steps; 0 = never), rerand_rate (r). Weights are drawn with `model.weight_init`
(kaiming_uniform or signed_constant in the references), re-randomised from the
same distribution. Biases (zero) and BatchNorm are left out of the search.
"""

import jax
import jax.numpy as jnp
import optax

from jaxlab import models
from jaxlab.data import tasks
from jaxlab.models import supermask
from jaxlab.train import losses, optim
from jaxlab.train.state import TrainState


def make_task(config, num_devices: int = 1) -> tasks.SupervisedTask:
  return tasks.SupervisedTask(config, num_devices)


def init(config, rng: jax.Array, spec: tasks.Spec) -> TrainState:
  model = models.build(config.model, spec.num_classes)
  weight_key, score_key = jax.random.split(rng)
  variables = dict(model.init(weight_key, jnp.zeros((2,) + tuple(spec.input_shape)), train=False))
  weights = variables.pop("params")
  paths = supermask.select(weights, config.supermask.include, config.supermask.exclude)
  params = {"scores": supermask.init_scores(score_key, weights, paths)}
  tx = optim.make_optimizer(config.optimizer, config.train.steps)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    model_state={"weights": weights, **variables}, opt_state=tx.init(params))


def current_masks(scores, config):
  return supermask.masks(scores, config.supermask.policy, config.supermask.sparsity)


def maybe_rerandomize(state: TrainState, rng: jax.Array, config):
  """IteRand's step: before the forward pass of step t with (t + 1) % K_per == 0."""
  cfg = config.supermask
  return supermask.rerandomize_on_schedule(
      rng, state.step, state.model_state["weights"],
      lambda: current_masks(state.params["scores"], config), period=cfg.rerand_period,
      rate=cfg.rerand_rate, init=config.model.weight_init)


def train_step(state: TrainState, batch, rng: jax.Array, *, config, spec: tasks.Spec):
  model = models.build(config.model, spec.num_classes)
  rerand_key, dropout_key = jax.random.split(rng)
  weights = maybe_rerandomize(state, rerand_key, config)
  others = {k: v for k, v in state.model_state.items() if k != "weights"}

  def loss_fn(params):
    layer_masks = current_masks(params["scores"], config)
    effective = supermask.apply(weights, layer_masks)
    logits, new_state = model.apply({"params": effective, **others}, batch["image"], train=True,
                                    mutable=list(others), rngs={"dropout": dropout_key})
    loss = losses.cross_entropy(logits, batch["label"], config.train.label_smoothing).mean()
    return loss, (logits, dict(new_state), layer_masks)

  (loss, (logits, new_state, layer_masks)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  tx = optim.make_optimizer(config.optimizer, config.train.steps)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "accuracy": losses.correct(logits, batch["label"]).mean(),
             "grad_norm": optax.tree.norm(grads),
             "sparsity": supermask.sparsity(layer_masks)["all"]}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                       model_state={"weights": weights, **new_state}), metrics


def eval_step(state: TrainState, batch, *, config, spec: tasks.Spec):
  model = models.build(config.model, spec.num_classes)
  others = {k: v for k, v in state.model_state.items() if k != "weights"}
  effective = supermask.apply(state.model_state["weights"],
                              current_masks(state.params["scores"], config))
  logits = model.apply({"params": effective, **others}, batch["image"], train=False)
  return {"accuracy": losses.correct(logits, batch["label"]),
          "loss": losses.cross_entropy(logits, batch["label"])}
