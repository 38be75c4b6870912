"""Generic training: the loop, sharding, checkpoints, metrics, optimizers."""

from jaxlab.train.loop import train_and_evaluate
from jaxlab.train.state import TrainState

__all__ = ["train_and_evaluate", "TrainState"]
