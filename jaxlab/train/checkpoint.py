"""The one checkpoint path: Orbax `CheckpointManager` in `workdir/checkpoints`.

Saves are atomic (Orbax writes to a temporary directory and renames it when
complete), so a run killed mid-save leaves the previous checkpoint intact. Each save also
writes `<step>/checksums.json`, a SHA-256 of every array, verified when the step is restored.
Resume takes the newest step that restores cleanly. A checkpoint that cannot be read, or whose
arrays no longer match their checksums (a disk or copy fault), is never loaded: it is reported
as a warning and moved aside to `<step>.unreadable` (kept for inspection, not deleted), and the
next older step is tried. A readable checkpoint whose variables differ from this run's state
(another model or method) is not damaged: the run stops with one line naming the leaves and
leaves it in place.

`load_pretrained` reads the weights a run starts from (`config.init_from`): another
run's newest checkpoint, or an `.npz` of arrays named by path ("params/Dense_0/kernel",
"batch_stats/...") for weights converted elsewhere.

A run's trajectory (`train.keep_schedule`: the steps whose weights are kept for good, which
the rolling checkpoints are not) is written in that `.npz` form, `workdir/trajectory/<step>.npz`
(`save_variables`), and read back stacked along a leading axis by `load_trajectory` (the
source trajectory of learning transfer, arXiv 2305.14122).
"""

import dataclasses
import hashlib
import io
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from etils import epath
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util
from jax.experimental import multihost_utils

from jaxlab.errors import UserError

CHECKSUMS = "checksums.json"
NOTES = "notes.json"


def _key_name(entry) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _leaves(tree) -> Dict[str, Any]:
  """{"params/Dense_0/kernel": leaf} for every leaf, the same names for a state and for the
  metadata Orbax keeps of it."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(_key_name(e) for e in path): leaf for path, leaf in flat}


def _host(x) -> np.ndarray:
  """A replicated array's value on this host (also when other processes hold it too)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = x.addressable_data(0)
  return np.asarray(x)


def checksums(state: Any) -> Dict[str, str]:
  return {name: hashlib.sha256(np.ascontiguousarray(_host(leaf)).tobytes()).hexdigest()
          for name, leaf in _leaves(state).items()}


class Checkpointer:

  def __init__(self, directory: str, keep: int = 3):
    self.directory = os.path.abspath(directory)
    self.keep = keep
    self._manager = self._new_manager()

  def _new_manager(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True)
    return ocp.CheckpointManager(self.directory, options=options,
                                 item_handlers=ocp.StandardCheckpointHandler())

  def steps(self):
    return sorted(self._manager.all_steps())

  def restore_latest(self, abstract_state: Any) -> Optional[Tuple[Any, int]]:
    """(state, step) from the newest readable checkpoint, or None if there is none.

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with shardings, e.g.
    from `jax.eval_shape`, giving structure, dtypes and placement. A checkpoint written
    before states had a `frozen` field restores as one whose `frozen` is empty, when the
    state has no frozen inputs.
    """
    for step in reversed(self.steps()):
      self._check_structure(step, abstract_state)
      try:
        state = self._restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        self._set_aside(step, e)
        continue
      problem = self._verify(step, state)
      if problem:
        self._set_aside(step, ValueError(problem))
        continue
      return state, step
    return None

  def _saved_leaves(self, step: int) -> Optional[Dict[str, Any]]:
    """{leaf name: Orbax's array metadata} of a checkpoint, or None when unreadable."""
    try:
      metadata = self._manager.item_metadata(step)
      return _leaves(getattr(metadata, "tree", metadata)) or None
    except Exception:  # pylint: disable=broad-except
      return None

  def _check_structure(self, step: int, abstract_state: Any) -> None:
    """A UserError naming the leaves when the checkpoint holds other variables than the state
    (another model or method: not a damaged file, so it is left in place)."""
    saved = self._saved_leaves(step)
    if saved is None:
      return  # unreadable metadata: restoring fails and the step is set aside
    expected = _leaves(abstract_state)
    missing, extra = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    shapes = sorted(k for k in set(saved) & set(expected)
                    if tuple(getattr(saved[k], "shape", ()) or ()) != tuple(expected[k].shape))
    if not (missing or extra or shapes):
      return
    details = "; ".join(part for part in (
        f"missing {missing[:3]}" if missing else "", f"unexpected {extra[:3]}" if extra else "",
        "shapes differ at " + ", ".join(
            f"{k} {tuple(saved[k].shape)} there, {tuple(expected[k].shape)} here"
            for k in shapes[:2]) if shapes else "") if part)
    raise UserError(f"the checkpoint at step {step} in {self.directory} holds the variables of "
                    f"another model or method ({details}): it is left in place; resume it with "
                    "the config that wrote it, or use a new --workdir")

  def _restore(self, step: int, abstract_state: Any):
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except ValueError:
      # written before states had `frozen` (an empty dict has no leaves, so the leaf check
      # passed): restore the other fields
      if not (dataclasses.is_dataclass(abstract_state) and hasattr(abstract_state, "frozen")
              and not jax.tree.leaves(abstract_state.frozen)):
        raise
      target = {f.name: getattr(abstract_state, f.name)
                for f in dataclasses.fields(abstract_state) if f.name != "frozen"}
      restored = self._manager.restore(step, args=ocp.args.StandardRestore(target))
      return abstract_state.replace(**restored)

  def _verify(self, step: int, state: Any) -> str:
    """'' when the restored arrays match the checksums saved with them (or none were saved:
    a checkpoint of an earlier jaxlab), else what differs."""
    path = os.path.join(self.directory, str(step), CHECKSUMS)
    if not os.path.exists(path):
      return ""
    with open(path) as f:
      saved = json.load(f)
    actual = checksums(state)
    bad = sorted(k for k in set(saved) | set(actual) if saved.get(k) != actual.get(k))
    return f"checksum mismatch in {len(bad)} array(s), e.g. {bad[0]}" if bad else ""

  def _set_aside(self, step: int, error: Exception) -> None:
    path = os.path.join(self.directory, str(step))
    reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    logging.warning("checkpoint at step %d (%s) is unreadable (%s); skipping it and moving it "
                    "to %s.unreadable", step, path, reason[:300], path)
    print(f"jaxlab: warning: checkpoint at step {step} is unreadable ({reason[:200]}); "
          f"skipped and moved to {path}.unreadable", flush=True)
    if jax.process_index() == 0 and os.path.exists(path):
      target = path + ".unreadable"
      suffix = 0
      while os.path.exists(target):
        suffix += 1
        target = f"{path}.unreadable{suffix}"
      os.rename(path, target)
    multihost_utils.sync_global_devices(f"jaxlab_checkpoint_set_aside_{step}")
    self._manager.close()
    self._manager = self._new_manager()

  def save(self, step: int, state: Any, notes: Optional[Dict[str, Any]] = None) -> None:
    """Saves `state` at `step` and, once it is on disk, its checksums and the JSON `notes` the
    loop keeps beside it (`notes(step)` reads them back)."""
    self._manager.save(step, args=ocp.args.StandardSave(state))
    sums = checksums(state)
    self._manager.wait_until_finished()
    if jax.process_index() == 0:
      for name, payload in ((CHECKSUMS, sums), (NOTES, notes or {})):
        path = os.path.join(self.directory, str(step), name)
        with open(path + ".tmp", "w") as f:
          json.dump(payload, f, indent=0, sort_keys=True)
        os.replace(path + ".tmp", path)

  def notes(self, step: int) -> Dict[str, Any]:
    path = os.path.join(self.directory, str(step), NOTES)
    if not os.path.exists(path):
      return {}
    with open(path) as f:
      return json.load(f)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _checkpoint_item(path: str, field: str = "init_from") -> epath.Path:
  """The Orbax item directory of the newest step under a workdir, checkpoints dir or step."""
  root = epath.Path(path)
  for candidate in (root / "checkpoints", root):
    steps = [d.name for d in candidate.iterdir() if d.name.isdigit()] if candidate.is_dir() else []
    if steps:
      return candidate / max(steps, key=int) / "default"
  if (root / "default").is_dir():
    return root / "default"
  raise UserError(f"{field}={path!r} holds no jaxlab checkpoint; valid: a run's workdir, "
                  "its checkpoints/ directory, one checkpoints/<step>, or an .npz file")


def load_pretrained(path: str, like: Dict[str, Any], skip: str = "",
                    field: str = "init_from") -> Dict[str, Any]:
  """Host arrays shaped like `like` ({"params": ..., "batch_stats": ...}) read from `path`.

  `path` is a jaxlab workdir (its newest checkpoint's `params` and `model_state`), a
  checkpoint directory, or an `.npz` whose keys are the "/"-joined variable paths. Every
  variable of `like` must be present with the same shape; extra arrays are an error too, so
  a checkpoint of a different architecture is never half-loaded. `skip` is a comma-separated
  list of path prefixes ("params/head") that are neither required nor returned: they keep
  their fresh initialisation (a new head for another label set). `field` names the config
  field the path came from, in error messages.
  """
  prefixes = tuple(p.strip() for p in skip.split(",") if p.strip())
  skipped = lambda key: any(key == p or key.startswith(p.rstrip("/") + "/") for p in prefixes)
  if "://" not in path:  # orbax reads absolute paths only; a workdir given relative works too
    path = os.path.abspath(path)
  if not epath.Path(path).exists():  # any etils.epath path (gs://... with its filesystem layer)
    raise UserError(f"{field}={path!r} does not exist; give a run's workdir or an .npz file")
  if path.endswith(".npz"):
    with epath.Path(path).open("rb") as f, np.load(f) as archive:
      flat = {k: archive[k] for k in archive.files}
  else:
    restored = ocp.StandardCheckpointer().restore(_checkpoint_item(path, field))
    if not isinstance(restored, dict) or "params" not in restored:
      raise UserError(f"{field}={path!r}: the checkpoint has no 'params'")
    tree = {"params": restored["params"], **(restored.get("model_state") or {})}
    flat = traverse_util.flatten_dict(tree, sep="/")
  wanted = {k: v for k, v in traverse_util.flatten_dict(like, sep="/").items() if not skipped(k)}
  flat = {k: v for k, v in flat.items() if not skipped(k)}
  missing, extra = sorted(set(wanted) - set(flat)), sorted(set(flat) - set(wanted))
  if missing or extra:
    raise UserError(f"{field}={path!r} does not fit the model: missing {missing[:3]}, "
                    f"unexpected {extra[:3]} ({len(missing)} missing, {len(extra)} unexpected)")
  for key, target in wanted.items():
    if tuple(flat[key].shape) != tuple(target.shape):
      raise UserError(f"{field}={path!r}: {key} has shape {tuple(flat[key].shape)}, the "
                      f"model needs {tuple(target.shape)}")
  return traverse_util.unflatten_dict(
      {k: np.asarray(flat[k], wanted[k].dtype) for k in wanted}, sep="/")


# -- kept weights: the trajectory -------------------------------------------------------------

TRAJECTORY = "trajectory"


def keep_steps(schedule: str, total: int) -> List[int]:
  """The steps `train.keep_schedule` keeps, in order: "" none; "ends" the initialisation (0)
  and the last step; "every:N" 0, N, 2N, ... and the last step; or steps "0,100,250"."""
  schedule = str(schedule or "").strip()
  if not schedule:
    return []
  if schedule == "ends":
    return sorted({0, total})
  if schedule.startswith("every:") and schedule[6:].isdigit() and int(schedule[6:]) > 0:
    return sorted(set(range(0, total + 1, int(schedule[6:]))) | {total})
  parts = [p.strip() for p in schedule.split(",") if p.strip()]
  if parts and all(p.isdigit() and int(p) <= total for p in parts):
    return sorted({int(p) for p in parts})
  raise UserError(f"train.keep_schedule={schedule!r} is not valid; valid: '' (none), 'ends' "
                  f"(steps 0 and {total}), 'every:N' (0, N, 2N, ... and {total}) or steps "
                  f"0..{total} separated by commas")


def save_variables(path: str, variables: Dict[str, Any]) -> None:
  """`variables` ({"params": ..., "batch_stats": ...}) as an .npz of "/"-joined paths (the form
  `load_pretrained` reads), written whole or not at all."""
  flat = traverse_util.flatten_dict(jax.device_get(variables), sep="/")
  buffer = io.BytesIO()
  np.savez(buffer, **{k: np.asarray(v) for k, v in flat.items()})
  target = epath.Path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = epath.Path(path + ".tmp")
  tmp.write_bytes(buffer.getvalue())
  tmp.rename(target)


def trajectory_steps(workdir: str, field: str = "trajectory") -> List[int]:
  """The kept steps of a run (`train.keep_schedule`), or one line when it kept none."""
  folder = epath.Path(workdir) / TRAJECTORY
  steps = sorted(int(p.name[:-4]) for p in folder.iterdir()
                 if p.name.endswith(".npz") and p.name[:-4].isdigit()) if folder.is_dir() else []
  if not steps:
    raise UserError(f"{field}={workdir!r} kept no trajectory (no {TRAJECTORY}/<step>.npz): "
                    "train the source with train.keep_schedule set, e.g. 'ends' or 'every:N'")
  return steps


def load_trajectory(workdir: str, like: Dict[str, Any], steps: Sequence[int],
                    field: str = "trajectory") -> Dict[str, Any]:
  """The kept weights of `steps` stacked on a new leading axis, each checked against `like`
  (one point's shapes) as `load_pretrained` checks."""
  points = [load_pretrained(os.path.join(workdir, TRAJECTORY, f"{step}.npz"), like,
                            field=f"{field} (step {step})") for step in steps]
  return jax.tree.map(lambda *xs: np.stack(xs), *points)
