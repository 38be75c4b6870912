"""Fine-tuning regularisers (docs/specs/generative_and_finetuning.md §1(g) unit tests),
the feature statistics, the target split and the group protocol's model selection."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlab
from jaxlab import models
from jaxlab.data import tasks
from jaxlab.methods import finetune as core
from jaxlab.train import checkpoint

from conftest import run_main

FINETUNE = "configs/finetune.py:digits,n=10,method="


def _state(method, overrides=None):
  config = jaxlab.load_config(FINETUNE + method, {"model.hidden": (16, 8), **(overrides or {})})
  spec = tasks.Spec(input_shape=(8, 8, 1), num_classes=5)
  return config, spec, jaxlab.get_method(method).init(config, jax.random.key(0), spec)


def _batch(seed=0, n=24):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.uniform(size=(n, 8, 8, 1)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, 4, n))}  # class 4 never appears


def test_prior_loss_gradient_is_orthogonal_to_each_mean_and_zero_at_the_optimum():
  rng = np.random.default_rng(0)
  mu, running = jnp.asarray(rng.normal(size=(5, 7))), jnp.asarray(rng.normal(size=(5, 7)))
  grad = jax.grad(core.prior_loss)(mu, running)
  np.testing.assert_allclose(jnp.sum(grad * mu, -1), 0.0, atol=1e-6)  # scale-invariant per mu_k
  intra_only = jax.grad(lambda m: core.prior_loss(m[:1], running[:1]))(mu)
  np.testing.assert_allclose(jnp.sum(intra_only[0] * mu[0]), 0.0, atol=1e-6)
  assert float(jnp.abs(grad).max()) > 1e-3
  # means along the running means and mutually orthogonal: loss 0, gradient 0
  optimum = jnp.eye(5, 7) * jnp.arange(1.0, 6.0)[:, None]
  assert float(core.prior_loss(optimum, 3.0 * optimum)) == pytest.approx(0.0, abs=1e-12)
  np.testing.assert_allclose(jax.grad(core.prior_loss)(optimum, 3.0 * optimum), 0.0, atol=1e-7)


def test_running_means_move_only_for_the_classes_in_the_batch():
  rng = np.random.default_rng(1)
  running = rng.normal(size=(5, 3)).astype(np.float32)
  features = rng.normal(size=(9, 3)).astype(np.float32)
  labels = np.array([0, 0, 2, 2, 2, 3, 0, 3, 2])
  out = np.asarray(core.update_running_means(jnp.asarray(running), jnp.asarray(features),
                                             jnp.asarray(labels), 0.5))
  for k in range(5):
    members = features[labels == k]
    expected = running[k] if not len(members) else 0.5 * running[k] + 0.5 * members.mean(0)
    np.testing.assert_allclose(out[k], expected, rtol=1e-6, err_msg=str(k))
  np.testing.assert_array_equal(out[[1, 4]], running[[1, 4]])


def test_reference_vectors_carry_no_gradient_to_the_prior():
  config, spec, state = _state("adarand")
  state = state.replace(prior_mean=jnp.ones_like(state.prior_mean),
                        prior_std=0.5 * jnp.ones_like(state.prior_std))
  batch = _batch()
  model = models.build(config.model, spec.num_classes)

  def classifier_loss(prior_mean):
    z = core.reference_vectors(state.replace(prior_mean=prior_mean), batch["label"],
                               jax.random.key(2), config, "adarand")
    features = model.apply({"params": state.params}, batch["image"], return_features=True)
    return jnp.mean((features - z) ** 2)

  assert float(classifier_loss(state.prior_mean)) > 0
  np.testing.assert_array_equal(jax.grad(classifier_loss)(state.prior_mean), 0.0)


def test_adarand_at_weight_zero_is_plain_fine_tuning_bit_for_bit():
  results = {}
  for method, overrides in (("finetune", {}), ("adarand", {"finetune.weight": 0.0})):
    config, spec, state = _state(method, overrides)
    step = jax.jit(lambda s, b, r: jaxlab.get_method(method).train_step(
        s, b, r, config=config, spec=spec))
    for i in range(5):
      state, metrics = step(state, _batch(i), jax.random.key(i))
    results[method] = state
    if method == "adarand":
      assert float(metrics["gap"]) > 0  # the penalty is computed, only weighted by 0
  for a, b in zip(jax.tree.leaves(results["finetune"].params),
                  jax.tree.leaves(results["adarand"].params)):
    np.testing.assert_array_equal(a, b)


def test_randreg_stop_epoch_quirk_drops_the_penalty_in_the_last_steps_only():
  """spec §1(h)4: with randreg_unweighted_last_steps = k, steps T - k .. T - 1 take plain
  fine-tuning's update; the steps before keep the penalty."""
  common = {"train.steps": 4, "finetune.prior": "uniform"}
  runs = {}
  for name, method, overrides in (
      ("quirk", "randreg", {"finetune.randreg_unweighted_last_steps": 2}),
      ("randreg", "randreg", {}), ("finetune", "finetune", {})):
    config, spec, state = _state(method, {**common, **overrides})
    step = jax.jit(lambda s, b, r, c=config, m=method: jaxlab.get_method(m).train_step(
        s, b, r, config=c, spec=spec)[0])
    runs[name] = [state]
    for i in range(4):
      runs[name].append(step(runs[name][-1], _batch(i), jax.random.key(i)))
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(
      jax.tree.leaves(a.params), jax.tree.leaves(b.params)))
  assert same(runs["quirk"][2], runs["randreg"][2])  # steps 0, 1: regularised
  assert not same(runs["quirk"][3], runs["randreg"][3])
  # steps 2, 3 from the same state as plain fine-tuning's step would take
  config, spec, _ = _state("finetune", common)
  plain = jax.jit(lambda s, b, r: jaxlab.get_method("finetune").train_step(
      s, b, r, config=config, spec=spec)[0])
  for t in (2, 3):
    expected = plain(runs["quirk"][t], _batch(t), jax.random.key(t))
    for x, y in zip(jax.tree.leaves(runs["quirk"][t + 1].params),
                    jax.tree.leaves(expected.params)):
      np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_new_head_is_small_gaussian_and_only_adarand_moves_its_prior():
  _, _, state = _state("finetune")
  kernel = np.asarray(state.params["head"]["kernel"])
  assert abs(kernel.std() - 0.01) < 0.003 and not state.params["head"]["bias"].any()
  config, spec, state = _state("adarand")
  state = state.replace(prior_mean=jax.random.normal(jax.random.key(3), state.prior_mean.shape))
  new, metrics = jaxlab.get_method("adarand").train_step(state, _batch(), jax.random.key(4),
                                                         config=config, spec=spec)
  assert not np.allclose(new.prior_mean, state.prior_mean)
  np.testing.assert_array_equal(new.prior_std, state.prior_std)  # sigma is never updated
  np.testing.assert_array_equal(new.running_mean[4], state.running_mean[4])  # absent class
  assert float(metrics["prior_loss"]) > 0


def test_pretrained_statistics_against_numpy():
  config, spec, state = _state("adarand")
  model = models.build(config.model, spec.num_classes)
  rng = np.random.default_rng(5)
  images = rng.integers(0, 256, (300, 8, 8, 1)).astype(np.uint8)
  labels = rng.integers(0, 5, 300)
  stats = core.pretrained_statistics(model, {"params": state.params}, jnp.asarray(images),
                                     jnp.asarray(labels), 5, chunk=128)
  features = np.asarray(model.apply({"params": state.params}, images.astype(np.float32) / 255,
                                    return_features=True), np.float64)
  np.testing.assert_allclose(stats["mean"], features.mean(0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats["std"], features.std(0), rtol=1e-3, atol=1e-4)
  for k in range(5):
    np.testing.assert_allclose(stats["class_mean"][k], features[labels == k].mean(0), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(stats["class_std"][k], features[labels == k].std(0), rtol=1e-3,
                               atol=2e-4)


def test_feature_entropy_matches_the_pairwise_formula_and_skips_padding_and_duplicates():
  rng = np.random.default_rng(6)
  f = rng.normal(size=(6, 4))
  expected = 4 / 30 * sum(np.log(np.linalg.norm(f[i] - f[j]))
                          for i in range(6) for j in range(6) if i != j)
  padded = np.concatenate([f, np.zeros((3, 4))])
  mask = np.r_[np.ones(6), np.zeros(3)]
  assert float(core.feature_entropy(jnp.asarray(padded), jnp.asarray(mask))) == pytest.approx(
      expected, rel=1e-5)
  doubled = np.concatenate([f, f[:1]])
  value = float(core.feature_entropy(jnp.asarray(doubled), jnp.ones(7)))
  assert np.isfinite(value)


def test_target_split_is_per_class_seeded_and_disjoint():
  labels = np.repeat(np.arange(4), 30)
  arrays = {"image": np.arange(120)[:, None], "label": labels}
  train, val, rest = tasks.carve_validation(arrays, per_class=10, val_fraction=0.1, seed=42)
  assert np.bincount(train["label"]).tolist() == [9] * 4
  assert np.bincount(val["label"]).tolist() == [1] * 4  # at least one per class
  assert np.bincount(rest["label"]).tolist() == [20] * 4  # the unused, e.g. as a test split
  parts = [set(p["image"][:, 0]) for p in (train, val, rest)]
  assert set.union(*parts) == set(range(120)) and sum(map(len, parts)) == 120
  again, *_ = tasks.carve_validation(arrays, per_class=10, val_fraction=0.1, seed=42)
  np.testing.assert_array_equal(train["image"], again["image"])
  other, *_ = tasks.carve_validation(arrays, per_class=10, val_fraction=0.1, seed=0)
  assert not np.array_equal(train["image"], other["image"])
  part, *_ = tasks.carve_validation(arrays, per_class=0, val_fraction=0.0, seed=42, fraction=0.3)
  assert np.bincount(part["label"]).tolist() == [9] * 4
  with pytest.raises(jaxlab.UserError, match="per_class=40 but class 0 has only 30"):
    tasks.carve_validation(arrays, per_class=40, val_fraction=0.1, seed=42)
  shifted = tasks.select_classes({"label": np.arange(10)}, "range:5-9")
  assert shifted["label"].tolist() == [0, 1, 2, 3, 4]


def test_init_skip_leaves_the_head_to_its_fresh_initialisation(tmp_path):
  config, spec, state = _state("finetune")
  saver = checkpoint.Checkpointer(str(tmp_path / "checkpoints"))
  saver.save(1, state)
  saver.close()
  like = {"params": state.params}
  loaded = checkpoint.load_pretrained(str(tmp_path), like, skip="params/head")
  assert "head" not in loaded["params"] and "Dense_0" in loaded["params"]


def test_selection_reports_test_at_the_lowest_validation_loss_and_survives_resume(tmp_path):
  common = [f"--config={FINETUNE}adarand", "--config.train.steps=120",
            "--config.train.eval_every=20", "--config.train.checkpoint_every=60",
            "--config.model.hidden=(16,)"]
  source = tmp_path / "source"
  assert run_main("--config=configs/finetune.py:digits_pretrain", "--config.train.steps=50",
                  "--config.model.hidden=(16,)", f"--workdir={source}").returncode == 0
  result = run_main(f"--config={FINETUNE}adarand", f"--workdir={tmp_path / 'none'}")
  assert result.returncode == 2 and "set --config.init_from" in result.stderr
  runs = {}
  for name in ("once", "resumed"):
    workdir = tmp_path / name
    result = run_main(*common, f"--config.init_from={source}", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-2000:]
    if name == "resumed":  # as if killed after the step-60 checkpoint
      shutil.rmtree(workdir / "checkpoints" / "120")
      (workdir / "results.json").unlink()
      result = run_main(*common, f"--config.init_from={source}", f"--workdir={workdir}")
      assert "resuming from the checkpoint at step 60" in result.stdout
    runs[name] = json.loads((workdir / "results.json").read_text())
  assert runs["once"] == runs["resumed"]
  history = [json.loads(line) for line in (tmp_path / "once" / "metrics.jsonl").open()]
  val = {r["step"]: r["loss"] for r in history if r["split"] == "validation"}
  test = {r["step"]: r["accuracy"] for r in history if r["split"] == "test"}
  best = min(val, key=lambda s: (val[s], s))
  assert runs["once"]["selected/step"] == best
  assert runs["once"]["selected/test/accuracy"] == pytest.approx(test[best])
  # the batch-level feature diagnostics are reported once, without a per-example CI
  assert "test/feature_entropy" in runs["once"] and "test/accuracy_ci95" in runs["once"]
  assert not any(k.endswith(("feature_norm_ci95", "feature_entropy_ci95")) for k in runs["once"])


def test_batch_level_metrics_are_averaged_over_batches_by_their_valid_items():
  from jaxlab.train.loop import summarize
  outputs = [{"a": np.array([1.0, 2.0]), "b": np.float32(3.0)},
             {"a": np.array([3.0, 9.0]), "b": np.float32(5.0)}]
  masks = [np.array([1.0, 1.0]), np.array([1.0, 0.0])]  # the second batch is padded
  summary = summarize(outputs, masks)
  assert summary["a"] == pytest.approx(2.0) and summary["a_ci95"] == pytest.approx(
      1.96 * np.std([1.0, 2.0, 3.0]) / np.sqrt(3))
  assert summary["b"] == pytest.approx((3.0 * 2 + 5.0 * 1) / 3) and "b_ci95" not in summary
