"""A run's working directory: who owns it, and whether the run in it is finished.

A workdir belongs to one run: its `config.json`. Starting a config on a workdir that holds
another run's config stops with one line naming the keys that differ (exit 2), before
anything in the workdir is written, moved or deleted. Only the keys in `ADJUSTABLE` may change
between the runs of one workdir: `train.steps` extends (or, before it is reached, shortens) a
run, and the others change where things are read from or how often they are written, not
what is computed. A finished run (its `results.json` at `train.steps`) started again changes
nothing: the loop prints its results and returns them.
"""

import json
import os
from typing import Dict, Optional

from jaxlab.config import ConfigDict
from jaxlab.errors import UserError

# keys whose change does not make another run (prefixes end with ".")
ADJUSTABLE = ("train.steps", "train.log_every", "train.checkpoint_every",
              "train.keep_checkpoints", "train.eval_batch_size", "data.data_dir",
              "data.manual_dir", "data.download", "data.pipeline", "data.workers",
              "data.stream_above_mb", "distributed.")

# keys added to configs after runs were made, with the value that runs without them had
ADDED = {"data.train_pp": "", "data.eval_pp": ""}


def _flat(tree, prefix: str = "") -> Dict[str, object]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def _adjustable(key: str) -> bool:
  return any(key == a or (a.endswith(".") and key.startswith(a)) for a in ADJUSTABLE)


def config_json(config: ConfigDict, provenance: Optional[Dict] = None) -> str:
  """The config as `config.json` holds it, with what produced the run (`provenance`, not a
  config key: never compared) when given."""
  if provenance is None:
    return config.to_json_best_effort(indent=2, sort_keys=True) + "\n"
  payload = {**json.loads(config.to_json_best_effort()), "provenance": provenance}
  return json.dumps(payload, indent=2, sort_keys=True) + "\n"


def check(workdir: str, config: ConfigDict) -> None:
  """Raises a UserError (nothing written) when `workdir` cannot hold this run: not a
  directory, not writable, or holding another run."""
  if "://" in workdir:
    raise UserError(f"--workdir={workdir!r} is a URL; jaxlab writes checkpoints, logs and "
                    "results with local file operations, so give a local or mounted directory "
                    "(a bucket through gcsfuse, say); data.data_dir, folder datasets, init_from "
                    "and inputs.* may be URLs (read through etils.epath)")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"--workdir={workdir!r} is a file, not a directory")
  existing = workdir
  while existing and not os.path.exists(existing):
    existing = os.path.dirname(existing.rstrip("/")) or "."
  if not os.access(existing, os.W_OK | os.X_OK):
    raise UserError(f"--workdir={workdir!r}: {existing!r} is not writable")
  saved_path = os.path.join(workdir, "config.json")
  if not os.path.exists(saved_path):
    return
  try:
    with open(saved_path) as f:
      saved = json.load(f)
    saved = _flat({k: v for k, v in saved.items() if k != "provenance"})
  except (OSError, ValueError) as e:
    raise UserError(f"--workdir={workdir!r} holds an unreadable config.json ({e}); use "
                    "another --workdir") from None
  new = _flat(json.loads(config_json(config)))
  saved = {**{k: v for k, v in ADDED.items() if k in new}, **saved}
  differing = sorted((k for k in set(saved) | set(new)
                      if saved.get(k, "<absent>") != new.get(k, "<absent>") and not _adjustable(k)),
                     key=lambda k: (k != "method", k))
  if differing:
    shown = ", ".join(f"{k} ({saved.get(k, '<absent>')!r} there, {new.get(k, '<absent>')!r} "
                      "here)" for k in differing[:4])
    more = f" and {len(differing) - 4} more" if len(differing) > 4 else ""
    adjustable = ", ".join(a + "*" if a.endswith(".") else a for a in ADJUSTABLE)
    raise UserError(f"--workdir={workdir!r} holds another run: its config.json differs in "
                    f"{shown}{more}; use a new --workdir (only {adjustable} may change when a "
                    "run is resumed)")


def create(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UserError(f"--workdir={workdir!r} cannot be created ({e.strerror})") from None


def finished_results(workdir: str, config: ConfigDict) -> Optional[Dict[str, float]]:
  """The results of the run in `workdir` if it already reached `train.steps` (any results
  when train.steps = -1: a run whose length its data fixes), else None."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      results = json.load(f)
  except (OSError, ValueError):
    return None  # cut short: the run evaluates again
  results.pop("provenance", None)
  done = config.train.steps == -1 or results.get("step") == config.train.steps
  return results if done else None
