"""`digits`: scikit-learn's 8x8 handwritten digits as an embedded TFDS dataset.

1,797 images of 10 classes (Alpaydin & Kaynak, UCI optical recognition of
handwritten digits), read from the copy that ships inside scikit-learn, so it
builds offline in well under a second. Pixel values 0..16 are scaled to
0..255 uint8. The split is fixed and stratified: per class, a permutation
drawn from `numpy.random.default_rng(0)` sends the first 80 % to `train`
(1,438 images) and the rest to `test` (359 images).
"""

import numpy as np
import tensorflow_datasets as tfds

TRAIN_FRACTION = 0.8


def split_indices():
  """(train indices, test indices) into sklearn's digit arrays; fixed forever."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  labels = load_digits().target
  rng = np.random.default_rng(0)
  train, test = [], []
  for c in range(10):
    members = rng.permutation(np.flatnonzero(labels == c))
    cut = int(round(TRAIN_FRACTION * len(members)))
    train.extend(members[:cut])
    test.extend(members[cut:])
  return np.sort(train), np.sort(test)


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 digits, 1,438 train / 359 test."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Stratified 80/20 split with numpy seed 0."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    train, test = split_indices()
    return {"train": self._generate_examples(train), "test": self._generate_examples(test)}

  def _generate_examples(self, indices):
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    for i in indices:
      yield int(i), {"image": images[i], "label": int(digits.target[i])}
