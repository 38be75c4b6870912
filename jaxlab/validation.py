"""Config validation: every value a user can set is checked before a run reads data or
writes anything, and a bad one is one line naming the key, its value and the valid range.

`check_types(config, reference)` compares a config with overrides against the preset it came
from (a tuple of ints given a string, ...); `validate(config, method)` checks ranges, the
config blocks the method reads (`Method.blocks`: a method run on a preset without its block,
e.g. `--config.method=maml` on configs/erm.py, names the preset files that have it) and the
cross-field rules (an episodic preset needs an episodic method, `distributed.process_id` <
`num_processes`). Ranges are documented here, in one table; `train.steps=0` is legitimate (an
evaluation-only run).
"""

import glob
import os
from typing import Tuple

from jaxlab.config import ConfigDict, flatten
from jaxlab.errors import UserError

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

at_least = lambda low: (lambda v: v >= low, f">= {low}")
fraction_open_closed = (lambda v: 0 < v <= 1, "in (0, 1]")
fraction_closed_open = (lambda v: 0 <= v < 1, "in [0, 1)")

# key: (predicate, the valid range in words); keys a config does not have are skipped
RANGES = {
    "train.steps": (lambda v: v >= -1, ">= 0, or -1 for a run whose length its data fixes "
                    "(a test-time adaptation stream)"),
    "train.batch_size": at_least(1),
    "train.eval_batch_size": at_least(1),
    "train.log_every": at_least(1),
    "train.eval_every": (lambda v: v >= 0, ">= 0 (0: evaluate at the end only)"),
    "train.checkpoint_every": (lambda v: v >= 0, ">= 0 (0: save at the end only)"),
    "train.keep_checkpoints": at_least(1),
    "train.label_smoothing": fraction_closed_open,
    "data.per_class": at_least(0),
    "data.train_fraction": fraction_open_closed,
    "data.val_fraction": fraction_closed_open,
    "data.image_size": (lambda v: v >= 0, ">= 0 (0: keep the dataset's size)"),
    "aug.crop_padding": at_least(0),
    "optimizer.learning_rate": at_least(0),
    "optimizer.warmup_steps": at_least(0),
    "optimizer.warmup_offset": at_least(0),
    "finetune.randreg_unweighted_last_steps": at_least(0),
    "optimizer.decay_steps": (lambda v: v >= 0, ">= 0 (0: train.steps)"),
    "optimizer.weight_decay": at_least(0),
    "optimizer.momentum": fraction_closed_open,
    "optimizer.grad_clip_norm": (lambda v: v >= 0, ">= 0 (0: off)"),
    "optimizer.grad_clip_value": (lambda v: v >= 0, ">= 0 (0: off)"),
    "meta.inner_lr": at_least(0),
    "meta.train_steps": at_least(0),
    "meta.test_steps": at_least(0),
    "meta.task_groups": at_least(1),
    "episodes.ways": at_least(2),
    "episodes.shots": at_least(1),
    "episodes.queries": at_least(1),
    "episodes.meta_batch": at_least(1),
    "episodes.eval_episodes": at_least(1),
    "episodes.eval_meta_batch": at_least(1),
    "episodes.eval_points": at_least(1),
    "adv.train_eps": at_least(0),
    "adv.eps": at_least(0),
    "adv.steps": at_least(0),
    "adv.step_size": at_least(0),
    "ssl.weight": at_least(0),
    "generative.weight": at_least(0),
    "generative.real_weight": at_least(0),
    "generative.synthetic_batch": at_least(1),
    "gan.disc_steps": at_least(1),
    "data.workers": (lambda v: v >= -1, ">= -1 (-1: one per CPU core; 0: no worker process)"),
    "data.stream_above_mb": at_least(0),
    "distributed.num_processes": at_least(1),
    "distributed.process_id": at_least(0),
}


def _get(config: ConfigDict, dotted: str):
  node = config
  for part in dotted.split("."):
    if not isinstance(node, ConfigDict) or part not in node:
      return None
    node = node[part]
  return node


def check_ranges(config: ConfigDict, ranges=None) -> None:
  for key, (valid, words) in (ranges or RANGES).items():
    value = _get(config, key)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
      continue
    if not valid(value):
      raise UserError(f"config.{key}={value!r} is out of range: it must be {words}")


def _kind(value) -> str:
  return "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else (
      type(value).__name__)


def check_types(config: ConfigDict, reference: ConfigDict) -> None:
  """Each tuple field holds the kind of elements its preset's default holds (the CLI and
  `load_config` type scalar overrides already; tuples they take as they come)."""
  for key in flatten(reference):
    default, value = _get(reference, key), _get(config, key)
    if not isinstance(default, (tuple, list)) or not default or not isinstance(value,
                                                                              (tuple, list)):
      continue
    kinds = {_kind(d) for d in default}
    bad = [v for v in value if _kind(v) not in kinds]
    if bad:
      raise UserError(f"config.{key}={tuple(value)!r}: {bad[0]!r} is not a "
                      f"{' or '.join(sorted(kinds))}, as the elements of the preset's "
                      f"{tuple(default)!r} are")


def _fits(config: ConfigDict, method) -> bool:
  """The config has every block the method reads, and is episodic iff the method is."""
  return (all(b in config for b in method.blocks)
          and ("episodes" in config) == ("episodes" in method.blocks))


def _presets_for(method) -> Tuple[str, ...]:
  """The config files under configs/ with a preset the method can run on."""
  from jaxlab import config as config_lib  # pylint: disable=g-import-not-at-top
  found = []
  for path in sorted(glob.glob(os.path.join(_REPO_ROOT, "configs", "*.py"))):
    for preset in config_lib.list_presets(path):
      try:
        candidate = config_lib.load_config(f"{path}:{preset}", lock=False)
      except UserError:
        continue
      if _fits(candidate, method):
        found.append(os.path.relpath(path, _REPO_ROOT))
        break
  return tuple(found)


def check_blocks(config: ConfigDict, method) -> None:
  """The config blocks the method reads are there, and an episodic preset runs an episodic
  method (and only then)."""
  if _fits(config, method):
    return
  where = ", ".join(_presets_for(method)) or "none"
  missing = [b for b in method.blocks if b not in config]
  if missing:
    raise UserError(f"method {method.name} reads config.{', config.'.join(missing)}, which "
                    f"this config does not have; config files with a preset for it: {where}")
  raise UserError(f"method {method.name} trains on batches of examples, but this is an "
                  f"episodic preset (config.episodes); config files with a preset for it: "
                  f"{where}")


def check_distributed(config: ConfigDict) -> None:
  d = config.get("distributed")
  if d and d.enabled and d.coordinator_address and not d.process_id < d.num_processes:
    raise UserError(f"config.distributed.process_id={d.process_id} must be < "
                    f"distributed.num_processes={d.num_processes}")


def check_input(config: ConfigDict) -> None:
  """`data.pipeline` is a choice and the preprocessing strings parse; evaluation is
  deterministic (no random op in `data.eval_pp`)."""
  from jaxlab.data import tasks, transforms  # pylint: disable=g-import-not-at-top
  data = config.get("data", {})
  if data.get("pipeline", "auto") not in tasks.PIPELINES:
    raise UserError(f"config.data.pipeline={data.pipeline!r} is not valid; valid: "
                    + ", ".join(tasks.PIPELINES))
  transforms.parse(data.get("train_pp", ""), "data.train_pp")
  if transforms.is_random(data.get("eval_pp", "")):
    raise UserError(f"config.data.eval_pp={data.eval_pp!r} draws at random; evaluation is "
                    "deterministic: use resize, resize_small, central_crop, grayscale")


def validate(config: ConfigDict, method) -> None:
  """Every check above, in the order a reader would fix them."""
  check_blocks(config, method)
  check_ranges(config)
  check_input(config)
  check_distributed(config)
