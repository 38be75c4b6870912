"""jaxlab.meta.adapt against independent computations of the MAML meta-gradient (float64)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import jax.flatten_util

enable_x64 = lambda: jax.enable_x64(True)  # context manager

from jaxlab import meta, models


def _problem():
  """A small MLP with batch-statistics BN, a support set and a query set (float64)."""
  model = models.build(ml_collections.ConfigDict(dict(
      name="mlp", hidden=(6,), norm="batch_stats", weight_init="torch")), num_classes=3)
  k = jax.random.split(jax.random.key(0), 5)
  xs, xq = jax.random.normal(k[0], (9, 4)), jax.random.normal(k[1], (7, 4))
  ys, yq = jax.random.randint(k[2], (9,), 0, 3), jax.random.randint(k[3], (7,), 0, 3)
  params = jax.tree.map(lambda p: p.astype(jnp.float64),
                        model.init(k[4], xs.astype(jnp.float64))["params"])
  def loss(p, batch):
    logits = model.apply({"params": p}, batch[0])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch[1][:, None], 1))
  support, query = (xs.astype(jnp.float64), ys), (xq.astype(jnp.float64), yq)
  # per-leaf inner lrs; the first layer's bias is frozen in the inner loop (lr 0)
  lrs = jax.tree.map(lambda p: jnp.asarray(0.3, jnp.float64), params)
  lrs["Dense_0"]["bias"] = jnp.asarray(0.0, jnp.float64)
  trainable = jax.tree.map(lambda lr: bool(lr > 0), lrs)
  return params, loss, support, query, lrs, trainable


def _flat(tree):
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def test_second_order_meta_gradient_matches_hvp_formula_and_finite_differences():
  with enable_x64():
    params, loss, support, query, lrs, trainable = _problem()
    def meta_loss(theta):
      adapted = meta.adapt(loss, theta, support, steps=1, inner_lr=lrs, trainable=trainable)
      return loss(adapted, query)
    got = jax.grad(meta_loss)(params)

    # explicit: (I - diag(alpha) H_S)^T grad L_Q(theta') = v - H_S (alpha * v), H symmetric
    grad_s = jax.grad(loss)(params, support)
    adapted = jax.tree.map(lambda p, g, a: p - a * g, params, grad_s, lrs)
    v = jax.grad(loss)(adapted, query)
    alpha_v = jax.tree.map(lambda a, x: a * x, lrs, v)
    hvp = jax.jvp(lambda p: jax.grad(loss)(p, support), (params,), (alpha_v,))[1]
    explicit = jax.tree.map(lambda a, b: a - b, v, hvp)
    np.testing.assert_allclose(_flat(got), _flat(explicit), rtol=1e-9, atol=1e-12)

    # central finite differences, coordinate by coordinate
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    f = jax.jit(lambda x: meta_loss(unravel(x)))
    eps = 1e-6
    numeric = np.array([(f(flat.at[i].add(eps)) - f(flat.at[i].add(-eps))) / (2 * eps)
                        for i in range(flat.size)])
    np.testing.assert_allclose(_flat(got), numeric, rtol=1e-5, atol=1e-8)
    # the second-order terms matter here: first order is measurably different
    assert np.abs(_flat(got) - _flat(v)).max() > 1e-4


def test_two_inner_steps_match_finite_differences_with_scan():
  with enable_x64():
    params, loss, support, query, lrs, trainable = _problem()
    def meta_loss(theta, unroll):
      adapted = meta.adapt(loss, theta, support, steps=2, inner_lr=lrs, trainable=trainable,
                           unroll=unroll)
      return loss(adapted, query)
    got = jax.grad(meta_loss)(params, False)
    np.testing.assert_allclose(_flat(got), _flat(jax.grad(meta_loss)(params, True)), rtol=1e-10,
                               atol=1e-14)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    f = jax.jit(lambda x: meta_loss(unravel(x), False))
    direction = jax.random.normal(jax.random.key(3), flat.shape, jnp.float64)
    eps = 1e-6
    numeric = (f(flat + eps * direction) - f(flat - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(_flat(got) @ direction, numeric, rtol=1e-6)


def test_first_order_equals_query_gradient_at_adapted_params():
  with enable_x64():
    params, loss, support, query, lrs, trainable = _problem()
    def meta_loss(theta):
      adapted = meta.adapt(loss, theta, support, steps=1, inner_lr=lrs, trainable=trainable,
                           first_order=True)
      return loss(adapted, query)
    adapted = meta.adapt(loss, params, support, steps=1, inner_lr=lrs, trainable=trainable)
    expected = jax.grad(loss)(adapted, query)
    np.testing.assert_allclose(_flat(jax.grad(meta_loss)(params)), _flat(expected), rtol=1e-12)


def test_frozen_leaves_are_unchanged_and_others_move():
  with enable_x64():
    params, loss, support, _, lrs, trainable = _problem()
    adapted = meta.adapt(loss, params, support, steps=3, inner_lr=lrs, trainable=trainable)
    np.testing.assert_array_equal(adapted["Dense_0"]["bias"], params["Dense_0"]["bias"])
    assert np.abs(adapted["Dense_0"]["kernel"] - params["Dense_0"]["kernel"]).max() > 1e-3
    head_only = meta.path_mask(params, lambda path: path.startswith("head/"))
    adapted = meta.adapt(loss, params, support, steps=1, inner_lr=0.3, trainable=head_only)
    for path, before, after in zip(meta.leaf_paths(params), jax.tree.leaves(params),
                                   jax.tree.leaves(adapted)):
      assert np.array_equal(before, after) != path.startswith("head/"), path


def test_quadratic_closed_form():
  """L_S = 1/2 t'At - b't, L_Q = 1/2 t'Ct - d't: after k steps t_k = M^k t + sum_j M^j alpha b,
  M = I - alpha A, and the meta-gradient is (M^k)' (C t_k - d)."""
  with enable_x64():
    rng = np.random.default_rng(0)
    a_half, c_half = rng.normal(size=(2, 4, 4))
    A, C = a_half @ a_half.T + np.eye(4), c_half @ c_half.T + np.eye(4)
    b, d, theta = rng.normal(size=(3, 4))
    alpha, k = 0.05, 3
    ls = lambda t, _: 0.5 * t @ A @ t - b @ t
    lq = lambda t: 0.5 * t @ C @ t - d @ t
    got = jax.grad(lambda t: lq(meta.adapt(ls, t, None, steps=k, inner_lr=alpha)))(theta)
    M = np.eye(4) - alpha * A
    t_k = np.linalg.matrix_power(M, k) @ theta + sum(
        np.linalg.matrix_power(M, j) @ (alpha * b) for j in range(k))
    expected = np.linalg.matrix_power(M, k).T @ (C @ t_k - d)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_meta_sgd_learning_rates_get_gradients():
  with enable_x64():
    params, loss, support, query, _, _ = _problem()
    lrs = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
    grad_lr = jax.grad(lambda lr: loss(meta.adapt(loss, params, support, steps=1, inner_lr=lr),
                                       query))(lrs)
    # d L_Q(theta - lr * g) / d lr = -g_S * grad L_Q(theta'), elementwise
    g_s = jax.grad(loss)(params, support)
    adapted = jax.tree.map(lambda p, g: p - 0.1 * g, params, g_s)
    expected = jax.tree.map(lambda a, b: -a * b, g_s, jax.grad(loss)(adapted, query))
    np.testing.assert_allclose(_flat(grad_lr), _flat(expected), rtol=1e-10, atol=1e-14)


def test_query_pass_uses_its_own_batch_statistics():
  """Transductive BN: shifting every query input by a constant changes nothing after BN."""
  from jaxlab.meta import episodic
  from jaxlab.data.tasks import Spec
  config = ml_collections.ConfigDict(dict(
      model=dict(name="mlp", hidden=(8,), norm="batch_stats", weight_init="torch"),
      meta=dict(inner_lr=0.4, learn_inner_lr=False, inner_frozen="", scan_inner=False,
                task_parallel="auto", task_groups=8)))
  spec = Spec(input_shape=(4,), num_classes=3)
  model = models.build(config.model, 3)
  params = {"model": model.init(jax.random.key(0), jnp.ones((2, 4)))["params"], "inner_lr": {}}
  k = jax.random.split(jax.random.key(1), 2)
  task = {"support": {"x": jax.random.normal(k[0], (6, 4)), "y": jnp.arange(6) % 3},
          "query": {"x": jax.random.normal(k[1], (6, 4)), "y": jnp.arange(6) % 3}}
  shifted = {"support": task["support"],
             "query": {"x": task["query"]["x"] + 5.0, "y": task["query"]["y"]}}
  run = lambda t: episodic.adapt_and_evaluate(params["model"], t, config=config, spec=spec,
                                               steps=1, first_order=False, adapt="all",
                                               inner_lr=0.4)[0]
  np.testing.assert_allclose(run(task), run(shifted), rtol=1e-5)


@pytest.mark.parametrize("how", ["groups", "map", "unroll"])
def test_task_parallel_choices_compute_the_same_meta_step(how):
  import jaxlab
  from jaxlab.data.tasks import Spec
  method = jaxlab.get_method("maml")
  spec = Spec(input_shape=(12, 12, 1), num_classes=3)
  rng = np.random.default_rng(0)
  batch = {s: {"x": rng.uniform(size=(4, 3 * k, 12, 12, 1)).astype(np.float32),
               "y": np.tile(np.arange(3).repeat(k), (4, 1)).astype(np.int32)}
           for s, k in (("support", 1), ("query", 2))}
  def run(parallel):
    config = jaxlab.load_config("configs/maml.py:tiny", {
        "meta.task_parallel": parallel, "meta.task_groups": 2,
        "model": ml_collections.ConfigDict(dict(name="mlp", hidden=(16,), norm="batch_stats",
                                                weight_init="torch")),
        # SGD: Adam would turn float noise in the exactly-zero gradients of the conv biases
        # that feed BatchNorm into +-lr updates of random sign
        "optimizer.name": "sgd", "optimizer.momentum": 0.0, "optimizer.learning_rate": 0.1})
    state = method.init(config, jax.random.key(0), spec)
    step = jax.jit(lambda s, b: method.train_step(s, b, jax.random.key(0), config=config,
                                                  spec=spec))
    state, metrics = step(state, batch)
    return jax.tree.leaves(state.params), metrics["loss"]
  (p_vmap, l_vmap), (p_how, l_how) = run("vmap"), run(how)
  np.testing.assert_allclose(l_vmap, l_how, rtol=1e-5)
  for a, b in zip(p_vmap, p_how):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
