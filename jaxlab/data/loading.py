"""Reading datasets by TFDS name into host numpy arrays, offline by default.

Any TFDS dataset (`mnist`, `cifar10`, `omniglot`, `caltech_birds2011`, ...) is
read with the TFDS random-access data source (array_record; TensorFlow is not
needed). The embedded builders `digits` and `glyphs` are built on first use,
offline, and cached in the data directory; so is `mini_imagenet`, from the
images and split files in `manual_dir`. The data directory is, in order:
`config.data.data_dir`, `$JAXLAB_DATA_DIR`, the TFDS default
(`~/tensorflow_datasets` or `$TFDS_DATA_DIR`).
"""

import contextlib
import functools
import importlib
import io
import os
import socket
from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from jaxlab.data import sources
from jaxlab.errors import UserError

# Embedded builders: importing the module registers the TFDS builder.
EMBEDDED = {"digits": "jaxlab.data.digits", "glyphs": "jaxlab.data.glyphs"}
# jaxlab's builders, all built locally (miniImageNet from a manual directory).
BUILDERS = {**EMBEDDED, "mini_imagenet": "jaxlab.data.mini_imagenet"}
tfds.display_progress_bar(False)


def resolve_data_dir(data_dir: Optional[str]) -> Optional[str]:
  return data_dir or os.environ.get("JAXLAB_DATA_DIR") or None


def get_builder(name: str, data_dir: Optional[str] = None, download: bool = False,
                manual_dir: Optional[str] = None):
  """The prepared TFDS builder for `name` (e.g. `glyphs/color32`, `mnist:3.0.1`)."""
  data_dir = resolve_data_dir(data_dir)
  base = name.split("/")[0].split(":")[0]
  if base in BUILDERS:
    importlib.import_module(BUILDERS[base])
  try:
    with _quiet(base in BUILDERS):  # a fresh embedded builder warns of its missing info file
      builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(
        f"unknown dataset {name!r}; embedded datasets: {', '.join(sorted(EMBEDDED))} "
        "(glyphs also as glyphs/color32), or any TFDS name from tfds.list_builders()") from None
  except ValueError as e:
    if "BuilderConfig" in str(e):
      configs = _config_names(base)
      raise UserError(f"unknown configuration in dataset {name!r}; valid: "
                      + ", ".join(f"{base}/{c}" for c in configs)) from None
    raise
  with _quiet(base in BUILDERS):
    prepared = builder.is_prepared()
  if prepared or not (base in BUILDERS or download):
    return builder
  if base not in BUILDERS:  # a real download: fail fast without a network
    _check_network(name)
  config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  # Runs started together on one data directory (a sweep, parallel tests) build it once: the
  # first holds the lock and builds, the others wait and then find it prepared.
  with _build_lock(builder.data_dir):
    with _quiet(base in BUILDERS):
      builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
      prepared = builder.is_prepared()
    if prepared:
      return builder
    if base not in BUILDERS:
      where = data_dir or "the TFDS default directory"
      print(f"jaxlab: downloading and preparing {name!r} into {where} (data.download=True); "
            "this can take long", flush=True)
    else:  # TFDS would announce a "download" of "Unknown size"
      print(f"jaxlab: building the dataset {_display_name(builder)!r} in "
            f"{builder.data_dir} (once; later runs read it)", flush=True)
    try:
      with _quiet(base in BUILDERS):
        builder.download_and_prepare(file_format="array_record", download_config=config)
    except AssertionError as e:
      if "Manual directory" not in str(e):
        raise
      raise UserError(" ".join(str(e).split()) + " Point --config.data.manual_dir at it.") from None
  return builder


@contextlib.contextmanager
def _build_lock(version_dir: str):
  """An exclusive lock beside `version_dir` (a local file lock; where the directory is not a
  local path, e.g. gs://, nothing is locked)."""
  parent = os.path.dirname(version_dir)
  if "://" in parent:
    yield
    return
  import fcntl  # pylint: disable=g-import-not-at-top
  os.makedirs(parent, exist_ok=True)
  lock_path = os.path.join(parent, "." + os.path.basename(version_dir) + ".lock")
  with open(lock_path, "w") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet(active: bool):
  """Silences TFDS's prints and absl warnings while jaxlab builds its own datasets."""
  if not active:
    yield
    return
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    logging.set_verbosity(verbosity)


def _check_network(name: str, host: str = "storage.googleapis.com", timeout: float = 5.0):
  """A UserError at once when TFDS's download host cannot be reached (TFDS itself retries
  for minutes without a word)."""
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
  except OSError as e:
    raise UserError(f"data.download=True, but {host} cannot be reached ({e.__class__.__name__}:"
                    f" {e}); prepare {name!r} on a machine with network access (`tfds build "
                    f"{name} --file_format=array_record`) and point --config.data.data_dir at "
                    "it") from None


def _display_name(builder) -> str:
  config = builder.builder_config
  return builder.name + (f"/{config.name}" if config and config.name != "default" else "")


def open_split(builder, split: str):
  """The random-access data source of one split, or a UserError saying how to prepare it."""
  splits = list(builder.info.splits.keys())
  if splits and split.split("[")[0] not in splits:
    raise UserError(f"dataset {_display_name(builder)!r} has no split {split!r}; "
                    f"valid splits: {', '.join(splits)}")
  try:
    return builder.as_data_source(split=split)
  except Exception:  # pylint: disable=broad-except
    if builder.is_prepared():
      raise
  name = _display_name(builder)
  root = os.path.dirname(os.path.dirname(builder.data_dir))
  if builder.builder_config:
    root = os.path.dirname(root)
  raise UserError(
      f"dataset {name!r} is not prepared in {root} and jaxlab does not download at run time; "
      f"prepare it once on a machine with network access: `tfds build {name} --data_dir={root} "
      f"--file_format=array_record` (or pass --config.data.download=True), then point "
      f"--config.data.data_dir or $JAXLAB_DATA_DIR at that directory") from None


def _config_names(base: str):
  cls = tfds.builder_cls(base)
  return [c.name for c in (getattr(cls, "BUILDER_CONFIGS", None) or [])]


@functools.lru_cache(maxsize=16)
def load_split(name: str, split: str, data_dir: Optional[str] = None, download: bool = False,
               manual_dir: Optional[str] = None) -> Dict[str, np.ndarray]:
  """All numeric features of one split as stacked numpy arrays (cached; do not modify them)."""
  source = open_split(get_builder(name, data_dir, download, manual_dir), split)
  try:  # batched random access: about 2x faster than one record at a time
    rows = [row for start in range(0, len(source), 8192)
            for row in source.__getitems__(list(range(start, min(start + 8192, len(source)))))]
  except TypeError:  # data sources without batched reads (tfds.testing.mock_data)
    rows = [source[i] for i in range(len(source))]
  columns: Dict[str, list] = {}
  for row in rows:
    for key, value in row.items():
      value = np.asarray(value)
      if value.dtype.kind in "biuf":  # skip strings such as cifar10's `id`
        columns.setdefault(key, []).append(value)
  return {k: np.stack(v) for k, v in columns.items()}


@functools.lru_cache(maxsize=None)
def num_classes(name: str, data_dir: Optional[str] = None, label_key: str = "label") -> int:
  if sources.is_folder(name):
    return len(sources.folder_layout(name)[0])
  builder = get_builder(name, data_dir)
  feature = builder.info.features[label_key]
  return int(feature.num_classes)


def image_shape(name: str, data_dir: Optional[str] = None,
                image_key: str = "image") -> Optional[Tuple[int, ...]]:
  """The images' shape, or None when they differ in size (or a folder's images)."""
  if sources.is_folder(name):
    return None
  feature = get_builder(name, data_dir).info.features[image_key]
  shape = tuple(getattr(feature, "shape", ()) or ())
  return None if not shape or None in shape else shape


def split_bytes(name: str, split: str, data_dir: Optional[str] = None,
                image_key: str = "image") -> Optional[int]:
  """Bytes the split's images take as a uint8 array (None when they differ in size)."""
  shape = image_shape(name, data_dir, image_key)
  if shape is None:
    return None
  builder = get_builder(name, data_dir)
  splits = builder.info.splits
  base = split.split("[")[0]
  count = splits[base].num_examples if base in splits else 0
  return count * int(np.prod(shape))
