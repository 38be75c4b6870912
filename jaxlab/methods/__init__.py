"""Method families, one module each, and the registry of their variants (`config.method`).

A family module holds the whole implementation of its variants and declares them:

  VARIANTS = {"maml": Variant(first_order=False, adapt="all"),
              "anil": Variant(first_order=False, adapt="head"), ...}

(`jaxlab.train.protocol.Variant`) next to its pure protocol functions (static pieces bound
from the config; a variant may replace some with its own, `Variant(functions={...})`):
  make_task(config, num_devices) -> task      data + samplers (jaxlab.data.tasks)
  init(config, rng, spec) -> state            a TrainState pytree
  train_step(state, batch, rng, *, config, spec) -> (state, metrics)
  eval_step(state, batch, key, *, config, spec) -> per-example (or per-episode) metrics
                                              (`key`: the evaluation batch's, jaxlab.streams)
and optionally start_from(state, train_data, *, config, spec) (state derived from the
pretrained weights and frozen inputs, once, before the first step) and report(state, task,
workdir, *, config, spec, write_files) (whole-run outputs).

`get_method(name)` returns a `Method` (`jaxlab.train.protocol`): those functions with the variant's options bound
(`functools.partial`: each function receives the options it names as keyword-only
parameters), so a family never reads `config.method`, and the frozen inputs the variant reads
from other runs (`jaxlab.train.inputs.Input`; `method.init` gives them placeholders in
`state.frozen`, the training loop loads them). Code that two families share lives in a
library package (`jaxlab.meta`, `jaxlab.eval`, `jaxlab.train`, ...): a family module never
imports another.
"""

import functools
import importlib
import inspect
from typing import Any, Callable, Dict, List, Mapping, Tuple

from jaxlab.errors import unknown
from jaxlab.train import inputs as inputs_lib
from jaxlab.train.protocol import PROTOCOL, Method, Variant

FAMILIES = ("erm", "maml", "supermask", "finetune", "adversarial", "arrest", "cgan",
            "generative_reg", "ssl", "meta_gen_ssl", "tta", "merge", "learning_transfer",
            "diffusion", "closed_form")


def _bind(fn: Callable, options: Mapping[str, Any]) -> Tuple[Callable, set]:
  accepted = inspect.signature(fn).parameters
  bound = {k: v for k, v in options.items() if k in accepted}
  return (functools.partial(fn, **bound) if bound else fn), set(bound)


def _with_placeholders(init: Callable, items) -> Callable:
  """`init`, whose state also holds zeros of the frozen inputs' shapes in `frozen`."""
  if not items:
    return init
  @functools.wraps(init)
  def wrapped(config, rng, spec):
    return init(config, rng, spec).replace(
        frozen=inputs_lib.placeholders(items, config, spec))
  return wrapped


def _variant(family: str, module, name: str, variant: Variant) -> Method:
  functions, used = {}, set()
  for field in PROTOCOL:
    fn = variant.functions.get(field, getattr(module, field, None))
    if fn is not None:
      functions[field], accepted = _bind(fn, variant.options)
      used |= accepted
  unused = set(variant.options) - used
  if unused:  # a typo in a VARIANTS table, not a user error
    raise TypeError(f"jaxlab.methods.{family}: variant {name!r} binds {sorted(unused)}, "
                    "which none of its functions takes")
  functions["init"] = _with_placeholders(functions["init"], variant.inputs)
  return Method(name=name, family=family, options=dict(variant.options), inputs=variant.inputs,
                blocks=variant.blocks, **functions)


@functools.lru_cache(maxsize=None)
def registry() -> Dict[str, Method]:
  """{variant name: Method} over every family."""
  methods = {}
  for family in FAMILIES:
    module = importlib.import_module(f"{__name__}.{family}")
    for name, variant in module.VARIANTS.items():
      if name in methods:
        raise TypeError(f"method {name!r} is declared by {methods[name].family} and {family}")
      methods[name] = _variant(family, module, name, variant)
  return methods


def available() -> List[str]:
  return sorted(registry())


def get_method(name: str) -> Method:
  if name not in registry():
    raise unknown("method (config.method)", name, available())
  return registry()[name]
