"""The merging family (jaxlab.methods.merge, robustness_tta_merging.md §5): the shifted
second dataset, the BatchNorm statistics reset against a direct computation, and the §5(g)
claims at tiny scale through the CLI: the STE permutation search merges two models trained
on digits and rotated digits far above naive interpolation and weight matching; a model
merged with itself is itself; bad inputs are one line."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util

import jaxlab
from jaxlab import models
from jaxlab.data import tasks
from jaxlab.errors import UserError
from jaxlab.merge import condense, repair
from jaxlab.methods import merge

from conftest import cli


def test_shifts_rotate_exactly_permute_pixels_and_reject_bad_specs():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 8, 8, 1)).astype(np.uint8)
  # a quarter turn of a square grid about its centre lands on the grid: exact, counter-clockwise
  np.testing.assert_array_equal(tasks.shift_images(images, "rotate:90"),
                                np.rot90(images, k=1, axes=(1, 2)))
  shuffled = tasks.shift_images(images, "permute_pixels:3")
  np.testing.assert_array_equal(shuffled, tasks.shift_images(images, "permute_pixels:3"))
  assert not np.array_equal(shuffled, images)
  np.testing.assert_array_equal(np.sort(shuffled.reshape(5, -1), 1),
                                np.sort(images.reshape(5, -1), 1))
  # one permutation of positions for every image: the same pixel goes to the same place
  marked = np.zeros((1, 8, 8, 1), np.uint8)
  marked[0, 2, 5, 0] = 255
  moved = tasks.shift_images(np.concatenate([marked, marked]), "permute_pixels:3")
  assert moved.sum() == 2 * 255 and np.array_equal(moved[0], moved[1])
  for bad in ("rotate", "rotate:x", "flip:1", "permute_pixels:1.5"):
    with pytest.raises(UserError, match="data.shift"):
      tasks.shift_images(images, bad)


def test_batch_statistics_reset_is_the_mean_of_the_batch_statistics():
  model = models.build(ml_collections.ConfigDict(dict(name="mlp", hidden=(6, 5),
                                                      norm="batch_norm")), 3)
  variables = model.init(jax.random.key(0), jnp.zeros((2, 4, 4, 1)))
  variables = {**variables, "batch_stats": jax.tree.map(lambda s: s + 7.0,
                                                        variables["batch_stats"])}
  batches = jax.random.normal(jax.random.key(1), (3, 16, 4, 4, 1)) + 0.5
  reset = repair.reset_batch_stats(model, variables, batches)
  # the first BatchNorm normalises Dense_0's output: its batch mean and (biased) variance
  kernel = variables["params"]["Dense_0"]["kernel"]
  bias = variables["params"]["Dense_0"]["bias"]
  pre = np.asarray(batches.reshape(3, 16, -1) @ kernel + bias)
  stats = traverse_util.flatten_dict(reset["batch_stats"])
  np.testing.assert_allclose(stats[("BatchNorm_0", "mean")], pre.mean(1).mean(0), rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(stats[("BatchNorm_0", "var")], pre.var(1).mean(0), rtol=1e-4,
                             atol=1e-5)
  assert jax.tree.leaves(reset["params"])[0] is jax.tree.leaves(variables["params"])[0]
  plain = {"params": variables["params"]}
  assert repair.reset_batch_stats(model, plain, batches) is plain


def test_coreset_keeps_ipc_images_of_every_class():
  arrays = {"image": np.arange(60)[:, None], "label": np.repeat(np.arange(3), 20)}
  chosen = merge.coreset(arrays, 4, seed=0)
  assert np.bincount(chosen["label"]).tolist() == [4, 4, 4]
  np.testing.assert_array_equal(chosen["label"], arrays["label"][chosen["image"][:, 0]])
  with pytest.raises(UserError, match="merge.ipc=30"):
    merge.coreset(arrays, 30, seed=0)


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory):
  """Two tiny MLPs: A on digits, B on digits rotated by 90 degrees."""
  root = tmp_path_factory.mktemp("merge")
  for name, args in (("a", ["--config=configs/merge.py:tiny_endpoint"]),
                     ("b", ["--config=configs/merge.py:tiny_endpoint,shift=rotate:90,seed=1"])):
    code, _, err = cli(*args, f"--workdir={root / name}")
    assert code == 0, err
  return root


def _merge(root, name, *args):
  preset = [a for a in args if not a.startswith("--")]
  flags = [a for a in args if a.startswith("--")]
  code, _, err = cli("--config=configs/merge.py:tiny," + ",".join(preset), *flags,
                     f"--config.inputs.model_a={root / 'a'}",
                     f"--config.inputs.model_b={root / 'b'}", f"--workdir={root / name}")
  assert code == 0, err
  with open(root / name / "results.json") as f:
    return json.load(f)


def test_ste_merges_rotated_digits_far_above_naive_and_weight_matching(endpoints):
  ste = _merge(endpoints, "ste", "method=merge_ste", "b_shift=rotate:90")
  wm = _merge(endpoints, "wm", "method=merge_wm", "b_shift=rotate:90")
  for results in (ste, wm):  # the endpoints are good on their own data, poor on the other
    assert results["endpoint_a/test_a/accuracy"] > 0.8
    assert results["endpoint_b/test_b/accuracy"] > 0.8
    assert results["endpoint_a/test_b/accuracy"] < 0.4
  mid = "merged/double_test/accuracy_mid"
  assert ste[mid] > ste["naive/double_test/accuracy_mid"] + 0.2
  assert ste[mid] > wm[mid] + 0.2
  # the naive arm does not depend on the matching; the run's own midpoint is the report's
  assert ste["naive/double_test/accuracy_mid"] == pytest.approx(
      wm["naive/double_test/accuracy_mid"])
  assert ste["test_a/accuracy"] == pytest.approx(ste["merged/test_a/accuracy_mid"], abs=1e-6)
  for name in ("merge_curves.png", "merge_curves.json", "perms.npz"):
    assert os.path.exists(endpoints / "ste" / name)


def test_a_model_merged_with_itself_is_itself(endpoints):
  code, _, err = cli("--config=configs/merge.py:tiny,method=merge_wm,b_shift=",
                     f"--config.inputs.model_a={endpoints / 'a'}",
                     f"--config.inputs.model_b={endpoints / 'a'}",
                     "--config.merge.lewc_examples=64", f"--workdir={endpoints / 'self'}")
  assert code == 0, err
  with open(endpoints / "self" / "results.json") as f:
    results = json.load(f)
  for arm in ("naive", "merged"):
    # the midpoint is the model: its best temperature is the endpoints', its barriers 0
    assert results[f"{arm}/temperature_ratio"] == pytest.approx(1.0)
    assert results[f"{arm}/calibrated_loss_barrier"] == pytest.approx(0.0, abs=1e-5)
    for k in (2, 8):  # the truncated midpoint is the truncated model
      assert results[f"truncation/k{k}/{arm}/double_test/accuracy_mid"] == pytest.approx(
          results[f"truncation/k{k}/a/test_a/accuracy"], abs=1e-6)
    for layer in (1, 2, 3):  # h(1/2) = h_a, along (1/2)^l (h_a + h_a)
      assert results[f"lewc/{arm}/layer{layer}/cos"] == pytest.approx(1.0, abs=1e-5)
      assert results[f"overlap/{arm}/layer{layer}"] == pytest.approx(1.0, abs=1e-4)
  assert results["truncation/k2/a/test_a/accuracy"] < results["truncation/k8/a/test_a/accuracy"]
  assert os.path.exists(endpoints / "self" / "alignment_heatmaps.png")
  with open(endpoints / "self" / "merge_curves.json") as f:
    curves = json.load(f)
  for arm in ("naive", "merged", "ensemble"):
    np.testing.assert_allclose(curves[arm]["test_a"]["loss"], curves[arm]["test_a"]["loss"][0],
                               rtol=1e-5)
  with np.load(endpoints / "self" / "perms.npz") as perms:
    for p in perms.values():
      np.testing.assert_array_equal(p, np.arange(len(p)))


def test_three_copies_of_a_model_average_to_it_and_saved_permutations_are_checked(endpoints):
  a = str(endpoints / "a")
  identity = endpoints / "identity"  # a pairwise run's perms.npz: the identity of each group
  identity.mkdir(exist_ok=True)
  pspec = merge.permutation_spec(jaxlab.load_config("configs/merge.py:tiny", {}),
                                 tasks.Spec(input_shape=(8, 8, 1), num_classes=10))
  np.savez(identity / "perms.npz", **{g: np.arange(n) for g, n in pspec.sizes.items()})
  code, _, err = cli("--config=configs/merge.py:tiny,method=merge_many,b_shift=",
                     f"--config.inputs.model_a={a}", f"--config.inputs.model_b={a}",
                     f"--config.inputs.model_c={a}",
                     f"--config.merge.perms_b={identity}",
                     f"--workdir={endpoints / 'many'}")
  assert code == 0, err
  with open(endpoints / "many" / "results.json") as f, open(endpoints / "a" /
                                                            "results.json") as g:
    assert json.load(f)["test_a/accuracy"] == pytest.approx(json.load(g)["test/accuracy"],
                                                            abs=1e-6)
  code, _, err = cli("--config=configs/merge.py:tiny,method=merge_many,b_shift=",
                     f"--config.inputs.model_a={a}", f"--config.inputs.model_b={a}",
                     f"--config.inputs.model_c={a}", f"--config.merge.perms_c={a}",
                     f"--workdir={endpoints / 'many_bad'}")
  assert code != 0 and "merge.perms_c" in err and "perms.npz" in err, err


@pytest.mark.parametrize("args, message", [
    (["method=merge_wm", "--config.train.steps=5"], "set train.steps=0"),
    (["method=merge_ste", "--config.merge.data=distilled"], "merge.data"),
    (["method=merge_ste", "--config.merge.points=4"], "merge.points=4"),
    (["method=merge_ste", "b_shift=rotate:45"], "merge.b_shift"),
    (["method=merge_wm", "--config.data.eval_splits=test"], "data.eval_splits"),
    (["method=merge_many"], "inputs.model_c"),
    (["method=merge_wm", "--config.merge.calibrate_on=val"], "merge.calibrate_on"),
    (["method=merge_wm", "--config.merge.truncation_ranks=2,x"], "merge.truncation_ranks"),
])
def test_bad_merge_inputs_are_one_line(endpoints, args, message):
  preset = [a for a in args if not a.startswith("--")]
  flags = [a for a in args if a.startswith("--")]
  code, _, err = cli("--config=configs/merge.py:tiny," + ",".join(preset), *flags,
                     f"--config.inputs.model_a={endpoints / 'a'}",
                     f"--config.inputs.model_b={endpoints / 'b'}",
                     f"--workdir={endpoints / 'bad'}")
  assert code != 0
  assert message in err and len(err.strip().splitlines()) == 1, err
  assert not os.path.exists(endpoints / "bad" / "results.json")


def test_dc_distance_matches_a_direct_cosine_computation_and_ignores_biases():
  rng = np.random.default_rng(0)
  real = {"b": jnp.asarray(rng.normal(size=4)), "k": jnp.asarray(rng.normal(size=(3, 4)))}
  syn = {"b": jnp.asarray(rng.normal(size=4)), "k": jnp.asarray(rng.normal(size=(3, 4)))}
  kr, ks = np.asarray(real["k"]).T, np.asarray(syn["k"]).T  # rows = the 4 output units
  expected = np.sum(1 - np.sum(kr * ks, 1) / (np.linalg.norm(kr, axis=1) *
                                              np.linalg.norm(ks, axis=1)))
  assert float(condense.distance(real, syn)) == pytest.approx(expected, rel=1e-5)
  assert float(condense.distance(real, real)) == pytest.approx(0.0, abs=1e-5)
  # a dead unit (a zero gradient row) gives a finite gradient
  dead = {"b": syn["b"], "k": syn["k"].at[:, 0].set(0.0)}
  grad = jax.grad(lambda s: condense.distance(real, s))(dead)
  assert np.isfinite(np.asarray(grad["k"])).all()


def test_dc_matching_loss_decreases_and_images_stay_in_range():
  model = models.build(ml_collections.ConfigDict(dict(name="mlp", hidden=(16,))), 3)
  key = jax.random.key(0)
  real = jax.random.uniform(jax.random.key(1), (4, 3, 12, 4, 4, 1))  # [outer, C, b, ...]
  real = real + jnp.arange(3)[None, :, None, None, None, None] * 0.2  # classes differ
  synthetic = jnp.clip(jax.random.normal(jax.random.key(2), (3, 2, 4, 4, 1)), 0, 1)
  params = model.init(key, synthetic[0])["params"]
  loss = lambda s: condense.matching_loss(model, params, s, real[0])
  tx = optax.sgd(0.1, momentum=0.5)
  state, s, first = tx.init(synthetic), synthetic, float(loss(synthetic))
  for _ in range(20):  # S updates against one network: the loss it matches goes down
    updates, state = tx.update(jax.grad(loss)(s), state, s)
    s = jnp.clip(optax.apply_updates(s, updates), 0, 1)
  assert float(loss(s)) < 0.8 * first
  out, _, mean_loss = jax.jit(lambda s, o: condense.iteration(
      model, s, o, tx, real, key, inner_loop=3, lr_net=0.01, clip=True))(
          synthetic, tx.init(synthetic))
  assert np.isfinite(float(mean_loss))
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  assert not np.allclose(np.asarray(out), np.asarray(synthetic))


def test_condensed_sets_feed_the_ste_merge(endpoints):
  for name, shift in (("dc_a", ""), ("dc_b", "rotate:90")):
    code, _, err = cli(f"--config=configs/merge.py:tiny_condense,shift={shift}",
                       f"--workdir={endpoints / name}")
    assert code == 0, err
  with np.load(endpoints / "dc_a" / "condensed.npz") as saved:
    assert saved["image"].shape == (20, 8, 8, 1) and saved["label"].tolist() == sorted(
        list(range(10)) * 2)
  with open(endpoints / "dc_a" / "results.json") as f:
    results = json.load(f)
  assert 0.0 <= results["condensed/image_min"] <= results["condensed/image_max"] <= 1.0
  merged = _merge(endpoints, "ste_dc", "method=merge_ste", "data=condensed",
                  f"--config.merge.condensed_a={endpoints / 'dc_a'}",
                  f"--config.merge.condensed_b={endpoints / 'dc_b'}",
                  "--config.train.steps=3")
  # the step read the 40 condensed images (a batch of 500 drawn from them with replacement)
  assert np.isfinite(merged["train/best_loss"]) and 0 < merged["train/best_loss"] < 10
