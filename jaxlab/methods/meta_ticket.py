"""`meta_ticket`: meta-learning a sparse subnetwork of a random network (Chijiwa, Yamaguchi,
Kumagai, Ida, NeurIPS 2022, arXiv 2205.15619).

Spec: shared/methods/meta_learning_and_sparse.md §2, following the official code:
  * the random weights W of the masked kernels (all kernels but the head by default)
    are never meta-learned; only their scores S are (SGD, momentum 0.9, lr 10 with a
    warm-up + cosine schedule in the references);
  * mask m = 1[S >= tau_l] with tau_l fixed once from the initial scores
    (`supermask.policy=fixed_threshold`, `supermask.sparsity` = init_sparsity q; with
    q = 0 the ticket starts dense and sparsity emerges), straight-through gradient;
  * per task, MAML's inner loop adapts the surviving weights and the other parameters
    phi (BatchNorm, biases, the head) on the support set: inner gradients reach W
    through the mask, so pruned entries get exactly zero inner gradient;
  * the outer gradient w.r.t. S flows through the query loss and through every inner
    step (second order unless `fomaml`-style `meta_ticket.first_order`);
  * the head stays at its random initialisation: it is inner-adapted but not
    meta-learned, unless listed in `meta_ticket.aux` (path keywords of phi leaves that
    are meta-learned with `aux_optimizer`, as in the sinusoid hybrid);
  * optional IteRand-style re-randomisation of pruned weights every
    `supermask.rerand_period` steps with rate `supermask.rerand_rate` (off at rate 0).
`meta.inner_frozen` is MT's `no_update_keywords` ("head" gives Meta-ticket+BOIL).
The threshold policy can be switched to a top-k rule (`supermask.policy`), the
alternative §2(h)1 mentions.
"""

import jax
import jax.numpy as jnp
import optax

from jaxlab import models
from jaxlab.data import tasks
from jaxlab.methods import _maml_core
from jaxlab.models import supermask
from jaxlab.train import optim
from jaxlab.train.state import TrainState

make_task = _maml_core.make_task


def _keywords(text: str):
  return [k.strip() for k in text.split(",") if k.strip()]


def init(config, rng: jax.Array, spec: tasks.Spec) -> TrainState:
  # the weights come from the same key as `maml`'s init, so both start from one network
  model = models.build(config.model, spec.num_classes)
  variables = model.init(rng, jnp.zeros((2,) + tuple(spec.input_shape)), train=True)
  weights = variables["params"]
  paths = supermask.select(weights, config.supermask.include, config.supermask.exclude)
  scores = supermask.init_scores(jax.random.fold_in(rng, 1), weights, paths)
  aux_words = _keywords(config.meta_ticket.aux)
  flat = supermask.flatten(weights)
  aux = {p: v for p, v in flat.items() if p not in scores and any(k in p for k in aux_words)}
  params = {"scores": scores, "aux": aux}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    model_state={"weights": weights,
                                 "thresholds": supermask.thresholds(scores, config.supermask.sparsity)},
                    opt_state=make_optimizer(config).init(params))


def make_optimizer(config) -> optax.GradientTransformation:
  """Scores with `config.optimizer`, meta-learned auxiliary parameters with `aux_optimizer`."""
  return optax.multi_transform(
      {"scores": optim.make_optimizer(config.optimizer, config.train.steps),
       "aux": optim.make_optimizer(config.aux_optimizer, config.train.steps)},
      {"scores": "scores", "aux": "aux"})


def current_masks(params, model_state, config):
  return supermask.masks(params["scores"], config.supermask.policy, config.supermask.sparsity,
                         model_state["thresholds"])


def _inner_start(params, weights):
  """The inner loop starts from the random weights, with meta-learned aux leaves swapped in."""
  flat = supermask.flatten(weights)
  flat.update(params["aux"])
  return supermask.unflatten(flat)


def train_step(state: TrainState, batch, rng: jax.Array, *, config, spec: tasks.Spec):
  cfg = config.supermask
  weights = supermask.rerandomize_on_schedule(
      rng, state.step, state.model_state["weights"],
      lambda: current_masks(state.params, state.model_state, config), period=cfg.rerand_period,
      rate=cfg.rerand_rate, init=config.model.weight_init)

  def meta_loss(params):
    layer_masks = current_masks(params, state.model_state, config)
    to_model = lambda p: supermask.apply(p, layer_masks)
    per_task = lambda task: _maml_core.adapt_and_evaluate(
        _inner_start(params, weights), task, config=config, spec=spec,
        steps=config.meta.train_steps, first_order=config.meta_ticket.first_order, adapt="all",
        inner_lr=config.meta.inner_lr, to_model=to_model)
    loss, metrics, _ = _maml_core.over_tasks(per_task, batch, _maml_core.task_parallel(config),
                                             config.meta.task_groups)
    sparsity = supermask.sparsity(layer_masks)
    return loss.mean(), ({k: v.mean() for k, v in metrics.items()}, sparsity)

  (loss, (aux_metrics, sparsity)), grads = jax.value_and_grad(meta_loss, has_aux=True)(state.params)
  updates, opt_state = make_optimizer(config).update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, **aux_metrics, "grad_norm": optax.tree.norm(grads),
             **{f"sparsity/{k}": v for k, v in sparsity.items()}}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                       model_state={**state.model_state, "weights": weights}), metrics


def eval_step(state: TrainState, batch, *, config, spec: tasks.Spec):
  layer_masks = current_masks(state.params, state.model_state, config)
  return _maml_core.evaluate_episodes(
      _inner_start(state.params, state.model_state["weights"]), batch, config=config, spec=spec,
      adapt="all", inner_lr=config.meta.inner_lr,
      to_model=lambda p: supermask.apply(p, layer_masks))

