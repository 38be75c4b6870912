"""Streaming input: datasets of any size and any image size, read batch by batch with grain.

`data.pipeline` chooses how a supervised task reads its data:
  device   every split is read once into host memory and held on the device whole; batches
           are drawn inside the jitted step (`jaxlab.data.tasks.SupervisedTask`);
  stream   `StreamTask` here: grain reads the examples of each batch from a `tfds.data_source`
           (array_record) or an image folder, decodes them (Pillow, no TensorFlow) and applies
           the per-example transforms `data.train_pp` / `data.eval_pp` in `data.workers`
           worker processes (0: in this process), then the batch is put on the devices while
           the previous step runs;
  auto     (the default) stream when the training split's images differ in size, come from
           a folder, or take more than `data.stream_above_mb` MB as uint8; else device.

Both paths draw the same batches: the rows of step t are `epoch_indices(data key, t)` (the
workers compute them with `tasks.host_epoch_indices`, equal number for number), the on-device
augmentation of `config.aug` is the same jitted code, and a random host transform draws from
a numpy Generator of (seed, step, position in the global batch). So a stream run of a
fixed-size dataset with empty `*_pp` computes what the device run computes, a resumed run
reads exactly the batches an uninterrupted one reads (no iterator state is checkpointed), and
the batch does not depend on the number of workers or processes. Each process of a
multi-process run reads and decodes only its own rows of every batch (`sharding.process_rows`)
and the global batch is assembled with `jax.make_array_from_process_local_data`.

Methods that read one batch per step stream (erm, supermask's edge_popup / iterand, the
fine-tuning and adversarial families, arrest); the others hold a second set on the device and
say so when `data.pipeline=stream` is asked of them. `start_from` (fine-tuning's prior
statistics) reads the training split once through `data.eval_pp`, as the device path reads
the unaugmented images.
"""

import math
import os
from typing import Any, Dict, Iterator, Optional, Tuple

import grain
import jax
from absl import flags
import numpy as np

from jaxlab import streams
from jaxlab.data import augment, loading, sources, tasks, transforms
from jaxlab.errors import UserError
from jaxlab.train import sharding

HOST_AUGMENT_TAG = streams.TAGS["data"]["host_augment"]


def _worker_init(index: int, count: int) -> None:
  del index, count
  jax.config.update("jax_platforms", "cpu")  # the workers compute indices, never on a GPU


class _Batches:
  """grain map from a batch number to this process's rows of it (runs in the workers)."""

  def __init__(self, source, table: Dict[str, np.ndarray], pp: str, field: str, rows: Tuple[int, int],
               label_offset: int):
    self.source, self.pp, self.field = source, pp, field
    self.row = table["row"]
    self.label = table.get("label")
    self.lo, self.hi = rows
    self.label_offset = label_offset
    self._apply = None

  def _example(self, row: int, rng: Optional[np.random.Generator]):
    if self._apply is None:
      self._apply = transforms.build(self.pp, self.field)
    record = self.source[int(self.row[row])]
    label = (self.label[row] if self.label is not None
             else record["label"] - self.label_offset)
    return self._apply(record["image"], rng), label

  def _stack(self, examples):
    images, labels = zip(*examples)
    return {"image": transforms.stack(images, self.field),
            "label": np.asarray(labels, np.int32)}


class TrainBatches(_Batches):
  """Step t -> the rows [lo, hi) of step t's global batch, through `data.train_pp`."""

  def __init__(self, *args, key_data: np.ndarray, batch_size: int, seed: int):
    super().__init__(*args)
    self.key_data, self.batch_size, self.seed = key_data, batch_size, seed

  def __call__(self, step: int) -> Dict[str, np.ndarray]:
    indices = tasks.host_epoch_indices(self.key_data, step, self.batch_size, len(self.row))
    return self._stack([
        self._example(indices[p], transforms.random_for(self.seed, step, p, HOST_AUGMENT_TAG))
        for p in range(self.lo, self.hi)])


class EvalBatches(_Batches):
  """Index i -> rows [lo, hi) of the i-th evaluation batch through `data.eval_pp`, zero-padded
  past the end of the split with `mask` 0."""

  def __init__(self, *args, batch_size: int):
    super().__init__(*args)
    self.batch_size = batch_size

  def __call__(self, index: int) -> Dict[str, np.ndarray]:
    n = len(self.row)
    positions = [index * self.batch_size + p for p in range(self.lo, self.hi)]
    examples = [self._example(min(q, n - 1), None) for q in positions]
    batch = self._stack(examples)
    mask = np.asarray([q < n for q in positions], np.float32)
    batch["image"] = batch["image"] * mask[:, None, None, None].astype(np.uint8)
    batch["label"] = batch["label"] * mask.astype(np.int32)
    batch["mask"] = mask
    return batch


def _iterate(dataset: grain.MapDataset, workers: int, processes: bool = True) -> Iterator:
  """The elements in order, computed by `workers` processes (or threads: Pillow's decoding
  and resizing release the GIL; 0: this thread)."""
  one_at_a_time = grain.ReadOptions(num_threads=1, prefetch_buffer_size=1)
  if not flags.FLAGS.is_parsed():  # grain reads absl flags; jaxlab's CLI parses its own
    flags.FLAGS.mark_as_parsed()
  if workers <= 0:
    return iter(dataset.to_iter_dataset(one_at_a_time))
  if not processes:
    return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=workers,
                                                          prefetch_buffer_size=workers)))
  return iter(dataset.to_iter_dataset(one_at_a_time).mp_prefetch(
      grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2),
      worker_init_fn=_worker_init))


def _on_device(batches: Iterator, mesh, global_rows: int) -> Iterator:
  """Global arrays of the host batches, one batch put ahead of the one being used."""
  try:
    ahead = None
    for local in batches:
      # a copy: grain hands over shared memory, which an array on a CPU device could alias
      # past its release (and leak when the process ends)
      local = {k: np.array(v, copy=True) for k, v in local.items()}
      current, ahead = ahead, sharding.put_batch(local, mesh, global_rows)
      if current is not None:
        yield current
    if ahead is not None:
      yield ahead
  finally:
    close = getattr(batches, "close", None)
    if close:
      close()


class StreamTask(tasks.SupervisedTask):
  """`SupervisedTask` read batch by batch from the host (see the module docstring).

  Its splits are tables of row numbers into the split's source (`row`, plus `label` when
  `data.classes` or a carved split needs the labels, which reads every record once); the
  carving (`per_class`, `train_fraction`, `val_fraction`) is the device path's own.
  Config fields read besides SupervisedTask's: data.{train_pp, eval_pp, workers}.
  """
  streaming = True

  def __init__(self, config, num_devices: int = 1):
    data = config.data
    if data.get("shift", ""):
      raise UserError(f"data.shift={data.shift!r} is applied to arrays held on the device: run "
                      "with data.pipeline=device")
    self._seed = config.seed
    workers = data.get("workers", 0)
    self._workers = min(os.cpu_count() or 1, 16) if workers < 0 else workers
    legacy = transforms.legacy_pp(data.image_size, data.grayscale)
    self.train_pp = data.get("train_pp", "") or legacy
    self.eval_pp = data.get("eval_pp", "") or legacy
    transforms.parse(self.train_pp, "data.train_pp")
    transforms.parse(self.eval_pp, "data.eval_pp")
    self._sources: Dict[str, Any] = {}
    self._data_key = streams.run_stream(config.seed, "data")
    super().__init__(config, num_devices)

  # -- the splits as row tables ------------------------------------------------
  def _source(self, split: str):
    if split not in self._sources:
      self._sources[split] = sources.open_source(self._data, split)
    return self._sources[split]

  def _needs_labels(self) -> bool:
    data = self._data
    return bool(data.classes or data.get("per_class", 0) or data.get("val_fraction", 0.0)
                or data.get("train_fraction", 1.0) < 1.0)

  def _load(self, split: str) -> tasks.Arrays:
    source = self._source(split)
    table = {"row": np.arange(len(source), dtype=np.int64)}
    if self._needs_labels():
      table["label"] = np.asarray(source.labels, np.int32)
    return tasks.select_classes(table, self._data.classes) if "label" in table else table

  def _source_of(self, split: str):
    """The source a split's rows index: carved splits are rows of the training pool."""
    carved = self._carved()
    return self._source(self._data.train_split if split in carved else split)

  def _label_offset(self) -> int:
    return tasks.parse_classes(self._data.classes)[0]

  def _input_shape(self, train: tasks.Arrays) -> Tuple[int, ...]:
    if not len(train["row"]):
      raise UserError(f"the training split of {self._data.name!r} is empty")
    first = self._source_of("train")[int(train["row"][0])]["image"]
    shapes = {}
    for field, pp in (("data.train_pp", self.train_pp), ("data.eval_pp", self.eval_pp)):
      if not transforms.output_size(pp) and loading.image_shape(
          self._data.name, self._data.data_dir or None, self._data.image_key) is None:
        raise UserError(f"the images of {self._data.name!r} differ in size: {field}={pp!r} "
                        "must end at a fixed size, e.g. data.train_pp='random_resized_crop(224)"
                        "|flip_lr', data.eval_pp='resize_small(256)|central_crop(224)'")
      shapes[field] = transforms.build(pp, field)(first, np.random.default_rng(0)).shape
    if shapes["data.train_pp"] != shapes["data.eval_pp"]:
      raise UserError(f"data.train_pp={self.train_pp!r} makes {shapes['data.train_pp']} images "
                      f"but data.eval_pp={self.eval_pp!r} makes {shapes['data.eval_pp']}; the "
                      "model sees both, so they must agree")
    return tuple(shapes["data.train_pp"])

  def _check_labels(self, train: tasks.Arrays, num_classes: int) -> None:
    if "label" in train:
      super()._check_labels(train, num_classes)
    elif self.batch_size > len(train["row"]):
      super()._check_labels({"label": np.zeros(len(train["row"]), np.int32)}, num_classes)

  # -- inside jit: the fed batch is the batch -----------------------------------
  def train_batch(self, data, key: jax.Array, step: jax.Array):
    images = augment.augment(augment.to_float(data["image"]),
                             jax.random.fold_in(streams.fold(key, "data", "augment"), step),
                             crop_padding=self.crop_padding, flip=self.flip)
    return {"image": images, "label": data["label"]}

  def eval_batch(self, data, index: jax.Array):
    del index
    return {**data, "image": augment.to_float(data["image"])}

  def num_eval_batches(self, data) -> int:
    del data
    raise TypeError("a stream task counts evaluation batches in eval_feed")

  # -- what the loop feeds ------------------------------------------------------
  def _batches(self, kind: str, split: str, mesh, **kwargs):
    table = self.train_arrays() if kind == "train" else self.split_arrays(split)
    rows = sharding.process_rows(mesh, kwargs["batch_size"])
    pp, field = ((self.train_pp, "data.train_pp") if kind == "train" else
                 (self.eval_pp, "data.eval_pp"))
    loader = TrainBatches if kind == "train" else EvalBatches
    return loader(self._source_of(split), table, pp, field, rows, self._label_offset(), **kwargs)

  def train_input_like(self, mesh):
    shape = (self.batch_size,) + tuple(self.spec.input_shape)
    spec = sharding.batch_sharding(mesh)
    return {"image": jax.ShapeDtypeStruct(shape, np.uint8, sharding=spec),
            "label": jax.ShapeDtypeStruct((self.batch_size,), np.int32, sharding=spec)}

  def eval_input_like(self, split: str, mesh):
    self.split_arrays(split)  # opens the split now: a bad name stops the run before it writes
    shape = (self.eval_batch_size,) + tuple(self.spec.input_shape)
    spec = sharding.batch_sharding(mesh)
    return {"image": jax.ShapeDtypeStruct(shape, np.uint8, sharding=spec),
            "label": jax.ShapeDtypeStruct((self.eval_batch_size,), np.int32, sharding=spec),
            "mask": jax.ShapeDtypeStruct((self.eval_batch_size,), np.float32, sharding=spec)}

  def train_feed(self, mesh, start: int, stop: int) -> Iterator:
    loader = self._batches("train", "train", mesh, batch_size=self.batch_size, seed=self._seed,
                           key_data=np.asarray(jax.random.key_data(
                               streams.fold(self._data_key, "data", "indices"))))
    dataset = grain.MapDataset.range(start, max(start, stop)).map(loader)
    return _on_device(_iterate(dataset, self._workers), mesh, self.batch_size)

  def eval_feed(self, split: str, mesh) -> Tuple[int, Iterator]:
    loader = self._batches("eval", split, mesh, batch_size=self.eval_batch_size)
    n = max(1, math.ceil(len(loader.row) / self.eval_batch_size))
    dataset = grain.MapDataset.range(n).map(loader)
    # threads: an evaluation does not pay for starting processes (seconds each time)
    return n, _on_device(_iterate(dataset, self._workers, processes=False), mesh,
                         self.eval_batch_size)

  def start_data(self, mesh):
    """The whole training split through `data.eval_pp`, replicated (for `start_from`)."""
    table = self.train_arrays()
    n, size = len(table["row"]), self.eval_batch_size
    loader = EvalBatches(self._source_of("train"), table, self.eval_pp, "data.eval_pp",
                         (0, size), self._label_offset(), batch_size=size)
    chunks = list(_iterate(grain.MapDataset.range(math.ceil(n / size)).map(loader),
                           self._workers, processes=False))
    whole = {k: np.concatenate([np.array(c[k]) for c in chunks])[:n] for k in ("image", "label")}
    return sharding.put_replicated(whole, mesh)
