"""`mini_imagenet`: miniImageNet (Vinyals et al. 2016) with the Ravi & Larochelle (2017) split.

100 ImageNet classes, 600 images each, split by class 64 / 16 / 20 into
`train` / `validation` / `test`. The images cannot be downloaded by TFDS; the
builder reads them from a manual directory (`config.data.manual_dir`, default
`<data_dir>/downloads/manual`) laid out as the usual release:

    manual_dir/images/n0153282900000005.jpg ...
    manual_dir/train.csv   manual_dir/val.csv   manual_dir/test.csv

with CSV rows `filename,label` (a header line first; `label` is the WordNet id).
Every image is converted to RGB and resized to 84x84 (Lanczos), as in the
standard pre-processing. Labels index the 100 WordNet ids in sorted order.
"""

import csv
import os

import numpy as np
import tensorflow_datasets as tfds

from jaxlab.errors import UserError

SIZE = 84
SPLIT_FILES = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}


def read_split(manual_dir: str, csv_name: str):
  """(filename, wnid) rows of one split file."""
  with open(os.path.join(manual_dir, csv_name), newline="") as f:
    rows = list(csv.reader(f))
  if rows and rows[0][:2] == ["filename", "label"]:
    rows = rows[1:]
  return [(r[0], r[1]) for r in rows if r]


class MiniImagenet(tfds.core.GeneratorBasedBuilder):
  """miniImageNet, Ravi-Larochelle split, 84x84, from a manual directory."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "84x84 RGB, splits from train/val/test.csv."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put the miniImageNet images in <manual_dir>/images/ and the Ravi-Larochelle split files "
      "train.csv, val.csv, test.csv (rows: filename,label) in <manual_dir>/.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(SIZE, SIZE, 3), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=100),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    manual_dir = str(dl_manager.manual_dir)
    missing = [n for n in (*SPLIT_FILES.values(), "images")
               if not os.path.exists(os.path.join(manual_dir, n))]
    if missing:
      raise UserError(f"miniImageNet manual directory {manual_dir} lacks {', '.join(missing)}: "
                      + self.MANUAL_DOWNLOAD_INSTRUCTIONS + " Point --config.data.manual_dir at it.")
    splits = {s: read_split(manual_dir, f) for s, f in SPLIT_FILES.items()}
    wnids = sorted({wnid for rows in splits.values() for _, wnid in rows})
    index = {w: i for i, w in enumerate(wnids)}
    return {s: self._generate_examples(manual_dir, rows, index) for s, rows in splits.items()}

  def _generate_examples(self, manual_dir, rows, index):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    for filename, wnid in rows:
      with Image.open(os.path.join(manual_dir, "images", filename)) as image:
        image = image.convert("RGB").resize((SIZE, SIZE), Image.LANCZOS)
        yield filename, {"image": np.asarray(image, np.uint8), "label": index[wnid]}
