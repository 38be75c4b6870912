"""Loading `configs/<file>.py:<preset>` the way `ml_collections.config_flags` does.

`load_config` gives notebooks and scripts the same locked `ConfigDict` that
`python -m jaxlab.main --config=...` builds, and `check_overrides` rejects an
unknown `--config.a.b=...` key with the list of valid keys before absl sees it.
`presets` is the small helper every `configs/*.py` uses for its `get_config(arg)`.
"""

import ast
import importlib.util
import inspect
import pathlib
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import ml_collections

from jaxlab.errors import UserError, unknown

ConfigDict = ml_collections.ConfigDict
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def resolve_path(path: str) -> str:
  """The config file `path` names: relative to the working directory, else to the jaxlab
  checkout (`configs/erm.py`), else a file of its `configs/` (`erm.py`); an absolute path."""
  configs_dir = _REPO_ROOT / "configs"
  for candidate in (pathlib.Path(path), _REPO_ROOT / path, configs_dir / path):
    if candidate.is_file():
      if candidate.suffix != ".py":
        raise UserError(f"config file {path!r} is not a Python file; give "
                        "configs/<name>.py:<preset>")
      return str(candidate.resolve())
  configs = sorted(p.name for p in configs_dir.glob("*.py")) if configs_dir.is_dir() else []
  raise UserError(f"config file {path!r} not found; configs in {configs_dir}: "
                  f"{', '.join(configs) or 'none'}")


def _split_spec(spec: str):
  path, sep, arg = spec.partition(":")
  return path, (arg if sep else None)


def _import(path: str):
  module_spec = importlib.util.spec_from_file_location(
      f"jaxlab_config_{pathlib.Path(path).stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"config file {path!r} could not be loaded: {type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}") from None
  return module


def list_presets(path: str) -> List[str]:
  """Preset names of a config file (its `PRESETS` table)."""
  return sorted(getattr(_import(resolve_path(path)), "PRESETS", {}))


def load_config(spec: str, overrides: Optional[Dict[str, object]] = None,
                lock: bool = True) -> ConfigDict:
  """`load_config("configs/erm.py:digits")` -> the preset's ConfigDict.

  Args:
    spec: `path/to/config.py[:arg]`, as passed to `--config`.
    overrides: optional `{"train.steps": 10, ...}`, applied like `--config.train.steps=10`.
    lock: lock the config (no new keys), as `config_flags` does.
  """
  path, arg = _split_spec(spec)
  path = resolve_path(path)
  module = _import(path)
  if not hasattr(module, "get_config"):
    raise UserError(f"config file {path!r} defines no get_config(arg)")
  try:
    config = module.get_config(arg) if arg is not None else module.get_config()
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"{spec}: the preset could not be built ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:160] if str(e) else ''}); its arguments are in "
                    f"{path}'s docstring") from None
  if lock:
    config.lock()
  for key, value in (overrides or {}).items():
    check_key(config, key)
    parent, leaf = _parent(config, key)
    parent[leaf] = value
  return config


def _parent(config: ConfigDict, dotted: str):
  *path, leaf = dotted.split(".")
  node = config
  for part in path:
    node = node[part]
  return node, leaf


def check_key(config: ConfigDict, dotted: str) -> None:
  """Raises a UserError naming the valid keys if `dotted` is not a key of `config`."""
  node, seen = config, []
  for part in dotted.split("."):
    if not isinstance(node, ConfigDict) or part not in node:
      where = ".".join(seen) or "the top level"
      choices = list(node.keys()) if isinstance(node, ConfigDict) else []
      raise unknown("config key", "config." + dotted, choices, f"valid keys at {where}")
    node = node[part]
    seen.append(part)


def check_overrides(config: ConfigDict, argv: Sequence[str]) -> None:
  """Checks every `--config.x.y=...` in argv names a key of `config`."""
  for arg in argv:
    if arg.startswith("--config."):
      check_key(config, arg[len("--config."):].split("=", 1)[0])


def presets(arg: Optional[str], table: Dict[str, Callable[..., ConfigDict]],
            default: str, config_file: str) -> ConfigDict:
  """`table[name](**kwargs)` for `arg = "name[,key=value,...]"` (big_vision style).

  Values are Python literals (`width=0.5`), else strings (`method=iterand`). An
  unknown preset or argument is a UserError listing the valid ones.
  """
  name, *pairs = (arg or default).split(",")
  if name not in table:
    raise unknown("preset", name, table, f"presets of {config_file}")
  kwargs = {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep:
      raise UserError(f"preset argument {pair!r} of {config_file}:{arg} is not key=value")
    try:
      kwargs[key.strip()] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      kwargs[key.strip()] = value
  accepted = inspect.signature(table[name]).parameters
  extra = sorted(set(kwargs) - set(accepted))
  if extra:
    raise unknown("argument of preset " + name, extra[0], accepted or ["(none)"],
                  f"{config_file}")
  return table[name](**kwargs)


def flatten(config: ConfigDict, prefix: str = "") -> Iterable[str]:
  """All dotted leaf keys of a config (used in error messages and tests)."""
  for key, value in config.items():
    if isinstance(value, ConfigDict):
      yield from flatten(value, f"{prefix}{key}.")
    else:
      yield prefix + key


def base_config() -> ConfigDict:
  """Fields every run has; `configs/*.py` start from this and set what differs."""
  c = ConfigDict()
  c.method = "erm"
  c.seed = 0
  # weights to start from: another run's workdir (newest checkpoint) or an .npz of
  # "/"-joined variable paths; "" = random initialisation. Ignored when resuming.
  c.init_from = ""
  c.init_skip = ""  # comma-separated variable path prefixes not loaded, e.g. "params/head"
  # frozen weights read from other runs, by the name the method gives them (a workdir or an
  # .npz each; jaxlab.train.inputs): presets of methods that read some add their names here,
  # e.g. inputs.generator for MGR
  c.inputs = ConfigDict()
  c.data = ConfigDict(dict(
      name="digits", data_dir="", manual_dir="", download=False, train_split="train",
      eval_splits="test",
      image_key="image", label_key="label", image_size=0, grayscale=False, classes="",
      per_class=0, train_fraction=1.0, val_fraction=0.0, split_seed=42, rest_as_test=False,
      # a fixed input shift applied to every split (jaxlab.data.tasks.shift_images):
      # "" | "rotate:DEGREES" | "permute_pixels:SEED" (the merging settings' second dataset)
      shift="",
      # how batches are read (jaxlab.data.stream): auto | device | stream; the streaming
      # input's per-example host transforms (jaxlab.data.transforms), its worker processes
      # (-1: one per CPU core, at most 16; 0: in the main process), and auto's threshold
      pipeline="auto", train_pp="", eval_pp="", workers=-1, stream_above_mb=2048))
  c.aug = ConfigDict(dict(crop_padding=0, flip=False))
  c.model = ConfigDict(dict(name="mlp", hidden=(256, 256), norm="none", weight_init="flax"))
  c.optimizer = ConfigDict(dict(
      name="adam", learning_rate=1e-3, schedule="constant", warmup_steps=0, decay_steps=0,
      momentum=0.9, nesterov=False, weight_decay=0.0, grad_clip_norm=0.0, grad_clip_value=0.0))
  c.train = ConfigDict(dict(
      steps=1000, batch_size=128, eval_batch_size=500, log_every=100, eval_every=0,
      checkpoint_every=500, keep_checkpoints=3, label_smoothing=0.0, select_by="",
      # steps whose weights are kept for good in workdir/trajectory (a trajectory): "" none,
      # "ends", "every:N" or "0,100,250" (jaxlab.train.checkpoint.keep_steps)
      keep_schedule=""))
  c.distributed = ConfigDict(dict(
      enabled=False, coordinator_address="", num_processes=1, process_id=0))
  return c


def generator_config(latent_dim: int, width: int) -> ConfigDict:
  """`config.generator` of a method that reads a frozen generator (`inputs.generator`):
  `kind` cgan (the GAN's architecture: latent_dim, width, discriminator_width) or ddpm (a
  configs/ddpm.py run, its architecture read from the run; sampled by deterministic DDIM in
  `sample_steps` steps with guidance scale `guidance`, from its EMA weights when `ema`)."""
  return ConfigDict(dict(kind="cgan", latent_dim=latent_dim, width=width,
                         discriminator_width=width, sample_steps=20, guidance=1.0, ema=True))


def meta_learning_config() -> ConfigDict:
  """`base_config()` plus episodic data (`episodes`) and inner-loop (`meta`) fields."""
  c = base_config()
  c.method = "maml"
  c.data.eval_splits = "validation,test"
  c.episodes = ConfigDict(dict(
      ways=5, shots=1, queries=1, meta_batch=32, eval_episodes=600, eval_meta_batch=50,
      eval_seed=0, rotations="all", eval_points=100))
  c.meta = ConfigDict(dict(
      inner_lr=0.4, train_steps=1, test_steps=3, learn_inner_lr=False, inner_frozen="",
      task_parallel="auto", task_groups=8, scan_inner=False))
  c.optimizer.learning_rate = 1e-3
  c.train.log_every = 100
  c.train.eval_every = 0
  c.train.checkpoint_every = 1000
  return c
