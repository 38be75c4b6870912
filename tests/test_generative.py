"""The conditional GAN, its quality score, and GDA / PCR / MGR with the one-step look-ahead
meta-gradient (docs/specs/generative_and_finetuning.md §0.4, §2(g))."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import scipy.linalg

import jaxlab
from jaxlab import meta
from jaxlab.data import augment
from jaxlab.data.tasks import Spec
from jaxlab.eval import generative
from jaxlab.methods import generative_reg as core
from jaxlab.models import gan

from conftest import run_main

SPEC = Spec(input_shape=(8, 8, 1), num_classes=10)


def _mgr_config(method="mgr", **overrides):
  return jaxlab.load_config(f"configs/mgr.py:digits,method={method}", {
      "model.channels": (4, 6), "generator.width": 8, "generator.discriminator_width": 8,
      "generative.synthetic_batch": 6, "generative.finder_hidden": (5,), **overrides})


def _batch(n=6, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.uniform(size=(n, 8, 8, 1)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, 10, n)),
          "val_image": jnp.asarray(rng.uniform(size=(n, 8, 8, 1)), jnp.float32),
          "val_label": jnp.asarray(rng.integers(0, 10, n))}


def _perturbed_finder(state, scale=0.3):
  """A finder whose hidden layers matter (its output layer starts at zero)."""
  leaves, treedef = jax.tree.flatten(state.finder_params)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  return state.replace(finder_params=jax.tree.unflatten(treedef, [
      leaf + scale * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)]))


def _init(config):
  return jaxlab.get_method(config.method).init(config, jax.random.key(0), SPEC)


def _meta_gradient_fn(config, inner_lr=0.1):
  """jitted (state, batch) -> (look-ahead validation loss, grad_phi) of the method's meta step."""
  regulariser = jaxlab.get_method(config.method).options["regulariser"]
  return jax.jit(lambda state, batch: core.meta_gradient(config, SPEC, state, batch,
                                                         jax.random.key(3), inner_lr,
                                                         regulariser))


def test_lookahead_gradient_matches_closed_form_on_a_quadratic():
  # L_in = 0.5 ||theta - A phi||^2, theta' = theta - eta (theta - A phi),
  # L_out = 0.5 ||theta' - b||^2  =>  grad_phi = eta A^T (theta' - b)
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(4, 3)), rng.normal(size=4)
  theta, phi, eta = rng.normal(size=4), rng.normal(size=3), 0.3
  with jax.enable_x64(True):
    inner = lambda t, p: 0.5 * jnp.sum((t - jnp.asarray(a) @ p) ** 2)
    outer = lambda t: 0.5 * jnp.sum((t - jnp.asarray(b)) ** 2)
    adapted = theta - eta * (theta - a @ phi)
    expected = eta * a.T @ (adapted - b)
    for mode in meta.HVP_MODES:
      value, grad = meta.lookahead_gradient(inner, outer, jnp.asarray(theta), jnp.asarray(phi),
                                            inner_lr=eta, mode=mode)
      np.testing.assert_allclose(value, 0.5 * np.sum((adapted - b) ** 2), rtol=1e-12)
      np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_mgr_meta_gradient_is_exactly_zero_without_the_regulariser():
  config = _mgr_config(**{"generative.weight": 0.0})
  state = _perturbed_finder(_init(config))
  _, grads = _meta_gradient_fn(config)(state, _batch())
  assert all(np.all(np.asarray(g) == 0.0) for g in jax.tree.leaves(grads))
  # (with lambda > 0 it is not: the float64 test below checks it against differences)


@pytest.mark.parametrize("method", ["mgr", "gda"])
def test_mgr_meta_gradient_matches_central_differences_in_float64(method):
  with jax.enable_x64(True):
    config = _mgr_config(method, **{"generative.sampler": "finder"})
    state = _perturbed_finder(_init(config))
    to64 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.float64) if jnp.issubdtype(
        x.dtype, jnp.floating) else x, tree)
    state, batch = to64(state), to64(_batch())
    meta_gradient = _meta_gradient_fn(config)
    _, grads = meta_gradient(state, batch)
    loss_at = lambda finder: float(meta_gradient(state.replace(finder_params=finder), batch)[0])
    leaves, treedef = jax.tree.flatten(state.finder_params)
    rng = np.random.default_rng(1)
    for _ in range(3):  # directional derivatives along random directions
      direction = [jnp.asarray(rng.normal(size=l.shape)) for l in leaves]
      h = 1e-5
      shifted = lambda s: jax.tree.unflatten(treedef, [l + s * h * d for l, d in
                                                       zip(leaves, direction)])
      numeric = (loss_at(shifted(1.0)) - loss_at(shifted(-1.0))) / (2 * h)
      analytic = sum(float(jnp.sum(g * d)) for g, d in zip(jax.tree.leaves(grads), direction))
      np.testing.assert_allclose(analytic, numeric, rtol=1e-3)
      assert abs(analytic) > 1e-8


def test_finite_difference_mode_approaches_the_exact_gradient_on_a_smooth_problem():
  # (on ReLU networks the theta +- eps v perturbation crosses kinks; DARTS' approximation is
  # only as good as the inner gradient is smooth, so it is checked on a tanh problem)
  rng = np.random.default_rng(0)
  w, b = rng.normal(size=(5, 4)), rng.normal(size=(5, 3))
  with jax.enable_x64(True):
    inner = lambda t, p: jnp.sum(jnp.tanh(jnp.asarray(w) @ t + jnp.asarray(b) @ p) ** 2)
    outer = lambda t: jnp.sum(jnp.sin(t))
    theta, phi = jnp.asarray(rng.normal(size=4)), jnp.asarray(rng.normal(size=3))
    _, exact = meta.lookahead_gradient(inner, outer, theta, phi, inner_lr=0.2)
    for epsilon, rtol in ((1e-2, 1e-3), (1e-4, 1e-7)):
      _, approx = meta.lookahead_gradient(inner, outer, theta, phi, inner_lr=0.2,
                                          mode="finite_difference", epsilon=epsilon)
      np.testing.assert_allclose(approx, exact, rtol=rtol)
    # a leaf outside `trainable` is neither adapted nor perturbed
    params = {"a": theta, "b": jnp.ones(2)}
    split_inner = lambda t, p: inner(t["a"], p) + jnp.sum(t["b"] ** 2 * p[0])
    split_outer = lambda t: outer(t["a"]) + jnp.sum(t["b"])
    for mode in meta.HVP_MODES:
      _, masked = meta.lookahead_gradient(split_inner, split_outer, params, phi, inner_lr=0.2,
                                          mode=mode, trainable={"a": True, "b": False},
                                          epsilon=1e-4)
      np.testing.assert_allclose(masked, exact, rtol=1e-6)


def test_pcr_gives_the_head_no_gradient():
  config = _mgr_config("pcr")
  state = _init(config)
  images = jax.random.uniform(jax.random.key(1), (6, 8, 8, 1))
  labels = jnp.arange(6)

  def reg(params):
    return core.regularised_loss(config, SPEC, state, params, _batch(), images, labels,
                                 jax.random.key(2), "pcr")[1][1]

  grads = jax.grad(reg)(state.params)
  assert float(reg(state.params)) > 0
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads["head"]))
  assert any(np.any(np.asarray(g) != 0) for n, g in grads.items() if n != "head")


def test_generator_soft_conditioning_is_linear_in_the_class_embedding():
  generator = gan.ConditionalGenerator(num_classes=3, image_shape=(8, 8, 1), latent_dim=4,
                                       width=8)
  variables = gan.init_generator(generator, jax.random.key(0))
  variables = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape),
                           variables)
  z = jax.random.normal(jax.random.key(2), (2, 4))
  one_hot = jax.nn.one_hot(jnp.array([0, 2]), 3)
  hard = generator.apply(variables, z, one_hot, train=False)
  assert hard.shape == (2, 8, 8, 1) and float(hard.min()) >= 0 and float(hard.max()) <= 1
  # a soft c reaches the network only through linear maps: its first-layer pre-activation is the
  # same convex combination of the one-hot ones
  mix = 0.3 * jax.nn.one_hot(jnp.array([0, 0]), 3) + 0.7 * jax.nn.one_hot(jnp.array([1, 1]), 3)
  dense = lambda c: jnp.concatenate([z, c], -1) @ variables["params"]["Dense_0"]["kernel"]
  np.testing.assert_allclose(dense(mix), 0.3 * dense(jax.nn.one_hot(jnp.array([0, 0]), 3))
                             + 0.7 * dense(jax.nn.one_hot(jnp.array([1, 1]), 3)), rtol=1e-5,
                             atol=1e-6)
  with pytest.raises(AssertionError):
    generator.apply(variables, z, jnp.zeros((2, 4)), train=False)


def test_spectral_norm_converges_to_the_largest_singular_value():
  layer = gan.SNDense(5)
  x = jnp.ones((2, 7))
  variables = layer.init(jax.random.key(0), x, update_stats=True)
  for _ in range(100):
    _, updated = layer.apply(variables, x, update_stats=True, mutable=["spectral"])
    variables = {"params": variables["params"], **updated}
  kernel = np.asarray(variables["params"]["kernel"])
  normalised = layer.apply(variables, jnp.eye(7), update_stats=False) - variables["params"]["bias"]
  np.testing.assert_allclose(np.linalg.svd(np.asarray(normalised), compute_uv=False)[0], 1.0,
                             rtol=1e-4)
  np.testing.assert_allclose(normalised, kernel / np.linalg.svd(kernel, compute_uv=False)[0],
                             rtol=1e-4)


def test_frechet_distance_matches_scipy_and_its_invariants():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(300, 6))
  b = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6)) + 1.0
  mean_a, mean_b = a.mean(0), b.mean(0)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  expected = (np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b)
              - 2 * np.trace(scipy.linalg.sqrtm(cov_a @ cov_b).real))
  np.testing.assert_allclose(generative.frechet_distance(a, b), expected, rtol=1e-8)
  assert abs(generative.frechet_distance(a, a)) < 1e-8
  shift = rng.normal(size=6)
  np.testing.assert_allclose(generative.frechet_distance(a, a + shift), np.sum(shift ** 2),
                             rtol=1e-8)


def test_rotation_by_90_degrees_is_a_grid_rotation():
  images = jnp.asarray(np.random.default_rng(0).uniform(size=(1, 8, 8, 2)), jnp.float32)
  images = jnp.concatenate([images, images])
  key = jax.random.key(0)
  angle = float(jax.random.uniform(key, (2,), minval=-90, maxval=90)[0])
  rotated = augment.random_rotate(images, key, 90.0)
  assert abs(angle) > 1  # a real rotation happened
  assert not np.allclose(rotated, images)
  # by 90 degrees exactly, pixels land on pixels: numpy's rot90, clockwise (k = -1)
  exact = augment.rotate(images, jnp.array([jnp.pi / 2, -jnp.pi / 2]))
  np.testing.assert_allclose(exact[0], np.rot90(np.asarray(images[0]), k=-1), atol=1e-5)
  np.testing.assert_allclose(exact[1], np.rot90(np.asarray(images[0]), k=1), atol=1e-5)


def test_cgan_then_mgr_end_to_end(tmp_path):
  classifier = str(tmp_path / "classifier")
  result = run_main("--config=configs/erm.py:tiny", f"--workdir={classifier}")
  assert result.returncode == 0, result.stderr
  generator = str(tmp_path / "cgan")
  result = run_main("--config=configs/cgan.py:digits,steps=4", f"--workdir={generator}",
                    "--config.generator.width=8", "--config.generator.discriminator_width=8",
                    f"--config.inputs.score_classifier={classifier}")
  assert result.returncode == 0, result.stderr
  with open(os.path.join(generator, "results.json")) as f:
    results = json.load(f)
  assert 0 <= results["quality/sample_accuracy"] <= 1 and results["quality/frechet_distance"] > 0
  with open(os.path.join(classifier, "results.json")) as f:  # the score's classifier, reloaded
    np.testing.assert_allclose(results["quality/real_accuracy"], json.load(f)["test/accuracy"],
                               atol=1e-6)
  assert os.path.getsize(os.path.join(generator, "samples.png")) > 0
  run = str(tmp_path / "mgr")
  args = ["--config=configs/mgr.py:digits,method=mgr,fraction=0.1", f"--workdir={run}",
          "--config.generator.width=8", "--config.generator.discriminator_width=8",
          "--config.model.channels=(8,8)", "--config.train.steps=4",
          "--config.generative.finder_lr=0.01",
          "--config.train.eval_every=2", "--config.train.log_every=2"]
  missing = run_main(*args)
  assert missing.returncode == 2
  assert "inputs.generator" in missing.stderr and "cgan" in missing.stderr
  result = run_main(*args, f"--config.inputs.generator={generator}")
  assert result.returncode == 0, result.stderr
  with open(os.path.join(run, "results.json")) as f:
    results = json.load(f)
  assert "selected/test/accuracy" in results and "train/meta/lookahead_loss" in results
  assert results["train/meta/latent_shift"] > 0  # the finder moved the latents
  # the frozen generator in the classifier's final checkpoint is the cgan's, bit for bit
  restore = lambda workdir: ocp.StandardCheckpointer().restore(
      os.path.join(workdir, "checkpoints", "4", "default"))
  trained, used = restore(generator), restore(run)["frozen"]["generator"]
  pairs = [(trained["params"], used["params"]),
           (trained["model_state"]["batch_stats"], used["batch_stats"])]
  for a, b in pairs:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      assert x.dtype == y.dtype and np.array_equal(x, y)
  wrong = run_main(*args, f"--config.inputs.generator={generator}",
                   f"--workdir={tmp_path / 'mgr_wide'}", "--config.generator.width=16")
  assert wrong.returncode == 2 and "inputs.generator=" in wrong.stderr
  assert "shape" in wrong.stderr


def test_the_discriminator_schedule_runs_on_generator_steps():
  """With gan.disc_steps = 2 both discriminator updates of generator step 0 take step 0's
  rate; counting discriminator updates (the old schedule) gave the second one step 1's.
  Here the rate drops to 0 at generator step 1, so the second update of step 0 must move
  the discriminator and no update of step 1 may."""
  from jaxlab.data.tasks import Spec
  spec = Spec(input_shape=(8, 8, 1), num_classes=10)
  overrides = {"train.steps": 4, "generator.width": 8, "generator.discriminator_width": 8,
               "gan.disc_optimizer.name": "sgd", "gan.disc_optimizer.learning_rate": 0.1,
               "gan.disc_optimizer.schedule": "step"}
  method = jaxlab.get_method("cgan")
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.uniform(size=(16, 8, 8, 1)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, 16))}

  def disc_after(disc_steps, steps):
    config = jaxlab.load_config("configs/cgan.py:digits", {**overrides,
                                                            "gan.disc_steps": disc_steps})
    with config.unlocked():
      config.gan.disc_optimizer.update(dict(step_boundaries=(1,), step_factor=0.0))
    state = method.init(config, jax.random.key(0), spec)
    step = jax.jit(lambda s: method.train_step(s, batch, jax.random.key(1), config=config,
                                               spec=spec)[0])
    for _ in range(steps):
      state = step(state)
    return jax.tree.leaves(state.disc_params)

  one, two = disc_after(1, 1), disc_after(2, 1)
  # the 2nd update moved it by a step, not by the rounding of another compiled program
  assert max(float(np.abs(a - b).max()) for a, b in zip(one, two)) > 1e-4
  for a, b in zip(two, disc_after(2, 2)):  # generator step 1: rate 0 for both updates
    np.testing.assert_array_equal(a, b)


def test_mgr_logs_its_meta_metrics_only_from_the_steps_that_ran_the_meta_step():
  """generative.meta_every = 2: step 0 runs the meta step, step 1 does not; the window mean
  of meta/* is step 0's value (the old loop averaged in step 1's zeros)."""
  from jaxlab.train.loop import window_means
  config = _mgr_config(**{"generative.meta_every": 2, "generative.sampler": "finder"})
  method = jaxlab.get_method("mgr")
  step = jax.jit(lambda s: method.train_step(s, _batch(), jax.random.key(1), config=config,
                                             spec=SPEC)[1])
  start = _init(config)
  at_meta, skipped = step(start), step(start.replace(step=start.step + 1))
  assert float(at_meta["measured/meta/lookahead_loss"]) == 1.0
  assert float(skipped["measured/meta/lookahead_loss"]) == 0.0
  stacked = {k: np.stack([np.asarray(at_meta[k]), np.asarray(skipped[k])]) for k in at_meta}
  means = window_means(stacked)
  assert means["meta/lookahead_loss"] == pytest.approx(float(at_meta["meta/lookahead_loss"]))
  assert means["loss"] == pytest.approx((float(at_meta["loss"]) + float(skipped["loss"])) / 2)
  assert not any(k.startswith("measured/") for k in means)
  assert "meta/lookahead_loss" not in window_means({k: v[1:] for k, v in stacked.items()})
