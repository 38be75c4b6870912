"""Methods, one module each, chosen by `config.method`.

A method module exposes pure functions (static pieces bound from the config):
  make_task(config, num_devices) -> task      data + samplers (jaxlab.data.tasks)
  init(config, rng, spec) -> state            a TrainState-like pytree
  train_step(state, batch, rng, *, config, spec) -> (state, metrics)
  eval_step(state, batch, *, config, spec) -> per-example (or per-episode) metrics
The generic loop in `jaxlab.train.loop` jits and shards them; notebooks can call
them directly. Modules whose names start with `_` are helpers, not methods.
"""

import importlib
import pkgutil
from types import ModuleType
from typing import List

from jaxlab.errors import unknown


def available() -> List[str]:
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get_method(name: str) -> ModuleType:
  if name not in available():
    raise unknown("method (config.method)", name, available())
  return importlib.import_module(f"{__name__}.{name}")
