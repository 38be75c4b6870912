"""The class-conditional DDPM (jaxlab.models.diffusion, the `ddpm` and `diffusion_gap`
variants) against closed forms: the forward marginal, the samplers on a Gaussian whose
optimal denoiser is known exactly, guidance, reconstructions R_t, and the sample metrics."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlab
from jaxlab.train import checkpoint, inputs
from jaxlab.data import reconstruction
from jaxlab.errors import UserError
from jaxlab.eval import generative
from jaxlab.models import diffusion, unet


def _gaussian_eps(schedule, mu, sigma):
  """The exact E[eps | x_t] when x_0 ~ N(mu, sigma^2 I): the optimal noise predictor."""
  def eps(x, t):
    ab = schedule.alpha_bars[t][:, None]
    return jnp.sqrt(1 - ab) * (x - jnp.sqrt(ab) * mu) / (ab * sigma ** 2 + 1 - ab)
  return eps


def test_schedules_match_their_formulas():
  linear = diffusion.make_schedule("linear", 200)
  betas = np.linspace(5e-4, 0.1, 200)  # 1e-4..0.02 scaled by 1000/200
  np.testing.assert_allclose(linear.betas[1:], betas, rtol=1e-6)
  np.testing.assert_allclose(linear.alpha_bars, np.cumprod(np.r_[1.0, 1 - betas]), rtol=1e-5)
  assert linear.alpha_bars[-1] < 1e-4  # the chain ends near pure noise
  assert diffusion.make_schedule("linear", 200, scale_betas=False).alpha_bars[-1] > 0.1
  cosine = diffusion.make_schedule("cosine", 50)
  f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2
  u = np.arange(51) / 50
  np.testing.assert_allclose(cosine.alpha_bars[1:-1], (f(u) / f(0))[1:-1], rtol=1e-5)


def test_forward_marginal_matches_the_closed_form():
  schedule = diffusion.make_schedule("linear", 100)
  x0 = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 6)), jnp.float32)
  for t in (1, 30, 100):
    eps = jax.random.normal(jax.random.key(t), (40000, 6))
    x_t = diffusion.q_sample(schedule, jnp.broadcast_to(x0, eps.shape),
                             jnp.full((40000,), t), eps)
    ab = float(schedule.alpha_bars[t])
    np.testing.assert_allclose(x_t.mean(0), np.sqrt(ab) * x0[0], atol=0.02)
    np.testing.assert_allclose(x_t.var(0), 1 - ab, rtol=0.03)
  assert np.array_equal(diffusion.q_sample(schedule, x0, jnp.zeros((1,), jnp.int32), eps[:1]), x0)


def test_ddim_with_eta_one_is_the_ancestral_chain_on_a_gaussian():
  """On x_0 ~ N(mu, sigma^2) with the exact denoiser: DDIM(eta=1, every step) and DDPM
  ancestral sampling give the same chain for the same noise, with the data's moments at
  T = 1000; at T = 100 the two variance choices bracket the data's (Ho et al. §3.2)."""
  mu, sigma, n = 0.7, 0.3, 20000
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(3), i))(jnp.arange(n))
  x_T = jax.random.normal(jax.random.key(4), (n, 2))

  def run(steps, **kw):
    schedule = diffusion.make_schedule("linear", steps)
    eps = _gaussian_eps(schedule, mu, sigma)
    return jax.jit(lambda x: diffusion.reverse(eps, schedule, x, steps, keys, clip=False,
                                               **kw))(x_T)
  ancestral = run(1000, sampler="ddpm")
  ddim = run(1000, sampler="ddim", eta=1.0)
  np.testing.assert_allclose(ddim, ancestral, atol=2e-4)
  for samples in (ancestral, ddim):
    np.testing.assert_allclose(samples.mean(0), mu, atol=0.01)
    np.testing.assert_allclose(samples.std(0), sigma, rtol=0.025)
  small, large = run(100, sampler="ddpm").std(0), run(100, sampler="ddpm", variance="large").std(0)
  assert np.all(small < sigma) and np.all(sigma < large)
  # the deterministic DDIM (eta = 0) over every step is the probability-flow chain: the same law
  deterministic = run(1000, sampler="ddim")
  np.testing.assert_allclose(deterministic.mean(0), mu, atol=0.01)
  np.testing.assert_allclose(deterministic.std(0), sigma, rtol=0.025)


def test_reconstruction_at_zero_is_the_identity_and_at_T_forgets_the_image():
  schedule = diffusion.make_schedule("linear", 100)
  eps = _gaussian_eps(schedule, 0.0, 0.5)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(64))
  x0 = jax.random.uniform(jax.random.key(1), (64, 3), minval=-1, maxval=1)
  assert np.array_equal(diffusion.reconstruct(eps, schedule, x0, 0, keys), x0)
  error = lambda t: np.abs(diffusion.reconstruct(eps, schedule, x0, t, keys, clip=False)
                          - x0).mean()
  assert error(2) < error(20) < error(100)  # less of the image survives as t grows
  far = diffusion.reconstruct(eps, schedule, x0, 100, keys, clip=False)
  other = diffusion.reconstruct(eps, schedule, -x0, 100, keys, clip=False)
  # from t = T the start image leaks in only through sqrt(alpha_bar_T)
  leak = float(jnp.sqrt(schedule.alpha_bars[100]))
  assert np.abs(far - other).max() < 10 * leak + 1e-5


@pytest.fixture(scope="module")
def net():
  model = diffusion.Diffusion(net=unet.EpsMLP(num_classes=3, image_shape=(4, 4, 1), hidden=16,
                                              blocks=1),
                              schedule=diffusion.make_schedule("cosine", 20), num_classes=3,
                              image_shape=(4, 4, 1))
  variables = model.init(jax.random.key(0))
  # a non-zero output layer, so the class condition matters
  variables = jax.tree.map(lambda v: v + 0.1 * jax.random.normal(jax.random.key(1), v.shape),
                           variables)
  return model, variables


def test_guidance_zero_is_the_unconditional_model_and_two_extrapolates(net):
  model, variables = net
  x = jax.random.normal(jax.random.key(2), (5, 4, 4, 1))
  t = jnp.arange(1, 6)
  c = jax.nn.one_hot(jnp.array([0, 1, 2, 0, 1]), 3)
  raw = lambda cond: model.net.apply(variables, x, t, cond)
  uncond, cond = raw(diffusion.null_condition(5, 3)), raw(diffusion.with_null(c))
  assert not np.allclose(uncond, cond)
  np.testing.assert_array_equal(model.eps_fn(variables, c, 0.0)(x, t), uncond)
  np.testing.assert_array_equal(model.eps_fn(variables, c, 1.0)(x, t), cond)
  np.testing.assert_allclose(model.eps_fn(variables, c, 2.0)(x, t), 2 * cond - uncond,
                             atol=1e-5)
  # generation with s = 0 ignores the class asked for
  z = jax.random.normal(jax.random.key(3), (5, 4, 4, 1))
  other = jax.nn.one_hot(jnp.array([2, 2, 1, 1, 0]), 3)
  gen = lambda cond, s: model.sample(variables, z, cond, guidance=s, sampler="ddim", steps=5)
  np.testing.assert_array_equal(gen(c, 0.0), gen(other, 0.0))
  assert not np.allclose(gen(c, 1.0), gen(other, 1.0))


def test_the_generator_interface_is_the_sampler_from_T(net):
  """G(z, c) of the generator-fed methods is the DDIM chain from x_T = z, differentiable in
  z, and a soft condition is the mixture of class embeddings."""
  model, variables = net
  generator = diffusion.DiffusionGenerator(model, steps=4)
  frozen = {"params": jax.tree.map(jnp.zeros_like, variables["params"]),
            "ema": variables["params"]}
  z = jax.random.normal(jax.random.key(5), (3, 16))
  c = jax.nn.one_hot(jnp.array([0, 1, 2]), 3)
  images = generator.apply(frozen, z, c)
  by_hand = diffusion.to_images(diffusion.reverse(
      model.eps_fn(variables, c), model.schedule, z.reshape(3, 4, 4, 1), 20,
      sampler="ddim", steps=4))
  np.testing.assert_array_equal(images, by_hand)
  assert images.shape == (3, 4, 4, 1) and generator.latent_dim == 16
  grad = jax.grad(lambda z: generator.apply(frozen, z, c).sum())(z)
  assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0


def test_sample_metrics_against_brute_force():
  rng = np.random.default_rng(0)
  real, fake = rng.normal(size=(60, 3)), rng.normal(0.5, 1.0, size=(50, 3))
  k = 3
  d = lambda a, b: np.linalg.norm(a[:, None] - b[None], axis=-1)
  r_real = np.sort(d(real, real), 1)[:, k]
  r_fake = np.sort(d(fake, fake), 1)[:, k]
  cross = d(real, fake)
  expected = {"precision": np.mean([any(cross[i, j] <= r_real[i] for i in range(60))
                                    for j in range(50)]),
              "recall": np.mean([any(cross[i, j] <= r_fake[j] for j in range(50))
                                 for i in range(60)]),
              "density": np.mean([sum(cross[i, j] <= r_real[i] for i in range(60))
                                  for j in range(50)]) / k,
              "coverage": np.mean([any(cross[i, j] <= r_real[i] for j in range(50))
                                   for i in range(60)])}
  got = generative.manifold_metrics(real, fake, k)
  for name, value in expected.items():
    np.testing.assert_allclose(got[name], value, err_msg=name)
  same = generative.manifold_metrics(real, real, k)
  assert same["precision"] == same["recall"] == same["coverage"] == 1.0
  labels = np.repeat([0, 1], 30)
  centroids = generative.class_centroids(real, labels, 2)
  geometry = generative.class_geometry(real, labels, centroids)
  np.testing.assert_allclose(geometry["centroid_distance"], geometry["spread"])
  np.testing.assert_allclose(geometry["spread"], np.mean(
      [np.linalg.norm(real[labels == y] - real[labels == y].mean(0), axis=1).mean()
       for y in (0, 1)]))


# -- runs -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A tiny ddpm run, a tiny reference classifier (a CNN), both on digits."""
  root = tmp_path_factory.mktemp("diffusion")
  ddpm = str(root / "ddpm")
  results = jaxlab.train_and_evaluate(jaxlab.load_config("configs/ddpm.py:tiny"), ddpm)
  classifier = str(root / "reference")
  jaxlab.train_and_evaluate(jaxlab.load_config(
      "configs/diffusion_gap.py:tiny", {"train.steps": 30}), classifier)
  return {"root": root, "ddpm": ddpm, "reference": classifier, "ddpm_results": results}


def test_a_ddpm_run_writes_samples_and_its_ema_is_the_generator(runs):
  assert os.path.getsize(os.path.join(runs["ddpm"], "samples.png")) > 1000
  assert np.isfinite(runs["ddpm_results"]["test/loss"])
  # a second run of the same config on a fresh workdir: the same numbers
  again = jaxlab.train_and_evaluate(jaxlab.load_config("configs/ddpm.py:tiny"),
                                    str(runs["root"] / "ddpm_again"))
  assert again["test/loss"] == runs["ddpm_results"]["test/loss"]


def test_reconstructed_training_set_feeds_a_classifier_and_the_gap_analysis(runs):
  overrides = {"data.reconstruct.run": runs["ddpm"], "data.reconstruct.t": 0.5,
               "train.steps": 3}
  config = jaxlab.load_config("configs/diffusion_gap.py:tiny", overrides)
  method = jaxlab.get_method(config.method)
  task = method.make_task(config)
  real = jaxlab.get_method("erm").make_task(
      jaxlab.load_config("configs/diffusion_gap.py:tiny")).train_arrays()
  trained_on = task.train_arrays()
  np.testing.assert_array_equal(trained_on["label"], real["label"])
  assert trained_on["image"].dtype == np.uint8
  assert 0 < np.abs(trained_on["image"].astype(int) - real["image"]).mean() < 128
  # D^(t) depends on the example and the seed, not on the chunk it was made in
  model = inputs.diffusion_model(runs["ddpm"], "x", 10, (8, 8, 1))
  like = jax.eval_shape(lambda: diffusion.DiffusionGenerator(model).init(jax.random.key(0)))
  variables = checkpoint.load_pretrained(runs["ddpm"], like)
  t = reconstruction.step_of(model, 0.5)
  rc = config.data.reconstruct
  np.testing.assert_array_equal(reconstruction.reconstruct_images(
      model, variables, real["image"][:40], real["label"][:40], t, rc, chunk=7),
      trained_on["image"][:40])
  # the analysis measures the same images, t = 0 being the real set itself
  gap = jaxlab.load_config("configs/diffusion_gap.py:tiny_metrics", {
      "inputs.diffusion": runs["ddpm"], "inputs.reference": runs["reference"],
      "gap.t_grid": (0.0, 0.5)})
  results = jaxlab.train_and_evaluate(gap, str(runs["root"] / "gap"))
  assert results["gap/t0/pixel_distance"] == 0.0
  assert results["gap/t0/precision"] == results["gap/t0/coverage"] == 1.0
  assert results["gap/t0/frechet_distance"] < 1e-6
  assert results["gap/t0.5/pixel_distance"] > 0
  np.testing.assert_allclose(results["gap/t0/reference_accuracy"],
                             results["test/reference_accuracy"], atol=0.2)
  pixels = np.sqrt(((trained_on["image"] / 255.0 - real["image"] / 255.0) ** 2).reshape(
      len(real["label"]), -1).mean(1)).mean()
  np.testing.assert_allclose(results["gap/t0.5/pixel_distance"], pixels, rtol=1e-5)
  for name in ("gap.json", "gap_curves.png", "reconstructions.png"):
    assert os.path.getsize(os.path.join(runs["root"], "gap", name)) > 100


def test_mgr_runs_with_a_ddpm_generator(runs):
  config = jaxlab.load_config("configs/mgr.py:digits,method=mgr,fraction=0.1", {
      "generator.kind": "ddpm", "generator.sample_steps": 2, "inputs.generator": runs["ddpm"],
      "model.channels": (8, 8), "train.steps": 3, "train.eval_every": 0,
      "train.log_every": 1, "generative.finder_lr": 0.01})
  results = jaxlab.train_and_evaluate(config, str(runs["root"] / "mgr"))
  assert np.isfinite(results["test/accuracy"]) and results["train/meta/latent_shift"] > 0
  with open(os.path.join(runs["root"], "mgr", "config.json")) as f:
    assert json.load(f)["generator"]["kind"] == "ddpm"


def test_bad_diffusion_inputs_are_one_line(runs):
  cgan_reading_ddpm = jaxlab.load_config("configs/mgr.py:digits,method=gda", {
      "inputs.generator": runs["ddpm"], "train.steps": 1})
  with pytest.raises(UserError, match="generator.kind=ddpm"):
    jaxlab.train_and_evaluate(cgan_reading_ddpm, str(runs["root"] / "bad1"))
  with pytest.raises(UserError, match=r"data.reconstruct.t=1.5 must be a fraction"):
    jaxlab.get_method("erm").make_task(jaxlab.load_config("configs/diffusion_gap.py:tiny", {
        "data.reconstruct.run": runs["ddpm"], "data.reconstruct.t": 1.5}))
  not_ddpm = jaxlab.load_config("configs/diffusion_gap.py:tiny", {
      "data.reconstruct.run": runs["reference"]})
  with pytest.raises(UserError, match="not a ddpm run"):
    jaxlab.get_method("erm").make_task(not_ddpm)
  with pytest.raises(UserError, match="train.steps=0"):
    jaxlab.get_method("diffusion_gap").make_task(jaxlab.load_config(
        "configs/diffusion_gap.py:tiny_metrics", {"train.steps": 5}))
  with pytest.raises(UserError, match="diffusion.sampler"):
    jaxlab.train_and_evaluate(jaxlab.load_config("configs/ddpm.py:tiny", {
        "diffusion.sampler": "euler"}), str(runs["root"] / "bad2"))
  assert not os.path.exists(runs["root"] / "bad2" / "config.json")
