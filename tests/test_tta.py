"""Test-time adaptation (docs/specs/robustness_tta_merging.md §4): corruptions, streams,
BN-adapt, Tent and CAFe against independent computations, and a run end to end."""

import colorsys
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from PIL import Image

import jaxlab
from jaxlab import models
from jaxlab.data import adaptation, corruptions
from jaxlab.data.tasks import Spec
from jaxlab.methods import tta

from conftest import run_main

SPEC = Spec(input_shape=(8, 8, 1), num_classes=10)


def _images(n=6, size=32, channels=3, seed=0):
  """Smooth natural-looking uint8 test images: sklearn's digits blown up, coloured."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits().images[:n] / 16.0
  big = np.stack([np.asarray(Image.fromarray((255 * d).astype(np.uint8)).resize(
      (size, size), Image.BILINEAR)) for d in digits]) / 255.0
  tint = np.random.default_rng(seed).uniform(0.3, 1.0, (n, 1, 1, channels))
  return (255 * (0.15 + 0.7 * big[..., None] * tint)).astype(np.uint8)


@pytest.mark.parametrize("corruption_set", ["digits", "cifar"])
def test_every_corruption_keeps_shape_range_dtype_is_deterministic_and_grows_with_severity(
    corruption_set):
  size, channels = (8, 1) if corruption_set == "digits" else (32, 3)
  images = jnp.asarray(_images(size=size, channels=channels))
  clean = images.astype(jnp.float32) / 255.0
  keys = jax.random.split(jax.random.key(3), len(images))
  for name in corruptions.names(corruption_set):
    @jax.jit
    def all_severities(keys):
      return jnp.stack([jax.vmap(lambda im, k: corruptions.corrupt(
          im, k, corruption_set, name, s))(images, keys) for s in range(1, 6)])
    out = all_severities(keys)
    assert out.shape == (5,) + images.shape and out.dtype == jnp.float32, name
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0, name
    np.testing.assert_allclose(out * 255, np.round(np.asarray(out * 255)), atol=1e-3)  # uint8 levels
    np.testing.assert_array_equal(out, all_severities(keys))  # the same keys: the same images
    distance = np.asarray(jnp.abs(out - clean[None]).mean((1, 2, 3, 4)))
    if name == "glass_blur":  # not monotone in the pixel change (a wider blur hides the
      # swaps); at one sigma, two rounds of swaps move pixels further than one
      assert distance[3] > distance[1] and distance[4] > distance[2], (name, distance)
    else:  # (defocus at severities 2 and 3 differs by less than the uint8 truncation)
      assert np.all(np.diff(distance) > -2e-4) and distance[4] > 1.5 * distance[0], (
          name, distance)


def test_random_corruptions_differ_per_key():
  images = jnp.asarray(_images())
  for name in ("gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "fog"):
    fn = jax.jit(lambda key: corruptions.corrupt(images[0], key, "cifar", name, 3))
    assert float(jnp.abs(fn(jax.random.key(0)) - fn(jax.random.key(1))).max()) > 0, name


def test_pixelate_equals_pil_box_resizing_within_one_grey_level():
  images = _images(seed=1)
  for severity, c in enumerate((.95, .9, .85, .75, .65), 1):
    reference = np.stack([np.asarray(Image.fromarray(im).resize(
        (int(32 * c),) * 2, Image.BOX).resize((32, 32), Image.BOX)) for im in images])
    ours = jax.vmap(lambda im: corruptions.corrupt(im, jax.random.key(0), "cifar", "pixelate",
                                                   severity))(jnp.asarray(images))
    assert np.abs(np.asarray(ours) * 255 - reference).max() <= 1.0 + 1e-3


def test_brightness_equals_an_hsv_round_trip():
  image = _images(n=1, size=6)[0]
  x = image / 255.0
  for severity, c in enumerate((.05, .1, .15, .2, .3), 1):
    expected = np.zeros_like(x)
    for i in range(6):
      for j in range(6):
        h, s, v = colorsys.rgb_to_hsv(*x[i, j])
        expected[i, j] = colorsys.hsv_to_rgb(h, s, min(1.0, v + c))
    ours = corruptions.corrupt(jnp.asarray(image), jax.random.key(0), "cifar", "brightness",
                               severity)
    np.testing.assert_allclose(ours, np.floor(expected * 255 + 1e-4) / 255, atol=1 / 255 + 1e-6)


def test_zoom_blur_equals_scipy_clipped_zooms():
  image = _images(n=1)[0] / 255.0

  def clipped_zoom(x, factor):
    h = x.shape[0]
    crop = int(np.ceil(h / factor))
    top = (h - crop) // 2
    z = scipy.ndimage.zoom(x[top:top + crop, top:top + crop], (factor, factor, 1), order=1)
    trim = (z.shape[0] - h) // 2
    return z[trim:trim + h, trim:trim + h]

  factors = np.arange(1, 1.16, 0.01)
  expected = (image + sum(clipped_zoom(image, f) for f in factors)) / (len(factors) + 1)
  ours = corruptions.corrupt(jnp.asarray(image, jnp.float32), jax.random.key(0), "cifar",
                             "zoom_blur", 3)
  np.testing.assert_allclose(ours, np.floor(np.clip(expected, 0, 1) * 255) / 255,
                             atol=1 / 255 + 1e-6)


@pytest.mark.parametrize("protocol", adaptation.PROTOCOLS)
@pytest.mark.parametrize("class_order", adaptation.CLASS_ORDERS)
@pytest.mark.parametrize("batch", [1, 7])
def test_every_example_of_every_pair_is_counted_exactly_once(protocol, class_order, batch):
  labels = np.repeat(np.arange(4), [5, 3, 6, 4])
  plan = adaptation.build_plan(labels, num_pairs=3, batch_size=batch, protocol=protocol,
                               class_order=class_order, seed=1)
  counted = plan["counted"].astype(bool)
  seen = list(zip(plan["rows"][counted], plan["pairs"][counted]))
  assert sorted(seen) == sorted((r, p) for p in range(3) for r in range(18))
  spans = 1 if protocol == "mixed" else 3
  assert plan["reset"].sum() == (3 if protocol == "single" else 1) and plan["reset"][0]
  assert len(np.unique(plan["span"])) == spans
  if protocol != "mixed":  # one pair per batch
    assert np.all(plan["pairs"] == plan["pairs"][:, :1])
  if class_order == "runs":  # in each span the classes arrive one after the other
    for s in range(spans):
      rows = plan["rows"][plan["span"] == s][plan["counted"][plan["span"] == s] > 0]
      runs = labels[rows][np.r_[True, np.diff(labels[rows]) != 0]]
      assert len(runs) == 4 * (3 if protocol == "mixed" else 1) or len(np.unique(runs)) == len(
          runs), runs
  again = adaptation.build_plan(labels, 3, batch, protocol, class_order, seed=1)
  assert adaptation.plan_digest(again) == adaptation.plan_digest(plan)
  other = adaptation.build_plan(labels, 3, batch, protocol, class_order, seed=2)
  assert adaptation.plan_digest(other) != adaptation.plan_digest(plan)


def _setup(method, **overrides):
  config = jaxlab.load_config("configs/tta.py:tiny,method=" + method, overrides)
  m = jaxlab.get_method(method)
  state = m.init(config, jax.random.key(0), SPEC)
  # a source model whose BN statistics are not the identity, as a trained one
  ms = jax.tree.map(lambda a: a + 0.3, state.model_state)
  state = state.replace(model_state=ms, source_model_state=ms)
  return config, m, state


def _batch(seed, n=32, reset=False):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.uniform(size=(n, 8, 8, 1)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, 10, n)), "pair": jnp.zeros(n, jnp.int32),
          "counted": jnp.ones(n), "reset": jnp.asarray(reset)}


def _step(config, m, state, batch):
  return jax.jit(lambda s, b: m.train_step(s, b, jax.random.key(0), config=config,
                                           spec=SPEC))(state, batch)


def test_tent_updates_only_bn_affine_and_scores_the_pre_update_predictions():
  config, m, state = _setup("tent")
  batch = _batch(0)
  new, metrics = _step(config, m, state, batch)
  flat_old = jax.tree_util.tree_flatten_with_path(state.params)[0]
  flat_new = dict(jax.tree_util.tree_flatten_with_path(new.params)[0])
  changed = set()
  for path, old in flat_old:
    name = jax.tree_util.keystr(path)
    if bool(jnp.any(flat_new[path] != old)):
      changed.add(name)
    else:
      np.testing.assert_array_equal(flat_new[path], old)
  assert changed == {f"['BatchNorm_{i}']['{p}']" for i in range(2) for p in ("scale", "bias")}
  jax.tree.map(np.testing.assert_array_equal, new.model_state, state.model_state)  # stats off
  model = models.build(config.model, 10)
  before, _, _ = tta.forward(model, state, state.params, batch["image"], "entropy")
  after, _, _ = tta.forward(model, new, new.params, batch["image"], "entropy")
  error = lambda z: float(1 - jnp.mean(jnp.argmax(z, -1) == batch["label"]))
  assert float(metrics["error"]) == pytest.approx(error(before))
  assert float(jnp.abs(after - before).max()) > 0  # (the parameters did move)
  # the loss is Tent's mean softmax entropy of that forward
  p = jax.nn.softmax(before)
  assert float(metrics["loss"]) == pytest.approx(float(-(p * jnp.log(p)).sum(-1).mean()),
                                                 rel=1e-5)


def test_episodic_tent_equals_a_fresh_tent_on_each_batch():
  config, m, state = _setup("tent", **{"tta.episodic": True})
  a, b = _batch(1), _batch(2)
  after_a, _ = _step(config, m, state, a)
  episodic, metrics_b = _step(config, m, after_a, b)
  fresh, fresh_metrics = _step(config, m, state, b)
  jax.tree.map(np.testing.assert_array_equal, episodic.params, fresh.params)
  assert float(metrics_b["error"]) == float(fresh_metrics["error"])
  config_online, m_online, _ = _setup("tent")
  online, _ = _step(config_online, m_online, after_a, b)
  assert not all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.all(x == y)),
                                              online.params, fresh.params)))


def _numpy_cnn(variables, x, stats=None):
  """The tiny ConvNet (8, 16) in float64 numpy: conv 3x3 pad 1 -> BN -> ReLU -> 2x2 max-pool,
  twice, spatial mean, head; BN with `stats` per layer or, when None, the batch's own."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  out_stats = []
  for i in range(2):
    k = p[f"Conv_{i}"]["kernel"]
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = x.shape[1:3]
    y = sum(np.einsum("nhwc,cd->nhwd", pad[:, a:a + h, b:b + w], k[a, b])
            for a in range(3) for b in range(3)) + p[f"Conv_{i}"]["bias"]
    mean, var = (y.mean((0, 1, 2)), y.var((0, 1, 2))) if stats is None else stats[i]
    out_stats.append((mean, var))
    bn = p[f"BatchNorm_{i}"]
    y = np.maximum((y - mean) / np.sqrt(var + 1e-5) * bn["scale"] + bn["bias"], 0)
    n, h, w, c = y.shape
    x = y.reshape(n, h // 2, 2, w // 2, 2, c).max((2, 4))
  return x.mean((1, 2)) @ p["head"]["kernel"] + p["head"]["bias"], out_stats


def test_bn_adapt_on_the_whole_test_set_equals_the_recomputed_statistics():
  config, m, state = _setup("bn_adapt")
  x = np.random.default_rng(4).uniform(size=(200, 8, 8, 1))
  model = models.build(config.model, 10)
  logits, _, updated = tta.forward(model, state, state.params, jnp.asarray(x, jnp.float32),
                                   "norm")
  expected, stats = _numpy_cnn({"params": state.params}, x)
  np.testing.assert_allclose(logits, expected, rtol=2e-4, atol=2e-4)
  # the running means move by flax's momentum 0.9 (PyTorch's 0.1) towards the batch's
  old = state.model_state["batch_stats"]["BatchNorm_0"]["mean"]
  np.testing.assert_allclose(updated["batch_stats"]["BatchNorm_0"]["mean"],
                             0.9 * old + 0.1 * stats[0][0], rtol=1e-4, atol=1e-5)
  # and `source` predicts with the running statistics
  source_logits, _, _ = tta.forward(model, state, state.params, jnp.asarray(x, jnp.float32),
                                    "none")
  running = [(np.asarray(state.model_state["batch_stats"][f"BatchNorm_{i}"]["mean"], np.float64),
              np.asarray(state.model_state["batch_stats"][f"BatchNorm_{i}"]["var"], np.float64))
             for i in range(2)]
  np.testing.assert_allclose(source_logits, _numpy_cnn({"params": state.params}, x, running)[0],
                             rtol=2e-4, atol=2e-4)


def _spd(rng, d):
  a = rng.normal(size=(d, d))
  return a @ a.T / d + 0.5 * np.eye(d)


def test_cafe_divergences_equal_the_float64_closed_forms():
  rng = np.random.default_rng(5)
  d = 6
  s, t = _spd(rng, d), _spd(rng, d)
  mu_s, mu_t = rng.normal(size=d), rng.normal(size=d)
  inv = np.linalg.inv
  delta = mu_t - mu_s
  kl = lambda m0, c0, m1, c1: 0.5 * (np.trace(inv(c1) @ c0) + (m1 - m0) @ inv(c1) @ (m1 - m0)
                                     - d + np.linalg.slogdet(c1)[1] - np.linalg.slogdet(c0)[1])
  expected = {"kl_s_t": kl(mu_s, s, mu_t, t), "kl_t_s": kl(mu_t, t, mu_s, s)}
  expected["sym_kl"] = 0.5 * (expected["kl_s_t"] + expected["kl_t_s"])
  assert expected["sym_kl"] == pytest.approx(0.25 * (
      np.trace(inv(t) @ s) + np.trace(inv(s) @ t) + delta @ (inv(s) + inv(t)) @ delta - 2 * d))
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  for kind, value in expected.items():
    ours = tta.gaussian_divergence(f32(mu_s), f32(s), f32(mu_t), f32(t), kind)
    assert float(ours) == pytest.approx(value, rel=1e-4), kind
  # padded (identity) dimensions add nothing
  pad = lambda c: np.block([[c, np.zeros((d, 2))], [np.zeros((2, d)), np.eye(2)]])
  padded = tta.gaussian_divergence(f32(np.r_[mu_s, 0, 0]), f32(pad(s)), f32(np.r_[mu_t, 0, 0]),
                                   f32(pad(t)), "sym_kl")
  assert float(padded) == pytest.approx(expected["sym_kl"], rel=1e-4)


def test_cafe_alignment_gradient_matches_finite_differences():
  config, _, state = _setup("cafe")
  rng = np.random.default_rng(6)
  d = state.feature_mean.shape[0]
  cov = _spd(rng, d)
  members, mask = tta.spectral_groups(cov, 2, 8, state.members.shape[0])
  state = state.replace(feature_mean=jnp.asarray(rng.normal(size=d), jnp.float32),
                        feature_cov=jnp.asarray(cov, jnp.float32), members=jnp.asarray(members),
                        member_mask=jnp.asarray(mask))
  with jax.enable_x64(True):
    state64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if a.dtype == jnp.float32
                           else a, state)
    features = jnp.asarray(rng.normal(size=(12, d)) + 1.0)
    loss = jax.jit(lambda f: tta.grouped_divergence(f, state64, config.tta))
    grad = jax.jit(jax.grad(loss))(features)
    direction = jnp.asarray(rng.normal(size=features.shape))
    eps = 1e-5
    numeric = (loss(features + eps * direction) - loss(features - eps * direction)) / (2 * eps)
    assert float(jnp.sum(grad * direction)) == pytest.approx(float(numeric), rel=1e-5)
    assert float(jnp.abs(grad).max()) > 0


@pytest.mark.parametrize("max_size", [1, 5, 16])
def test_spectral_groups_cover_each_feature_once_within_the_size_bound(max_size):
  rng = np.random.default_rng(7)
  d, blocks = 24, 3
  mixing = np.kron(np.eye(blocks), np.ones((d // blocks, 1)))  # 3 correlated blocks of 8
  features = rng.normal(size=(500, blocks)) @ mixing.T + 0.3 * rng.normal(size=(500, d))
  cov = np.cov(features.T)
  slots = min(d, blocks + -(-d // max_size))
  members, mask = tta.spectral_groups(cov, blocks, max_size, slots)
  chosen = members[mask > 0]
  assert sorted(chosen.tolist()) == list(range(d))
  assert mask.sum(1).max() <= max_size
  if max_size >= 8:  # the correlated blocks are recovered
    groups = {frozenset(row[m > 0].tolist()) for row, m in zip(members, mask) if m.sum()}
    assert groups == {frozenset(range(b * 8, b * 8 + 8)) for b in range(blocks)}


def test_ungrouped_cafe_with_a_batch_smaller_than_d_needs_the_ridge():
  config, _, state = _setup("cafe", **{"tta.cafe_groups": 1, "tta.cafe_max_group_size": 16})
  rng = np.random.default_rng(8)
  d = state.feature_mean.shape[0]
  members, mask = tta.spectral_groups(_spd(rng, d), 1, d, state.members.shape[0])
  state = state.replace(feature_cov=jnp.asarray(_spd(rng, d), jnp.float32),
                        members=jnp.asarray(members), member_mask=jnp.asarray(mask))
  features = jnp.asarray(rng.normal(size=(4, d)), jnp.float32)  # batch 4 < d = 16
  with_ridge = float(tta.grouped_divergence(features, state, config.tta))
  config.tta.cafe_eps = 1e-9
  tiny_ridge = float(tta.grouped_divergence(features, state, config.tta))
  config.tta.cafe_shrinkage = 0.5
  shrunk = float(tta.grouped_divergence(features, state, config.tta))
  assert np.isfinite(with_ridge) and np.isfinite(shrunk)
  assert not np.isfinite(tiny_ridge) or tiny_ridge > 100 * with_ridge


def test_bad_tta_settings_are_one_line_errors(tmp_path, capsys):
  """Through the command line's own entry point, in this process (no interpreter start-up per
  case): one line, exit code 2, nothing written."""
  from jaxlab import main  # pylint: disable=g-import-not-at-top
  source = ["--config.init_from=" + str(tmp_path)]
  cases = [
      (["--config=configs/tta.py:tiny", "--config.tta.corruptions=snow"] + source,
       "not reproduced on device"),
      (["--config=configs/tta.py:tiny", "--config.tta.severities=7"] + source, "1..5"),
      (["--config=configs/tta.py:tiny", "--config.tta.protocol=random"] + source,
       "valid choices: continual, mixed, single"),
      (["--config=configs/tta.py:tiny"], "set --config.init_from"),
      (["--config=configs/tta.py:tiny", "--config.model.norm=none"] + source,
       "has none: use model.norm=batch_norm"),
      (["--config=configs/tta.py:tiny", "--config.train.steps=5"] + source,
       "train.steps=-1"),
      (["--config=configs/tta.py:tiny", "--config.tta.cafe_divergence=js"] + source,
       "valid choices: kl_s_t, kl_t_s, sym_kl"),
  ]
  for args, message in cases:
    capsys.readouterr()
    code = main.cli(["jaxlab", *args, "--workdir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], (args, err)
    assert not (tmp_path / "run").exists()


def test_a_tta_run_writes_the_table_and_resumes_to_the_same_numbers(tmp_path):
  source = tmp_path / "source"
  jaxlab.train_and_evaluate(jaxlab.load_config("configs/tta.py:tiny_source"), str(source))
  run = tmp_path / "cafe"
  args = ["--config=configs/tta.py:tiny,method=cafe,protocol=continual",
          f"--config.init_from={source}", "--config.train.checkpoint_every=10",
          "--workdir", str(run)]
  result = run_main(*args)
  assert result.returncode == 0, result.stderr[-2000:]
  results = json.loads((run / "results.json").read_text())
  pairs = ["gaussian_noise", "contrast"]
  table = [results[f"online/{p}/5/error"] for p in pairs]
  assert results["online/error"] == pytest.approx(np.mean(table))
  assert results["stream/steps"] == 24  # 2 pairs x ceil(359 / 32)
  lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
  online = [l["error"] for l in lines if l.get("split") == "train" and "error" in l]
  assert len(online) == 24
  for name in ("tta_errors.png", "stream.npz", "stream.json", "source_stats.npz"):
    assert (run / name).exists(), name
  stats = np.load(run / "source_stats.npz")
  assert stats["cov"].shape == (16, 16) and stats["member_mask"].sum() == 16
  # a run stopped after step 10 resumes from its checkpoint to the same numbers
  (run / "results.json").unlink()
  for step in ("20", "24"):
    shutil.rmtree(run / "checkpoints" / step)
  resumed = run_main(*args)
  assert resumed.returncode == 0 and "resuming from the checkpoint at step 10" in resumed.stdout
  again = json.loads((run / "results.json").read_text())
  for key, value in results.items():
    if key != "provenance":
      assert again[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key


def test_the_prepared_cifar10_corrupted_sets_stream_in_place_of_on_device_corruption(tmp_path):
  """configs/tta.py:cifar10_corrupted under tfds.testing.mock_data: the stream reads
  cifar10_corrupted/<name>_<severity> (random mock images and labels), each example once."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  small = {"model": jaxlab.config.ConfigDict(dict(name="cnn", channels=(4,), norm="batch_norm")),
           "train.log_every": 5}
  with tfds.testing.mock_data(num_examples=24):
    source = jaxlab.load_config("configs/erm.py:cifar10", {
        **small, "train.steps": 5, "train.batch_size": 8, "train.eval_batch_size": 8,
        "train.eval_every": 0, "train.checkpoint_every": 5})
    jaxlab.train_and_evaluate(source, str(tmp_path / "source"))
    config = jaxlab.load_config("configs/tta.py:cifar10_corrupted,batch=8", {
        **small, "tta.corruptions": "frost,jpeg_compression", "tta.severities": "5,1",
        "init_from": str(tmp_path / "source")})
    task = jaxlab.get_method("tent").make_task(config)
    assert task.pairs == [("frost", 5), ("jpeg_compression", 5), ("frost", 1),
                          ("jpeg_compression", 1)]
    assert task.fixed_steps == 4 * 3  # 24 mocked test images per set, batches of 8
    results = jaxlab.train_and_evaluate(config, str(tmp_path / "tent"))
  assert 0 <= results["online/frost/5/error"] <= 1 and results["step"] == 12
  with pytest.raises(jaxlab.UserError, match="valid: brightness, contrast"):
    adaptation.parse_pairs(jaxlab.load_config("configs/tta.py:cifar10_corrupted", {
        "tta.corruptions": "glass_blur"}).tta)
