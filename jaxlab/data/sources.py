"""Random-access sources of single examples: a TFDS split, or a folder of images per class.

Both give `source[i] = {"image": uint8 HWC, "label": int}` and `len(source)`, decode without
TensorFlow (TFDS's numpy path and the folder reader both use Pillow), and pickle small: the
streaming input ships them to its worker processes, which open the files themselves.

An image folder is addressed as `data.name = "folder:<path>"` (any `etils.epath` path: a
local directory, or `gs://...` where its filesystem layer is installed). Its layout is
torchvision's ImageFolder: `<path>/<class>/<image>`, classes in sorted order, labels 0..K-1;
with subfolders `train`, `validation` and/or `test` (each `<split>/<class>/<image>`) those are
the splits and the classes are those of `train`, otherwise the one split is `train`. Every
image is read as RGB (as torchvision's default loader does); files whose extension is not an
image's are skipped.
"""

import concurrent.futures
import functools
import io
from typing import Dict, List, Optional, Tuple

import numpy as np
from etils import epath
from PIL import Image

from jaxlab.errors import UserError

FOLDER = "folder:"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FOLDER_SPLITS = ("train", "validation", "test")


def is_folder(name: str) -> bool:
  return name.startswith(FOLDER)


def _is_image(path: epath.Path) -> bool:
  return path.suffix.lower() in IMAGE_EXTENSIONS


@functools.lru_cache(maxsize=8)
def folder_layout(name: str) -> Tuple[Tuple[str, ...], Dict[str, Tuple[str, ...]]]:
  """(class names, {split: its root}) of a `folder:<path>` dataset."""
  root = epath.Path(name[len(FOLDER):])
  if not root.is_dir():
    raise UserError(f"data.name={name!r}: {str(root)!r} is not a directory (a folder dataset is "
                    "<path>/<class>/<image>, or <path>/<split>/<class>/<image>)")
  splits = {s: str(root / s) for s in FOLDER_SPLITS if (root / s).is_dir()}
  if not splits:
    splits = {"train": str(root)}
  if "train" not in splits:
    raise UserError(f"data.name={name!r} has split folders {', '.join(splits)} but no 'train' "
                    "folder, which names the classes")
  classes = tuple(sorted(p.name for p in epath.Path(splits["train"]).iterdir() if p.is_dir()))
  if not classes:
    raise UserError(f"data.name={name!r}: {splits['train']!r} has no class folders "
                    "(<class>/<image>)")
  return classes, splits


class FolderSource:
  """One split of a `folder:<path>` dataset."""

  def __init__(self, name: str, split: str):
    classes, splits = folder_layout(name)
    if split not in splits:
      raise UserError(f"dataset {name!r} has no split {split!r}; valid splits: "
                      f"{', '.join(splits)}")
    root = epath.Path(splits[split])
    files: List[str] = []
    labels: List[int] = []
    for label, cls in enumerate(classes):
      folder = root / cls
      found = sorted(str(p) for p in folder.iterdir() if _is_image(p)) if folder.is_dir() else []
      files += found
      labels += [label] * len(found)
    extra = sorted({p.name for p in root.iterdir() if p.is_dir()} - set(classes))
    if extra:
      raise UserError(f"dataset {name!r}: split {split!r} has class folders that 'train' has "
                      f"not: {', '.join(extra[:5])}")
    if not files:
      raise UserError(f"dataset {name!r}: split {split!r} holds no images "
                      f"({', '.join(IMAGE_EXTENSIONS)})")
    self.name, self.split = name, split
    self.files = files
    self.labels = np.asarray(labels, np.int32)
    self.num_classes = len(classes)

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> Dict[str, object]:
    path = self.files[index]
    try:
      with Image.open(io.BytesIO(epath.Path(path).read_bytes())) as image:
        pixels = np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError) as e:
      raise UserError(f"dataset {self.name!r}: cannot decode {path!r} ({e})") from None
    return {"image": pixels, "label": int(self.labels[index])}


class TfdsSource:
  """One split of a prepared TFDS dataset (array_record), opened lazily in each process."""

  def __init__(self, name: str, split: str, data_dir: Optional[str], image_key: str = "image",
               label_key: str = "label", manual_dir: Optional[str] = None):
    self.args = (name, split, data_dir, manual_dir)
    self.image_key, self.label_key = image_key, label_key
    self._source = None
    self._length = len(self._open())

  def _open(self):
    if self._source is None:
      from jaxlab.data import loading  # pylint: disable=g-import-not-at-top
      name, split, data_dir, manual_dir = self.args
      self._source = loading.open_split(loading.get_builder(name, data_dir, False, manual_dir),
                                        split)
    return self._source

  def __getstate__(self):
    return {**self.__dict__, "_source": None}

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> Dict[str, object]:
    record = self._open()[int(index)]
    for key in (self.image_key, self.label_key):
      if key not in record:
        raise UserError(f"dataset {self.args[0]!r} has no feature {key!r}; features: "
                        f"{', '.join(record)}")
    return {"image": np.asarray(record[self.image_key]), "label": int(record[self.label_key])}

  @property
  def labels(self) -> np.ndarray:
    """Every label of the split (reads each record once: slow for very large splits)."""
    if not hasattr(self, "_labels"):
      with concurrent.futures.ThreadPoolExecutor(8) as pool:  # decoding releases the GIL
        labels = list(pool.map(lambda i: self[i]["label"], range(len(self))))
      self._labels = np.asarray(labels, np.int32)
    return self._labels


def open_source(data, split: str):
  """The source of `split` of `config.data`'s dataset."""
  if is_folder(data.name):
    return FolderSource(data.name, split)
  return TfdsSource(data.name, split, data.data_dir or None, data.image_key, data.label_key,
                    data.get("manual_dir") or None)
