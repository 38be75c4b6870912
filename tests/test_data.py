"""Data: embedded builders, TFDS datasets through the real code path (mocked), sampling, augmentation."""

import collections
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

import jaxlab
from jaxlab.data import augment, digits, glyphs, loading, tasks

from conftest import DATA_DIR


# --- digits -------------------------------------------------------------------------------------

def test_digits_builder_matches_sklearn_and_is_fixed():
  from sklearn.datasets import load_digits
  train = loading.load_split("digits", "train")
  test = loading.load_split("digits", "test")
  assert train["image"].shape == (1438, 8, 8, 1) and test["image"].shape == (359, 8, 8, 1)
  assert train["image"].dtype == np.uint8 and train["image"].max() == 255
  # every class in both splits, 80/20 per class
  counts_train, counts_test = np.bincount(train["label"]), np.bincount(test["label"])
  assert np.all(np.abs(counts_train / (counts_train + counts_test) - 0.8) < 0.01)
  # the stored examples are exactly sklearn's images, and train/test are disjoint
  reference = load_digits()
  expected = np.round(reference.images * (255 / 16)).astype(np.uint8)
  train_idx, test_idx = digits.split_indices()
  assert not set(train_idx) & set(test_idx)
  as_bytes = lambda images: sorted(im.tobytes() for im in images)
  assert as_bytes(train["image"][..., 0]) == as_bytes(expected[train_idx])
  assert as_bytes(test["image"][..., 0]) == as_bytes(expected[test_idx])
  again_train, _ = digits.split_indices()
  np.testing.assert_array_equal(train_idx, again_train)


# --- glyphs -------------------------------------------------------------------------------------

def test_glyph_character_table_meets_the_spec():
  table = glyphs.character_table()
  scripts = collections.Counter(s for s, _, _ in table)
  assert len(table) >= 1200 and len(scripts) >= 10
  assert len({cp for _, cp, _ in table}) == len(table)
  # every script lies in one split; split sizes near 60/15/25 % of classes
  fractions = collections.Counter(glyphs.SPLIT_OF_SCRIPT[s] for s, _, _ in table)
  assert abs(fractions["train"] / len(table) - 0.60) < 0.05
  assert abs(fractions["validation"] / len(table) - 0.15) < 0.05
  assert abs(fractions["test"] / len(table) - 0.25) < 0.05
  # LastResort is never used, and each face listed really covers the character
  assert all("LastResort" not in f for f in glyphs.FACES)
  from fontTools.ttLib import TTFont
  cmap = TTFont(os.path.join(glyphs._font_dir(), glyphs.FACES[0])).getBestCmap()
  assert all(cp in cmap for _, cp, faces in table if faces[0] == 0)


def test_glyph_rendering_is_deterministic_and_varied():
  _, cp, faces = glyphs.character_table()[100]
  a = glyphs.render_instance(chr(cp), faces, np.random.default_rng([0, cp]), 28, False)
  b = glyphs.render_instance(chr(cp), faces, np.random.default_rng([0, cp]), 28, False)
  c = glyphs.render_instance(chr(cp), faces, np.random.default_rng([1, cp]), 28, False)
  assert a.shape == (28, 28, 1) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert np.abs(a.astype(int) - c.astype(int)).mean() > 5  # another draw looks different
  colour = glyphs.render_instance(chr(cp), faces, np.random.default_rng([0, cp]), 32, True)
  assert colour.shape == (32, 32, 3)


@pytest.fixture(scope="module")
def glyph_splits():
  return {split: loading.load_split("glyphs", split) for split in ("train", "validation", "test")}


def test_glyphs_builder_splits_by_alphabet(glyph_splits):
  table = glyphs.character_table()
  total = 0
  alphabets = {}
  for split, arrays in glyph_splits.items():
    assert arrays["image"].shape[1:] == (28, 28, 1)
    counts = np.bincount(arrays["label"], minlength=len(table))
    present = np.flatnonzero(counts)
    assert np.all(counts[present] == glyphs.INSTANCES_PER_CHARACTER)
    alphabets[split] = set(np.unique(arrays["alphabet"]))
    total += len(present)
  assert total == len(table)
  assert not alphabets["train"] & alphabets["validation"]
  assert not alphabets["train"] & alphabets["test"]
  assert not alphabets["validation"] & alphabets["test"]
  assert len(alphabets["train"]) + len(alphabets["validation"]) + len(alphabets["test"]) >= 10


def test_glyphs_builder_gives_the_same_bytes_as_a_fresh_rendering(glyph_splits):
  """A rebuild renders identical bytes: re-render 3 characters in this process and compare."""
  table = glyphs.character_table()
  train = glyph_splits["train"]
  for label in (0, 7, 500):
    _, cp, faces = table[label]
    rng = np.random.default_rng([0, cp])  # config `default` uses seed 0
    expected = np.stack([glyphs.render_instance(chr(cp), faces, rng, 28, False)
                         for _ in range(glyphs.INSTANCES_PER_CHARACTER)])
    rows = train["label"] == label
    stored = train["image"][rows][np.argsort(train["instance"][rows])]
    np.testing.assert_array_equal(stored, expected)


# --- TFDS datasets through the real code path -----------------------------------------------------

@pytest.mark.parametrize("name,shape,classes", [
    ("mnist", (28, 28, 1), 10), ("cifar10", (32, 32, 3), 10), ("omniglot", (105, 105, 3), 1623)])
def test_tfds_datasets_read_through_data_source(name, shape, classes):
  with tfds.testing.mock_data(num_examples=12):
    arrays = loading.load_split(name, "train" if name != "omniglot" else "test")
    assert arrays["image"].shape == (12,) + shape and arrays["image"].dtype == np.uint8
    assert loading.num_classes(name) == classes


def test_erm_trains_on_mocked_mnist(tmp_path):
  config = jaxlab.load_config("configs/erm.py:mnist", {
      "train.steps": 3, "train.batch_size": 8, "train.log_every": 1,
      "train.checkpoint_every": 0, "train.eval_batch_size": 8, "model.hidden": (8,)})
  with tfds.testing.mock_data(num_examples=16):
    results = jaxlab.train_and_evaluate(config, str(tmp_path))
  assert results["step"] == 3 and 0.0 <= results["test/accuracy"] <= 1.0


def test_omniglot_is_resized_and_made_grayscale():
  config = jaxlab.load_config("configs/erm.py:tiny", {
      "data.name": "omniglot", "data.image_size": 28, "data.grayscale": True,
      "data.eval_splits": "test"})
  with tfds.testing.mock_data(num_examples=6):
    task = tasks.SupervisedTask(config)
  assert task.spec.input_shape == (28, 28, 1) and task.spec.num_classes == 1623


# --- sampling and augmentation ------------------------------------------------------------------

def test_epoch_indices_visit_every_example_once_per_epoch():
  key = jax.random.key(0)
  n, batch = 10, 4
  seen = np.concatenate([np.asarray(tasks.epoch_indices(key, jnp.int32(s), batch, n))
                         for s in range(5)])  # 20 draws = epochs 0 and 1
  assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
  assert list(seen[:10]) != list(seen[10:])  # a fresh permutation each epoch


def test_random_crop_and_flip():
  images = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1) + 1
  cropped = augment.random_crop(images, jax.random.key(1), padding=1)
  assert cropped.shape == images.shape
  for original, crop in zip(np.asarray(images), np.asarray(cropped)):
    padded = np.pad(original, ((1, 1), (1, 1), (0, 0)))
    windows = [padded[i:i + 4, j:j + 4] for i in range(3) for j in range(3)]
    assert any(np.array_equal(crop, w) for w in windows)
  flips = [np.asarray(augment.random_flip(images, jax.random.key(k))) for k in range(20)]
  for f in flips:
    for original, out in zip(np.asarray(images), f):
      assert np.array_equal(out, original) or np.array_equal(out, original[:, ::-1])
  assert any(not np.array_equal(f, np.asarray(images)) for f in flips)


def test_data_dir_from_environment():
  assert loading.resolve_data_dir("") == DATA_DIR
  assert loading.resolve_data_dir("/elsewhere") == "/elsewhere"


def test_runs_started_together_build_an_embedded_dataset_once(tmp_path):
  """Two processes reading `digits` from one fresh data directory both get it whole: the
  second waits for the first's build instead of racing it (TFDS renames a finished build into
  place, which fails when another build got there first)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  script = ("import sys; from jaxlab.data import loading; "
            "a = loading.load_split('digits', 'train', sys.argv[1]); print(a['label'].shape[0])")
  procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(2)]
  outputs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
  assert [out.split()[-1] for out, _ in outputs] == ["1438", "1438"]
  assert sum("building the dataset" in out for out, _ in outputs) == 1


# --- miniImageNet from a manual directory -------------------------------------------------------

def _fake_mini_imagenet(root, classes_per_split=(3, 2, 2), per_class=4):
  from PIL import Image
  (root / "images").mkdir(parents=True)
  rng = np.random.default_rng(0)
  wnid = 0
  for csv_name, classes in zip(("train.csv", "val.csv", "test.csv"), classes_per_split):
    lines = ["filename,label"]
    for _ in range(classes):
      for i in range(per_class):
        name = f"n{wnid:08d}{i:08d}.jpg"
        size = (int(rng.integers(90, 130)), int(rng.integers(90, 130)))  # not 84x84 yet
        Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(root / "images" / name)
        lines.append(f"{name},n{wnid:08d}")
      wnid += 1
    (root / csv_name).write_text("\n".join(lines) + "\n")


def test_mini_imagenet_builds_from_a_manual_directory(tmp_path):
  manual = tmp_path / "manual"
  _fake_mini_imagenet(manual)
  data_dir = str(tmp_path / "data")
  splits = {s: loading.load_split("mini_imagenet", s, data_dir, manual_dir=str(manual))
            for s in ("train", "validation", "test")}
  assert splits["train"]["image"].shape == (12, 84, 84, 3)
  labels = {s: set(a["label"].tolist()) for s, a in splits.items()}
  assert labels == {"train": {0, 1, 2}, "validation": {3, 4}, "test": {5, 6}}
  # episodes from it, as the miniImageNet presets draw them
  config = jaxlab.load_config("configs/maml.py:mini_imagenet_5w1s", {
      "data.data_dir": data_dir, "data.manual_dir": str(manual), "episodes.ways": 2,
      "episodes.queries": 3, "episodes.meta_batch": 2})
  from jaxlab.data import episodes
  task = episodes.EpisodicTask(config)
  batch = task.train_batch(jax.device_put(task.train_arrays()), jax.random.key(0), jnp.int32(0))
  assert batch["support"]["x"].shape == (2, 2, 84, 84, 3)
  assert batch["query"]["x"].shape == (2, 6, 84, 84, 3)


def test_mini_imagenet_without_files_says_what_to_provide(tmp_path):
  with pytest.raises(jaxlab.UserError, match="does not exist or is empty.*train.csv"):
    loading.load_split("mini_imagenet", "train", str(tmp_path / "data"),
                       manual_dir=str(tmp_path / "empty"))
