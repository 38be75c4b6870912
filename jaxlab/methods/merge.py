"""Merging two models trained on different datasets by aligning B's hidden units to A's.

Yamada et al., "Revisiting permutation symmetry for merging models between different
datasets" (arXiv 2306.05641; official code MasanoriYamada/re-basin-merge-pytorch), on the
permutation search of Git Re-Basin (Ainsworth et al., arXiv 2209.04836). Spec:
robustness_tta_merging.md §5. Two endpoint runs of one architecture (`inputs.model_a`,
`inputs.model_b`: any jaxlab classifier runs, e.g. configs/merge.py:digits_endpoint) sharing
the label head; the merge is theta(lam) = (1 - lam) theta_A + lam pi(theta_B), reported at
lam = 0.5 and as curves over `merge.points` equispaced lam.

Variants (bound option `matching`):
  `merge_wm`   weight matching (no data; `merge.wm_max_iter` sweeps, 300 as the code), once
               before evaluation (`train.steps=0`).
  `merge_am`   activation matching on D_merge (uncentered cross-moment of post-ReLU
               activations, the code's default; `merge.am_correlation` for Pearson).
  `merge_ste`  the paper's main method, the straight-through estimator: a free copy theta~
               (from theta_A) is trained; each step re-solves weight matching of B onto theta~
               warm-started from the previous permutations (`merge.ste_max_iter`, 100 as the
               code), and the loss is the NLL of the midpoint 1/2 theta_A + 1/2 theta_ste on a
               D_merge batch with theta_ste = sg(pi(theta_B)) + theta~ - sg(theta~) (forward:
               the permuted B; gradient: to theta~). The permutations of the lowest minibatch
               loss seen are kept (`best_perms`) and are the merge.
  `merge_many` the merge of three or more models of §6.1: B and C each aligned to A (the
               permutations of pairwise runs, `merge.perms_b` / `merge.perms_c` = their
               workdirs, e.g. two merge_ste runs; by default weight matching), then the mean
               of A, pi_B(B), pi_C(C), evaluated on `test_a` / `test_b` (C is read on A's
               data).
D_merge (`merge.data`): `full` the union of A's and B's training splits; `coreset` a random
`merge.ipc` images per class of each (fixed by `merge.coreset_seed`), the paper's random
coreset baseline. (`condensed`, the DC sets, is not built yet.)
B's dataset is `config.data` with `merge.b_name` (default: the same), `merge.b_classes`
(default: the same; another label range relabelled from 0 is another dataset under the same
head, as MNIST and Fashion-MNIST in the paper) and `merge.b_shift`
(jaxlab.data.tasks.shift_images: rotated or pixel-permuted digits, §5(g)). Evaluation splits
`test_a`, `test_b` (the midpoint under the current best permutations) and, in `report`,
`double_test` as the code: the average of the two test sets' accuracies and NLLs, for the
arms naive (pi = id), merged (pi found) and ensemble (the lam-mixture of the two models'
predicted probabilities), with loss / accuracy barriers, `merge_curves.png`,
`merge_curves.json` and `perms.npz`. BatchNorm networks: the STE midpoint uses the batch's
statistics (train mode, the same forward as the code's reset on D_merge before the loss),
and the curves reset each interpolated model's statistics on D_merge
(jaxlab.merge.repair; `merge.repair`).

The report also holds the LMC analyses of §6 for both lines (naive, merged):
  - the temperature-calibrated loss barrier (arXiv 2510.08023, jaxlab.merge.width): T*(lam)
    minimises the NLL of softmax(logits / T) on `merge.calibrate_on` (`test`, the default:
    the two test sets themselves, so the barrier is the lowest one temperature per lam can
    reach; `train`: the two training sets, which degenerates when the endpoints fit them,
    T* -> the grid's floor e^-3, as our digits endpoints do; "": off), and the double-test
    loss at T*(lam) gives `calibrated_loss_barrier`; `temperature_mid` is
    T*(1/2), `temperature_ratio` T*(1/2) / sqrt(T*(0) T*(1)) (LEWC: the midpoint's logits
    are 2^(1-L) of the ensemble's, so 2^(1-L); the inverse temperature grows as 2^(L-1));
  - `merge.truncation_ranks` (arXiv 2402.04051 §6.1(b)5): every kernel cut to rank k, the
    cut endpoints' accuracies and their midpoint's;
  - `merge.lewc_examples` > 0 (MLPs without normalisation): the LEWC cosine, additivity and
    reciprocal-orthogonality probes per layer at lam = 1/2, effective ranks and top-5
    subspace overlaps; and `alignment_heatmaps.png`, M_ij of the first two layers.
"""

import json
import os
from typing import Any, Dict

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxlab import models
from jaxlab.data import augment, tasks
from jaxlab.errors import UserError, unknown
from jaxlab.merge import analysis, condense, interpolate, matching as matching_lib, permutation, repair, width
from jaxlab.train import inputs as inputs_lib
from jaxlab.train import losses, optim
from jaxlab.train.protocol import Variant
from jaxlab.train.state import TrainState

_ENDPOINTS = (inputs_lib.own_model("model_a", "endpoint A (a classifier run on data A)"),
              inputs_lib.own_model("model_b", "endpoint B (a classifier run on data B)"))
VARIANTS = {name: Variant(matching=kind, inputs=_ENDPOINTS, blocks=("merge",))
            for name, kind in (("merge_wm", "weight"), ("merge_am", "activation"),
                               ("merge_ste", "ste"))}
VARIANTS["merge_many"] = Variant(matching="many", blocks=("merge",), inputs=_ENDPOINTS + (
    inputs_lib.own_model("model_c", "endpoint C (a third classifier run)"),))
DATA = ("full", "coreset", "condensed")
# merge.calibrate_on -> the splits whose NLL picks the temperature ("": no calibration)
CALIBRATION = {"test": ("test_a", "test_b"), "train": ("train_a", "train_b"), "": ()}
ARMS = ("naive", "merged", "ensemble")
SPLITS = ("test_a", "test_b", "train_a", "train_b")


@flax.struct.dataclass
class MergeState(TrainState):
  perms: Any           # {group: int32 [n]} the current permutations of B's units
  best_perms: Any      # those of the lowest STE minibatch loss (the merge)
  best_loss: jax.Array
  perms_c: Any = None  # merge_many: the permutations of C's units onto A


# -- data -----------------------------------------------------------------------------------


def coreset(arrays: tasks.Arrays, ipc: int, seed: int) -> tasks.Arrays:
  """`ipc` random images per class (fixed by `seed`)."""
  rng = np.random.default_rng(seed)
  keep = []
  for label in np.unique(arrays["label"]):
    where = np.flatnonzero(arrays["label"] == label)
    if len(where) < ipc:
      raise UserError(f"merge.ipc={ipc} but class {label} has only {len(where)} images")
    keep.append(rng.choice(where, ipc, replace=False))
  keep = np.sort(np.concatenate(keep))
  return {k: v[keep] for k, v in arrays.items()}


def condensed_set(workdir: str, field: str) -> tasks.Arrays:
  """The synthetic set a `condense_dc` run wrote (float images, labels)."""
  path = os.path.join(workdir, "condensed.npz")
  if not workdir or not os.path.exists(path):
    raise UserError(f"{field}={workdir!r} holds no condensed.npz: give the workdir of a "
                    "finished condense_dc run (configs/merge.py:digits_condense)")
  with np.load(path) as saved:
    return {"image": saved["image"].astype(np.float32), "label": saved["label"]}


def b_config(config) -> ml_collections.ConfigDict:
  """The config whose `data` is B's dataset."""
  b = ml_collections.ConfigDict(config.to_dict())
  b.data.name = config.merge.b_name or config.data.name
  b.data.shift = config.merge.b_shift
  if config.merge.get("b_classes", ""):
    b.data.classes = config.merge.b_classes
  return b


class MergeTask(tasks.SupervisedTask):
  """D_merge for training (the union of A's and B's training splits, or of their coresets)
  and the splits `test_a`, `test_b`, `train_a`, `train_b`."""

  def __init__(self, config, num_devices: int = 1):
    merge = config.merge
    if merge.data not in DATA:
      raise unknown("merge data (merge.data)", merge.data, DATA)
    self._merge = merge
    self.b = tasks.SupervisedTask(b_config(config), num_devices)
    super().__init__(config, num_devices)
    if (self.b.spec.input_shape, self.b.spec.num_classes) != (self.spec.input_shape,
                                                              self.spec.num_classes):
      raise UserError(f"the two datasets differ: A is {self.spec.input_shape} with "
                      f"{self.spec.num_classes} classes, B {self.b.spec.input_shape} with "
                      f"{self.b.spec.num_classes}; merging needs one input shape and head")

  def train_arrays(self) -> tasks.Arrays:
    if "merge" not in self._cache:
      a, b = super().train_arrays(), self.b.train_arrays()
      if self._merge.data == "coreset":
        seed = self._merge.coreset_seed
        a, b = coreset(a, self._merge.ipc, seed), coreset(b, self._merge.ipc, seed + 1)
      elif self._merge.data == "condensed":
        a, b = (condensed_set(self._merge[f"condensed_{side}"], f"merge.condensed_{side}")
                for side in ("a", "b"))
      self._cache["merge"] = {k: np.concatenate([a[k], b[k]]) for k in ("image", "label")}
    return self._cache["merge"]

  def split_arrays(self, split: str) -> tasks.Arrays:
    side, _, which = split.rpartition("_")
    sides = {"test": self._merge.test_split, "train": self._data.train_split}
    if which in ("a", "b") and side in sides:
      own = super().split_arrays if which == "a" else self.b.split_arrays
      return own(sides[side])
    return super().split_arrays(split)  # A's own splits (its training pool)


def _check_endpoint_data(config) -> None:
  """An endpoint run trained on another dataset than the one the merge evaluates it on (a
  forgotten merge.b_shift) is one line, not a silently wrong table."""
  b = b_config(config)
  for name, data in (("model_a", config.data), ("model_b", b.data), ("model_c", config.data)):
    workdir = config.get("inputs", {}).get(name, "")
    if not workdir or workdir.endswith(".npz") or not os.path.exists(
        os.path.join(workdir, "config.json")):
      continue
    with open(os.path.join(workdir, "config.json")) as f:
      trained = json.load(f).get("data", {})
    for field in ("name", "shift", "classes"):
      if trained.get(field, "") != data.get(field, ""):
        which = "merge.b_" + field if name == "model_b" else "data." + field
        raise UserError(f"inputs.{name} was trained with data.{field}="
                        f"{trained.get(field, '')!r} but this merge evaluates it on "
                        f"{data.get(field, '')!r}: set {which} to match")


def truncation_ranks(merge) -> list:
  """`merge.truncation_ranks` ("1,2,4,8") as integers; anything else is one line."""
  ranks = str(merge.get("truncation_ranks", ""))
  if not all(k.strip().isdigit() and int(k) > 0 for k in ranks.split(",") if k.strip()):
    raise UserError(f"merge.truncation_ranks={ranks!r} must be positive integers separated by "
                    "commas, e.g. 1,2,4,8")
  return [int(k) for k in ranks.split(",") if k.strip()]


def make_task(config, num_devices: int = 1, *, matching: str) -> MergeTask:
  merge = config.merge
  if merge.points < 3 or merge.points % 2 == 0:
    raise UserError(f"merge.points={merge.points} must be odd and at least 3 (the grid holds "
                    "lam = 0, 0.5 and 1)")
  if matching != "ste" and config.train.steps != 0:
    what = {"weight": "weight matching", "activation": "activation matching"}.get(
        matching, "merge_many")
    raise UserError(f"{what} has no training step: set train.steps=0 (it is "
                    f"{config.train.steps})")
  _check_endpoint_data(config)
  if merge.get("calibrate_on", "test") not in CALIBRATION:
    raise unknown("temperature calibration split (merge.calibrate_on)", merge.calibrate_on,
                  tuple(CALIBRATION))
  truncation_ranks(merge)
  if merge.get("lewc_examples", 0) and (config.model.name != "mlp"
                                        or config.model.get("norm", "none") != "none"):
    raise UserError("the LEWC probe (merge.lewc_examples) takes an MLP without normalisation: "
                    f"model.name={config.model.name!r}, model.norm="
                    f"{config.model.get('norm', 'none')!r}; set merge.lewc_examples=0")
  for split in (s.strip() for s in config.data.eval_splits.split(",") if s.strip()):
    if split not in SPLITS:
      raise unknown("evaluation split of a merge run (data.eval_splits)", split, SPLITS)
  return MergeTask(config, num_devices)


# -- state ----------------------------------------------------------------------------------


def _model(config, spec: tasks.Spec):
  return models.build(config.model, spec.num_classes)


def permutation_spec(config, spec: tasks.Spec) -> permutation.Spec:
  model = _model(config, spec)
  like = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                           jnp.zeros((2,) + tuple(spec.input_shape))))
  return permutation.derive(model, like, spec.input_shape)


def init(config, rng: jax.Array, spec: tasks.Spec, *, matching: str) -> MergeState:
  variables = _model(config, spec).init(rng, jnp.zeros((2,) + tuple(spec.input_shape)))
  params = variables.pop("params")
  tx = optim.make_optimizer(config.optimizer, config.train.steps)
  perms = matching_lib.identity(permutation_spec(config, spec))
  return MergeState(step=jnp.zeros((), jnp.int32), params=params, model_state=dict(variables),
                    opt_state=tx.init(params), perms=perms, best_perms=perms,
                    best_loss=jnp.array(jnp.inf, jnp.float32),
                    perms_c=perms if matching == "many" else None)


def saved_perms(workdir: str, field: str, pspec: permutation.Spec) -> Dict[str, jax.Array]:
  """The `perms.npz` a pairwise merge run wrote, checked against this model's groups."""
  path = os.path.join(workdir, "perms.npz")
  if not os.path.exists(path):
    raise UserError(f"{field}={workdir!r} holds no perms.npz: give the workdir of a finished "
                    "merge_wm / merge_am / merge_ste run of the same model")
  with np.load(path) as saved:
    perms = {g: jnp.asarray(saved[g], jnp.int32) for g in saved.files}
  if {g: p.shape[0] for g, p in perms.items()} != pspec.sizes:
    raise UserError(f"{field}: perms.npz holds groups {sorted(perms)} of sizes "
                    f"{[p.shape[0] for p in perms.values()]}, this model has {pspec.sizes}")
  return perms


def start_from(state: MergeState, train_data, *, config, spec, matching: str) -> MergeState:
  """theta~ starts at theta_A; weight / activation matching solve their permutations here."""
  a, b = state.frozen["model_a"], state.frozen["model_b"]
  pspec = permutation_spec(config, spec)
  key = jax.random.key(config.seed)
  state = state.replace(params=a["params"], opt_state=optim.make_optimizer(
      config.optimizer, config.train.steps).init(a["params"]))
  if matching == "many":  # B and C each aligned to A: saved pairwise runs, else weight matching
    found = {}
    for index, side in enumerate(("b", "c")):
      given = config.merge.get(f"perms_{side}", "")
      found[side] = (saved_perms(given, f"merge.perms_{side}", pspec) if given else
                     matching_lib.weight_matching(pspec, a, state.frozen[f"model_{side}"],
                                                  jax.random.fold_in(key, index),
                                                  config.merge.wm_max_iter))
    return state.replace(perms=found["b"], best_perms=found["b"], perms_c=found["c"])
  if matching == "weight":
    perms = matching_lib.weight_matching(pspec, a, b, key, config.merge.wm_max_iter)
  elif matching == "activation":
    images = augment.to_float(train_data["image"])
    if config.merge.am_examples:
      chosen = jax.random.permutation(key, images.shape[0])[:config.merge.am_examples]
      images = images[chosen]
    perms = matching_lib.activation_matching(pspec, _model(config, spec), a, b, images,
                                             config.merge.am_correlation)
  else:
    return state
  return state.replace(perms=perms, best_perms=perms)


# -- the STE step ---------------------------------------------------------------------------


def _forward(model, variables, x: jax.Array) -> jax.Array:
  """Logits; a BatchNorm network uses the batch's statistics (the reset on D_merge)."""
  if repair.has_batch_stats(variables):
    return model.apply(variables, x, train=True, mutable=["batch_stats"])[0]
  return model.apply(variables, x, train=False)


def train_step(state: MergeState, batch, rng: jax.Array, *, config, spec, matching: str):
  if matching != "ste":  # make_task allows no step; traced once by the loop's checks
    return state.replace(step=state.step + 1), {"loss": jnp.zeros(())}
  model = _model(config, spec)
  pspec = permutation_spec(config, spec)
  a, b = state.frozen["model_a"], state.frozen["model_b"]
  perms = matching_lib.weight_matching(pspec, {"params": state.params}, b, rng,
                                       config.merge.ste_max_iter, init=state.perms)
  projected = permutation.permute(b, pspec, perms)

  def loss_fn(params):
    ste = jax.tree.map(lambda p, free: jax.lax.stop_gradient(p) + free
                       - jax.lax.stop_gradient(free), projected["params"], params)
    middle = interpolate.lerp(0.5, a, {**projected, "params": ste})
    logits = _forward(model, middle, batch["image"])
    return losses.cross_entropy(logits, batch["label"]).mean(), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  better = loss < state.best_loss
  changed = sum(jnp.sum(perms[g] != state.perms[g]) for g in perms)
  state = optim.apply_gradients(
      state, grads, config, perms=perms,
      best_perms=jax.tree.map(lambda new, old: jnp.where(better, new, old), perms,
                              state.best_perms),
      best_loss=jnp.where(better, loss, state.best_loss))
  metrics = {"loss": loss, "accuracy": losses.correct(logits, batch["label"]).mean(),
             "best_loss": state.best_loss, "grad_norm": optax.tree.norm(grads),
             "units_moved": changed.astype(jnp.float32)}
  return state, metrics


# -- evaluation -----------------------------------------------------------------------------


def merged_endpoints(state: MergeState, config, spec):
  """(theta_A, pi(theta_B)) under the best permutations."""
  pspec = permutation_spec(config, spec)
  return state.frozen["model_a"], permutation.permute(state.frozen["model_b"], pspec,
                                                       state.best_perms)


def eval_step(state: MergeState, batch, key: jax.Array, *, config, spec, matching: str):
  """The midpoint lam = 0.5 in eval mode (BatchNorm: the interpolated running statistics;
  the reset ones are in `report`'s curves). merge_many: the mean of A, pi_B(B), pi_C(C)."""
  del key
  a, b = merged_endpoints(state, config, spec)
  merged = interpolate.lerp(0.5, a, b)
  if matching == "many":
    c = permutation.permute(state.frozen["model_c"], permutation_spec(config, spec),
                            state.perms_c)
    merged = jax.tree.map(lambda x, y, z: (x + y + z) / 3.0, a, b, c)
  logits = _model(config, spec).apply(merged, batch["image"], train=False)
  return {"accuracy": losses.correct(logits, batch["label"]),
          "loss": losses.cross_entropy(logits, batch["label"])}


def _reset_batches(task: MergeTask, config) -> jax.Array:
  """[k, b, ...] float images of D_merge for the statistics reset."""
  images = task.train_arrays()["image"]
  size = min(config.train.batch_size, len(images))
  count = max(1, min(config.merge.repair_batches, len(images) // size))
  order = np.random.default_rng(config.seed).permutation(len(images))[:count * size]
  return augment.to_float(jnp.asarray(images[order].reshape((count, size) + images.shape[1:])))


def _summed_over_batches(sums, stacked, task: MergeTask, split: str):
  """The sum over `split`'s evaluation batches of the pytree `sums(stacked, data, index)`."""
  data = jax.tree.map(jnp.asarray, task.eval_arrays(split))
  totals = None
  for index in range(task.num_eval_batches(data)):
    out = jax.device_get(sums(stacked, data, jnp.int32(index)))
    totals = out if totals is None else jax.tree.map(np.add, totals, out)
  return totals


def curves(model, a, lines: Dict[str, Any], task: MergeTask, split: str, lams: jax.Array,
           reset, log_temps=None) -> Dict[str, Any]:
  """{arm: {"accuracy": [L], "loss": [L]}} on `split`, in one pass over its batches: for each
  {arm: b} of `lines`, the lerp of a and b; and `ensemble`, the lam-mixture of the predicted
  probabilities of a and the first b (a permutation of b does not change its predictions).
  With `log_temps` [G], each line also has "loss_by_temperature" [L, G]: the mean NLL of
  softmax(logits / T) (jaxlab.merge.width)."""
  stacked = jax.jit(lambda ends: {arm: jax.vmap(lambda lam: reset(interpolate.lerp(
      lam, a, b)))(lams) for arm, b in ends.items()})(lines)
  b = next(iter(lines.values()))

  @jax.jit
  def sums(stacked, data, index):
    batch = task.eval_batch(data, index)
    x, y, m = batch["image"], batch["label"], batch["mask"]
    score = lambda logp: (jnp.sum(m * (jnp.argmax(logp, -1) == y)),
                          -jnp.sum(m * jnp.take_along_axis(logp, y[:, None], 1)[:, 0]))

    def line_of(variables):
      logits = model.apply(variables, x, train=False)
      correct, loss = score(jax.nn.log_softmax(logits))
      if log_temps is None:
        return correct, loss
      return correct, loss, width.nll_by_temperature(logits, y, m, log_temps)

    line = {arm: jax.vmap(line_of)(variables) for arm, variables in stacked.items()}
    pa = jax.nn.softmax(model.apply(a, x, train=False))
    pb = jax.nn.softmax(model.apply(b, x, train=False))
    mix = jax.vmap(lambda lam: score(jnp.log((1 - lam) * pa + lam * pb + 1e-12)))(lams)
    return line, mix, jnp.sum(m)

  line, (mix_correct, mix_loss), n = _summed_over_batches(sums, stacked, task, split)
  names = ("accuracy", "loss", "loss_by_temperature")
  return {**{arm: {name: value / n for name, value in zip(names, values)}
             for arm, values in line.items()},
          "ensemble": {"accuracy": mix_correct / n, "loss": mix_loss / n}}


def accuracies(model, stacked, task: MergeTask, split: str) -> np.ndarray:
  """[K] test accuracy on `split` of each model of `stacked` (variables with a leading K
  axis), in one pass over its batches."""
  @jax.jit
  def correct(stacked, data, index):
    batch = task.eval_batch(data, index)
    hits = jax.vmap(lambda v: jnp.sum(batch["mask"] * (jnp.argmax(
        model.apply(v, batch["image"], train=False), -1) == batch["label"])))(stacked)
    return hits, jnp.sum(batch["mask"])

  hits, n = _summed_over_batches(correct, stacked, task, split)
  return np.asarray(hits) / n


def l2_distance(a, b) -> float:
  return float(optax.tree.norm(jax.tree.map(jnp.subtract, a["params"], b["params"])))


def plot(table: Dict[str, Any], lams: np.ndarray, path: str, title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
  for arm, style in zip(ARMS, ("--", "-", ":")):
    for split, colour in (("test_a", "tab:blue"), ("test_b", "tab:orange"),
                          ("double_test", "black")):
      for ax, metric in zip(axes, ("accuracy", "loss")):
        ax.plot(lams, table[arm][split][metric], style, color=colour,
                label=f"{arm} {split}" if metric == "accuracy" else None)
  for ax, metric in zip(axes, ("accuracy", "loss")):
    ax.set_xlabel("lambda (0 = A, 1 = pi(B))")
    ax.set_ylabel(metric)
  axes[0].legend(fontsize=6, ncol=3)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_alignment(a, lines: Dict[str, Any], path: str, k: int = 32) -> None:
  """Heat maps of M_ij (jaxlab.merge.analysis.alignment_matrix, top `k` singular vectors in
  order) of the first two kernels of A against each line's B, on one colour scale: a bright
  diagonal is aligned singular vectors."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  layers = analysis.matrices(a)[:2]
  fig, axes = plt.subplots(len(layers), len(lines), figsize=(3.2 * len(lines),
                                                             3.0 * len(layers)), squeeze=False)
  maps = {(row, column): np.asarray(analysis.alignment_matrix(wa, wb, k))
          for column, b in enumerate(lines.values())
          for row, (wa, wb) in enumerate(zip(layers, analysis.matrices(b)[:2]))}
  top = max(float(m.max()) for m in maps.values())
  for (row, column), values in maps.items():
    ax = axes[row, column]
    shown = ax.imshow(values, vmin=0, vmax=top, cmap="viridis")
    ax.set_title(f"{list(lines)[column]}: layer {row + 1}", fontsize=8)
    ax.set_xlabel("j (B)", fontsize=7)
    ax.set_ylabel("i (A)", fontsize=7)
  fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.8)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _calibrate(table, calibration_splits, lams, mid: int) -> Dict[str, float]:
  """The temperature-calibrated loss barrier (§6.2(b)1): T*(lam) minimises the mean NLL of
  the calibration splits; the double-test loss at T*(lam) gives the barrier."""
  log_temps = width.log_temperatures()
  results = {}
  for arm in ("naive", "merged"):
    calibration = np.mean([table[arm][s]["loss_by_temperature"] for s in calibration_splits], 0)
    best, losses_ = zip(*(width.calibrated(jnp.asarray(calibration),
                                           jnp.asarray(table[arm][s]["loss_by_temperature"]),
                                           log_temps) for s in ("test_a", "test_b")))
    loss = (np.asarray(losses_[0]) + np.asarray(losses_[1])) / 2
    temperature = np.exp(np.asarray(best[0]))
    table[arm]["double_test"]["calibrated_loss"] = loss
    table[arm]["double_test"]["temperature"] = temperature
    results[f"{arm}/calibrated_loss_barrier"] = float(interpolate.barrier(jnp.asarray(loss),
                                                                          lams))
    results[f"{arm}/double_test/calibrated_loss_mid"] = float(loss[mid])
    results[f"{arm}/temperature_mid"] = float(temperature[mid])
    results[f"{arm}/temperature_ratio"] = float(temperature[mid] / np.sqrt(
        temperature[0] * temperature[-1]))
  return results


def _truncation(model, a, lines, task, ranks, reset) -> Dict[str, float]:
  """§6.1(b)5: every kernel of A and of each line's B cut to rank k; the accuracy of the cut
  endpoints on their own data and of their midpoint on the two test sets."""
  results = {}
  for k in ranks:
    cut_a = analysis.truncate(a, k)
    results[f"truncation/k{k}/energy_a"] = float(analysis.energy_kept(a, k))
    models_ = [cut_a] + [analysis.truncate(b, k) for b in lines.values()]
    models_ += [interpolate.lerp(0.5, cut_a, b) for b in models_[1:]]
    stacked = jax.vmap(reset)(jax.tree.map(lambda *v: jnp.stack(v), *models_))
    acc = {s: accuracies(model, stacked, task, s) for s in ("test_a", "test_b")}
    results[f"truncation/k{k}/a/test_a/accuracy"] = float(acc["test_a"][0])
    for index, arm in enumerate(lines):
      results[f"truncation/k{k}/{arm}_b/test_b/accuracy"] = float(acc["test_b"][1 + index])
      middle = 1 + len(lines) + index
      results[f"truncation/k{k}/{arm}/double_test/accuracy_mid"] = float(
          (acc["test_a"][middle] + acc["test_b"][middle]) / 2)
  return results


def _lewc(model, a, lines, task, examples: int) -> Dict[str, float]:
  """§6.2(b)2-5 at lam = 1/2 on the first `examples` images of test_a, per linear layer
  (1-based), and the effective ranks and top-5 subspace overlaps of the kernels."""
  images = task.eval_arrays("test_a")["image"][:examples]
  x = augment.to_float(jnp.asarray(images))
  results = {}
  probe = jax.jit(lambda a, b, x: width.probe(model, a, b, x))  # one compilation, both lines
  for arm, b in lines.items():
    probes = jax.device_get(probe(a, b, x))
    for name, values in probes.items():
      for layer, value in enumerate(values, 1):
        results[f"lewc/{arm}/layer{layer}/{name}"] = float(value)
    for layer, (wa, wb) in enumerate(zip(analysis.matrices(a), analysis.matrices(b)), 1):
      results[f"overlap/{arm}/layer{layer}"] = float(analysis.subspace_overlap(wa, wb, 5))
  for side, variables in (("a", a), ("b", next(iter(lines.values())))):
    for layer, w in enumerate(analysis.matrices(variables), 1):
      results[f"rank/{side}/layer{layer}"] = float(analysis.effective_rank(w))
  return results


def report(state: MergeState, task: MergeTask, workdir: str, *, config, spec, write_files: bool,
           matching: str) -> Dict[str, float]:
  if matching == "many":  # the evaluation splits hold its result
    return {}
  merge = config.merge
  model = _model(config, spec)
  lams = interpolate.grid(merge.points)
  mid = merge.points // 2
  a, b_merged = merged_endpoints(state, config, spec)
  b = state.frozen["model_b"]
  lines = {"naive": b, "merged": b_merged}
  batches = _reset_batches(task, config) if merge.repair else None
  reset = ((lambda v: repair.reset_batch_stats(model, v, batches)) if batches is not None
           else (lambda v: v))
  calibrate_on = merge.get("calibrate_on", "test")
  calibration_splits = CALIBRATION[calibrate_on]
  log_temps = width.log_temperatures() if calibrate_on else None
  table = {arm: {} for arm in ARMS}
  for split in ("test_a", "test_b") + tuple(s for s in calibration_splits
                                            if not s.startswith("test")):
    for arm, values in curves(model, a, lines, task, split, lams, reset, log_temps).items():
      table[arm][split] = values
  results = {}
  for arm in ARMS:
    table[arm]["double_test"] = {m: (table[arm]["test_a"][m] + table[arm]["test_b"][m]) / 2
                                 for m in ("accuracy", "loss")}
    for split in ("test_a", "test_b", "double_test"):
      acc, loss = (np.asarray(table[arm][split][m]) for m in ("accuracy", "loss"))
      results[f"{arm}/{split}/accuracy_mid"] = float(acc[mid])
      results[f"{arm}/{split}/loss_mid"] = float(loss[mid])
    acc, loss = (jnp.asarray(table[arm]["double_test"][m]) for m in ("accuracy", "loss"))
    results[f"{arm}/loss_barrier"] = float(interpolate.barrier(loss, lams))
    results[f"{arm}/accuracy_barrier"] = float(interpolate.barrier(-acc, lams))
  if calibrate_on:
    results.update(_calibrate(table, calibration_splits, lams, mid))
  for name, (split, index) in {"endpoint_a/test_a": ("test_a", 0),
                               "endpoint_a/test_b": ("test_b", 0),
                               "endpoint_b/test_a": ("test_a", -1),
                               "endpoint_b/test_b": ("test_b", -1)}.items():
    results[f"{name}/accuracy"] = float(np.asarray(table["naive"][split]["accuracy"])[index])
  results["distance/naive"] = l2_distance(a, b)
  results["distance/merged"] = l2_distance(a, b_merged)
  results["distance/ratio"] = results["distance/merged"] / max(results["distance/naive"], 1e-12)
  for name, other in lines.items():
    aligned = jax.device_get(analysis.alignment(a, other, k=5))
    results[f"alignment/{name}/R"] = float(aligned["R"])
    results[f"alignment/{name}/A_5"] = float(aligned["A_k"])
  ranks = truncation_ranks(merge)
  if ranks:
    results.update(_truncation(model, a, lines, task, ranks, reset))
  if merge.get("lewc_examples", 0):
    results.update(_lewc(model, a, lines, task, merge.lewc_examples))
  if write_files:
    kept = {arm: {split: {m: v for m, v in values.items() if m != "loss_by_temperature"}
                  for split, values in splits.items() if not split.startswith("train")}
            for arm, splits in table.items()}
    listed = jax.tree.map(lambda v: np.asarray(v).tolist(), kept)
    with open(os.path.join(workdir, "merge_curves.json"), "w") as f:
      json.dump({"lams": np.asarray(lams).tolist(), **listed}, f, indent=1)
    np.savez(os.path.join(workdir, "perms.npz"),
             **{g: np.asarray(p) for g, p in state.best_perms.items()})
    plot(table, np.asarray(lams), os.path.join(workdir, "merge_curves.png"),
         f"{matching} matching: double-test accuracy at lam=0.5 "
         f"{100 * results['merged/double_test/accuracy_mid']:.1f}% (naive "
         f"{100 * results['naive/double_test/accuracy_mid']:.1f}%)")
    plot_alignment(a, lines, os.path.join(workdir, "alignment_heatmaps.png"))
  return results


# -- condense_dc: the condensed D_merge ------------------------------------------------------


class CondenseTask(tasks.SupervisedTask):
  """The training split arranged by class on the device ([C, m, ...], m the smallest class
  count, each class's first m of a seeded permutation); a batch is every outer step's real
  batch of every class ([outer_loop, C, min(batch_real, m), ...])."""

  def __init__(self, config, num_devices: int = 1):
    self._condense = config.condense
    super().__init__(config, num_devices)

  def class_table(self) -> tasks.Arrays:
    arrays = self.train_arrays()
    labels = arrays["label"]
    classes = self.spec.num_classes
    counts = np.bincount(labels, minlength=classes)
    if counts.min() < 1:
      raise UserError(f"class {int(np.argmin(counts))} has no training images to condense")
    rng = np.random.default_rng(self._data.split_seed)
    rows = [rng.permutation(np.flatnonzero(labels == c))[:counts.min()] for c in range(classes)]
    return {"by_class": arrays["image"][np.stack(rows)]}

  def _device_train(self, mesh):
    if getattr(self, "_on_device", None) is None:
      from jaxlab.train import sharding  # pylint: disable=g-import-not-at-top
      self._on_device = sharding.put_replicated(self.class_table(), mesh)
    return self._on_device

  def train_batch(self, data, key: jax.Array, step: jax.Array):
    table = data["by_class"]
    classes, m = table.shape[:2]
    size = min(self._condense.batch_real, m)
    outer = self._condense.outer_loop
    keys = jax.random.split(jax.random.fold_in(key, step), outer * classes).reshape(
        outer, classes)
    pick = jax.vmap(jax.vmap(lambda k, rows: rows[jax.random.permutation(k, m)[:size]],
                             in_axes=(0, 0)), in_axes=(0, None))
    return {"real": augment.to_float(pick(keys, table))}


def _condense_tx(config) -> optax.GradientTransformation:
  return optax.sgd(config.condense.lr_img, momentum=config.condense.momentum_img)


def condense_make_task(config, num_devices: int = 1) -> CondenseTask:
  if config.data.eval_splits.strip():
    raise UserError("condense_dc is evaluated in its report (fresh models trained on the "
                    f"condensed set): set data.eval_splits='' (it is "
                    f"{config.data.eval_splits!r})")
  task = CondenseTask(config, num_devices)
  model = _model(config, task.spec)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             jnp.zeros((2,) + task.spec.input_shape)))
  if "batch_stats" in shapes:
    raise UserError(f"condense_dc supports models without BatchNorm: set model.norm=none "
                    f"(it is {config.model.get('norm', 'none')!r})")
  return task


def condense_init(config, rng: jax.Array, spec: tasks.Spec) -> TrainState:
  synthetic = jax.random.normal(rng, (spec.num_classes, config.condense.ipc)
                                + tuple(spec.input_shape))
  if config.condense.clip:
    synthetic = jnp.clip(synthetic, 0.0, 1.0)
  return TrainState(step=jnp.zeros((), jnp.int32), params=synthetic, model_state={},
                    opt_state=_condense_tx(config).init(synthetic))


def condense_step(state: TrainState, batch, rng: jax.Array, *, config, spec):
  synthetic, opt_state, loss = condense.iteration(
      _model(config, spec), state.params, state.opt_state, _condense_tx(config),
      batch["real"], rng, inner_loop=config.condense.inner_loop,
      lr_net=config.condense.lr_net, clip=config.condense.clip)
  return state.replace(step=state.step + 1, params=synthetic, opt_state=opt_state), {
      "matching_loss": loss, "image_min": synthetic.min(), "image_max": synthetic.max()}


def _fresh_accuracy(config, spec, task: CondenseTask, images, labels) -> np.ndarray:
  """Test accuracy of `condense.eval_models` fresh models trained on (images, labels)."""
  model = _model(config, spec)
  keys = jax.random.split(jax.random.key(config.seed + 1), config.condense.eval_models)
  params = jax.jit(lambda x, y: condense.train_fresh(
      model, x, y, keys, steps=config.condense.eval_steps,
      learning_rate=config.condense.eval_lr))(jnp.asarray(images), jnp.asarray(labels))
  test = task.split_arrays(config.condense.test_split)
  x, y = augment.to_float(jnp.asarray(test["image"])), jnp.asarray(test["label"])
  correct = jax.jit(jax.vmap(lambda p: jnp.mean(
      jnp.argmax(model.apply({"params": p}, x), -1) == y)))(params)
  return np.asarray(correct)


def condense_report(state: TrainState, task: CondenseTask, workdir: str, *, config, spec,
                    write_files: bool) -> Dict[str, float]:
  synthetic = np.asarray(state.params, np.float32)
  classes, ipc = synthetic.shape[:2]
  images = synthetic.reshape((classes * ipc,) + synthetic.shape[2:])
  labels = np.repeat(np.arange(classes), ipc).astype(np.int32)
  picked = coreset(task.train_arrays(), ipc, config.condense.coreset_seed)
  results = {}
  for name, (x, y) in {"condensed": (images, labels),
                       "coreset": (augment.to_float(jnp.asarray(picked["image"])),
                                   picked["label"])}.items():
    accuracy = _fresh_accuracy(config, spec, task, x, y)
    results[f"{name}/test/accuracy"] = float(accuracy.mean())
    results[f"{name}/test/accuracy_std"] = float(accuracy.std())
  results["condensed/image_min"] = float(images.min())
  results["condensed/image_max"] = float(images.max())
  if write_files:
    np.savez(os.path.join(workdir, "condensed.npz"), image=images, label=labels)
  return results


VARIANTS["condense_dc"] = Variant(blocks=("condense",), functions={
    "make_task": condense_make_task, "init": condense_init, "train_step": condense_step,
    "start_from": None, "eval_step": lambda *a, **k: {}, "report": condense_report})
