"""The training state every method carries: a pytree of arrays, nothing static.

Static pieces (the Flax module, the optax transformation) are rebuilt from the
config at trace time, so a `TrainState` is exactly what a checkpoint holds.
Methods with more state (masks, priors, generator latents) subclass it.
"""

from typing import Any

import flax
import jax


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 scalar: number of train steps taken
  params: Any              # trained parameters
  model_state: Any         # non-trained model variables, e.g. {"batch_stats": ...}
  opt_state: Any           # optax state
