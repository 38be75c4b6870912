"""The training state every method carries: a pytree of arrays, nothing static.

Static pieces (the Flax module, the optax transformation) are rebuilt from the
config at trace time, so a `TrainState` is exactly what a checkpoint holds.
Methods with more state (masks, priors, generator latents) subclass it.

`frozen` is the one place for weights read from other runs (`config.inputs`, see
`jaxlab.train.inputs`): a generator, a source classifier, a teacher. They are never
differentiated or updated; the training loop puts them in place before the first step.
"""

from typing import Any

import flax
import jax


@flax.struct.dataclass(kw_only=True)
class TrainState:
  step: jax.Array          # int32 scalar: number of train steps taken
  params: Any              # trained parameters
  model_state: Any         # non-trained model variables, e.g. {"batch_stats": ...}
  opt_state: Any           # optax state
  frozen: Any = flax.struct.field(default_factory=dict)  # {input name: variables}
