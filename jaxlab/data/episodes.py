"""Episodic few-shot tasks drawn inside jit: N-way K-shot classification and sinusoid regression.

Classification episodes (Vinyals et al. 2016, arXiv 1606.04080) come from a
class-indexed array on the device, `images[c, i]` (classes x instances x H x W
x C, with `counts[c]` real instances per class): an episode picks `ways`
distinct classes and, per class, `shots + queries` distinct instances; labels
are the class positions 0..ways-1. With `rotations`, every class also appears
rotated by 90, 180 and 270 degrees as three new classes (the Omniglot
convention of Santoro et al. 2016 and MAML), applied to the meta-training split
(`train`) or to every split (`all`, Vinyals et al.'s dataset augmentation).

Sinusoid regression (MAML, Finn et al. 2017, arXiv 1703.03400, §5.1):
y = A sin(x - phi), A ~ U[0.1, 5], phi ~ U[0, pi], x ~ U[-5, 5]; K support
points and `queries` query points per task (evaluation uses `eval_points`).

A batch is `{"support": {"x", "y"}, "query": {"x", "y"}}` with a leading
meta-batch axis (tasks), which the loop shards over the `data` mesh axis.
Evaluation episodes come from a fixed key (`episodes.eval_seed`), so every
run and seed is scored on the same episodes.
"""

import math
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab import streams
from jaxlab.data import augment, tasks
from jaxlab.errors import UserError

Arrays = Dict[str, np.ndarray]


def class_index(images: np.ndarray, labels: np.ndarray) -> Arrays:
  """Groups a split by label: `images` (C, M, ...) padded to the largest class, `counts` (C,)."""
  classes = np.unique(labels)
  members = [np.flatnonzero(labels == c) for c in classes]
  most = max(len(m) for m in members)
  grouped = np.zeros((len(classes), most) + images.shape[1:], images.dtype)
  for row, m in enumerate(members):
    grouped[row, :len(m)] = images[m]
  return {"images": grouped, "counts": np.array([len(m) for m in members], np.int32)}


def with_rotations(index: Arrays) -> Arrays:
  """Adds the 90/180/270-degree rotations of every class as new classes (4x classes)."""
  images = index["images"]
  rotated = [np.rot90(images, k, axes=(2, 3)) for k in range(4)]
  return {"images": np.concatenate(rotated), "counts": np.tile(index["counts"], 4)}


def sample_episode(key: jax.Array, images: jax.Array, counts: jax.Array, ways: int, shots: int,
                   queries: int):
  """One N-way episode: support (ways*shots, ...) and query (ways*queries, ...) sets."""
  class_key, instance_key = jax.random.split(key)
  classes = jax.random.choice(class_key, images.shape[0], (ways,), replace=False)
  per_class = shots + queries
  def instances(k, c):
    # distinct instances among the class's real ones: smallest random scores win
    scores = jax.random.uniform(k, (images.shape[1],))
    scores = jnp.where(jnp.arange(images.shape[1]) < counts[c], scores, 2.0)
    return images[c, jnp.argsort(scores)[:per_class]]
  x = jax.vmap(instances)(jax.random.split(instance_key, ways), classes)
  labels = jnp.arange(ways, dtype=jnp.int32)
  support = x[:, :shots].reshape((ways * shots,) + x.shape[2:])
  query = x[:, shots:].reshape((ways * queries,) + x.shape[2:])
  return {"support": {"x": augment.to_float(support), "y": jnp.repeat(labels, shots)},
          "query": {"x": augment.to_float(query), "y": jnp.repeat(labels, queries)}}


class _Episodes(tasks.OnDevice):
  """What both episodic tasks share: meta-batch sizes and the fixed evaluation episodes."""

  def __init__(self, config, num_devices: int):
    if config.data.get("pipeline", "auto") == "stream":
      raise UserError("data.pipeline=stream: episodic tasks hold their classes on the device "
                      "and sample episodes there; use data.pipeline=device or auto")
    e = config.episodes
    self.meta_batch = e.meta_batch
    if self.meta_batch % num_devices:
      raise UserError(f"episodes.meta_batch={self.meta_batch} must be divisible by the "
                      f"{num_devices} devices of the data axis")
    self.eval_episodes = e.eval_episodes
    self.eval_meta_batch = num_devices * math.ceil(min(e.eval_meta_batch, e.eval_episodes)
                                                   / num_devices)
    self.eval_key = streams.eval_episodes_root(e.eval_seed)

  def num_eval_batches(self, data) -> int:
    del data
    return math.ceil(self.eval_episodes / self.eval_meta_batch)

  def eval_batch(self, data, index):
    keys = jax.random.split(jax.random.fold_in(self.eval_key, index), self.eval_meta_batch)
    batch = jax.vmap(lambda k: self.episode(data, k, evaluation=True))(keys)
    episode = index * self.eval_meta_batch + jnp.arange(self.eval_meta_batch)
    batch["mask"] = (episode < self.eval_episodes).astype(jnp.float32)
    return batch

  def train_batch(self, data, key, step):
    keys = jax.random.split(jax.random.fold_in(key, step), self.meta_batch)
    return jax.vmap(lambda k: self.episode(data, k, evaluation=False))(keys)


class EpisodicTask(_Episodes):
  """N-way K-shot classification episodes from `config.data` (config.episodes.*)."""

  def __init__(self, config, num_devices: int = 1):
    super().__init__(config, num_devices)
    e = config.episodes
    self.ways, self.shots, self.queries = e.ways, e.shots, e.queries
    if e.rotations not in ("none", "train", "all"):
      raise UserError(f"episodes.rotations={e.rotations!r}; valid: none, train, all")
    self.rotations = e.rotations
    self._data = config.data
    train = self.train_arrays()
    self.spec = tasks.Spec(input_shape=tuple(train["images"].shape[2:]), num_classes=self.ways)

  def _split(self, split: str, rotate: bool) -> Arrays:
    arrays = tasks.load_arrays(self._data, split)
    index = class_index(arrays["image"], arrays["label"])
    if rotate:
      index = with_rotations(index)
    classes, fewest = len(index["counts"]), int(index["counts"].min())
    if classes < self.ways or fewest < self.shots + self.queries:
      raise UserError(
          f"split {split!r} of {self._data.name!r} has {classes} classes and at least {fewest} "
          f"examples per class; a {self.ways}-way episode with {self.shots} shots and "
          f"{self.queries} queries needs {self.ways} classes and {self.shots + self.queries} each")
    return index

  def train_arrays(self) -> Arrays:
    return self._split(self._data.train_split, self.rotations != "none")

  def eval_arrays(self, split: str) -> Arrays:
    return self._split(split, self.rotations == "all")

  def episode(self, data, key, evaluation: bool):
    del evaluation
    return sample_episode(key, data["images"], data["counts"], self.ways, self.shots, self.queries)


class SinusoidTask(_Episodes):
  """MAML's sinusoid regression tasks (config.episodes.{shots, queries, eval_points})."""

  spec = tasks.Spec(input_shape=(1,), num_classes=1, kind="regression")

  def __init__(self, config, num_devices: int = 1):
    super().__init__(config, num_devices)
    e = config.episodes
    self.shots, self.queries, self.eval_points = e.shots, e.queries, e.eval_points

  def train_arrays(self) -> Arrays:
    return {}

  def eval_arrays(self, split: str) -> Arrays:
    del split
    return {}

  def episode(self, data, key, evaluation: bool):
    del data
    amp_key, phase_key, x_key = jax.random.split(key, 3)
    amplitude = jax.random.uniform(amp_key, (), minval=0.1, maxval=5.0)
    phase = jax.random.uniform(phase_key, (), minval=0.0, maxval=jnp.pi)
    queries = self.eval_points if evaluation else self.queries
    x = jax.random.uniform(x_key, (self.shots + queries, 1), minval=-5.0, maxval=5.0)
    y = amplitude * jnp.sin(x - phase)
    return {"support": {"x": x[:self.shots], "y": y[:self.shots]},
            "query": {"x": x[self.shots:], "y": y[self.shots:]}}


def make_task(config, num_devices: int = 1):
  """The episodic task `config.data` names: sinusoid regression, or N-way K-shot episodes."""
  if config.data.name == "sinusoid":
    return SinusoidTask(config, num_devices)
  return EpisodicTask(config, num_devices)
