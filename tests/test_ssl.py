"""FixMatch (docs/specs/generative_and_finetuning.md §3(g) oracle, §4 P-SSL's SSL step):
the pseudo-label loss against numpy, cutout, and the unlabeled branch entering only
through its weight; PP + P-SSL (§4(g) unit tests): one-hot conditioning, frozen G_s and C_s,
PP independent of real data."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxlab
from jaxlab import methods
from jaxlab.data import augment
from jaxlab.data.tasks import Spec
from jaxlab.errors import UserError
from jaxlab.methods import generative_reg as core
from jaxlab.methods import meta_gen_ssl
from jaxlab.methods import ssl as family
from jaxlab.train import inputs, optim


def test_pseudo_label_loss_matches_numpy_and_stops_the_weak_gradient():
  rng = np.random.default_rng(0)
  weak = rng.normal(scale=3.0, size=(40, 5))
  strong = rng.normal(size=(40, 5))
  threshold = 0.7
  probs = np.exp(weak - weak.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  mask = probs.max(1) >= threshold
  labels = probs.argmax(1)
  log_softmax = strong - strong.max(1, keepdims=True)
  log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
  expected = -(mask * log_softmax[np.arange(40), labels]).sum() / 40  # masked ones count
  assert 0 < mask.sum() < 40  # both kinds present, so the check means something
  loss, got_mask, got_labels = family.pseudo_label_loss(jnp.asarray(weak),
                                                          jnp.asarray(strong), threshold)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_array_equal(got_mask, mask.astype(np.float32))
  np.testing.assert_array_equal(got_labels, labels)
  weak_grad = jax.grad(lambda w: family.pseudo_label_loss(w, jnp.asarray(strong),
                                                            threshold)[0])(jnp.asarray(weak))
  np.testing.assert_array_equal(weak_grad, 0.0)
  strong_grad = jax.grad(lambda s: family.pseudo_label_loss(jnp.asarray(weak), s,
                                                              threshold)[0])(jnp.asarray(strong))
  np.testing.assert_array_equal(np.abs(strong_grad).sum(1) > 0, mask)  # only confident rows


def test_cutout_zeroes_one_clipped_square_per_image():
  images = jnp.ones((64, 12, 12, 3))
  out = np.asarray(augment.cutout(images, jax.random.key(0), 4))
  assert set(np.unique(out)) == {0.0, 1.0}
  for image in out:
    zero = image[..., 0] == 0
    np.testing.assert_array_equal(zero, (image == 0).all(-1))  # all channels together
    rows, cols = np.flatnonzero(zero.any(1)), np.flatnonzero(zero.any(0))
    assert zero.sum() == len(rows) * len(cols)  # one rectangle...
    assert np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
    assert 2 <= len(rows) <= 4 and 2 <= len(cols) <= 4  # ...a 4x4 square, clipped at edges
  assert any((out[i] == 0).all(-1).sum() == 16 for i in range(64))


def _config(method, **overrides):
  return jaxlab.load_config(f"configs/ssl.py:digits,method={method},labels=2", {
      "model.channels": (4, 6), "ssl.unlabeled_ratio": 2, "train.batch_size": 8, **overrides})


def _train(config, steps=4):
  method = methods.get_method(config.method)
  task = method.make_task(config)
  data = jax.tree.map(jnp.asarray, task.train_arrays())
  state = method.init(config, jax.random.key(0), task.spec)
  step = jax.jit(lambda s, i: method.train_step(
      s, task.train_batch(data, jax.random.key(1), i), jax.random.fold_in(jax.random.key(2), i),
      config=config, spec=task.spec))
  for i in range(steps):
    state, metrics = step(state, jnp.asarray(i))
  return state, metrics


def test_with_zero_weight_fixmatch_trains_like_supervised_on_the_labeled_subset():
  # the unlabeled views share the forward pass (no BatchNorm in this CNN), so with
  # lambda_u = 0 the labeled batches and hence the updates must be erm's
  fixmatch_state, metrics = _train(_config("fixmatch", **{"ssl.weight": 0.0,
                                                          "ssl.threshold": 0.1}))
  erm_state, _ = _train(_config("erm"))
  assert float(metrics["unsup"]) > 0  # the unlabeled loss was there, weighted by 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               fixmatch_state.params, erm_state.params)


def test_bad_ssl_settings_are_one_line_errors():
  with pytest.raises(UserError, match="unknown ssl.unlabeled 'pool'; valid choices: all, rest"):
    family.make_task(_config("fixmatch", **{"ssl.unlabeled": "pool"}))
  with pytest.raises(UserError, match="threshold"):
    family.make_task(_config("fixmatch", **{"ssl.threshold": 1.5}))
  everything = _config("fixmatch", **{"ssl.unlabeled": "rest", "data.per_class": 0,
                                      "data.train_fraction": 1.0, "data.val_fraction": 0.1})
  with pytest.raises(UserError, match="no unlabeled images"):
    family.make_task(everything)


# -- PP + P-SSL (§4) ---------------------------------------------------------------------------

def _source_classifier_run(tmp_path) -> str:
  """An (untrained) MLP classifier run directory: config.json only; its weights come from
  init in these tests."""
  source = tmp_path / "c_s"
  source.mkdir(exist_ok=True)
  (source / "config.json").write_text(json.dumps(
      {"model": {"name": "mlp", "hidden": [8], "norm": "none", "weight_init": "flax"}}))
  return str(source)


def _pssl_config(tmp_path, **overrides):
  """pssl on digits 5-9 with a random G_s and an untrained MLP C_s run directory."""
  source = _source_classifier_run(tmp_path)
  return jaxlab.load_config("configs/pp_pssl.py:digits,method=pssl,n=4", {
      "model.channels": (4, 6), "ssl.unlabeled_ratio": 2, "train.batch_size": 8,
      "generator.width": 8, "inputs.generator": str(tmp_path / "g_s_not_read"),
      "inputs.source_classifier": source, **overrides})


def _target_images(n=12):
  return jnp.asarray(np.random.default_rng(0).uniform(size=(n, 8, 8, 1)), jnp.float32)


def test_a_one_hot_posterior_conditions_the_generator_as_its_hard_class(tmp_path):
  config = _pssl_config(tmp_path, **{"pssl.temperature": 1e-6})
  spec = Spec(input_shape=(8, 8, 1), num_classes=5)
  state = jax.jit(lambda key: jaxlab.get_method("pssl").init(config, key, spec))(
      jax.random.key(0))
  x_t = _target_images()
  logits = inputs.classifier_model(config, "source_classifier", 5).apply(
      state.frozen["source_classifier"], x_t)
  assert len(set(np.asarray(jnp.argmax(logits, -1)))) > 1  # a random C_s, not a constant one
  c = family.source_conditions(config, state, x_t, jax.random.key(1))
  np.testing.assert_array_equal(c, jax.nn.one_hot(jnp.argmax(logits, -1), 5))
  generator = inputs.generator_model(config, spec, 5)
  z = jax.random.normal(jax.random.key(2), (12, 8))
  hard = generator.apply(state.frozen["generator"], z, jax.nn.one_hot(jnp.argmax(logits, -1), 5))
  np.testing.assert_array_equal(generator.apply(state.frozen["generator"], z, c), hard)
  soft = family.source_conditions(_pssl_config(tmp_path), state, x_t, jax.random.key(1))
  np.testing.assert_allclose(soft, jax.nn.softmax(logits), rtol=1e-6)  # temperature 1
  uniform = family.source_conditions(_pssl_config(tmp_path, **{"pssl.conditioning": "uniform"}),
                                   state, jnp.zeros((200, 8, 8, 1)), jax.random.key(1))
  np.testing.assert_array_equal(uniform.sum(-1), 1.0)
  assert set(np.asarray(uniform.argmax(-1))) == set(range(5))


def test_no_gradient_reaches_the_frozen_generator_or_source_classifier(tmp_path):
  config = _pssl_config(tmp_path, **{"ssl.threshold": 0.1})
  spec = Spec(input_shape=(8, 8, 1), num_classes=5)
  start = jax.jit(lambda key: jaxlab.get_method("pssl").init(config, key, spec))(
      jax.random.key(0))
  frozen = lambda s: s.frozen
  grads = jax.jit(jax.grad(lambda f: family.pseudo_samples(
      config, spec, start.replace(frozen=f), _target_images(),
      jax.random.key(1))[0].sum()))(frozen(start))
  jax.tree.map(lambda g: np.testing.assert_array_equal(g, 0.0), grads)
  state, metrics = _train(config, steps=3)
  assert float(metrics["mask_rate"]) > 0 and float(metrics["condition_entropy"]) > 0
  jax.tree.map(np.testing.assert_array_equal, frozen(state), frozen(start))
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), state.params, start.params)
  assert min(jax.tree.leaves(moved)) > 0


def test_pseudo_pretraining_ignores_the_real_batch():
  # PP = gda with real_weight 0: the loss and its gradient come from generated pairs alone
  config = jaxlab.load_config("configs/pp_pssl.py:pp", {
      "model.channels": (4, 6), "generator.width": 8, "generative.synthetic_batch": 6})
  spec = Spec(input_shape=(8, 8, 1), num_classes=5)
  state = jax.jit(lambda key: jaxlab.get_method("gda").init(config, key, spec))(
      jax.random.key(0))
  synthetic, labels, _ = core.synthetic_batch(config, spec, state.frozen["generator"],
                                              state.finder_params, jax.random.key(1), 6,
                                              use_finder=False)
  grads = jax.jit(lambda batch: jax.grad(lambda p: core.regularised_loss(
      config, spec, state, p, batch, synthetic, labels, jax.random.key(2), "gda")[0])(
          state.params))
  batches = [{"image": jnp.asarray(rng.uniform(size=(6, 8, 8, 1)), jnp.float32),
              "label": jnp.asarray(rng.integers(0, 5, 6))}
             for rng in (np.random.default_rng(0), np.random.default_rng(1))]
  first = grads(batches[0])
  jax.tree.map(np.testing.assert_array_equal, first, grads(batches[1]))
  assert max(jax.tree.leaves(jax.tree.map(lambda g: float(jnp.abs(g).max()), first))) > 0


# -- KD baseline of §4 ------------------------------------------------------------------------

def test_kd_distils_the_source_posterior_through_its_own_head(tmp_path):
  config = _pssl_config(tmp_path, **{"method": "kd", "inputs.generator": ""})
  spec = Spec(input_shape=(8, 8, 1), num_classes=5)
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(16, 5)), rng.normal(scale=3.0, size=(16, 5))
  t = 4.0
  p = np.exp(teacher / t) / np.exp(teacher / t).sum(1, keepdims=True)
  q = np.exp(student / t) / np.exp(student / t).sum(1, keepdims=True)
  expected = t ** 2 * np.mean(np.sum(p * (np.log(p) - np.log(q)), 1))
  np.testing.assert_allclose(family.distillation_loss(jnp.asarray(student), jnp.asarray(teacher),
                                                  t), expected, rtol=1e-5)
  kd = jaxlab.get_method("kd")
  start = jax.jit(lambda key: kd.init(config, key, spec))(jax.random.key(0))
  state, metrics = _train(config, steps=3)
  assert float(metrics["kd"]) > 0
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), state.params, start.params)
  assert min(jax.tree.leaves(moved)) > 0  # the target head and the distilling head both train
  assert set(start.frozen) == {"source_classifier"}  # kd reads no generator
  jax.tree.map(np.testing.assert_array_equal, state.frozen, start.frozen)
  # the evaluated logits are the target head's: 5 target classes, kd_head ignored
  logits = kd.eval_step(state, {"image": _target_images(4), "label": jnp.zeros(4, jnp.int32)},
                        jax.random.key(0), config=config, spec=spec)
  assert logits["loss"].shape == (4,)


# -- generative SSL with meta-optimised latents (§3) ------------------------------------------

def _meta_gen_ssl_config(tmp_path, **overrides):
  """meta_gen_ssl on digits with a random generator and an untrained MLP C_s run directory."""
  source = _source_classifier_run(tmp_path)
  return jaxlab.load_config("configs/ssl.py:digits,method=meta_gen_ssl,labels=1", {
      "model.channels": (4, 6), "generator.width": 8, "train.batch_size": 6,
      "meta_gen_ssl.synthetic_batch": 6, "meta_gen_ssl.pool_size": 10,
      "inputs.generator": str(tmp_path / "g_not_read"),
      "inputs.source_classifier": source, **overrides})


LABELED = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1)).astype(np.uint8)


def _meta_gen_ssl_start(config, spec=Spec(input_shape=(8, 8, 1), num_classes=10)):
  """(state after start_from on 4 labeled images, spec)."""
  state = jax.jit(lambda key: jaxlab.get_method("meta_gen_ssl").init(config, key, spec))(
      jax.random.key(0))
  return meta_gen_ssl.start_from(state, {"image": LABELED}, config=config, spec=spec), spec


def _meta_batch(rows, n=6, seed=0):
  rng = np.random.default_rng(seed)
  images = lambda: jnp.asarray(rng.uniform(size=(n, 8, 8, 1)), jnp.float32)
  return {"image": images(), "label": jnp.asarray(rng.integers(0, 10, n)),
          "val_image": images(), "val_label": jnp.asarray(rng.integers(0, 10, n)),
          "anchor_image": images(), "anchor_label": jnp.asarray(rng.integers(0, 10, n)),
          "latent_index": jnp.asarray(rows)}


def test_latent_meta_gradient_matches_central_differences_in_float64(tmp_path):
  config = _meta_gen_ssl_config(tmp_path)
  with jax.enable_x64(True):
    state, spec = _meta_gen_ssl_start(config)
    to64 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.float64) if jnp.issubdtype(
        x.dtype, jnp.floating) else x, tree)
    state, batch = to64(state), to64(_meta_batch(np.arange(6)))
    nu = jax.tree.map(lambda x: x[:6], state.latents)
    objective = jax.jit(lambda latents: meta_gen_ssl.meta_objective(
        config, spec, state, batch, latents, jax.random.key(3), 0.1))
    value, (val_loss, sim), grads = objective(nu)
    assert float(val_loss) > 0 and float(sim) > 0  # both terms are in the objective
    rng = np.random.default_rng(1)
    for _ in range(3):  # directional derivatives along random directions of (u, a)
      direction = {k: jnp.asarray(rng.normal(size=v.shape)) for k, v in nu.items()}
      h = 1e-5
      at = lambda s: float(objective({k: nu[k] + s * h * direction[k] for k in nu})[0])
      numeric = (at(1.0) - at(-1.0)) / (2 * h)
      analytic = sum(float(jnp.sum(grads[k] * direction[k])) for k in nu)
      np.testing.assert_allclose(analytic, numeric, rtol=1e-4)
      assert abs(analytic) > 1e-8
    # the look-ahead term alone has a gradient of its own (not only L_sim's)
    no_sim = _meta_gen_ssl_config(tmp_path, **{"meta_gen_ssl.beta": 0.0})
    _, _, lookahead_grads = jax.jit(lambda latents: meta_gen_ssl.meta_objective(
        no_sim, spec, state, batch, latents, jax.random.key(3), 0.1))(nu)
    assert float(optax.tree.norm(lookahead_grads)) > 0


def test_resemblance_loss_decreases_in_the_meta_phase_without_the_lookahead(tmp_path):
  config = _meta_gen_ssl_config(tmp_path, **{"meta_gen_ssl.meta_weight": 0.0,
                                             "meta_gen_ssl.lr_u": 0.2,
                                             "meta_gen_ssl.lr_a": 0.2})
  state, spec = _meta_gen_ssl_start(config)
  start = state
  # a = log C_s of each latent's anchor x_(j mod N): the pseudo-conditional initialisation
  anchors = augment.to_float(jnp.asarray(LABELED))[np.arange(10) % 4]
  source_logits = inputs.classifier_model(config, "source_classifier", 10).apply(
      state.frozen["source_classifier"], anchors)
  np.testing.assert_allclose(state.latents["a"], jax.nn.log_softmax(source_logits), rtol=1e-6)
  batch = _meta_batch(np.arange(2, 8))
  step = jax.jit(lambda s: meta_gen_ssl.meta_step(config, spec, s, batch, jax.random.key(1),
                                                  0.1))
  sims = []
  for _ in range(15):
    latents, opt_state, metrics = step(state)
    state = state.replace(latents=latents, latent_opt_state=opt_state)
    sims.append(float(metrics["meta/resemblance"]))
  assert float(metrics["meta/lookahead_loss"]) == 0.0  # switched off
  assert sims[-1] < 0.8 * sims[0], sims
  np.testing.assert_allclose(np.linalg.norm(state.latents["u"], axis=-1), np.sqrt(8), rtol=1e-5)
  outside = np.array([0, 1, 8, 9])  # rows never in nu_b: no gradient, no Adam movement
  np.testing.assert_array_equal(state.latents["a"][outside], start.latents["a"][outside])
  assert float(jnp.abs(state.latents["a"][2:8] - start.latents["a"][2:8]).max()) > 0.1


def test_row_adam_moves_a_row_as_an_adam_that_sees_it_only_when_sampled():
  rng = np.random.default_rng(0)
  pool = {"u": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
          "a": jnp.asarray(rng.normal(size=(5, 2)), jnp.float32)}
  lrs = {"u": 0.1, "a": 0.03}
  schedule = [[0, 1], [1, 2], [0, 2, 2], [1, 3]]  # row 2 twice at step 3: its gradients add
  grads = [{k: jnp.asarray(rng.normal(size=(len(rows),) + v.shape[1:]), jnp.float32)
            for k, v in pool.items()} for rows in schedule]
  params, state = pool, optim.row_adam_init(pool)
  for rows, g in zip(schedule, grads):
    params, state = optim.row_adam_update(params, g, state, jnp.asarray(rows), lrs)
  np.testing.assert_array_equal(state["count"], [2, 3, 2, 1, 0])
  for k in pool:  # row 4 was never sampled: unmoved, zero moments
    np.testing.assert_array_equal(params[k][4], pool[k][4])
    assert not np.any(state["mu"][k][4]) and not np.any(state["nu"][k][4])
  for row in range(4):  # each row against optax.adam run on that row alone
    for k in pool:
      tx = optax.adam(lrs[k])
      p = pool[k][row]
      opt_state = tx.init(p)
      for rows, g in zip(schedule, grads):
        if row in rows:
          row_grad = sum(g[k][i] for i, r in enumerate(rows) if r == row)
          updates, opt_state = tx.update(row_grad, opt_state, p)
          p = optax.apply_updates(p, updates)
      np.testing.assert_allclose(params[k][row], p, rtol=1e-6, atol=1e-7)


def test_latents_outside_the_batch_keep_their_values_and_moments_in_the_meta_phase(tmp_path):
  """Spec §3(c): an Adam step on the sampled latents. A row sampled at step 1 and not at step 2
  stays where step 1 left it (a dense Adam over the pool moved it by ~67% of a step)."""
  config = _meta_gen_ssl_config(tmp_path, **{"meta_gen_ssl.lr_u": 0.05,
                                             "meta_gen_ssl.lr_a": 0.05})
  state, spec = _meta_gen_ssl_start(config)
  step = jax.jit(lambda s, b: meta_gen_ssl.meta_step(config, spec, s, b, jax.random.key(1), 0.1))
  first_batch, second_batch = _meta_batch(np.arange(0, 6)), _meta_batch(np.arange(4, 10), seed=1)
  latents, opt_state, _ = step(state, first_batch)
  after_first = state.replace(latents=latents, latent_opt_state=opt_state)
  latents, opt_state, _ = step(after_first, second_batch)
  for k in ("u", "a"):
    np.testing.assert_array_equal(latents[k][:4], after_first.latents[k][:4])
    np.testing.assert_array_equal(opt_state["mu"][k][:4], after_first.latent_opt_state["mu"][k][:4])
    assert float(jnp.abs(latents[k][4:] - after_first.latents[k][4:]).max()) > 1e-3
  np.testing.assert_array_equal(opt_state["count"], [1] * 4 + [2] * 2 + [1] * 4)
  # a row's first step is a full Adam step: -lr g / (|g| + eps) on every coordinate of a
  nu = jax.tree.map(lambda x: x[np.arange(6)], state.latents)
  _, _, grads = jax.jit(lambda nu: meta_gen_ssl.meta_objective(
      config, spec, state, first_batch, nu, jax.random.key(1), 0.1))(nu)
  np.testing.assert_allclose(after_first.latents["a"][:6] - state.latents["a"][:6],
                             -0.05 * grads["a"] / (np.abs(grads["a"]) + 1e-8), rtol=1e-4,
                             atol=1e-7)


def test_random_latent_init_is_one_hot_and_non_meta_training_keeps_the_latents(tmp_path):
  config = _meta_gen_ssl_config(tmp_path, **{"meta_gen_ssl.latent_init": "random",
                                             "meta_gen_ssl.meta": False})
  state, spec = _meta_gen_ssl_start(config)
  conditions = np.asarray(jax.nn.softmax(state.latents["a"]))
  np.testing.assert_allclose(conditions.max(-1), 1.0, atol=1e-4)
  step = jax.jit(lambda s: meta_gen_ssl.train_step(s, _meta_batch(np.arange(6)),
                                                   jax.random.key(1), config=config, spec=spec))
  after, metrics = step(state)
  assert "meta/lookahead_loss" not in metrics and float(metrics["unsup"]) > 0
  jax.tree.map(np.testing.assert_array_equal, after.latents, state.latents)
  jax.tree.map(np.testing.assert_array_equal, after.frozen, state.frozen)
  # L_u acts on the feature extractor only: the head's gradient is the labeled CE's alone
  no_unsup = _meta_gen_ssl_config(tmp_path, **{"meta_gen_ssl.latent_init": "random",
                                               "meta_gen_ssl.meta": False,
                                               "meta_gen_ssl.weight": 0.0})
  synthetic = jnp.asarray(np.random.default_rng(3).uniform(size=(6, 8, 8, 1)), jnp.float32)
  head_grad = lambda c: jax.jit(jax.grad(lambda p: meta_gen_ssl.classifier_loss(
      c, spec, state, p, _meta_batch(np.arange(6)), synthetic, jax.random.key(2))[0]))(
          state.params)["head"]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8),
               head_grad(config), head_grad(no_unsup))


def test_bad_meta_gen_ssl_settings_are_one_line_errors(tmp_path):
  with pytest.raises(UserError, match="unknown meta_gen_ssl.latent_init 'zeros'; valid "
                                      "choices: pseudo_conditional, random"):
    meta_gen_ssl.make_task(_meta_gen_ssl_config(tmp_path, **{"meta_gen_ssl.latent_init":
                                                             "zeros"}))
  with pytest.raises(UserError, match="pool_size=4 must be >= meta_gen_ssl.synthetic_batch=6"):
    meta_gen_ssl.make_task(_meta_gen_ssl_config(tmp_path, **{"meta_gen_ssl.pool_size": 4}))
