"""Streaming input (jaxlab.data.stream): host transforms against Pillow, the real TFDS path on
variable-size data, image folders, and agreement with the on-device path."""

import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import jaxlab
from jaxlab.data import sources, stream, tasks, transforms
from jaxlab.errors import UserError
from jaxlab.train import sharding

from conftest import run_main


def _photo(rng, height, width):
  return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


# -- transforms ------------------------------------------------------------------------------

@pytest.mark.parametrize("height,width", [(300, 500), (500, 300), (224, 224), (40, 900)])
def test_eval_transform_is_resize_shorter_side_then_centre_crop(height, width):
  image = _photo(np.random.default_rng(0), height, width)
  out = transforms.build("resize_small(256)|central_crop(224)")(image, None)
  # Pillow by hand: the shorter side to 256, the other int(256 * long / short) (torchvision's
  # Resize), then offsets round((H - 224) / 2)
  short, long_ = min(height, width), max(height, width)
  new_h, new_w = (256, int(256 * long_ / short)) if height <= width else (
      int(256 * long_ / short), 256)
  resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
  top, left = int(round((new_h - 224) / 2)), int(round((new_w - 224) / 2))
  np.testing.assert_array_equal(out, resized[top:top + 224, left:left + 224])


def test_random_resized_crop_draws_torchvisions_boxes_and_resizes_them_with_pillow():
  rng_images = np.random.default_rng(1)
  areas, ratios = [], []
  for k in range(200):
    h, w = int(rng_images.integers(50, 400)), int(rng_images.integers(50, 400))
    image = _photo(rng_images, h, w)
    top, left, ch, cw = transforms.random_resized_crop_box(h, w, np.random.default_rng(k))
    out = transforms.random_resized_crop(image, np.random.default_rng(k), 64)
    expected = Image.fromarray(image).crop((left, top, left + cw, top + ch)).resize(
        (64, 64), Image.BILINEAR)
    np.testing.assert_array_equal(out, np.asarray(expected))
    assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
    areas.append(ch * cw / (h * w))
    ratios.append(cw / ch)
  # the scale (0.08, 1) and ratio (3/4, 4/3) ranges, up to the rounding of the sides
  assert 0.06 < min(areas) < 0.15 and 0.85 < max(areas) <= 1.0
  assert 0.7 < min(ratios) and max(ratios) < 1.43
  # an image too thin for any try: the centred crop of the whole, clamped to ratio 4/3
  assert transforms.random_resized_crop_box(10, 200, np.random.default_rng(0)) == (0, 93, 10, 13)


def test_random_resized_crop_equals_torchvision_given_the_same_box():
  torchvision = pytest.importorskip("torchvision")  # the `bench` extra
  from torchvision.transforms import functional  # pylint: disable=import-outside-toplevel
  del torchvision
  image = _photo(np.random.default_rng(2), 333, 251)
  top, left, h, w = transforms.random_resized_crop_box(333, 251, np.random.default_rng(5))
  theirs = functional.resized_crop(Image.fromarray(image), top, left, h, w, [224, 224])
  ours = transforms.random_resized_crop(image, np.random.default_rng(5), 224)
  np.testing.assert_array_equal(ours, np.asarray(theirs))
  theirs = functional.center_crop(functional.resize(Image.fromarray(image), 256), 224)
  ours = transforms.build("resize_small(256)|central_crop(224)")(image, None)
  np.testing.assert_array_equal(ours, np.asarray(theirs))


@pytest.mark.parametrize("pp,fragment", [
    ("random_crop(224)", "unknown op 'random_crop(224)'; valid: central_crop, flip_lr"),
    ("resize(224,3)", "resize takes 1 numeric arguments"),
    ("central_crop(a)", "central_crop takes 1 numeric arguments"),
])
def test_a_bad_preprocessing_string_is_one_line(pp, fragment):
  with pytest.raises(UserError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
    transforms.parse(pp)


def test_a_random_eval_transform_is_refused_before_the_run(tmp_path):
  result = run_main("--config=configs/erm.py:tiny", f"--workdir={tmp_path / 'w'}",
                    "--config.data.eval_pp=random_resized_crop(8)")
  assert result.returncode == 2
  assert "data.eval_pp='random_resized_crop(8)' draws at random" in result.stderr
  assert not (tmp_path / "w").exists()


# -- the stream and device paths -------------------------------------------------------------

def test_stream_and_device_paths_draw_identical_batches_on_digits():
  """The first 50 training batches of digits (crop and flip on): the same rows, the same
  pixels, and the same labels, with the stream read by two worker processes."""
  config = jaxlab.load_config("configs/erm.py:tiny", {
      "train.batch_size": 64, "aug.crop_padding": 2, "aug.flip": True, "data.workers": 2})
  mesh = sharding.make_mesh()
  device = tasks.SupervisedTask(config)
  config.data.pipeline = "stream"
  streamed = tasks.supervised(config)
  assert isinstance(streamed, stream.StreamTask) and streamed.spec == device.spec
  key = jax.random.fold_in(jax.random.key(config.seed), 1)
  device_batch = jax.jit(device.train_batch)
  stream_batch = jax.jit(streamed.train_batch)
  arrays = device._device_train(mesh)  # pylint: disable=protected-access
  feed = streamed.train_feed(mesh, 0, 50)
  count = 0
  for step, data in zip(range(50), feed):
    a = device_batch(arrays, key, jnp.int32(step))
    b = stream_batch(data, key, jnp.int32(step))
    np.testing.assert_array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
    np.testing.assert_array_equal(np.asarray(a["label"]), np.asarray(b["label"]))
    count += 1
  feed.close()
  assert count == 50


def _mock_config(name, **overrides):
  config = jaxlab.load_config("configs/erm.py:tiny", {
      "data.name": name, "data.workers": 0, "model.hidden": (16,),
      "data.train_pp": "random_resized_crop(24)|flip_lr",
      "data.eval_pp": "resize_small(28)|central_crop(24)", **overrides})
  return config


def test_a_variable_size_tfds_dataset_streams_through_the_real_tfds_path(tmp_path):
  """oxford_iiit_pet (images of any size) under tfds.testing.mock_data: auto picks the
  stream, and every example of a batch is the Pillow crop-and-resize of its record."""
  with tfds.testing.mock_data(num_examples=20):
    config = _mock_config("oxford_iiit_pet", **{"train.batch_size": 8})
    assert tasks.resolve_pipeline(config.data) == "stream"
    task = tasks.supervised(config)
    assert task.spec.input_shape == (24, 24, 3)
    mesh = sharding.make_mesh()
    feed = task.train_feed(mesh, 3, 5)
    batch = jax.device_get(next(feed))
    source = sources.open_source(config.data, "train")
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), 1), 0)
    rows = np.asarray(tasks.epoch_indices(key, jnp.int32(3), 8, len(source)))
    for position, row in enumerate(rows):
      record = source[int(row)]
      rng = transforms.random_for(config.seed, 3, position, stream.HOST_AUGMENT_TAG)
      top, left, h, w = transforms.random_resized_crop_box(*record["image"].shape[:2], rng)
      expected = np.asarray(Image.fromarray(record["image"]).crop(
          (left, top, left + w, top + h)).resize((24, 24), Image.BILINEAR))
      if rng.uniform() < 0.5:
        expected = expected[:, ::-1]
      np.testing.assert_array_equal(batch["image"][position], expected)
      assert batch["label"][position] == record["label"]
    assert sorted(rows.tolist()) != list(range(8))  # shuffled
    # a device run of the same dataset reads it through eval_pp, one size for all
    device = tasks.SupervisedTask(config)
    assert device.train_arrays()["image"].shape == (20, 24, 24, 3)
    results = jaxlab.train_and_evaluate(config, str(tmp_path / "pets"))
  assert results["step"] == 40 and 0 <= results["test/accuracy"] <= 1


def test_an_imagenet_shaped_dataset_trains_and_evaluates_every_validation_image(tmp_path):
  with tfds.testing.mock_data(num_examples=13):
    config = jaxlab.load_config("configs/erm.py:imagenet", {
        "data.workers": 0, "model.name": "resnet18", "model.width": 4,
        "data.train_pp": "random_resized_crop(16)|flip_lr",
        "data.eval_pp": "resize_small(18)|central_crop(16)", "train.batch_size": 4,
        "train.eval_batch_size": 5, "train.steps": 3, "train.eval_every": 0,
        "train.checkpoint_every": 0, "optimizer.step_boundaries": (1, 2)})
    task = tasks.supervised(config)
    assert isinstance(task, stream.StreamTask) and task.spec.num_classes == 1000
    n, feed = task.eval_feed("validation", sharding.make_mesh())
    masks = [np.asarray(b["mask"]) for b in feed]
    assert n == 3 and sum(m.sum() for m in masks) == 13  # 5 + 5 + 3, the padding masked
    results = jaxlab.train_and_evaluate(config, str(tmp_path / "imagenet"))
  assert results["step"] == 3 and np.isfinite(results["validation/loss"])


# -- image folders ---------------------------------------------------------------------------

def _image_folder(root, per_class=40, classes=("cat", "dog", "fox", "owl"), test_per_class=10):
  """JPEGs of varying sizes, each class its own colour plus noise, in train/ and test/."""
  rng = np.random.default_rng(0)
  colours = rng.integers(40, 216, (len(classes), 3))
  for split, count in (("train", per_class), ("test", test_per_class)):
    for c, name in enumerate(classes):
      folder = root / split / name
      folder.mkdir(parents=True)
      for i in range(count):
        h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        pixels = np.clip(colours[c] + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
  (root / "train" / "cat" / "notes.txt").write_text("not an image")
  return root


def test_an_image_folder_is_a_dataset(tmp_path):
  root = _image_folder(tmp_path / "pets", per_class=3, test_per_class=1)
  config = _mock_config(f"folder:{root}")
  source = sources.open_source(config.data, "train")
  assert len(source) == 12 and source.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
  record = source[4]
  expected = np.asarray(Image.open(root / "train" / "dog" / "1.jpg").convert("RGB"))
  np.testing.assert_array_equal(record["image"], expected)
  assert jaxlab.data.loading.num_classes(config.data.name) == 4
  with pytest.raises(UserError, match="has no split 'validation'; valid splits: train, test"):
    sources.open_source(config.data, "validation")
  with pytest.raises(UserError, match="is not a directory"):
    sources.folder_layout(f"folder:{tmp_path / 'nowhere'}")


def test_finetuning_on_an_image_folder_end_to_end(tmp_path):
  """configs/finetune.py:folder, from a run pretrained on the same folder: 160 JPEGs of
  varying sizes, AdaRand (its prior statistics read through eval_pp), streamed by two worker
  processes."""
  root = _image_folder(tmp_path / "images")
  small = ["--config.model.width=8",
           "--config.data.train_pp=random_resized_crop(16,0.5,1.0)|flip_lr",
           "--config.data.eval_pp=resize_small(18)|central_crop(16)"]
  pretrain = run_main(f"--config=configs/erm.py:folder,path={root},steps=30", *small,
                      "--config.data.workers=0", f"--workdir={tmp_path / 'source'}")
  assert pretrain.returncode == 0, pretrain.stderr[-2000:]
  tune = run_main(f"--config=configs/finetune.py:folder,path={root},method=adarand,"
                  "train_size=160,arch=resnet18", *small, "--config.train.steps=30",
                  "--config.train.eval_every=10", "--config.data.eval_splits=validation,test",
                  "--config.data.workers=2", f"--config.init_from={tmp_path / 'source'}",
                  f"--workdir={tmp_path / 'tuned'}")
  assert tune.returncode == 0, tune.stderr[-2000:]
  results = json.loads((tmp_path / "tuned" / "results.json").read_text())
  assert results["step"] == 30
  assert results["test/accuracy"] > 0.9  # four colours: easy once trained
  assert 0 < results["selected/step"] <= 30
