"""The one checkpoint path: Orbax `CheckpointManager` in `workdir/checkpoints`.

Saves are atomic (Orbax writes to a temporary directory and renames it when
complete), so a run killed mid-save leaves the previous checkpoint intact.
Resume takes the newest step that restores cleanly; an unreadable one is
never loaded silently: it is reported as a warning and moved aside to
`<step>.unreadable` (kept for inspection, not deleted), and the next older
step is tried.
"""

import os
from typing import Any, Optional, Tuple

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils


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
    from `jax.eval_shape`, giving structure, dtypes and placement.
    """
    for step in reversed(self.steps()):
      try:
        state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        return state, step
      except Exception as e:  # pylint: disable=broad-except
        self._set_aside(step, e)
    return None

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
