"""Test-time adaptation: a source classifier adapted online to an unlabeled corrupted stream.

Variants (bound option `adapt`):
  `source`    no adaptation: the source model in eval mode (running statistics).
  `bn_adapt`  BN-adapt ("norm" of the official Tent code, Schneider et al. 2020): every
              BatchNorm layer normalises with the test batch's statistics; the running
              statistics keep being updated (momentum 0.1) but nothing is optimised.
  `tent`      Tent, Wang et al., ICLR 2021 (arXiv 2006.10726), as the official code: BN
              layers use batch statistics with running statistics off, only the BN scale
              and offset are optimised, one step per batch on the mean prediction entropy,
              and the batch is predicted from that same forward (pre-update parameters).
              `tta.episodic`: reset to the source before every batch.
  `cafe`      CAFe, Adachi, Yamaguchi et al., ICIP 2023 (arXiv 2204.13263): Tent's setting
              with the loss InfoMax + lambda * mean over feature groups of a Gaussian
              divergence between the source statistics (mean, covariance of the penultimate
              features, pre-computed once on the clean source training split with the source
              model in eval mode, stored as `source_stats.npz`) and the test batch's. Groups:
              normalised spectral clustering of |corr(Sigma_s)| into `tta.cafe_groups`
              clusters, an oversized one cut into chunks of at most `tta.cafe_max_group_size`
              (0: batch size - 1, so every batch covariance is non-singular).
Spec: docs/specs/robustness_tta_merging.md §4. CAFe's losses are [R] there (its code was not
retrieved); each choice is a flag: `tta.cafe_divergence` sym_kl (default) | kl_s_t | kl_t_s;
`tta.cafe_weight` lambda (1.0); `tta.cafe_im` the InfoMax term on/off; `tta.cafe_eps`
covariance ridge relative to the mean source variance (1e-4); `tta.cafe_shrinkage` rho, the
batch covariance shrunk to (1 - rho) Sigma_t + rho tr(Sigma_t)/d I (0); `tta.cafe_params`
bn_affine (default) | all (every parameter but the head); `tta.cafe_groups` 1 with
max size = d gives the ungrouped arm.

The stream and its protocol are `jaxlab.data.adaptation`. Per batch the step logs the online
error of the counted examples; the state accumulates counts per (corruption, severity) so the
final error table is a function of the state (a resumed run writes the same table). `report`
writes the table to results.json (`online/<corruption>/<severity>/error`, the mean
`online/error`), the heat map `tta_errors.png`, the stream order `stream.npz`, and with
source statistics (CAFe, or `tta.feature_gap`) the post-adaptation feature gap (grouped
symmetrised KL between the source statistics and those of the last span's features).
"""

import functools
import json
import math
import os
from typing import Any, Dict, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxlab import models
from jaxlab.data import adaptation, tasks
from jaxlab.errors import UserError, unknown
from jaxlab.meta.solvers import cho_solve, cholesky
from jaxlab.train import losses, optim
from jaxlab.train.protocol import Variant
from jaxlab.train.state import TrainState

_ADAPT = {"source": "none", "bn_adapt": "norm", "tent": "entropy", "cafe": "cafe"}
VARIANTS = {name: Variant(adapt=adapt, blocks=("tta",)) for name, adapt in _ADAPT.items()}
_NAME = {adapt: name for name, adapt in _ADAPT.items()}  # for messages and titles
DIVERGENCES = ("sym_kl", "kl_s_t", "kl_t_s")
ADAPTED = ("bn_affine", "all")


@flax.struct.dataclass
class AdaptState(TrainState):
  source_params: Any        # the state every reset returns to
  source_model_state: Any
  source_opt_state: Any
  online_correct: jax.Array  # [pairs] correct online predictions of counted examples
  online_count: jax.Array    # [pairs]
  feature_mean: jax.Array    # [d] source statistics (zeros when not computed)
  feature_cov: jax.Array     # [d, d]
  members: jax.Array         # [groups, max size] feature indices of each group
  member_mask: jax.Array     # [groups, max size] 1 for a real member, 0 for padding


# -- which parameters adapt ---------------------------------------------------------------------


def _bn_modules(model_state) -> set:
  return {path[:-1] for path in traverse_util.flatten_dict(model_state.get("batch_stats", {}))}


def adapted_mask(params, model_state, which: str) -> Dict[tuple, bool]:
  """{flattened parameter path: adapted?}: the BatchNorm scale/offset (`bn_affine`) or every
  parameter outside the head (`all`)."""
  bn = _bn_modules(model_state)
  flat = traverse_util.flatten_dict(params)
  if which == "all":
    return {p: p[0] != "head" for p in flat}
  return {p: p[:-1] in bn and p[-1] in ("scale", "bias") for p in flat}


def partition(params, mask) -> Tuple[Dict, Dict]:
  flat = traverse_util.flatten_dict(params)
  return ({"/".join(p): v for p, v in flat.items() if mask[p]},
          {p: v for p, v in flat.items() if not mask[p]})


def merge(adapted: Dict, rest: Dict):
  flat = dict(rest)
  flat.update({tuple(k.split("/")): v for k, v in adapted.items()})
  return traverse_util.unflatten_dict(flat)


def _which(config, adapt: str) -> str:
  return config.tta.cafe_params if adapt == "cafe" else "bn_affine"


def _optimizer(config):
  return optim.make_optimizer(config.optimizer, max(1, config.train.steps))


# -- CAFe's statistics, grouping and divergence -------------------------------------------------


def max_group_size(config, d: int) -> int:
  size = config.tta.cafe_max_group_size or config.train.batch_size - 1
  return max(1, min(d, size))


def num_group_slots(config, d: int) -> int:
  """Enough rows for the groups after cutting: sum_g ceil(n_g / m) <= G + d / m."""
  return min(d, config.tta.cafe_groups + math.ceil(d / max_group_size(config, d)))


def _kmeans(points: np.ndarray, k: int, iterations: int = 100) -> np.ndarray:
  """Lloyd's k-means from a k-means++ start with a fixed generator (deterministic)."""
  rng = np.random.default_rng(0)
  centres = [points[rng.integers(len(points))]]
  for _ in range(1, k):
    dist = np.min([np.sum((points - c)**2, 1) for c in centres], 0)
    centres.append(points[rng.choice(len(points), p=dist / dist.sum())] if dist.sum() > 0 else
                   points[rng.integers(len(points))])
  centres = np.asarray(centres)
  labels = np.zeros(len(points), np.int64)
  for _ in range(iterations):
    labels = np.argmin(((points[:, None] - centres[None])**2).sum(-1), 1)
    new = np.asarray([points[labels == j].mean(0) if np.any(labels == j) else centres[j]
                      for j in range(k)])
    if np.allclose(new, centres):
      break
    centres = new
  return labels


def spectral_groups(cov: np.ndarray, num_groups: int, max_size: int,
                    slots: int) -> Tuple[np.ndarray, np.ndarray]:
  """(members [slots, max_size], mask): Ng-Jordan-Weiss spectral clustering of the affinity
  |corr(cov)| (zero diagonal) into `num_groups` clusters; a cluster larger than `max_size`
  is cut, in the order of its members' first spectral coordinate, into ceil(n / max_size)
  chunks of near-equal size. Numpy, on the host, once per run."""
  cov = np.asarray(cov, np.float64)
  d = cov.shape[0]
  std = np.sqrt(np.maximum(np.diag(cov), 1e-12))
  affinity = np.abs(cov / std[:, None] / std[None])
  np.fill_diagonal(affinity, 0.0)
  degree = np.maximum(affinity.sum(1), 1e-12)
  normalised = affinity / np.sqrt(degree[:, None] * degree[None])
  k = max(1, min(num_groups, d))
  _, vectors = np.linalg.eigh(normalised)
  embedding = vectors[:, ::-1][:, :k]
  rows = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
  labels = _kmeans(rows, k) if k > 1 else np.zeros(d, np.int64)
  groups = []
  for j in range(k):
    member = np.flatnonzero(labels == j)
    if not len(member):
      continue
    member = member[np.argsort(embedding[member, 0], kind="stable")]
    for chunk in np.array_split(member, math.ceil(len(member) / max_size)):
      groups.append(chunk)
  members = np.zeros((slots, max_size), np.int32)
  mask = np.zeros((slots, max_size), np.float32)
  for g, chunk in enumerate(groups):
    members[g, :len(chunk)] = chunk
    mask[g, :len(chunk)] = 1.0
  return members, mask


def _padded(cov: jax.Array, mask: jax.Array) -> jax.Array:
  """cov on the real members, identity on the padding: padded dimensions then add exactly
  0 to every divergence below."""
  outer = mask[:, None] * mask[None]
  return cov * outer + jnp.diag(1.0 - mask)


def gaussian_divergence(mu_s, cov_s, mu_t, cov_t, kind: str = "sym_kl") -> jax.Array:
  """The divergence between N(mu_s, cov_s) and N(mu_t, cov_t), by Cholesky solves:
  sym_kl = (KL(s||t) + KL(t||s)) / 2 = 1/4 [tr(St^-1 Ss) + tr(Ss^-1 St) + D^T (Ss^-1 + St^-1) D
  - 2 d]; kl_s_t = KL(N_s || N_t); kl_t_s = KL(N_t || N_s)."""
  d = mu_s.shape[-1]
  delta = mu_t - mu_s
  chol_s, chol_t = cholesky(cov_s), cholesky(cov_t)
  t_inv_s = jnp.trace(cho_solve(chol_t, cov_s))
  s_inv_t = jnp.trace(cho_solve(chol_s, cov_t))
  quad_t = delta @ cho_solve(chol_t, delta)
  quad_s = delta @ cho_solve(chol_s, delta)
  logdet = lambda c: 2.0 * jnp.sum(jnp.log(jnp.diagonal(c)))
  if kind == "sym_kl":
    return 0.25 * (t_inv_s + s_inv_t + quad_s + quad_t - 2 * d)
  if kind == "kl_s_t":
    return 0.5 * (t_inv_s + quad_t - d + logdet(chol_t) - logdet(chol_s))
  if kind == "kl_t_s":
    return 0.5 * (s_inv_t + quad_s - d + logdet(chol_s) - logdet(chol_t))
  raise unknown("divergence (tta.cafe_divergence)", kind, DIVERGENCES)


def grouped_divergence(features: jax.Array, state: AdaptState, tta) -> jax.Array:
  """Mean over the real groups of the divergence between the source statistics and those of
  `features` [B, d] (the batch covariance unbiased, ridge eps * mean source variance, shrunk
  by tta.cafe_shrinkage)."""
  ridge = tta.cafe_eps * jnp.mean(jnp.diagonal(state.feature_cov))
  members, mask = state.members, state.member_mask
  n = features.shape[0]

  def one(idx, m):
    f = features[:, idx] * m
    mu_t = f.mean(0)
    centred = f - mu_t
    cov_t = centred.T @ centred / max(n - 1, 1)
    if tta.cafe_shrinkage:
      target = jnp.trace(cov_t) / jnp.maximum(m.sum(), 1.0)
      cov_t = (1 - tta.cafe_shrinkage) * cov_t + tta.cafe_shrinkage * target * jnp.eye(len(m))
    eye = jnp.diag(m)
    cov_s = state.feature_cov[idx][:, idx]
    return gaussian_divergence(state.feature_mean[idx] * m, _padded(cov_s, m) + ridge * eye,
                               mu_t, _padded(cov_t, m) + ridge * eye, tta.cafe_divergence)

  values = jax.vmap(one)(members, mask)
  real = (mask.sum(1) > 0).astype(values.dtype)
  return jnp.sum(values * real) / jnp.maximum(real.sum(), 1.0)


def infomax(logits: jax.Array) -> jax.Array:
  """mean_i H(p_i) - H(mean_i p_i) (SHOT's information maximisation, to be minimised)."""
  p = jax.nn.softmax(logits)
  mean_p = p.mean(0)
  return entropy(logits).mean() + jnp.sum(mean_p * jnp.log(jnp.maximum(mean_p, 1e-12)))


def entropy(logits: jax.Array) -> jax.Array:
  """H(softmax(z)) per row, as Tent's softmax_entropy."""
  return -jnp.sum(jax.nn.softmax(logits) * jax.nn.log_softmax(logits), -1)


# -- protocol -------------------------------------------------------------------------------


def make_task(config, num_devices: int = 1, *, adapt: str) -> adaptation.AdaptationTask:
  tta = config.tta
  if tta.cafe_divergence not in DIVERGENCES:
    raise unknown("divergence (tta.cafe_divergence)", tta.cafe_divergence, DIVERGENCES)
  if tta.cafe_params not in ADAPTED:
    raise unknown("adapted parameters (tta.cafe_params)", tta.cafe_params, ADAPTED)
  if not 0 <= tta.cafe_shrinkage <= 1:
    raise UserError(f"tta.cafe_shrinkage={tta.cafe_shrinkage} is out of range: it must be in "
                    "[0, 1]")
  if not config.init_from:
    raise UserError(f"{_NAME[adapt]} adapts a trained source model: set --config.init_from "
                    "to the workdir of the source run (e.g. configs/tta.py:digits_source) or "
                    "an .npz of its weights")
  task = adaptation.AdaptationTask(config, num_devices)
  if adapt != "none" and _which(config, adapt) == "bn_affine":
    model = models.build(config.model, task.spec.num_classes)
    variables = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((2,) + task.spec.input_shape), train=False))
    if "batch_stats" not in variables:
      raise UserError(f"{_NAME[adapt]} adapts BatchNorm layers, but model "
                      f"{config.model.name!r} with norm={config.model.get('norm', 'none')!r} "
                      "has none: use model.norm=batch_norm for the source run")
  return task


def init(config, rng: jax.Array, spec: tasks.Spec, *, adapt: str) -> AdaptState:
  model = models.build(config.model, spec.num_classes)
  variables = model.init(rng, jnp.zeros((2,) + tuple(spec.input_shape)), train=False)
  params = variables.pop("params")
  model_state = dict(variables)
  adapted, _ = partition(params, adapted_mask(params, model_state, _which(config, adapt)))
  opt_state = _optimizer(config).init(adapted)
  d = models.feature_dim(model, spec.input_shape)
  slots, size = num_group_slots(config, d), max_group_size(config, d)
  num_pairs = len(adaptation.parse_pairs(config.tta))
  return AdaptState(
      step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
      opt_state=opt_state, source_params=params, source_model_state=model_state,
      source_opt_state=opt_state, online_correct=jnp.zeros(num_pairs),
      online_count=jnp.zeros(num_pairs), feature_mean=jnp.zeros(d),
      feature_cov=jnp.eye(d), members=jnp.zeros((slots, size), jnp.int32),
      member_mask=jnp.zeros((slots, size)))


def _needs_statistics(config, adapt: str) -> bool:
  return adapt == "cafe" or config.tta.feature_gap


def start_from(state: AdaptState, train_data, *, config, spec, adapt: str) -> AdaptState:
  """The loaded source model becomes the reset point; CAFe's source statistics and groups
  are computed from the clean training split."""
  opt_state = _optimizer(config).init(partition(
      state.params, adapted_mask(state.params, state.model_state, _which(config, adapt)))[0])
  state = state.replace(opt_state=opt_state, source_params=state.params,
                        source_model_state=state.model_state, source_opt_state=opt_state)
  if not _needs_statistics(config, adapt):
    return state
  model = models.build(config.model, spec.num_classes)
  features = models.eval_features(model, {"params": state.params, **state.model_state},
                                  train_data["image"])
  mean = features.mean(0)
  centred = features - mean
  cov = centred.T @ centred / max(features.shape[0] - 1, 1)
  slots, size = state.members.shape
  grouping = functools.partial(spectral_groups, num_groups=config.tta.cafe_groups,
                               max_size=size, slots=slots)
  members, mask = jax.pure_callback(
      grouping, (jax.ShapeDtypeStruct((slots, size), jnp.int32),
                 jax.ShapeDtypeStruct((slots, size), jnp.float32)), cov)
  return state.replace(feature_mean=mean, feature_cov=cov, members=members, member_mask=mask)


def _reset(state: AdaptState, reset: jax.Array) -> AdaptState:
  pick = lambda source, current: jax.tree.map(lambda a, b: jnp.where(reset, a, b), source,
                                              current)
  return state.replace(params=pick(state.source_params, state.params),
                       model_state=pick(state.source_model_state, state.model_state),
                       opt_state=pick(state.source_opt_state, state.opt_state))


def forward(model, state: AdaptState, params, x: jax.Array, adapt: str):
  """(logits, features, updated batch statistics): eval mode for `source`, batch
  statistics for the others (the updated running statistics are kept by bn_adapt only)."""
  variables = {"params": params, **state.model_state}
  if adapt == "none":
    logits, features, _ = models.logits_and_features(model, variables, x, train=False)
    return logits, features, state.model_state
  logits, features, updated = models.logits_and_features(
      model, variables, x, train=True, mutable=list(state.model_state))
  return logits, features, {**state.model_state, **updated}


def adapt_loss(logits, features, state: AdaptState, config, adapt: str):
  """(loss, its parts) of one batch: Tent's entropy or CAFe's InfoMax + lambda alignment."""
  if adapt == "entropy":
    loss = entropy(logits).mean()
    return loss, {"entropy": loss}
  tta = config.tta
  align = grouped_divergence(features, state, tta)
  im = infomax(logits) if tta.cafe_im else jnp.zeros(())
  return im + tta.cafe_weight * align, {"align": align, "infomax": im,
                                        "entropy": entropy(logits).mean()}


def train_step(state: AdaptState, batch, rng: jax.Array, *, config, spec,
               adapt: str) -> Tuple[AdaptState, Dict[str, jax.Array]]:
  """One adaptation step on the stream's batch; its predictions (pre-update) are scored."""
  del rng  # adaptation is deterministic given the stream
  model = models.build(config.model, spec.num_classes)
  reset = batch["reset"] | (config.tta.episodic and adapt in ("entropy", "cafe"))
  state = _reset(state, reset)
  x = batch["image"]
  parts = {}
  if adapt in ("none", "norm"):
    logits, _, model_state = forward(model, state, state.params, x, adapt)
    state = state.replace(model_state=model_state if adapt == "norm" else state.model_state)
  else:
    mask = adapted_mask(state.params, state.model_state, _which(config, adapt))
    adapted, rest = partition(state.params, mask)

    def loss_fn(adapted):
      logits, features, _ = forward(model, state, merge(adapted, rest), x, adapt)
      loss, parts = adapt_loss(logits, features, state, config, adapt)
      return loss, (logits, parts)

    (loss, (logits, parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(adapted)
    updates, opt_state = _optimizer(config).update(grads, state.opt_state, adapted)
    adapted = jax.tree.map(lambda p, u: p + u, adapted, updates)
    state = state.replace(params=merge(adapted, rest), opt_state=opt_state)
    parts = {"loss": loss, **parts}
  counted = batch["counted"]
  correct = losses.correct(logits, batch["label"]) * counted
  num_pairs = state.online_count.shape[0]
  state = state.replace(
      step=state.step + 1,
      online_correct=state.online_correct + jax.ops.segment_sum(correct, batch["pair"],
                                                                num_pairs),
      online_count=state.online_count + jax.ops.segment_sum(counted, batch["pair"], num_pairs))
  metrics = {"error": 1.0 - correct.sum() / jnp.maximum(counted.sum(), 1.0),
             "reset": reset.astype(jnp.float32), **parts}
  return state, metrics


def eval_step(state: AdaptState, batch, key: jax.Array, *, config, spec, adapt: str):
  """Offline scoring with the current state, in the method's own forward mode."""
  del key
  model = models.build(config.model, spec.num_classes)
  logits, _, _ = forward(model, state, state.params, batch["image"], adapt)
  correct = losses.correct(logits, batch["label"])
  return {"accuracy": correct, "error": 1.0 - correct,
          "loss": losses.cross_entropy(logits, batch["label"])}


def error_table(state: AdaptState, pairs) -> Dict[str, float]:
  """{online/<corruption>/<severity>/error, online/error (mean over pairs)} from the state's
  counts."""
  correct, count = np.asarray(state.online_correct), np.asarray(state.online_count)
  table = {f"online/{name}/{severity}/error": float(1.0 - c / max(n, 1.0))
           for (name, severity), c, n in zip(pairs, correct, count)}
  table["online/error"] = float(np.mean(list(table.values())))
  table["online/error_all"] = float(1.0 - correct.sum() / max(count.sum(), 1.0))
  return table


def feature_gap(state: AdaptState, task: adaptation.AdaptationTask, config, spec,
                adapt: str) -> float:
  """Grouped divergence between the source statistics and the statistics of the final
  model's features on the last span (all its examples at once)."""
  model = models.build(config.model, spec.num_classes)
  data = jax.tree.map(jnp.asarray, task.eval_arrays(adaptation.STREAM))
  batch_fn = jax.jit(lambda index: forward(model, state, state.params,
                                           task.eval_batch(data, index)["image"], adapt)[1])
  batches = task.num_eval_batches(data)
  features = np.concatenate([np.asarray(batch_fn(jnp.int32(i))) for i in range(batches)])
  features = features[np.asarray(data["mask"]) > 0]
  return float(grouped_divergence(jnp.asarray(features), state, config.tta))


def heat_map(table: Dict[str, float], pairs, path: str, title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names = list(dict.fromkeys(n for n, _ in pairs))
  severities = sorted({s for _, s in pairs})
  grid = np.full((len(names), len(severities)), np.nan)
  for n, s in pairs:
    grid[names.index(n), severities.index(s)] = 100 * table[f"online/{n}/{s}/error"]
  fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(severities), 0.9 + 0.4 * len(names)))
  image = ax.imshow(grid, cmap="magma_r", vmin=0, vmax=100, aspect="auto")
  for i in range(len(names)):
    for j in range(len(severities)):
      if np.isfinite(grid[i, j]):
        ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=8,
                color="white" if grid[i, j] > 60 else "black")
  ax.set_xticks(range(len(severities)), [str(s) for s in severities])
  ax.set_yticks(range(len(names)), names)
  ax.set_xlabel("severity")
  ax.set_title(title, fontsize=9)
  fig.colorbar(image, ax=ax, label="online error (%)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def report(state: AdaptState, task: adaptation.AdaptationTask, workdir: str, *, config, spec,
           write_files: bool, adapt: str) -> Dict[str, float]:
  table = error_table(state, task.pairs)
  results = {**table, "stream/steps": float(task.fixed_steps)}
  if _needs_statistics(config, adapt):
    results["stream/feature_gap"] = feature_gap(state, task, config, spec, adapt)
  if write_files:
    np.savez(os.path.join(workdir, "stream.npz"), **task.plan)
    with open(os.path.join(workdir, "stream.json"), "w") as f:
      json.dump(task.describe(), f, indent=2, sort_keys=True)
    if _needs_statistics(config, adapt):
      np.savez(os.path.join(workdir, "source_stats.npz"),
               mean=np.asarray(state.feature_mean), cov=np.asarray(state.feature_cov),
               members=np.asarray(state.members), member_mask=np.asarray(state.member_mask))
    heat_map(table, task.pairs, os.path.join(workdir, "tta_errors.png"),
             f"{_NAME[adapt]} ({config.tta.protocol}), mean {100 * table['online/error']:.1f}%")
  return results
