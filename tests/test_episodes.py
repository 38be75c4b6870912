"""Episodic sampling on device, sinusoid tasks, and meta-learning runs through the real loop."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlab
from jaxlab.data import episodes
from jaxlab.train.loop import summarize


def _coded_index(classes=7, per_class=6, short_class=3, short_count=4):
  """Images whose pixels encode (class, instance); one class has fewer real instances."""
  images = np.zeros((classes, per_class, 4, 4, 1), np.uint8)
  for c in range(classes):
    for i in range(per_class):
      images[c, i, 0, 0, 0], images[c, i, 0, 1, 0] = c, i
  counts = np.full(classes, per_class, np.int32)
  counts[short_class] = short_count
  images[short_class, short_count:] = 255  # padding that must never be drawn
  return images, counts


def test_episode_structure():
  images, counts = _coded_index()
  sample = jax.jit(lambda k: episodes.sample_episode(k, jnp.asarray(images), jnp.asarray(counts),
                                                     ways=5, shots=2, queries=2))
  seen_classes = set()
  for seed in range(50):
    ep = jax.device_get(sample(jax.random.key(seed)))
    sx = np.round(ep["support"]["x"] * 255).astype(int)
    qx = np.round(ep["query"]["x"] * 255).astype(int)
    assert sx.max() < 255 and qx.max() < 255  # no padding instance ever
    classes = []
    for label in range(5):
      s_cls = set(sx[ep["support"]["y"] == label][:, 0, 0, 0])
      q_cls = set(qx[ep["query"]["y"] == label][:, 0, 0, 0])
      assert len(s_cls) == 1 and s_cls == q_cls  # one class per label, same in both sets
      instances = list(sx[ep["support"]["y"] == label][:, 0, 1, 0]) + list(
          qx[ep["query"]["y"] == label][:, 0, 1, 0])
      assert len(set(instances)) == 4  # support and query instances all distinct
      classes.append(s_cls.pop())
    assert len(set(classes)) == 5
    seen_classes.update(classes)
  assert seen_classes == set(range(7))


def test_rotations_are_new_classes():
  images, counts = _coded_index(classes=2, per_class=3, short_class=0, short_count=3)
  images[:, :, 1, 2, 0] = 200  # an asymmetric mark
  rotated = episodes.with_rotations({"images": images, "counts": counts})
  assert rotated["images"].shape[0] == 8
  np.testing.assert_array_equal(rotated["images"][2 + 1], np.rot90(images[1], 1, axes=(1, 2)))
  np.testing.assert_array_equal(rotated["images"][4], np.rot90(images[0], 2, axes=(1, 2)))


def test_evaluation_episodes_are_fixed_and_masked():
  config = jaxlab.load_config("configs/maml.py:tiny", {
      "episodes.eval_episodes": 7, "episodes.eval_meta_batch": 4})
  task = episodes.EpisodicTask(config)
  data = jax.device_put(task.eval_arrays("test"))
  assert task.num_eval_batches(data) == 2
  first = jax.device_get(task.eval_batch(data, jnp.int32(1)))
  again = jax.device_get(task.eval_batch(data, jnp.int32(1)))
  np.testing.assert_array_equal(first["support"]["x"], again["support"]["x"])
  np.testing.assert_array_equal(first["mask"], [1, 1, 1, 0])  # episodes 4..7, only 7 exist


def test_sinusoid_tasks_are_sines_within_the_published_ranges():
  config = jaxlab.load_config("configs/maml.py:sinusoid")
  task = episodes.SinusoidTask(config)
  batch = jax.device_get(task.train_batch({}, jax.random.key(0), jnp.int32(3)))
  assert batch["support"]["x"].shape == (25, 10, 1) and batch["query"]["x"].shape == (25, 10, 1)
  for t in range(25):
    x = np.concatenate([batch["support"]["x"][t], batch["query"]["x"][t]])[:, 0]
    y = np.concatenate([batch["support"]["y"][t], batch["query"]["y"][t]])[:, 0]
    assert np.all(np.abs(x) <= 5)
    # y = A sin(x - phi) = a sin x + b cos x: fit on the support, predict the query exactly
    basis = np.stack([np.sin(x), np.cos(x)], 1)
    coef = np.linalg.lstsq(basis[:10], y[:10], rcond=None)[0]
    np.testing.assert_allclose(basis[10:] @ coef, y[10:], atol=1e-4)
    amplitude, phase = np.hypot(*coef), np.arctan2(-coef[1], coef[0])
    assert 0.1 - 1e-4 <= amplitude <= 5.0 + 1e-4 and -1e-4 <= phase <= np.pi + 1e-4


def test_summarize_mean_and_ci95():
  values = np.array([0.2, 0.6, 1.0, 0.4, 0.8])
  out = summarize([{"accuracy": values[:3]}, {"accuracy": np.r_[values[3:], 9.0]}],
                  [np.ones(3), np.array([1.0, 1.0, 0.0])])
  assert out["accuracy"] == pytest.approx(values.mean())
  assert out["accuracy_ci95"] == pytest.approx(1.96 * values.std() / np.sqrt(5))


def test_maml_runs_end_to_end(tmp_path):
  config = jaxlab.load_config("configs/maml.py:tiny", {"train.steps": 4})
  results = jaxlab.train_and_evaluate(config, str(tmp_path))
  assert results["step"] == 4
  for split in ("validation", "test"):
    assert 0.0 <= results[f"{split}/accuracy"] <= 1.0 and results[f"{split}/accuracy_ci95"] > 0
  saved = json.loads((tmp_path / "results.json").read_text())
  provenance = saved.pop("provenance")
  assert saved == pytest.approx(results)
  # what produced the run, in results.json and config.json alike
  assert provenance == json.loads((tmp_path / "config.json").read_text())["provenance"]
  assert provenance["packages"]["jax"] == jax.__version__ and provenance["backend"] == "cpu"
  assert provenance["process_count"] == 1 and provenance["jaxlab"]["version"] == "0.1.0"
  if (Path(__file__).parents[1] / ".git").exists():  # a checkout: its commit, 40 hex digits
    assert len(provenance["jaxlab"]["commit"]) == 40 and provenance["jaxlab"]["dirty"] in (
        True, False)


@pytest.mark.parametrize("method,first_order,adapt", [
    ("maml", False, "all"), ("fomaml", True, "all"), ("anil", False, "head"),
    ("boil", False, "body")])
def test_variants_are_wired(method, first_order, adapt):
  module = jaxlab.get_method(method)
  assert module.train_step.keywords == {"first_order": first_order, "adapt": adapt}
  assert module.eval_step.keywords == {"adapt": adapt}


def test_trainable_masks_of_the_variants():
  from jaxlab import meta, models
  from jaxlab.meta import episodic
  config = jaxlab.load_config("configs/maml.py:tiny")
  params = jax.eval_shape(models.build(config.model, 5).init, jax.random.key(0),
                          jnp.zeros((2, 28, 28, 1)))["params"]
  paths = meta.leaf_paths(params)
  def adapting(adapt, frozen=""):
    mask = jax.tree.leaves(episodic.trainable_mask(params, adapt, frozen))
    return {p for p, m in zip(paths, mask) if m}
  head = {p for p in paths if p.startswith("head/")}
  assert head == {"head/kernel", "head/bias"}
  assert adapting("all") == set(paths)
  assert adapting("head") == head
  assert adapting("body") == set(paths) - head
  assert adapting("all", "BatchStatNorm") == {p for p in paths if "BatchStatNorm" not in p}


def test_sinusoid_run_reports_mse_after_0_1_and_10_steps(tmp_path):
  config = jaxlab.load_config("configs/maml.py:sinusoid", {
      "train.steps": 300, "train.log_every": 100, "episodes.eval_episodes": 50})
  results = jaxlab.train_and_evaluate(config, str(tmp_path))
  assert set(k for k in results if not k.endswith("_ci95") and not k.startswith("train/")) == {
      "step", "test/mse_step0", "test/mse_step1", "test/mse_step10"}
  assert "train/loss" in results  # the final step's own training metrics
  # adaptation helps even this early: MSE falls with inner steps
  assert results["test/mse_step10"] < results["test/mse_step1"] < results["test/mse_step0"]


def test_maml_tf_batch_norm_option_has_an_offset_no_scale_eps_1e3_and_no_inner_update():
  """configs/maml.py omniglot/mini_imagenet `bn=maml_tf`: tf.contrib batch_norm (centre only,
  eps 1e-3, batch statistics) whose offsets the inner loop leaves alone."""
  from jaxlab import models
  from jaxlab.meta import episodic
  from jaxlab.models import supermask
  config = jaxlab.load_config("configs/maml.py:mini_imagenet_5w1s,bn=maml_tf")
  assert jaxlab.load_config("configs/maml.py:mini_imagenet_5w1s").model.norm == "batch_stats"
  model = models.build(config.model, 5)
  x = jax.random.uniform(jax.random.key(0), (6, 84, 84, 3))
  params = model.init(jax.random.key(1), x, train=True)["params"]
  norms = {p: v for p, v in supermask.flatten(params).items() if "BatchStatNorm" in p}
  assert len(norms) == 4 and all(p.endswith("/bias") for p in norms)  # no scale
  mask = supermask.flatten(episodic.trainable_mask(params, "all", config.meta.inner_frozen))
  assert not any(mask[p] for p in norms) and all(v for p, v in mask.items() if p not in norms)
  layer = models.BatchStatNorm(epsilon=1e-3, use_scale=False)
  h = np.asarray(jax.random.normal(jax.random.key(2), (6, 5, 5, 4))) * 0.05
  out = layer.apply({"params": {"bias": jnp.full((4,), 0.5)}}, jnp.asarray(h))
  mean, var = h.mean((0, 1, 2)), h.var((0, 1, 2))
  np.testing.assert_allclose(out, (h - mean) / np.sqrt(var + 1e-3) + 0.5, rtol=1e-4, atol=1e-5)
  with pytest.raises(jaxlab.UserError, match="unknown bn .* 'tf'; valid choices: maml_tf, "
                                             "torchmeta"):
    jaxlab.load_config("configs/maml.py:omniglot_5w1s,bn=tf")
