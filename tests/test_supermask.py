"""Supermask machinery (straight-through masks, threshold policies, re-randomisation) and the
edge-popup / IteRand / Meta-ticket methods built on it."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import jaxlab
from jaxlab import models
from jaxlab.data.tasks import Spec
from jaxlab.models import supermask


def _mlp():
  model = models.build(ml_collections.ConfigDict(dict(
      name="mlp", hidden=(32, 16), norm="none", weight_init="kaiming_uniform")), num_classes=4)
  params = model.init(jax.random.key(0), jnp.ones((2, 10)))["params"]
  paths = supermask.select(params, "kernel")
  scores = supermask.init_scores(jax.random.key(1), params, paths, "kaiming_uniform")
  x = jax.random.normal(jax.random.key(2), (8, 10))
  y = jnp.arange(8) % 4
  loss = lambda p: -jnp.mean(jax.nn.log_softmax(model.apply({"params": p}, x))[jnp.arange(8), y])
  return params, scores, loss


@pytest.mark.parametrize("policy", ["topk_raw", "topk_abs", "global_abs", "fixed_threshold"])
def test_straight_through_gradient_is_dense_gradient_times_the_mask_rule(policy):
  params, scores, loss = _mlp()
  fixed = supermask.thresholds(scores, 0.3)
  def masked_loss(s):
    return loss(supermask.apply(params, supermask.masks(s, policy, 0.4, fixed)))
  got = jax.grad(masked_loss)(scores)
  hard = jax.tree.map(jax.lax.stop_gradient, supermask.masks(scores, policy, 0.4, fixed))
  effective = supermask.apply(params, hard)
  dense = supermask.flatten(jax.grad(loss)(effective))  # dL/dW_eff at the masked weights
  flat = supermask.flatten(params)
  for path, g in got.items():
    expected = dense[path] * flat[path]
    if policy in ("topk_abs", "global_abs"):  # the STE sits on |s|: autodiff adds sign(s)
      expected = expected * jnp.sign(scores[path])
    np.testing.assert_allclose(g, expected, rtol=1e-6, atol=1e-8)
    # pruned connections still get a signal (how a pruned weight can come back)
    assert np.abs(np.asarray(g)[np.asarray(hard[path]) == 0]).max() > 0


def test_forward_mask_is_exactly_binary():
  _, scores, _ = _mlp()
  for m in supermask.masks(scores, "topk_raw", 0.37).values():
    assert set(np.unique(np.asarray(m))) <= {0.0, 1.0}


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.93])
def test_sparsity_is_exact_for_each_policy(p):
  _, scores, _ = _mlp()
  # ties everywhere: scores quantised to a few values
  tied = {k: jnp.round(v * 4) / 4 for k, v in scores.items()}
  for s in (scores, tied):
    raw = supermask.masks(s, "topk_raw", p)
    absolute = supermask.masks(s, "topk_abs", p)
    for path, v in s.items():
      assert int(raw[path].sum()) == v.size - round(p * (v.size - 1))
      assert int(absolute[path].sum()) == v.size - int(p * v.size)
    total = sum(v.size for v in s.values())
    assert int(sum(m.sum() for m in supermask.masks(s, "global_abs", p).values())) == (
        total - int(p * total))
  fixed = supermask.masks(scores, "fixed_threshold", 0.0, supermask.thresholds(scores, p))
  for path, v in scores.items():  # at init, tau keeps n - (k - 1), k = 1 + round(p (n - 1))
    assert int(fixed[path].sum()) == v.size - round(p * (v.size - 1))


def test_ties_are_broken_by_position():
  s = {"w": jnp.array([1.0, 0.5, 0.5, 0.5, 2.0])}
  np.testing.assert_array_equal(supermask.masks(s, "topk_raw", 0.5)["w"], [1, 0, 0, 1, 1])


def test_rerandomisation_touches_only_pruned_weights():
  params, scores, _ = _mlp()
  hard = supermask.masks(scores, "topk_abs", 0.5)
  new = supermask.flatten(supermask.rerandomize(jax.random.key(5), params, hard, 1.0,
                                                "kaiming_uniform"))
  partial = supermask.flatten(supermask.rerandomize(jax.random.key(5), params, hard, 0.1,
                                                    "kaiming_uniform"))
  old = supermask.flatten(params)
  for path, m in hard.items():
    kept, pruned = np.asarray(m) == 1, np.asarray(m) == 0
    np.testing.assert_array_equal(new[path][kept], old[path][kept])
    np.testing.assert_array_equal(partial[path][kept], old[path][kept])
    assert (np.asarray(new[path])[pruned] != np.asarray(old[path])[pruned]).all()  # r = 1: all
    changed = (np.asarray(partial[path])[pruned] != np.asarray(old[path])[pruned]).mean()
    assert 0.0 < changed < 0.3  # r = 0.1: about a tenth
  for path in old:  # biases are never masked nor re-drawn
    if path not in hard:
      np.testing.assert_array_equal(new[path], old[path])


def _run_steps(config, steps, spec):
  method = jaxlab.get_method(config.method)
  task = method.make_task(config)
  state = method.init(config, jax.random.key(0), spec)
  data = jax.device_put(task.train_arrays())
  step = jax.jit(lambda s, d: method.train_step(
      s, task.train_batch(d, jax.random.key(1), s.step), jax.random.fold_in(jax.random.key(2),
                                                                            s.step),
      config=config, spec=spec))
  history = [state]
  for _ in range(steps):
    state, _ = step(state, data)
    history.append(state)
  return history


def test_edge_popup_trains_scores_only_and_iterand_redraws_on_schedule():
  spec = Spec(input_shape=(8, 8, 1), num_classes=10)
  config = jaxlab.load_config("configs/supermask.py:digits_mlp,width=0.25")
  history = _run_steps(config, 3, spec)
  w0 = supermask.flatten(history[0].model_state["weights"])
  for state in history[1:]:
    for path, w in supermask.flatten(state.model_state["weights"]).items():
      np.testing.assert_array_equal(w, w0[path])  # edge-popup never changes a weight
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(history[0].params), jax.tree.leaves(history[-1].params)))

  config = jaxlab.load_config("configs/supermask.py:digits_mlp,width=0.25,method=iterand,"
                              "rerand_rate=1.0")
  config.supermask.rerand_period = 3
  history = _run_steps(config, 4, spec)
  for t in range(4):  # the redraw happens in the step taken at t with (t + 1) % 3 == 0
    before = supermask.flatten(history[t].model_state["weights"])
    after = supermask.flatten(history[t + 1].model_state["weights"])
    changed = any(not np.array_equal(before[p], after[p]) for p in before)
    assert changed == ((t + 1) % 3 == 0), t
    if changed:
      hard = supermask.masks(history[t].params["scores"], "topk_raw", config.supermask.sparsity)
      for path, m in hard.items():
        np.testing.assert_array_equal(np.asarray(after[path])[np.asarray(m) == 1],
                                      np.asarray(before[path])[np.asarray(m) == 1])


@pytest.mark.parametrize("method,override,bound", [
    ("edge_popup", "", lambda fan_in: 1 / np.sqrt(fan_in)),  # kaiming_uniform(a=sqrt(5))
    ("iterand", "", lambda fan_in: np.sqrt(6 / fan_in)),     # kaiming_uniform
    ("edge_popup", "kaiming_uniform", lambda fan_in: np.sqrt(6 / fan_in))])
def test_scores_are_drawn_as_each_reference_draws_them(method, override, bound):
  config = jaxlab.load_config(f"configs/supermask.py:digits_mlp,method={method}",
                              {"supermask.score_init": override})
  state = jaxlab.get_method(method).init(config, jax.random.key(0), Spec((8, 8, 1), 10))
  for path, scores in state.params["scores"].items():
    limit = bound(scores.shape[0])
    assert np.abs(scores).max() <= limit and np.abs(scores).max() > 0.97 * limit, path
    assert abs(float(np.var(scores)) - limit ** 2 / 3) < 0.1 * limit ** 2 / 3, path


def test_meta_ticket_warms_up_from_lr_over_w_plus_one():
  """MT's schedulers.py: lr (t + 1) / (W + 1) for t < W, then cosine from lr."""
  from jaxlab.train import optim
  config = jaxlab.load_config("configs/meta_ticket.py:glyphs_5w1s")
  lr, warmup, total = 10.0, 1000, config.train.steps
  schedule = optim.make_schedule(config.optimizer, total)
  for t in (0, 1, 499, warmup - 1):
    assert float(schedule(t)) == pytest.approx(lr * (t + 1) / (warmup + 1), rel=1e-6), t
  assert float(schedule(warmup)) == pytest.approx(lr, rel=1e-6)
  t = (warmup + total) // 2
  assert float(schedule(t)) == pytest.approx(lr * 0.5 * (1 + np.cos(
      np.pi * (t - warmup) / (total - warmup))), rel=1e-5)


def test_meta_ticket_rerandomises_after_the_update_with_the_updated_mask():
  """MT's rerandomize runs after the optimizer step (its counter at t + 1) with the mask of
  the updated scores, so a run's last step can redraw the weights its evaluation uses."""
  from jaxlab.methods import supermask as family
  config = jaxlab.load_config("configs/meta_ticket.py:glyphs_5w1s,factor=0.25,rerand_rate=1.0",
                              {"supermask.sparsity": 0.5, "supermask.rerand_period": 2,
                               "episodes.meta_batch": 2, "optimizer.warmup_steps": 0})
  history = _run_steps(config, 2, Spec((28, 28, 1), 5))
  masks = lambda state: {p: np.asarray(m) for p, m in family._ticket_masks(
      state.params, state.model_state, config).items()}
  weights = lambda state: {p: np.asarray(w) for p, w in supermask.flatten(
      state.model_state["weights"]).items()}
  for p, w in weights(history[1]).items():  # step 0: (0 + 1) % 2 != 0, no redraw
    np.testing.assert_array_equal(w, weights(history[0])[p])
  before, after, new_masks = weights(history[1]), weights(history[2]), masks(history[2])
  old_masks = masks(history[1])
  assert any(np.any(new_masks[p] != old_masks[p]) for p in new_masks)  # the step moved masks
  for p, m in new_masks.items():
    np.testing.assert_array_equal(after[p][m == 1], before[p][m == 1])
    assert np.all(after[p][m == 0] != before[p][m == 0]), p


def test_iterand_without_rerandomisation_is_refused():
  config = jaxlab.load_config("configs/supermask.py:digits_mlp,method=iterand,rerand_rate=0.0")
  with pytest.raises(jaxlab.UserError, match="rerand_rate > 0"):
    jaxlab.get_method("iterand").init(config, jax.random.key(0), Spec((8, 8, 1), 10))


def test_meta_ticket_with_zero_lr_equals_untrained_maml(tmp_path):
  """§2(g) sanity check: lr 0 (and a dense start) = MAML from the same random init, not
  meta-learned: both adapt the same random network on the same test episodes."""
  common = {"train.steps": 3, "episodes.eval_episodes": 20, "episodes.eval_meta_batch": 10,
            "data.eval_splits": "test", "train.checkpoint_every": 0}
  ticket = jaxlab.load_config("configs/meta_ticket.py:glyphs_5w1s,factor=0.25",
                              {**common, "optimizer.learning_rate": 0.0})
  maml = jaxlab.load_config("configs/meta_ticket.py:glyphs_5w1s,factor=0.25,method=maml",
                            {**common, "train.steps": 0})
  a = jaxlab.train_and_evaluate(ticket, str(tmp_path / "ticket"))
  b = jaxlab.train_and_evaluate(maml, str(tmp_path / "maml"))
  assert a["test/accuracy"] == pytest.approx(b["test/accuracy"], abs=1e-6)
  assert a["test/loss"] == pytest.approx(b["test/loss"], rel=1e-5)


def test_meta_ticket_learns_scores_not_weights_and_pruned_weights_get_no_inner_update():
  from jaxlab.meta import episodic
  from jaxlab.methods import supermask as family
  config = jaxlab.load_config("configs/meta_ticket.py:glyphs_5w1s,factor=0.25")
  config.supermask.sparsity = 0.5  # start half pruned, so pruned entries exist
  spec = Spec(input_shape=(28, 28, 1), num_classes=5)
  state = jaxlab.get_method("meta_ticket").init(config, jax.random.key(0), spec)
  assert set(state.params) == {"scores", "aux"} and not state.params["aux"]
  assert not any("head" in p for p in state.params["scores"])  # the head is never meta-learned
  masks = family._ticket_masks(state.params, state.model_state, config)
  weights = state.model_state["weights"]
  rng = np.random.default_rng(0)
  support = {"x": jnp.asarray(rng.uniform(size=(5, 28, 28, 1)), jnp.float32),
             "y": jnp.arange(5)}
  loss = lambda p: episodic.loss_and_metric(spec)(models.build(config.model, 5).apply(
      {"params": supermask.apply(p, masks)}, support["x"], train=True), support["y"])[0]
  grads = supermask.flatten(jax.grad(loss)(weights))
  for path, m in masks.items():
    assert np.all(np.asarray(grads[path])[np.asarray(m) == 0] == 0)
    assert np.abs(np.asarray(grads[path])[np.asarray(m) == 1]).max() > 0
