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
import functools
import itertools
import math
from typing import Dict, Iterator, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab import streams
from jaxlab.data import augment, loading, reconstruction, sources, transforms
from jaxlab.errors import UserError
from jaxlab.train import sharding

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


SHIFTS = ("rotate:DEGREES", "permute_pixels:SEED")


def shift_images(images: np.ndarray, shift: str) -> np.ndarray:
  """`images` (uint8 NHWC) moved to another input distribution with the same labels, for the
  merging-between-datasets settings (robustness_tta_merging.md §5(g)):
    ""                   unchanged;
    "rotate:DEGREES"     rotated counter-clockwise about the centre, bilinear, zero fill, same
                         size (scipy.ndimage.rotate order=1, reshape=False);
    "permute_pixels:SEED" one fixed permutation of the H*W pixel positions (from SEED), the
                         same for every image and split.
  """
  if not shift:
    return images
  kind, _, arg = shift.partition(":")
  try:
    value = float(arg) if kind == "rotate" else int(arg)
  except ValueError:
    value = None
  if kind not in ("rotate", "permute_pixels") or value is None:
    raise UserError(f"data.shift={shift!r} is not valid; valid: '' or {', '.join(SHIFTS)}")
  if kind == "rotate":
    import scipy.ndimage  # pylint: disable=g-import-not-at-top
    turned = scipy.ndimage.rotate(images.astype(np.float32), value, axes=(2, 1), reshape=False,
                                  order=1, mode="constant", cval=0.0)
    return np.clip(np.round(turned), 0, 255).astype(np.uint8)
  n, h, w, c = images.shape
  order = np.random.default_rng(value).permutation(h * w)
  return images.reshape(n, h * w, c)[:, order].reshape(n, h, w, c)


def load_arrays(data, split: str) -> Arrays:
  """`image` (uint8 NHWC) and `label` (int32) of a split, preprocessed per `config.data`.

  Images of one size are read in batches and resized as `data.image_size` / `data.grayscale`
  say; images that differ in size (a folder dataset, oxford_iiit_pet, ...) are read one by one
  through `data.eval_pp` (deterministic: e.g. `resize_small(256)|central_crop(224)`), or
  `resize(data.image_size)` when it is empty, so that the split stacks into one array.
  """
  if loading.image_shape(data.name, data.data_dir or None, data.image_key) is None:
    source = sources.open_source(data, split)
    pp = data.get("eval_pp", "") or transforms.legacy_pp(data.image_size, data.grayscale)
    if not transforms.output_size(pp):
      raise UserError(f"the images of {data.name!r} differ in size: set data.eval_pp to end "
                      "at a fixed size (e.g. 'resize_small(256)|central_crop(224)') or "
                      "data.image_size")
    apply = transforms.build(pp, "data.eval_pp")
    rows = [source[i] for i in range(len(source))]
    arrays = {"image": shift_images(transforms.stack([apply(r["image"], None) for r in rows],
                                                     "data.eval_pp"), data.get("shift", "")),
              "label": np.asarray([r["label"] for r in rows], np.int32)}
    return select_classes(arrays, data.classes)
  raw = loading.load_split(data.name, split, data.data_dir or None, data.download,
                           data.get("manual_dir") or None)
  for key in (data.image_key, data.label_key):
    if key not in raw:
      raise UserError(f"dataset {data.name!r} has no feature {key!r}; features: {', '.join(raw)}")
  images = raw[data.image_key]
  if images.ndim == 3:
    images = images[..., None]
  arrays = {"image": shift_images(preprocess_images(images, data.image_size, data.grayscale),
                                  data.get("shift", "")),
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


@functools.lru_cache(maxsize=4)
def _host_permutation(key_data: bytes, epoch: int, n: int) -> np.ndarray:
  key = jax.random.wrap_key_data(np.frombuffer(key_data, np.uint32))
  with jax.default_device(jax.devices("cpu")[0]):
    return np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))


def host_epoch_indices(key_data: np.ndarray, step: int, batch_size: int, n: int) -> np.ndarray:
  """`epoch_indices` computed on the host (the streaming input's workers), equal to it number
  for number; `key_data` is `jax.random.key_data` of the index key. Each epoch's permutation
  is computed once (cached), not at every step."""
  key_bytes = np.asarray(key_data, np.uint32).tobytes()
  if batch_size > n:
    key = jax.random.wrap_key_data(np.frombuffer(key_bytes, np.uint32))
    with jax.default_device(jax.devices("cpu")[0]):
      return np.asarray(jax.random.randint(jax.random.fold_in(key, step), (batch_size,), 0, n))
  start = step * batch_size
  positions = start + np.arange(batch_size)
  first_epoch = start // n
  in_first = positions // n == first_epoch
  out = _host_permutation(key_bytes, first_epoch, n)[positions % n]
  if not in_first.all():
    out = np.where(in_first, out, _host_permutation(key_bytes, first_epoch + 1, n)[positions % n])
  return out


class OnDevice:
  """What the training loop feeds the jitted functions of a task whose data lives on the
  device whole (`train_arrays()`, `eval_arrays(split)`): the same replicated arrays at every
  step and evaluation batch; `train_batch` / `eval_batch` draw from them inside jit. The
  streaming form (`jaxlab.data.stream`) feeds one batch at a time instead."""

  def _device_train(self, mesh):
    if getattr(self, "_on_device", None) is None:
      self._on_device = sharding.put_replicated(self.train_arrays(), mesh)
    return self._on_device

  def train_input_like(self, mesh):
    """What `train_feed` yields, for tracing the step before a run starts."""
    return self._device_train(mesh)

  def train_feed(self, mesh, start: int, stop: int) -> Iterator:
    """The `data` argument of the train step for steps start..stop-1."""
    del start, stop
    return itertools.repeat(self._device_train(mesh))

  def start_data(self, mesh):
    """The training data a method's `start_from` reads (e.g. fine-tuning's prior statistics)."""
    return self._device_train(mesh)

  def _device_eval(self, split: str, mesh):
    if split not in self.__dict__.setdefault("_eval_on_device", {}):
      self._eval_on_device[split] = sharding.put_replicated(self.eval_arrays(split), mesh)
    return self._eval_on_device[split]

  def eval_input_like(self, split: str, mesh):
    """What `eval_feed` yields, for tracing the evaluation before a run starts."""
    return self._device_eval(split, mesh)

  def eval_feed(self, split: str, mesh) -> Tuple[int, Iterator]:
    """(number of evaluation batches of `split`, the `data` argument of each)."""
    data = self._device_eval(split, mesh)
    n = self.num_eval_batches(data)
    return n, itertools.repeat(data, n)


PIPELINES = ("auto", "device", "stream")


def resolve_pipeline(data) -> str:
  """`data.pipeline` with `auto` decided (see `jaxlab.data.stream`): "stream" when the
  training split's images differ in size, come from a folder, or take more than
  `data.stream_above_mb` MB as uint8; else "device"."""
  pipeline = data.get("pipeline", "device")
  if pipeline not in PIPELINES:
    raise UserError(f"data.pipeline={pipeline!r} is not valid; valid: {', '.join(PIPELINES)}")
  if pipeline != "auto":
    return pipeline
  size = loading.split_bytes(data.name, data.train_split, data.data_dir or None, data.image_key)
  return "stream" if size is None or size > data.get("stream_above_mb", 2048) * 2**20 else (
      "device")


def supervised(config, num_devices: int = 1) -> "SupervisedTask":
  """The supervised task of `config.data`: held on the device, or streamed
  (`jaxlab.data.stream`) as `data.pipeline` resolves."""
  if resolve_pipeline(config.data) == "stream":
    from jaxlab.data import stream  # pylint: disable=g-import-not-at-top  (grain: on demand)
    return stream.StreamTask(config, num_devices)
  return SupervisedTask(config, num_devices)


class SupervisedTask(OnDevice):
  """Image classification on one TFDS dataset (or image folder) held on the device.

  Config fields read: data.{name, data_dir, download, train_split, image_key,
  label_key, image_size, grayscale, classes, per_class, train_fraction, val_fraction,
  split_seed, rest_as_test, pipeline, eval_pp, shift},
  train.{batch_size,
  eval_batch_size}, aug.{crop_padding, flip}.
  """
  streaming = False  # the streaming form (jaxlab.data.stream.StreamTask) sets True

  def __init__(self, config, num_devices: int = 1):
    data = config.data
    self.name = data.name
    self._data = data
    self.batch_size = config.train.batch_size
    if not self.streaming and data.get("pipeline", "device") == "stream":
      raise UserError(f"method {config.method!r} holds its data on the device (it reads a "
                      "second set per step or the whole split); run it with "
                      "data.pipeline=device or auto")
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
    num_classes = self._num_classes = hi - lo + 1 if data.classes else total
    train = self.train_arrays()
    self._check_labels(train, num_classes)
    self.spec = Spec(input_shape=self._input_shape(train), num_classes=num_classes)

  def _check_labels(self, train: Arrays, num_classes: int) -> None:
    labels = train["label"]
    if len(labels) and labels.max() >= num_classes:
      raise UserError(f"labels of {self.name!r} reach {labels.max()}, beyond {num_classes} "
                      "classes")
    if self.batch_size > len(labels):
      print(f"jaxlab: warning: train.batch_size={self.batch_size} exceeds the {len(labels)} "
            "training examples: each batch is drawn with replacement", flush=True)

  def _load(self, split: str) -> Arrays:
    """The split as the task holds it (all images here; row numbers in the streaming form)."""
    return load_arrays(self._data, split)

  def _input_shape(self, train: Arrays) -> Tuple[int, ...]:
    return tuple(train["image"].shape[1:])

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
      self._cache[split] = self._load(split)
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
          self._load(data.train_split), data.get("per_class", 0),
          data.get("val_fraction", 0.0), data.split_seed, fraction)
      self._cache["carved"] = {"train": train, "validation": val, "rest": rest,
                               **({"test": rest} if data.get("rest_as_test", False) else {})}
    return self._cache["carved"]

  # -- training ---------------------------------------------------------------
  def train_arrays(self) -> Arrays:
    """The training split (carved per `data.per_class` / `data.val_fraction` / ...), or its
    reconstruction D^(t) by a diffusion run (`data.reconstruct`, jaxlab.data.reconstruction)."""
    train = self._carved().get("train") or self.split_arrays(self._data.train_split)
    rc = self._data.get("reconstruct")
    if not (rc and rc.run):
      return train
    if self.streaming:
      raise UserError("data.reconstruct builds the training set on the device: run it with "
                      "data.pipeline=device or auto")
    if "reconstructed" not in self._cache:
      self._cache["reconstructed"] = reconstruction.reconstructed(train, rc, self._num_classes)
    return self._cache["reconstructed"]

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

