"""The one checkpoint path: Orbax `CheckpointManager` in `workdir/checkpoints`.

Saves are atomic (Orbax writes to a temporary directory and renames it when
complete), so a run killed mid-save leaves the previous checkpoint intact.
Resume takes the newest step that restores cleanly; an unreadable one is
never loaded silently: it is reported as a warning and moved aside to
`<step>.unreadable` (kept for inspection, not deleted), and the next older
step is tried.

`load_pretrained` reads the weights a run starts from (`config.init_from`): another
run's newest checkpoint, or an `.npz` of arrays named by path ("params/Dense_0/kernel",
"batch_stats/...") for weights converted elsewhere.
"""

import dataclasses
import os
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util
from jax.experimental import multihost_utils

from jaxlab.errors import UserError


class Checkpointer:

  def __init__(self, directory: str, keep: int = 3):
    self.directory = os.path.abspath(directory)
    self.keep = keep
    self._manager = self._new_manager()

  def _new_manager(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True)
    return ocp.CheckpointManager(self.directory, options=options)

  def steps(self):
    return sorted(self._manager.all_steps())

  def restore_latest(self, abstract_state: Any) -> Optional[Tuple[Any, int]]:
    """(state, step) from the newest readable checkpoint, or None if there is none.

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with shardings, e.g.
    from `jax.eval_shape`, giving structure, dtypes and placement. A checkpoint written
    before states had a `frozen` field restores as one whose `frozen` is empty, when the
    state has no frozen inputs; one whose state fields differ otherwise (another layout,
    not a corruption) stops the run with one line and is left in place.
    """
    for step in reversed(self.steps()):
      try:
        state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        return state, step
      except Exception as e:  # pylint: disable=broad-except
        older = self._restore_older_layout(step, abstract_state)
        if older is not None:
          return older, step
        self._set_aside(step, e)
    return None

  def _saved_fields(self, step: int) -> Optional[set]:
    try:
      metadata = ocp.StandardCheckpointer().metadata(
          os.path.join(self.directory, str(step), "default"))
      return set(metadata.item_metadata.tree)
    except Exception:  # pylint: disable=broad-except
      return None  # unreadable metadata: a damaged checkpoint

  def _restore_older_layout(self, step: int, abstract_state: Any):
    """The state from a checkpoint without `frozen` (jaxlab before the inputs block), or None
    when the checkpoint's fields are those expected (then it is damaged)."""
    saved = self._saved_fields(step)
    expected = {f.name for f in dataclasses.fields(abstract_state)} if (
        dataclasses.is_dataclass(abstract_state)) else None
    if saved is None or expected is None or saved == expected:
      return None
    if saved == expected - {"frozen"} and not jax.tree.leaves(abstract_state.frozen):
      target = {name: getattr(abstract_state, name) for name in saved}
      restored = self._manager.restore(step, args=ocp.args.StandardRestore(target))
      return abstract_state.replace(**restored)
    raise UserError(
        f"the checkpoint at step {step} in {self.directory} holds the state fields "
        f"{sorted(saved)}, this jaxlab's {type(abstract_state).__name__} has {sorted(expected)}: "
        "it was written by another version of the method; it is left in place (resume it "
        "with the jaxlab that wrote it, or use a new --workdir)")

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

  def save(self, step: int, state: Any) -> None:
    self._manager.save(step, args=ocp.args.StandardSave(state))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _checkpoint_item(path: str, field: str = "init_from") -> str:
  """The Orbax item directory of the newest step under a workdir, checkpoints dir or step."""
  for candidate in (os.path.join(path, "checkpoints"), path):
    steps = [d for d in os.listdir(candidate) if d.isdigit()] if os.path.isdir(candidate) else []
    if steps:
      return os.path.join(candidate, max(steps, key=int), "default")
  if os.path.isdir(os.path.join(path, "default")):
    return os.path.join(path, "default")
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
  if not os.path.exists(path):
    raise UserError(f"{field}={path!r} does not exist; give a run's workdir or an .npz file")
  if path.endswith(".npz"):
    with np.load(path) as archive:
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
