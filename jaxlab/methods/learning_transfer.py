"""Learning-trajectory transfer: GMT and FGMT (Chijiwa, ICLR 2024, arXiv 2305.14122).

Spec: meta_learning_and_sparse.md §5, from the official code (dchiji-ntt/learning-transfer).
Given a source run's trajectory theta^s_0 -> ... -> theta^s_T and a new initialisation
theta^tau_0 (this run's own: the same weights an `erm` run of this seed and model starts
from), the transferred trajectory for a permutation pi of the hidden units is

  theta_t(pi) = theta^tau_0 + pi(theta^s_t - theta^s_0),

and pi is found by matching gradients along it (no training of the target):

  pi_s = argmax_pi sum_{t < s} <g^tau_t(pi_{s-1}), pi g^s_t>,   g = grad of the mean
         cross-entropy on shared minibatches, g^tau_t(pi) at theta_t(pi), g^s_t at theta^s_t,

i.e. argmin of sum_t ||g^tau_t - pi g^s_t||^2, a sum of weight-matching problems solved by the
merging library's coordinate ascent (`jaxlab.merge.matching.weight_matching` over the stack
of gradient pairs; re-solved from the identity every step as the code, warm-started with
`transfer.warm_start`, the code's `wm_use_prev_perm`).

Variants (bound option `mode`):
  `transfer_gmt`    GMT: at step s the s target gradients are recomputed under pi_{s-1}
                    (O(T^2) gradient evaluations).
  `transfer_fgmt`   FGMT: only the newest pair (t = s - 1) is computed; older pairs are kept
                    from when they were new (O(T)).
  `transfer_naive`  pi = identity throughout.
  `transfer_oracle` pi = weight matching of the target's actual total update
                    (`inputs.target`: the trained target run, of this run's seed) against the
                    source's, one pair; an upper reference that needs the real target run.

One run is one pass along the trajectory in the one training loop: step s (1..T) moves to
theta_s(pi_s); `train.steps` is -1 (the trajectory's length T) or T itself, and with
`train.eval_every` 1 each point's validation accuracy is logged; `train.select_by`
"max:validation/accuracy" picks theta_best as the code's `branch_at_best`. The report writes
`best.npz` (theta_best, or the last point without a selection) and `final.npz`, each a weights
file that `init_from` reads: fine-tuning after transfer (`epoch_ft`, `lr_ft` of the code) is an
`erm` run from it (configs/learning_transfer.py:digits_ft), from-scratch training the same run
without `init_from`.

The source trajectory (`inputs.source`) is what a run kept with `train.keep_schedule`
(`jaxlab.train.checkpoint`), as points `transfer.checkpoints` = "ends" (its first and last:
the linear trajectory of every experiment of the paper) or "all" (every kept point, the
"actual trajectory" ablation); each segment between two points is split into
`transfer.num_splits` steps with the code's cosine schedule lambda_u = sum_{v<u} g(v) /
sum_{v<n} g(v), g(v) = 1 + cos(pi v / n) (`transfer.schedule` "uniform": u / n).

BatchNorm: the gradients are taken in train mode (batch statistics), as the code; the running
statistics of each new point are re-estimated on `transfer.bn_stats_iters` training batches
(cumulative average, `jaxlab.merge.repair`), which a model with BatchNorm requires. Nothing is
differentiated through pi or the transfer.

Metrics per step: `lam` (the point's interpolation weight within its segment), `units_moved`
(the fraction of hidden units pi_s moves), and at the newest point t = s - 1 the gradient
mismatch ||g^tau - pi g^s||^2 / (||g^tau||^2 + ||g^s||^2) under pi_s (`grad_mismatch`) and
under the identity (`grad_mismatch_identity`). GMT and FGMT also log the matched objective
sum_t ||g^tau_t - pi g^s_t||^2 over the pairs they match, before (`match/before`, pi_{s-1})
and after (`match/after`, pi_s) the solve.
"""

import json
import os
from typing import Any, Dict, List

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxlab import models
from jaxlab.data import augment, tasks
from jaxlab.errors import UserError, unknown
from jaxlab.eval import classification
from jaxlab.merge import matching, permutation, repair
from jaxlab.train import inputs, losses
from jaxlab.train.checkpoint import save_variables, trajectory_steps
from jaxlab.train.protocol import Variant
from jaxlab.train.state import TrainState

MODES = ("gmt", "fgmt", "naive", "oracle")
SCHEDULES = ("cosine", "uniform")
CHECKPOINTS = ("ends", "all")


def _choose_points(config, kept: List[int]) -> List[int]:
  """The source's kept steps that form the trajectory (`transfer.checkpoints`)."""
  which = config.transfer.checkpoints
  if which not in CHECKPOINTS:
    raise unknown("source trajectory points (transfer.checkpoints)", which, CHECKPOINTS)
  if len(kept) < 2:
    raise UserError(f"inputs.source kept only step {kept}: a trajectory needs at least its "
                    "initialisation and one later point (train.keep_schedule='ends')")
  return [kept[0], kept[-1]] if which == "ends" else kept


SOURCE = inputs.trajectory("source", "the source run (kept trajectory)", _choose_points)
TARGET = inputs.own_model("target", "the trained target run (the oracle's reference)")

VARIANTS = {
    "transfer_gmt": Variant(mode="gmt", inputs=(SOURCE,), blocks=("transfer",)),
    "transfer_fgmt": Variant(mode="fgmt", inputs=(SOURCE,), blocks=("transfer",)),
    "transfer_naive": Variant(mode="naive", inputs=(SOURCE,), blocks=("transfer",)),
    "transfer_oracle": Variant(mode="oracle", inputs=(SOURCE, TARGET), blocks=("transfer",)),
}


# -- the trajectory ---------------------------------------------------------------------------


def segment_weights(n: int, schedule: str) -> np.ndarray:
  """lambda_0..lambda_n of one segment split into n steps (0 and 1 at the ends)."""
  if schedule not in SCHEDULES:
    raise unknown("trajectory schedule (transfer.schedule)", schedule, SCHEDULES)
  if schedule == "uniform":
    return np.arange(n + 1) / n
  g = 1.0 + np.cos(np.pi * np.arange(n) / n)
  return np.concatenate([[0.0], np.cumsum(g) / g.sum()])


def point_table(num_points: int, n: int, schedule: str):
  """(segment, lambda) of the trajectory's points t = 0..T, T = (num_points - 1) n."""
  lam = segment_weights(n, schedule)
  total = (num_points - 1) * n
  segment = np.minimum(np.arange(total + 1) // n, num_points - 2)
  within = np.arange(total + 1) - segment * n
  return segment.astype(np.int32), lam[within].astype(np.float32)


def num_points(config) -> int:
  return len(_choose_points(config, trajectory_steps(config.inputs.source, "inputs.source")))


def trajectory_length(config) -> int:
  return (num_points(config) - 1) * config.transfer.num_splits


# -- data -------------------------------------------------------------------------------------


class TransferTask(tasks.SupervisedTask):
  """The training split as minibatches for gradients (`gm_iters` per pair, one slot per pair
  the step computes: s <= T for GMT, 1 otherwise) and for BatchNorm statistics; T steps."""

  def __init__(self, config, num_devices: int = 1, *, mode: str):
    super().__init__(config, num_devices)
    self.fixed_steps = trajectory_length(config)
    self.slots = self.fixed_steps if mode == "gmt" else 1
    self.gm_iters = config.transfer.gm_iters
    self.bn_iters = config.transfer.bn_stats_iters

  def train_batch(self, data, key: jax.Array, step: jax.Array):
    per_step = self.slots * self.gm_iters + self.bn_iters
    draws = step * per_step + jnp.arange(per_step)
    batches = jax.vmap(lambda i: super(TransferTask, self).train_batch(data, key, i))(draws)
    grads = jax.tree.map(lambda x: x[:self.slots * self.gm_iters].reshape(
        (self.slots, self.gm_iters) + x.shape[1:]), batches)
    return {**grads, "bn_image": batches["image"][self.slots * self.gm_iters:]}


def _check_runs(config, mode: str) -> None:
  """A source or target of another model, or a target of another seed, is one line."""
  runs = [("source", config.inputs.source)]
  if mode == "oracle":
    runs.append(("target", config.inputs.get("target", "")))
  for name, workdir in runs:
    path = os.path.join(workdir, "config.json")
    if not workdir or not os.path.exists(path):
      continue
    with open(path) as f:
      saved = json.load(f)
    mine = json.loads(json.dumps(config.model.to_dict()))
    if saved.get("model") != mine:
      raise UserError(f"inputs.{name} trained model {saved.get('model')} but this run "
                      f"transfers into {mine}: use the same config.model")
    if name == "target" and saved.get("seed") != config.seed:
      raise UserError(f"inputs.target was trained from seed {saved.get('seed')}, this run "
                      f"starts from seed {config.seed}: the oracle needs the target's own "
                      f"initialisation; set seed={saved.get('seed')}")


def make_task(config, num_devices: int = 1, *, mode: str) -> TransferTask:
  t = config.transfer
  if t.num_splits < 1 or t.gm_iters < 1 or t.bn_stats_iters < 0 or t.max_sweeps < 0:
    raise UserError(f"transfer.num_splits={t.num_splits} and transfer.gm_iters={t.gm_iters} "
                    f"must be >= 1, transfer.bn_stats_iters={t.bn_stats_iters} and "
                    f"transfer.max_sweeps={t.max_sweeps} >= 0")
  segment_weights(1, t.schedule)
  if not config.inputs.get("source", ""):
    raise UserError(f"transfer_{mode} needs --config.inputs.source: the workdir of the source "
                    "run, trained with train.keep_schedule")
  total = trajectory_length(config)
  if config.train.steps not in (-1, total):
    raise UserError(f"train.steps={config.train.steps} but the source trajectory has {total} "
                    f"steps ({num_points(config) - 1} segments x transfer.num_splits="
                    f"{t.num_splits}): set train.steps=-1 (its length) or {total}")
  _check_runs(config, mode)
  task = TransferTask(config, num_devices, mode=mode)
  model = _model(config, task.spec)
  like = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                           jnp.zeros((2,) + task.spec.input_shape)))
  if repair.has_batch_stats(like) and t.bn_stats_iters == 0:
    raise UserError(f"model {config.model.name!r} has BatchNorm statistics: set "
                    "transfer.bn_stats_iters >= 1 (training batches to re-estimate them at "
                    "every transferred point; the code uses 2-20)")
  return task


# -- state ------------------------------------------------------------------------------------


@flax.struct.dataclass(kw_only=True)
class TransferState(TrainState):
  origin: Any         # theta^tau_0: this run's initial params
  perms: Any          # pi_s {group: [n]}
  history: Any        # {group: [T + 1, n]}: pi_s of every step (pi_0 = identity)
  cache_target: Any   # [pairs, ...] target gradients (GMT, FGMT); {} otherwise
  cache_source: Any   # [pairs, ...] source gradients


def _model(config, spec: tasks.Spec):
  return models.build(config.model, spec.num_classes)


def permutation_spec(config, spec: tasks.Spec) -> permutation.Spec:
  """The hidden-unit permutations of the model, restricted to its params."""
  model = _model(config, spec)
  like = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                           jnp.zeros((2,) + tuple(spec.input_shape))))
  return permutation.derive(model, like, spec.input_shape).within("params")


def init(config, rng: jax.Array, spec: tasks.Spec, *, mode: str) -> TransferState:
  model = _model(config, spec)
  # the same call as `erm`'s init: one seed, one theta^tau_0
  variables = dict(model.init(rng, jnp.zeros((2,) + tuple(spec.input_shape)), train=False))
  params = variables.pop("params")
  pspec = permutation_spec(config, spec)
  total = trajectory_length(config)
  identity = matching.identity(pspec)
  pairs = total if mode in ("gmt", "fgmt") else 0
  cache = (lambda: jax.tree.map(lambda p: jnp.zeros((pairs,) + p.shape, p.dtype), params)
           ) if pairs else dict
  return TransferState(
      step=jnp.zeros((), jnp.int32), params=params, model_state=variables, opt_state=(),
      origin=params, perms=identity,
      history={g: jnp.broadcast_to(p, (total + 1,) + p.shape) for g, p in identity.items()},
      cache_target=cache(), cache_source=cache())


def _source_at(state: TransferState, config, t: jax.Array):
  """theta^s_t: the source point t of the densified trajectory."""
  points = state.frozen["source"]["params"]
  segment, lam = point_table(jax.tree.leaves(points)[0].shape[0], config.transfer.num_splits,
                             config.transfer.schedule)
  seg, weight = jnp.asarray(segment)[t], jnp.asarray(lam)[t]
  return jax.tree.map(lambda p: p[seg] + weight * (p[seg + 1] - p[seg]), points)


def transferred(state: TransferState, config, pspec: permutation.Spec, t: jax.Array, perms):
  """theta_t(pi) = theta^tau_0 + pi(theta^s_t - theta^s_0)."""
  move = jax.tree.map(jnp.subtract, _source_at(state, config, t),
                      _source_at(state, config, jnp.int32(0)))
  return jax.tree.map(jnp.add, state.origin, permutation.permute({"params": move}, pspec,
                                                                   perms)["params"])


def oracle_perms(state: TransferState, config, pspec: permutation.Spec) -> Dict[str, jax.Array]:
  """Weight matching of the target's total update against the source's (one pair)."""
  target = jax.tree.map(jnp.subtract, state.frozen["target"]["params"], state.origin)
  last = jax.tree.leaves(state.frozen["source"]["params"])[0].shape[0] - 1
  source = jax.tree.map(lambda p: p[last] - p[0], state.frozen["source"]["params"])
  return matching.weight_matching(pspec, {"params": target}, {"params": source},
                                  jax.random.key(config.seed), config.transfer.max_sweeps)


def start_from(state: TransferState, train_data, *, config, spec, mode: str) -> TransferState:
  del train_data
  if mode != "oracle":
    return state
  perms = oracle_perms(state, config, permutation_spec(config, spec))
  return state.replace(perms=perms, history={g: jnp.broadcast_to(p, state.history[g].shape)
                                             for g, p in perms.items()})


# -- the step ---------------------------------------------------------------------------------


def _mean_gradient(model, model_state, params, images: jax.Array, labels: jax.Array):
  """The mean over minibatches [k, b, ...] of the mean cross-entropy's gradient, train mode."""
  def one(x, y):
    def loss(p):
      logits = model.apply({"params": p, **model_state}, x, train=True,
                           mutable=list(model_state))[0]
      return losses.cross_entropy(logits, y).mean()
    return jax.grad(loss)(params)
  total = jax.lax.map(lambda xy: one(*xy), (images, labels))
  return jax.tree.map(lambda g: g.mean(0), total)


def _sq_norm(tree) -> jax.Array:
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree))


def _mismatch(pspec, target, source, perms) -> jax.Array:
  """sum over the stacked pairs of ||g^tau - pi g^s||^2 (pi preserves norms)."""
  return (_sq_norm(target) + _sq_norm(source) - 2.0 * matching.objective(
      pspec, {"params": target}, {"params": source}, perms, batch_dims=1))


def train_step(state: TransferState, batch, rng: jax.Array, *, config, spec, mode: str):
  model = _model(config, spec)
  pspec = permutation_spec(config, spec)
  t_cfg = config.transfer
  s = state.step + 1

  def pair(t, slot, perms):
    images, labels = batch["image"][slot], batch["label"][slot]
    target = _mean_gradient(model, state.model_state, transferred(state, config, pspec, t,
                                                                  perms), images, labels)
    source = _mean_gradient(model, state.model_state, _source_at(state, config, t), images,
                            labels)
    if t_cfg.normalise:  # the code's option: each pair's term over ||A|| ||B||
      scale = jax.lax.rsqrt(_sq_norm(target) * _sq_norm(source) + 1e-30)
      target = jax.tree.map(lambda g: g * scale, target)
    return target, source

  metrics = {}
  if mode in ("gmt", "fgmt"):
    if mode == "gmt":  # all pairs t < s recomputed under pi_{s-1}
      def fill(t, caches):
        target, source = pair(t, t, state.perms)
        put = lambda c, g: jax.tree.map(lambda a, b: a.at[t].set(b), c, g)
        return put(caches[0], target), put(caches[1], source)
      cache_target, cache_source = jax.lax.fori_loop(
          0, s, fill, (state.cache_target, state.cache_source))
    else:  # the newest pair only; the older ones as they were computed
      target, source = pair(s - 1, 0, state.perms)
      put = lambda c, g: jax.tree.map(lambda a, b: a.at[s - 1].set(b), c, g)
      cache_target, cache_source = put(state.cache_target, target), put(state.cache_source,
                                                                         source)
    start = state.perms if t_cfg.warm_start else None
    perms = matching.weight_matching(pspec, {"params": cache_target}, {"params": cache_source},
                                     rng, t_cfg.max_sweeps, init=start, batch_dims=1)
    metrics["match/before"] = _mismatch(pspec, cache_target, cache_source, state.perms)
    metrics["match/after"] = _mismatch(pspec, cache_target, cache_source, perms)
    state = state.replace(cache_target=cache_target, cache_source=cache_source)
  else:
    perms = state.perms

  # the newest pair's mismatch under pi_s and under the identity (every arm)
  slot = s - 1 if mode == "gmt" else 0
  target, source = pair(s - 1, slot, perms)
  stack = lambda tree: jax.tree.map(lambda x: x[None], tree)
  scale = _sq_norm(target) + _sq_norm(source) + 1e-30
  metrics["grad_mismatch"] = _mismatch(pspec, stack(target), stack(source), perms) / scale
  identity = matching.identity(pspec)
  target_id, source_id = pair(s - 1, slot, identity)
  metrics["grad_mismatch_identity"] = _mismatch(
      pspec, stack(target_id), stack(source_id), identity) / (
          _sq_norm(target_id) + _sq_norm(source_id) + 1e-30)

  params = transferred(state, config, pspec, s, perms)
  variables = repair.reset_batch_stats(model, {"params": params, **state.model_state},
                                       batch["bn_image"])
  variables.pop("params")
  _, lam = point_table(jax.tree.leaves(state.frozen["source"]["params"])[0].shape[0],
                       t_cfg.num_splits, t_cfg.schedule)
  metrics["lam"] = jnp.asarray(lam)[s]
  moved = sum(jnp.sum(p != jnp.arange(p.shape[0])) for p in perms.values())
  metrics["units_moved"] = moved / max(1, sum(pspec.sizes.values()))
  history = {g: h.at[s].set(perms[g]) for g, h in state.history.items()}
  return state.replace(step=s, params=params, model_state=variables, perms=perms,
                       history=history), metrics


eval_step = classification.eval_step


# -- report -----------------------------------------------------------------------------------


def report(state: TransferState, task: TransferTask, workdir: str, *, config, spec,
           write_files: bool, mode: str) -> Dict[str, float]:
  """`best.npz` (the point `train.select_by` selected, else the last) and `final.npz`, with
  re-estimated BatchNorm statistics; the fraction of units pi_T moves."""
  del mode
  model = _model(config, spec)
  pspec = permutation_spec(config, spec)
  total = task.fixed_steps
  best = total
  selection = os.path.join(workdir, "selection.json")
  if config.train.get("select_by", "") and os.path.exists(selection):
    with open(selection) as f:
      best = int(json.load(f)["step"])
  arrays = task.train_arrays()
  size = min(task.batch_size, len(arrays["label"]))
  count = max(1, config.transfer.bn_stats_iters)
  bn_images = augment.to_float(jnp.asarray(arrays["image"][:size * count])).reshape(
      (count, size) + tuple(arrays["image"].shape[1:]))

  def point(step: int):
    perms = {g: h[step] for g, h in state.history.items()}
    params = transferred(state, config, pspec, jnp.int32(step), perms)
    return repair.reset_batch_stats(model, {"params": params, **state.model_state}, bn_images)

  if write_files:
    save_variables(os.path.join(workdir, "best.npz"), point(best))
    save_variables(os.path.join(workdir, "final.npz"), point(total))
  moved = sum(float(jnp.mean(p != jnp.arange(p.shape[0]))) * pspec.sizes[g]
              for g, p in state.perms.items())
  return {"transfer/steps": float(total), "transfer/best_step": float(best),
          "transfer/units_moved": moved / max(1, sum(pspec.sizes.values()))}
