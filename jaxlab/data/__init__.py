"""Datasets by TFDS name, the embedded `digits` and `glyphs` builders, tasks and augmentation."""

from jaxlab.data.loading import EMBEDDED, get_builder, load_split
from jaxlab.data.tasks import Spec, SupervisedTask

__all__ = ["EMBEDDED", "get_builder", "load_split", "Spec", "SupervisedTask"]
