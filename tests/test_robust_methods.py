"""ARREST (§1), the weighted-CE arms GAIRAT/MAIL (§2(b)), adversarial margin histograms,
and starting a run from pretrained weights (`init_from`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlab
from jaxlab import models
from jaxlab.data.tasks import Spec
from jaxlab.eval import attacks, robust
from jaxlab.train import checkpoint, losses

from conftest import one_train_step, run_main

ROBUST = "configs/robust.py:digits,method="


def _assert_same_params(a, b, **tol):
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(x, y, **(tol or dict(rtol=1e-6, atol=1e-7)))


def _arrest_start(overrides=None):
  """arrest's initial state (one_train_step's) with its own initial weights as the frozen
  teacher, as the training loop does with `init_from`."""
  config = jaxlab.load_config(ROBUST + "arrest", {"model.hidden": (16,), **(overrides or {})})
  state = jaxlab.get_method("arrest").init(config, jax.random.key(0), Spec((8, 8, 1), 10))
  return state.replace(frozen={"teacher": {"params": state.params, **state.model_state}})


def _linear_logits(seed=0):
  w = jax.random.normal(jax.random.key(seed), (12, 5))
  return lambda x: x.reshape(x.shape[0], -1) @ w


def test_pgd_counts_the_iterates_still_classified_correctly():
  """GAIRAT's kappa: replayed step by step outside the attack, from the same start."""
  f = _linear_logits()
  x = jax.random.uniform(jax.random.key(1), (64, 12))
  y = jnp.argmax(f(x), -1)  # all correct at the clean point
  key, eps, step, steps = jax.random.key(2), 0.3, 0.05, 7
  x_adv, counted = attacks.pgd(f, x, y, key, eps=eps, step_size=step, steps=steps,
                               count_correct_steps=True)
  current = attacks.project_linf(x + jax.random.uniform(key, x.shape, x.dtype, -eps, eps), x, eps)
  expected = np.zeros(64, int)
  for _ in range(steps):
    expected += np.asarray(jnp.argmax(f(current), -1) == y)
    grad = jax.grad(lambda z: losses.cross_entropy(f(z), y).sum())(current)
    current = attacks.project_linf(current + step * jnp.sign(grad), x, eps)
  np.testing.assert_array_equal(counted, expected)
  np.testing.assert_allclose(x_adv, current, atol=1e-6)
  assert len(np.unique(expected)) >= 5  # examples that break early, late and never differ


def test_weighted_arms_are_pgd_at_during_burn_in_and_with_constant_weights():
  reference, *_ = one_train_step(ROBUST + "pgd_at", {})
  for method, overrides in (("gairat", {}), ("mail", {}),  # step 0 < burn-in
                            ("mail", {"importance.burn_in": 0.0, "importance.mail_gamma": 0.0})):
    same, metrics, *_ = one_train_step(ROBUST + method, overrides)
    assert float(metrics["weight_min"]) == float(metrics["weight_max"]) == 1.0, method
    _assert_same_params(reference, same)
  moved, metrics, *_ = one_train_step(ROBUST + "gairat", {"importance.burn_in": 0.0})
  assert float(metrics["weight_max"]) > 1.0 > float(metrics["weight_min"])
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(reference.params),
                                                   jax.tree.leaves(moved.params)))


def test_importance_weights_favour_points_near_the_boundary():
  from jaxlab.methods import adversarial
  config = jaxlab.load_config(ROBUST + "gairat")
  kappa = jnp.arange(11)  # K = 10 PGD steps
  w = np.asarray(adversarial.gairat_weights(None, None, kappa, config))
  assert np.all(np.diff(w) < 0)  # more steps survived: farther from the boundary, less weight
  np.testing.assert_allclose(w[[0, 5, 10]], [(1 + np.tanh(-1 + 5 * s)) / 2 for s in (1, 0, -1)],
                             rtol=1e-6)
  logits = jnp.array([[4.0, 0, 0], [1.0, 0.5, 0], [0.0, 3.0, 0]])
  w = np.asarray(adversarial.mail_weights(logits, jnp.zeros(3, jnp.int32), None, config))
  assert w[0] < w[1] < w[2]  # probabilistic margin 0.93 > 0.19 > -0.9


def test_aft_without_rgkd_or_replay_is_pgd_at_and_the_teacher_stays_frozen():
  reference, *_ = one_train_step(ROBUST + "pgd_at", {})
  aft_flags = {"arrest.rgkd_weight": 0.0, "arrest.noisy_replay": False}
  aft, metrics, *_, start = one_train_step(ROBUST + "arrest", aft_flags,
                                           state=_arrest_start(aft_flags))
  _assert_same_params(reference, aft)
  assert float(metrics["rgkd"]) > 0.01  # adversarial student input vs clean teacher input
  clean = {"arrest.rgkd_student_input": "clean"}
  _, metrics, *_ = one_train_step(ROBUST + "arrest", clean, state=_arrest_start(clean))
  assert abs(float(metrics["rgkd"])) < 1e-6  # the same clean input: student == teacher
  full, metrics, *_ = one_train_step(ROBUST + "arrest", {}, state=aft)
  teacher = full.frozen["teacher"]["params"]
  for before, after in zip(jax.tree.leaves(start.params), jax.tree.leaves(teacher)):
    np.testing.assert_array_equal(before, after)
  _, metrics, *_ = one_train_step(ROBUST + "arrest", {"arrest.rgkd_student_input": "clean"},
                                 state=full)
  assert float(metrics["rgkd"]) > 1e-4  # after two steps the student has left the teacher


def test_noisy_replay_swaps_exactly_the_drifted_examples_for_noise_inside_the_ball():
  from jaxlab.methods import arrest
  _, _, config, spec, batch, state = one_train_step(ROBUST + "arrest", {},
                                                    state=_arrest_start())
  x = batch["image"]
  x_adv = jnp.clip(x + 0.1 * jnp.sign(jax.random.normal(jax.random.key(3), x.shape)), 0, 1)
  model = models.build(config.model, spec.num_classes)
  clean = model.apply({"params": state.params}, x, return_features=True)
  # a teacher whose features agree with the student's on the first half of the batch only
  teacher = clean.at[16:].set(jnp.roll(clean[16:], 1, axis=-1) + 1.0)
  drift = np.asarray(losses.cosine_similarity(clean, teacher))
  config.arrest.nr_threshold = float(np.sort(drift)[15] + 1e-4)  # between the two halves
  chosen, switch, _ = arrest.noisy_replay(state, x, x_adv, teacher, jax.random.key(4),
                                          config=config, spec=spec)
  switch = np.asarray(switch)
  np.testing.assert_array_equal(switch, drift < config.arrest.nr_threshold)
  assert 0 < switch.sum() < 32
  np.testing.assert_array_equal(chosen[~switch], x_adv[~switch])
  noisy = np.asarray(chosen[switch])
  assert np.abs(noisy - np.asarray(x[switch])).max() <= config.adv.train_eps + 1e-6
  assert noisy.min() >= 0.0 and noisy.max() <= 1.0
  assert not np.allclose(noisy, np.asarray(x_adv[switch]))


def test_rgkd_distances_against_numpy():
  from jaxlab.methods import arrest
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(6, 9)), rng.normal(size=(6, 9))
  cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
  unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)
  expected = {"one_minus_cos": 1 - cos, "angle": np.arccos(cos),
              "l2": np.linalg.norm(a - b, axis=1), "l2_on_normalized": np.linalg.norm(
                  unit(a) - unit(b), axis=1)}
  for kind, value in expected.items():
    np.testing.assert_allclose(arrest.distance(jnp.asarray(a), jnp.asarray(b), kind), value,
                               rtol=1e-5, err_msg=kind)
  # the cosine-type distances ignore the scale of the student's features
  np.testing.assert_allclose(arrest.distance(jnp.asarray(3 * a), jnp.asarray(b), "angle"),
                             np.arccos(cos), rtol=1e-5)


def test_margin_histogram_bins_the_adversarial_margins():
  import ml_collections
  f = _linear_logits()
  x = jax.random.uniform(jax.random.key(1), (50, 12))
  y = jax.random.randint(jax.random.key(5), (50,), 0, 5)
  adv = ml_collections.ConfigDict(dict(eps=0.1, eval_step_size=0.025, margin_bins="-1,0,0.5,2"))
  out = robust.adversarial_margin_histogram(f, x, y, adv, jax.random.key(6))
  x_adv = attacks.pgd(f, x, y, jax.random.key(6), eps=0.1, step_size=0.025, steps=10)
  z = np.asarray(f(x_adv))
  margin = z[np.arange(50), y] - np.where(np.eye(5)[y] > 0, -np.inf, z).max(1)
  np.testing.assert_allclose(out["adv_margin"], margin, rtol=1e-5, atol=1e-6)
  counts = np.histogram(margin, [-np.inf, -1, 0, 0.5, 2, np.inf])[0]
  names = ["-inf..-1", "-1..0", "0..0.5", "0.5..2", "2..inf"]
  np.testing.assert_array_equal([float(out[f"adv_margin_hist/{n}"].sum()) for n in names], counts)
  with pytest.raises(jaxlab.UserError, match="must be increasing"):
    robust.parse_edges("1,0")


def test_init_from_loads_a_checkpoint_or_npz_and_refuses_a_different_model(tmp_path):
  from flax import traverse_util
  config = jaxlab.load_config(ROBUST + "erm", {"model.hidden": (16,)})
  spec = Spec(input_shape=(8, 8, 1), num_classes=10)
  state = jaxlab.get_method("erm").init(config, jax.random.key(7), spec)
  saver = checkpoint.Checkpointer(str(tmp_path / "run" / "checkpoints"))
  saver.save(5, state)
  saver.close()
  like = {"params": state.params}
  for loaded in (checkpoint.load_pretrained(str(tmp_path / "run"), like),
                 checkpoint.load_pretrained(str(tmp_path / "run" / "checkpoints" / "5"), like)):
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(like)):
      np.testing.assert_array_equal(a, b)
  flat = traverse_util.flatten_dict(like, sep="/")
  np.savez(tmp_path / "w.npz", **{k: np.asarray(v) for k, v in flat.items()})
  loaded = checkpoint.load_pretrained(str(tmp_path / "w.npz"), like)
  np.testing.assert_array_equal(loaded["params"]["head"]["kernel"],
                                like["params"]["head"]["kernel"])
  wider = jax.eval_shape(lambda: jaxlab.get_method("erm").init(
      jaxlab.load_config(ROBUST + "erm", {"model.hidden": (32,)}), jax.random.key(7), spec))
  with pytest.raises(jaxlab.UserError,
                     match=r"params/Dense_0/bias has shape \(16,\), the model needs \(32,\)"):
    checkpoint.load_pretrained(str(tmp_path / "run"), {"params": wider.params})
  np.savez(tmp_path / "part.npz", **{k: np.asarray(v) for k, v in flat.items() if "head" not in k})
  with pytest.raises(jaxlab.UserError, match="missing .*head/bias"):
    checkpoint.load_pretrained(str(tmp_path / "part.npz"), like)


def test_arrest_starts_from_the_pretrained_run_and_needs_one(tmp_path):
  """End to end: a short erm run, then ARREST from it, whose first evaluation-free state is
  the erm weights; without init_from the run stops with one line and writes nothing."""
  common = ["--config.model.hidden=(16,)", "--config.train.steps=3",
            "--config.adv.eval_attacks=pgd10", "--config.adv.margin_bins=0"]
  pretrained = tmp_path / "erm"
  assert run_main(f"--config={ROBUST}erm", *common, f"--workdir={pretrained}").returncode == 0
  result = run_main(f"--config={ROBUST}arrest", *common, f"--workdir={tmp_path / 'bad'}")
  assert result.returncode == 2 and "set --config.init_from" in result.stderr
  assert not (tmp_path / "bad").exists()
  result = run_main(f"--config={ROBUST}arrest", *common, f"--config.init_from={pretrained}",
                    "--config.train.steps=0", f"--workdir={tmp_path / 'arrest'}")
  assert result.returncode == 0, result.stderr[-2000:]
  import json
  erm = json.loads((pretrained / "results.json").read_text())
  zero_steps = json.loads((tmp_path / "arrest" / "results.json").read_text())
  assert zero_steps["test/accuracy"] == erm["test/accuracy"]
  assert zero_steps["test/feature_cosine"] == pytest.approx(1.0, abs=1e-5)
