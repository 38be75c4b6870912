"""The method protocol: what a family module under `jaxlab/methods` provides, how it declares
its variants (`Variant`), and what the registry hands out for one variant (`Method`).

The training loop, notebooks and tests use a `Method` only through these fields; the registry
(`jaxlab.methods`) builds them. Family modules import `Variant` from here, not from
`jaxlab.methods`, so no method module imports the methods package.
"""

import dataclasses
from typing import Any, Callable, Mapping, Optional, Tuple

from jaxlab.train.inputs import Input

PROTOCOL = ("make_task", "init", "train_step", "eval_step", "start_from", "report")


class Variant:
  """A variant's bound options (keyword arguments), the frozen inputs it reads, the config
  blocks it reads (`config.<block>`, checked before a run starts) and the protocol functions
  it has in place of its family module's."""

  def __init__(self, *, inputs: Tuple[Input, ...] = (), blocks: Tuple[str, ...] = (),
               functions: Optional[Mapping[str, Callable]] = None, **options):
    self.inputs, self.blocks, self.options = tuple(inputs), tuple(blocks), dict(options)
    self.functions = dict(functions or {})
    unknown_functions = set(self.functions) - set(PROTOCOL)
    if unknown_functions:
      raise TypeError(f"Variant(functions=...) takes {PROTOCOL}, not {sorted(unknown_functions)}")


@dataclasses.dataclass(frozen=True)
class Method:
  """One registered variant: the family's protocol functions with its options bound."""
  name: str
  family: str                               # the module under jaxlab/methods
  options: Mapping[str, Any]
  inputs: Tuple[Input, ...]
  blocks: Tuple[str, ...]                   # the config blocks it reads
  make_task: Callable
  init: Callable
  train_step: Callable
  eval_step: Callable
  start_from: Optional[Callable] = None
  report: Optional[Callable] = None
