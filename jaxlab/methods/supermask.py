"""Strong lottery tickets: supermasks over random weights that are never trained.

Papers and variants:
  `edge_popup`   Ramanujan, Wortsman, Kembhavi, Farhadi, Rastegari, CVPR 2020 (arXiv
                 1911.13299): one score per weight is trained (SGD on the scores); each masked
                 layer computes with the weights whose scores survive the threshold policy
                 (`jaxlab.models.supermask`; edge-popup: per-layer top-k of |score|);
  `iterand`      IteRand, Chijiwa, Yamaguchi, Ida, Umakoshi, Inoue, NeurIPS 2021 (arXiv
                 2106.09269): edge-popup's step, and every K_per steps
                 (`supermask.rerand_period`), before the forward pass, a random fraction r
                 (`supermask.rerand_rate`) of the currently pruned weights of every masked
                 layer is re-drawn from the initial distribution (B5); IteRand's presets rank
                 raw scores (`supermask.policy=topk_raw`);
  `frozen_slt`   Otsuka, Chijiwa et al., TMLR 2025 (arXiv 2402.14029): edge-popup in a
                 partially frozen network. A ternary mask F per layer, drawn from the seed
                 (`supermask.freeze_prune` p of the weights always pruned,
                 `supermask.freeze_lock` r always kept, `supermask.freeze_dist` uniform | erk
                 per layer), and the global |score| threshold of the official code
                 (`supermask.policy=global_abs`, sparsity s over all masked layers): only the
                 free weights are searched and stored (`ticket.npz`, (1 - p - r) N bits);
                 scores kaiming_normal as the code;
  `meta_ticket`  Meta-ticket, Chijiwa, Yamaguchi, Kumagai, Ida, NeurIPS 2022 (arXiv
                 2205.15619): a supermask meta-learned through MAML's inner loop.
Bound option: `rerandomize` (edge_popup False, iterand True); meta_ticket has its own task,
init and steps (episodic, `jaxlab.meta.episodic`).
Spec: docs/specs/meta_learning_and_sparse.md §3 (edge-popup, IteRand) and §2 (Meta-ticket).

edge_popup / iterand config (`config.supermask`): policy, sparsity (fraction pruned per
layer), include / exclude (path keywords of the masked kernels; default every kernel, the head
included, as IteRand's `linear_sparsity` = conv sparsity), rerand_period (K_per, steps),
rerand_rate (r), score_init ("": edge_popup's U(+-1/sqrt(fan_in)) or iterand's
U(+-sqrt(6/fan_in)), as each reference draws them). Weights are drawn with `model.weight_init`
(kaiming_uniform or signed_constant in the references), re-randomised from the same
distribution. Biases (zero) and BatchNorm are left out of the search.

meta_ticket, following the official code (§2):
  * the random weights W of the masked kernels (all kernels but the head by default) are
    never meta-learned; only their scores S are (SGD, momentum 0.9, lr 10 with a warm-up +
    cosine schedule in the references);
  * mask m = 1[S >= tau_l] with tau_l fixed once from the initial scores
    (`supermask.policy=fixed_threshold`, `supermask.sparsity` = init_sparsity q; with q = 0
    the ticket starts dense and sparsity emerges), straight-through gradient;
  * per task, MAML's inner loop (`jaxlab.meta.episodic`) adapts the surviving weights and the
    other parameters phi (BatchNorm, biases, the head) on the support set: inner gradients
    reach W through the mask, so pruned entries get exactly zero inner gradient;
  * the outer gradient w.r.t. S flows through the query loss and through every inner step
    (second order unless `meta_ticket.first_order`);
  * the head stays at its random initialisation: it is inner-adapted but not meta-learned,
    unless listed in `meta_ticket.aux` (path keywords of phi leaves that are meta-learned
    with `aux_optimizer`, as in the sinusoid hybrid);
  * optional IteRand-style re-randomisation of pruned weights every
    `supermask.rerand_period` steps with rate `supermask.rerand_rate` (off at rate 0), done
    as MT does: after the optimizer step, with the mask of the updated scores;
  * scores drawn kaiming_uniform U(+-sqrt(6/fan_in)); the score lr warms up as
    lr (t + 1) / (W + 1) (`optimizer.warmup_offset=1` in configs/meta_ticket.py).
  `meta.inner_frozen` is MT's `no_update_keywords` ("head" gives Meta-ticket+BOIL). The
  threshold policy can be switched to a top-k rule (`supermask.policy`), the alternative
  §2(h)1 mentions.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlab import models
from jaxlab.data import episodes, tasks
from jaxlab.errors import UserError
from jaxlab.meta import episodic
from jaxlab.models import supermask
from jaxlab.train import losses, optim
from jaxlab.train.protocol import Variant
from jaxlab.train.state import TrainState

make_task = tasks.supervised


def score_initialiser(config, reference: str) -> str:
  """`supermask.score_init`, or the variant's reference initialiser when it is empty."""
  return config.supermask.get("score_init", "") or reference


def init(config, rng: jax.Array, spec: tasks.Spec, *, rerandomize: bool,
         score_init: str, freeze: bool = False) -> TrainState:
  cfg = config.supermask
  prune, lock = cfg.get("freeze_prune", 0.0), cfg.get("freeze_lock", 0.0)
  if not freeze and (prune or lock):
    raise UserError(f"supermask.freeze_prune={prune} / freeze_lock={lock} freeze part of the "
                    "network: use method=frozen_slt, or set them to 0")
  if freeze and cfg.policy != "global_abs":
    raise UserError("frozen_slt thresholds globally: set supermask.policy=global_abs (it is "
                    f"{cfg.policy!r})")
  scheduled = cfg.rerand_period > 0 and cfg.rerand_rate > 0
  if rerandomize and not scheduled:
    raise UserError("iterand needs supermask.rerand_period > 0 and supermask.rerand_rate > 0 "
                    "(with either at 0 it is edge_popup)")
  if scheduled and not rerandomize:
    raise UserError("edge_popup never re-randomises weights, but supermask.rerand_period and "
                    "supermask.rerand_rate are set: use method=iterand, or set them to 0")
  model = models.build(config.model, spec.num_classes)
  weight_key, score_key = jax.random.split(rng)
  variables = dict(model.init(weight_key, jnp.zeros((2,) + tuple(spec.input_shape)), train=False))
  weights = variables.pop("params")
  paths = supermask.select(weights, cfg.include, cfg.exclude)
  params = {"scores": supermask.init_scores(score_key, weights, paths,
                                            score_initialiser(config, score_init))}
  if freeze:  # F from its own key: the weights and scores are edge_popup's for the same seed
    shapes = {p: params["scores"][p].shape for p in paths}
    variables["frozen"] = supermask.freeze_masks(
        jax.random.fold_in(rng, 7), shapes, prune, lock, cfg.get("freeze_dist", "uniform"))
  tx = optim.make_optimizer(config.optimizer, config.train.steps)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    model_state={"weights": weights, **variables}, opt_state=tx.init(params))


def _topk_masks(scores, config, frozen=None):
  return supermask.masks(scores, config.supermask.policy, config.supermask.sparsity,
                         frozen=frozen)


def _model_collections(model_state):
  """The model's own collections (BatchNorm statistics), without the weights and F."""
  return {k: v for k, v in model_state.items() if k not in ("weights", "frozen")}


def _rerandomized(state: TrainState, rng: jax.Array, config, current_masks):
  """B5 at step t with (t + 1) % K_per == 0 (IteRand: before the forward pass; Meta-ticket:
  after the update)."""
  cfg = config.supermask
  return supermask.rerandomize_on_schedule(
      rng, state.step, state.model_state["weights"], current_masks, period=cfg.rerand_period,
      rate=cfg.rerand_rate, init=config.model.weight_init)


def train_step(state: TrainState, batch, rng: jax.Array, *, config, spec: tasks.Spec,
               rerandomize: bool):
  model = models.build(config.model, spec.num_classes)
  rerand_key, dropout_key = jax.random.split(rng)
  weights = state.model_state["weights"]
  if rerandomize:
    weights = _rerandomized(state, rerand_key, config,
                            lambda: _topk_masks(state.params["scores"], config))
  others = _model_collections(state.model_state)
  frozen = state.model_state.get("frozen")

  def loss_fn(params):
    layer_masks = _topk_masks(params["scores"], config, frozen)
    effective = supermask.apply(weights, layer_masks)
    logits, new_state = model.apply({"params": effective, **others}, batch["image"], train=True,
                                    mutable=list(others), rngs={"dropout": dropout_key})
    loss = losses.cross_entropy(logits, batch["label"], config.train.label_smoothing).mean()
    return loss, (logits, dict(new_state), layer_masks)

  (loss, (logits, new_state, layer_masks)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  metrics = {"loss": loss, "accuracy": losses.correct(logits, batch["label"]).mean(),
             "grad_norm": optax.tree.norm(grads),
             "sparsity": supermask.sparsity(layer_masks)["all"]}
  kept = {"frozen": frozen} if frozen is not None else {}
  return optim.apply_gradients(state, grads, config,
                               model_state={"weights": weights, **new_state, **kept}), metrics


def eval_step(state: TrainState, batch, key: jax.Array, *, config, spec: tasks.Spec):
  model = models.build(config.model, spec.num_classes)
  others = _model_collections(state.model_state)
  effective = supermask.apply(state.model_state["weights"], _topk_masks(
      state.params["scores"], config, state.model_state.get("frozen")))
  logits = model.apply({"params": effective, **others}, batch["image"], train=False)
  return {"accuracy": losses.correct(logits, batch["label"]),
          "loss": losses.cross_entropy(logits, batch["label"])}


def ticket_report(state: TrainState, task, workdir: str, *, config, spec: tasks.Spec,
                  write_files: bool):
  """frozen_slt: the ticket's size and `ticket.npz` (the seed and the free entries' mask bits,
  from which `jaxlab.models.supermask.unpack_ticket` and the seed's F and weights rebuild the
  masked network; BatchNorm statistics are not counted, spec §4(h)2)."""
  del task, spec
  frozen = jax.device_get(state.model_state["frozen"])
  hard = jax.device_get(_topk_masks(state.params["scores"], config, frozen))
  total = sum(f.size for f in frozen.values())
  bits = supermask.free_bits(frozen)
  results = {
      "ticket/weights": float(total), "ticket/mask_bits": float(bits),
      "ticket/pruned_frozen": float(sum((f < 0).sum() for f in frozen.values())) / total,
      "ticket/locked": float(sum((f > 0).sum() for f in frozen.values())) / total,
      "ticket/sparsity": 1.0 - float(sum(m.sum() for m in hard.values())) / total,
      "ticket/compression_vs_dense_slt": total / max(bits, 1),
      "ticket/compression_vs_trained": 32.0 * total / max(bits, 1)}
  if write_files:
    np.savez(os.path.join(workdir, "ticket.npz"), seed=np.int64(config.seed),
             bits=supermask.pack_ticket(hard, frozen))
  return results


# -- Meta-ticket ----------------------------------------------------------------------------

def _keywords(text: str):
  return [k.strip() for k in text.split(",") if k.strip()]


def ticket_init(config, rng: jax.Array, spec: tasks.Spec) -> TrainState:
  # the weights come from the same key as `maml`'s init, so both start from one network
  model = models.build(config.model, spec.num_classes)
  variables = model.init(rng, jnp.zeros((2,) + tuple(spec.input_shape)), train=True)
  weights = variables["params"]
  paths = supermask.select(weights, config.supermask.include, config.supermask.exclude)
  scores = supermask.init_scores(jax.random.fold_in(rng, 1), weights, paths,
                                 score_initialiser(config, "kaiming_uniform"))
  aux_words = _keywords(config.meta_ticket.aux)
  flat = supermask.flatten(weights)
  aux = {p: v for p, v in flat.items() if p not in scores and any(k in p for k in aux_words)}
  params = {"scores": scores, "aux": aux}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    model_state={"weights": weights, "thresholds": supermask.thresholds(
                        scores, config.supermask.sparsity)},
                    opt_state=_ticket_optimizer(config).init(params))


def _ticket_optimizer(config) -> optax.GradientTransformation:
  """Scores with `config.optimizer`, meta-learned auxiliary parameters with `aux_optimizer`."""
  return optax.multi_transform(
      {"scores": optim.make_optimizer(config.optimizer, config.train.steps),
       "aux": optim.make_optimizer(config.aux_optimizer, config.train.steps)},
      {"scores": "scores", "aux": "aux"})


def _ticket_masks(params, model_state, config):
  return supermask.masks(params["scores"], config.supermask.policy, config.supermask.sparsity,
                         model_state["thresholds"])


def _inner_start(params, weights):
  """The inner loop starts from the random weights, with meta-learned aux leaves swapped in."""
  flat = supermask.flatten(weights)
  flat.update(params["aux"])
  return supermask.unflatten(flat)


def ticket_step(state: TrainState, batch, rng: jax.Array, *, config, spec: tasks.Spec):
  weights = state.model_state["weights"]

  def meta_loss(params):
    layer_masks = _ticket_masks(params, state.model_state, config)
    to_model = lambda p: supermask.apply(p, layer_masks)
    per_task = lambda task: episodic.adapt_and_evaluate(
        _inner_start(params, weights), task, config=config, spec=spec,
        steps=config.meta.train_steps, first_order=config.meta_ticket.first_order, adapt="all",
        inner_lr=config.meta.inner_lr, to_model=to_model)
    loss, metrics, _ = episodic.over_tasks(per_task, batch, episodic.task_parallel(config),
                                           config.meta.task_groups)
    sparsity = supermask.sparsity(layer_masks)
    return loss.mean(), ({k: v.mean() for k, v in metrics.items()}, sparsity)

  (loss, (aux_metrics, sparsity)), grads = jax.value_and_grad(meta_loss, has_aux=True)(state.params)
  metrics = {"loss": loss, **aux_metrics, "grad_norm": optax.tree.norm(grads),
             **{f"sparsity/{k}": v for k, v in sparsity.items()}}
  new_state = optim.apply_gradients(state, grads, config, tx=_ticket_optimizer(config))
  # MT re-randomises after the optimizer step, with the mask of the updated scores
  weights = _rerandomized(state, rng, config,
                          lambda: _ticket_masks(new_state.params, state.model_state, config))
  return new_state.replace(model_state={**state.model_state, "weights": weights}), metrics


def ticket_eval_step(state: TrainState, batch, key: jax.Array, *, config, spec: tasks.Spec):
  layer_masks = _ticket_masks(state.params, state.model_state, config)
  return episodic.evaluate_episodes(
      _inner_start(state.params, state.model_state["weights"]), batch, config=config,
      spec=spec, adapt="all", inner_lr=config.meta.inner_lr,
      to_model=lambda p: supermask.apply(p, layer_masks))


VARIANTS = {
    "edge_popup": Variant(rerandomize=False, score_init="torch", blocks=("supermask",)),
    "iterand": Variant(rerandomize=True, score_init="kaiming_uniform", blocks=("supermask",)),
    "frozen_slt": Variant(rerandomize=False, score_init="kaiming_normal", freeze=True,
                          blocks=("supermask",), functions={"report": ticket_report}),
    "meta_ticket": Variant(
        blocks=("supermask", "meta", "episodes", "meta_ticket", "aux_optimizer"),
        functions=dict(make_task=episodes.make_task, init=ticket_init, train_step=ticket_step,
                       eval_step=ticket_eval_step)),
}
