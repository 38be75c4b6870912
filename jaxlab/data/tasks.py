"""Tasks: what a method trains and evaluates on, with sampling inside jit.

A task owns its host arrays and two pure functions the training loop jits:
  `train_batch(data, key, step)`: the batch for `step`, from on-device arrays;
  `eval_batch(data, index)`: the `index`-th fixed evaluation batch, with a `mask`.
Randomness comes only from `key` and `step`, so a resumed run draws the same
batches as an uninterrupted one. Small datasets live on the device whole.

`SupervisedTask` (image classification) is here; episodic tasks (N-way K-shot)
live in `jaxlab.data.episodes`.
"""

import dataclasses
import math
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab import streams
from jaxlab.data import augment, loading
from jaxlab.errors import UserError

Arrays = Dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Spec:
  """What a model needs to know about its data: input shape, outputs, and the kind of loss."""
  input_shape: Tuple[int, ...]
  num_classes: int                 # logits per example (1 output for regression)
  kind: str = "classification"     # or "regression"


def preprocess_images(images: np.ndarray, size: int = 0, grayscale: bool = False) -> np.ndarray:
  """Host-side, once per run: optional grayscale and square resize, uint8 stays uint8."""
  if grayscale and images.shape[-1] == 3:
    images = np.round(images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    images = images.astype(np.uint8)[..., None]
  if size and images.shape[1:3] != (size, size):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    resized = [np.asarray(Image.fromarray(im.squeeze(-1) if im.shape[-1] == 1 else im).resize(
        (size, size), Image.BILINEAR)) for im in images]
    images = np.stack(resized).reshape(len(images), size, size, images.shape[-1])
  return images


def parse_classes(classes: str) -> Tuple[int, int]:
  """`data.classes` as the label range [lo, hi] it keeps: 'first:N' = [0, N-1], 'range:A-B'
  = [A, B]; '' = everything (hi -1)."""
  if not classes:
    return 0, -1
  kind, _, value = classes.partition(":")
  lo, _, hi = value.partition("-")
  if kind == "first" and value.isdigit() and int(value) > 0:
    return 0, int(value) - 1
  if kind == "range" and lo.isdigit() and hi.isdigit() and int(lo) <= int(hi):
    return int(lo), int(hi)
  raise UserError(f"data.classes={classes!r} is not understood; valid: '' (all), 'first:N' or "
                  "'range:A-B' (labels A..B, relabelled 0..B-A)")


def select_classes(arrays: Arrays, classes: str, label_key: str = "label") -> Arrays:
  """Keeps the labels `data.classes` names, relabelled from 0 (see `parse_classes`)."""
  if not classes:
    return arrays
  lo, hi = parse_classes(classes)
  keep = (arrays[label_key] >= lo) & (arrays[label_key] <= hi)
  out = {k: v[keep] for k, v in arrays.items()}
  out[label_key] = (out[label_key] - lo).astype(arrays[label_key].dtype)
  return out


def carve_validation(arrays: Arrays, per_class: int, val_fraction: float, seed: int,
                     fraction: float = 1.0) -> Tuple[Arrays, Arrays, Arrays]:
  """(train, validation, rest) from one labelled pool, class by class, fixed by `seed`.

  Each class keeps the first `per_class` (0 = all) examples of a seeded permutation, or
  with `fraction` < 1 the first max(1, round(fraction * size)); of those,
  max(1, round(val_fraction * kept)) go to validation when val_fraction > 0 (the
  fine-tuning group protocol: 90/10 with split seed 42). `rest` is what was not kept.
  """
  rng = np.random.default_rng(seed)
  train, val, rest = [], [], []
  for label in np.unique(arrays["label"]):
    members = rng.permutation(np.flatnonzero(arrays["label"] == label))
    all_members = members
    if per_class:
      if len(members) < per_class:
        raise UserError(f"data.per_class={per_class} but class {label} has only "
                        f"{len(members)} training examples")
      members = members[:per_class]
    elif fraction < 1.0:
      members = members[:max(1, round(fraction * len(members)))]
    n_val = max(1, round(val_fraction * len(members))) if val_fraction > 0 else 0
    if n_val >= len(members):
      raise UserError(f"data.val_fraction={val_fraction} leaves class {label} no training "
                      f"example ({len(members)} in all)")
    val.append(members[:n_val])
    train.append(members[n_val:])
    rest.append(all_members[len(members):])
  pick = lambda idx: {k: v[np.sort(np.concatenate(idx)).astype(int)] for k, v in arrays.items()}
  return pick(train), pick(val), pick(rest)


def load_arrays(data, split: str) -> Arrays:
  """`image` (uint8 NHWC) and `label` (int32) of a split, preprocessed per `config.data`."""
  raw = loading.load_split(data.name, split, data.data_dir or None, data.download,
                           data.get("manual_dir") or None)
  for key in (data.image_key, data.label_key):
    if key not in raw:
      raise UserError(f"dataset {data.name!r} has no feature {key!r}; features: {', '.join(raw)}")
  images = raw[data.image_key]
  if images.ndim == 3:
    images = images[..., None]
  arrays = {"image": preprocess_images(images, data.image_size, data.grayscale),
            "label": raw[data.label_key].astype(np.int32)}
  return select_classes(arrays, data.classes)


def epoch_indices(key: jax.Array, step: jax.Array, batch_size: int, n: int) -> jax.Array:
  """Indices of batch `step` when every epoch is a fresh permutation of range(n)."""
  if batch_size > n:  # tiny datasets (mocked data in tests): sample with replacement
    return jax.random.randint(jax.random.fold_in(key, step), (batch_size,), 0, n)
  start = step * batch_size
  position = start + jnp.arange(batch_size)
  first_epoch = start // n
  perm_a = jax.random.permutation(jax.random.fold_in(key, first_epoch), n)
  perm_b = jax.random.permutation(jax.random.fold_in(key, first_epoch + 1), n)
  return jnp.where(position // n == first_epoch, perm_a[position % n], perm_b[position % n])


class SupervisedTask:
  """Image classification on one TFDS dataset held on the device.

  Config fields read: data.{name, data_dir, download, train_split, image_key,
  label_key, image_size, grayscale, classes, per_class, train_fraction, val_fraction,
  split_seed, rest_as_test},
  train.{batch_size,
  eval_batch_size}, aug.{crop_padding, flip}.
  """

  def __init__(self, config, num_devices: int = 1):
    data = config.data
    self.name = data.name
    self._data = data
    self.batch_size = config.train.batch_size
    if self.batch_size % num_devices:
      raise UserError(f"train.batch_size={self.batch_size} must be divisible by the "
                      f"{num_devices} devices of the data axis")
    self.eval_batch_size = num_devices * math.ceil(config.train.eval_batch_size / num_devices)
    self.crop_padding = config.aug.crop_padding
    self.flip = config.aug.flip
    self._cache: Dict = {}
    lo, hi = parse_classes(data.classes)
    total = loading.num_classes(data.name, data.data_dir or None, data.label_key)
    if data.classes and hi >= total:
      raise UserError(f"data.classes={data.classes!r} reaches label {hi}, but {data.name!r} has "
                      f"{total} classes (labels 0-{total - 1})")
    train = self.train_arrays()
    labels = train["label"]
    num_classes = hi - lo + 1 if data.classes else total
    if len(labels) and labels.max() >= num_classes:
      raise UserError(f"labels of {data.name!r} reach {labels.max()}, beyond {num_classes} classes")
    if self.batch_size > len(labels):
      print(f"jaxlab: warning: train.batch_size={self.batch_size} exceeds the {len(labels)} "
            "training examples: each batch is drawn with replacement", flush=True)
    self.spec = Spec(input_shape=tuple(train["image"].shape[1:]), num_classes=num_classes)

  def split_arrays(self, split: str) -> Arrays:
    """`image` (uint8 NHWC) and `label` (int32) of an evaluation split, cached on the host.

    With `data.per_class`, `data.train_fraction` or `data.val_fraction` set, the training
    pool (`data.train_split`) is subsampled and `validation` is carved out of it
    (`carve_validation`), replacing any split of that name; the pool's examples not kept are
    the split `rest`, and with `data.rest_as_test` also the `test` split.
    """
    carved = self._carved()
    if split in carved and split != "train":
      return carved[split]
    if split not in self._cache:
      self._cache[split] = load_arrays(self._data, split)
    return self._cache[split]

  def _carved(self) -> Dict[str, Arrays]:
    """{"train", "validation", "rest"[, "test"]} carved from the pool, or {} when nothing is
    carved."""
    data = self._data
    fraction = data.get("train_fraction", 1.0)
    if not (data.get("per_class", 0) or data.get("val_fraction", 0.0) or fraction < 1.0):
      return {}
    if "carved" not in self._cache:
      train, val, rest = carve_validation(
          load_arrays(data, data.train_split), data.get("per_class", 0),
          data.get("val_fraction", 0.0), data.split_seed, fraction)
      self._cache["carved"] = {"train": train, "validation": val, "rest": rest,
                               **({"test": rest} if data.get("rest_as_test", False) else {})}
    return self._cache["carved"]

  # -- training ---------------------------------------------------------------
  def train_arrays(self) -> Arrays:
    return self._carved().get("train") or self.split_arrays(self._data.train_split)

  def train_batch(self, data: Arrays, key: jax.Array, step: jax.Array):
    index_key = streams.fold(key, "data", "indices")
    augment_key = streams.fold(key, "data", "augment")
    n = data["label"].shape[0]
    indices = epoch_indices(index_key, step, self.batch_size, n)
    images = augment.to_float(data["image"][indices])
    images = augment.augment(images, jax.random.fold_in(augment_key, step),
                             crop_padding=self.crop_padding, flip=self.flip)
    return {"image": images, "label": data["label"][indices]}

  def extra_batch(self, data: Arrays, key: jax.Array, step: jax.Array, size: int,
                  image_key: str, label_key: str = ""):
    """(float images, labels or None): `size` rows of data[image_key] (and data[label_key]),
    unaugmented, epoch by epoch from their own index stream (the data key's `extra`): the
    second batch of methods that read two sets per step (a validation or unlabeled batch)."""
    indices = epoch_indices(streams.fold(key, "data", "extra"), step, size,
                            data[image_key].shape[0])
    return (augment.to_float(data[image_key][indices]),
            data[label_key][indices] if label_key else None)

  # -- evaluation -------------------------------------------------------------
  def eval_arrays(self, split: str) -> Arrays:
    """The split padded to whole evaluation batches, with a 0/1 `mask`."""
    arrays = self.split_arrays(split)
    n = len(arrays["label"])
    padded = self.eval_batch_size * max(1, math.ceil(n / self.eval_batch_size))
    pad = lambda a: np.concatenate([a, np.zeros((padded - n,) + a.shape[1:], a.dtype)])
    out = {k: pad(v) for k, v in arrays.items()}
    out["mask"] = pad(np.ones(n, np.float32))
    return out

  def num_eval_batches(self, data: Arrays) -> int:
    return data["mask"].shape[0] // self.eval_batch_size

  def eval_batch(self, data: Arrays, index: jax.Array):
    take = lambda a: jax.lax.dynamic_slice_in_dim(a, index * self.eval_batch_size,
                                                  self.eval_batch_size)
    batch = {k: take(v) for k, v in data.items()}
    batch["image"] = augment.to_float(batch["image"])
    return batch

