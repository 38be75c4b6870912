"""Closed-form meta-learners (jaxlab.methods.closed_form; spec closed_form_meta_learning.md §1-§4):
the meta-gradient through each closed-form fit against central finite differences on a tiny
task (float64); the task sources' true relative ratio and AUROC against scipy / a pair count;
a short meta-training run improving its query objective over the untrained network; the CLI
runs with the per-task baselines reported beside the meta-learner; bad input is one line; the
VFSA network's predictions do not change when a task's attributes are reordered or padded
further, nor (with use_unlabeled=False) with its unlabelled rows; label spreading equals
scikit-learn's."""

import json
import os

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import jaxlab
from jaxlab.data import meta_tasks
from jaxlab.methods import closed_form, get_method

from conftest import cli

KINDS = {"meta_ssl": "tiny_ssl", "meta_ood": "tiny_ood", "meta_pu": "tiny_pu", "meta_rdre": "tiny_rdre"}


def _setup(preset: str, *overrides: str):
  config = jaxlab.load_config(f"configs/closed_form.py:{preset}")
  for item in overrides:
    key, value = item.split("=")
    section, field = key.split(".")
    old = config[section][field]
    config[section][field] = (value == "True") if isinstance(old, bool) else type(old)(value)
  task = meta_tasks.make_task(config)
  method = get_method(config.method)
  state = method.init(config, jax.random.key(0), task.spec)
  data = jax.tree.map(jnp.asarray, task.train_arrays())
  return config, task, state, data


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_meta_gradient_through_the_closed_form_fit_equals_finite_differences(kind):
  config, task, state, data = _setup(KINDS[kind])
  batch = task.train_batch(data, jax.random.key(1), 0)
  loss_of = closed_form.TASK_LOSS[kind]
  with jax.enable_x64(True):
    to64 = lambda t: jax.tree.map(
        lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, t)
    params, batch64 = to64(state.params), to64(batch)
    # a generic point: at the initialisation, zero biases put the ReLU of every all-zero
    # input cell (VFSA's empty label cells) exactly on its kink, where no derivative exists
    noise = jax.random.split(jax.random.key(9), len(jax.tree.leaves(params)))
    params = jax.tree.unflatten(jax.tree.structure(params), [
        a + 0.01 * jax.random.normal(k, a.shape, a.dtype)
        for a, k in zip(jax.tree.leaves(params), noise)])

    @jax.jit
    def meta_loss(p):
      losses, _ = jax.vmap(lambda t: loss_of(p, state.model_state, t, config=config,
                                             ways=task.spec.num_classes))(batch64)
      return losses.mean()

    flat, unravel = jax.flatten_util.ravel_pytree(params)
    grad = jax.flatten_util.ravel_pytree(jax.grad(meta_loss)(params))[0]
    assert np.isfinite(float(meta_loss(params))) and float(jnp.abs(grad).max()) > 0
    rng = np.random.default_rng(0)
    for _ in range(3):   # unit directions: the fits are curved, a long step is not a derivative
      v = rng.normal(size=flat.shape)
      v /= np.linalg.norm(v)
      eps = 1e-5
      fd = (meta_loss(unravel(flat + eps * v)) - meta_loss(unravel(flat - eps * v))) / (2 * eps)
      np.testing.assert_allclose(float(grad @ v), float(fd), rtol=1e-5, atol=1e-9)


def test_the_true_relative_ratio_equals_scipy_densities():
  rng = np.random.default_rng(0)
  d, alpha = 3, 0.3
  mean_a, mean_b = rng.normal(size=d), rng.normal(size=d)
  w = rng.normal(size=(d, d))
  cov_a, cov_b = w @ w.T / d + 0.5 * np.eye(d), np.eye(d) * 0.8
  x = rng.normal(size=(50, d)) * 1.5
  p_a = scipy.stats.multivariate_normal(mean_a, cov_a).pdf(x)
  p_b = scipy.stats.multivariate_normal(mean_b, cov_b).pdf(x)
  with jax.enable_x64(True):
    got = meta_tasks.true_relative_ratio(jnp.asarray(x), mean_a, cov_a, mean_b, cov_b, alpha)
  np.testing.assert_allclose(got, p_a / (alpha * p_a + (1 - alpha) * p_b), rtol=1e-9)


def test_auroc_is_the_pair_count_with_ties_and_weights():
  rng = np.random.default_rng(1)
  pos, neg = rng.integers(0, 5, 30).astype(float), rng.integers(0, 5, 40).astype(float)
  w_pos, w_neg = rng.integers(0, 2, 30).astype(float), rng.integers(0, 2, 40).astype(float)
  pairs = [(p > n) + 0.5 * (p == n) for p, a in zip(pos, w_pos) if a
           for n, b in zip(neg, w_neg) if b]
  got = meta_tasks.auroc(jnp.asarray(pos), jnp.asarray(neg), jnp.asarray(w_pos),
                         jnp.asarray(w_neg))
  np.testing.assert_allclose(got, np.mean(pairs), rtol=1e-6)
  # the Mann-Whitney U over all pairs, scipy's
  u = scipy.stats.mannwhitneyu(pos, neg).statistic
  np.testing.assert_allclose(meta_tasks.auroc(jnp.asarray(pos), jnp.asarray(neg)),
                             u / (30 * 40), rtol=1e-6)


def test_the_ratio_tasks_have_the_configured_shapes_and_a_positive_true_ratio():
  config, task, _, data = _setup("tiny_rdre")
  batch = task.train_batch(data, jax.random.key(2), 0)
  c = config.closed_form
  assert batch["support"]["a"].shape == (4, c.support_a, c.dim)
  assert batch["support"]["b"].shape == (4, c.support_b, c.dim)
  assert batch["mixture"]["x"].shape == (4, c.eval_points, c.dim)
  ratio = np.asarray(batch["mixture"]["ratio"])
  assert (ratio > 0).all() and (ratio < 1 / c.alpha + 1e-5).all()   # r_alpha <= 1/alpha
  # validation and test tasks of a procedural source are different draws, fixed per split
  draws = {split: task.eval_batch(jax.tree.map(jnp.asarray, task.eval_arrays(split)), 0)
           for split in ("validation", "test")}
  again = task.eval_batch(jax.tree.map(jnp.asarray, task.eval_arrays("test")), 0)
  assert not np.allclose(draws["validation"]["support"]["a"], draws["test"]["support"]["a"])
  np.testing.assert_array_equal(draws["test"]["support"]["a"], again["support"]["a"])


def test_meta_training_lowers_the_query_rulsif_loss_on_new_tasks():
  """The §4 claim at toy scale: after 150 meta-steps on Gaussian pairs, the RuLSIF loss on
  held-out queries of fixed evaluation tasks is below the untrained network's."""
  config, task, state, data = _setup("tiny_rdre")
  method = get_method(config.method)
  step = jax.jit(lambda s, b: method.train_step(s, b, jax.random.key(0), config=config,
                                                spec=task.spec))
  eval_batch = task.eval_batch(data, 0)

  def query_loss(s):
    out = method.eval_step(s, eval_batch, jax.random.key(0), config=config, spec=task.spec)
    return float(np.mean(out["query_rulsif_loss"]))

  before = query_loss(state)
  for i in range(150):
    state, _ = step(state, task.train_batch(data, jax.random.key(3), i))
  assert query_loss(state) < before - 0.05, (before, query_loss(state))


@pytest.mark.parametrize("preset,metrics", [
    ("tiny_ood", ["auroc", "id_accuracy", "baseline/raw_gmm_auroc"]),
    ("tiny_pu", ["accuracy", "accuracy_estimated_prior", "baseline/ulsif_accuracy",
                 "baseline/nnpu_accuracy", "baseline/upu_accuracy"]),
    ("tiny_rdre", ["mse", "pe", "baseline/rulsif_mse"]),
    ("tiny_ssl", ["accuracy", "unlabeled_accuracy", "baseline/logistic_accuracy",
                  "baseline/label_spreading_accuracy"]),
])
def test_the_cli_reports_the_meta_learner_beside_the_per_task_baselines(tmp_path, preset,
                                                                        metrics):
  code, out, err = cli(f"--config=configs/closed_form.py:{preset}", f"--workdir={tmp_path}")
  assert code == 0, out + err
  with open(os.path.join(tmp_path, "results.json")) as f:
    results = json.load(f)
  for split in ("validation", "test"):
    for name in metrics:
      value = results[f"{split}/{name}"]
      assert np.isfinite(value), (split, name, value)
  if preset == "tiny_rdre":
    assert -1.0 <= results["comparison/meta_spearman"] <= 1.0
    # kernel RuLSIF's PE orders the growing shifts of the comparison almost perfectly
    assert results["comparison/rulsif_spearman"] > 0.8


@pytest.mark.parametrize("args,message", [
    (["--config=configs/closed_form.py:tiny_ood", "--config.closed_form.source=pu"],
     "meta_ood reads tasks of closed_form.source in ood, not 'pu'"),
    (["--config=configs/closed_form.py:tiny_ood", "--config.closed_form.encoder=pca"],
     "closed_form.encoder=pca has nothing to meta-learn: run it with train.steps=0"),
    (["--config=configs/closed_form.py:tiny_ood", "--config.closed_form.covariance=tied"],
     "closed_form.covariance"),
    (["--config=configs/closed_form.py:tiny_pu", "--config.closed_form.source=pu",
      "--config.closed_form.train_classes=0-12"],
     "closed_form.train_classes='0-12' reaches class 12"),
])
def test_bad_input_is_one_line(tmp_path, args, message):
  code, out, err = cli(*args, f"--workdir={tmp_path}")
  assert code != 0
  assert message in err, err
  assert len([line for line in err.strip().splitlines() if line.strip()]) == 1, err


def test_task_rotation_turns_each_training_task_by_one_angle_and_leaves_evaluation_tasks():
  _, plain, _, data = _setup("tiny_ood")
  _, turned, _, _ = _setup("tiny_ood", "closed_form.task_rotation=180.0")
  key = jax.random.key(4)
  a, b = plain.train_batch(data, key, 0), turned.train_batch(data, key, 0)
  np.testing.assert_array_equal(a["support"]["y"], b["support"]["y"])
  assert not np.allclose(a["support"]["x"], b["support"]["x"])
  # one angle a task: rotating the plain task's images by it gives the turned task, for
  # every image of the task; the angle is found from the first support image
  from jaxlab.data import augment
  images = lambda x: x.reshape((-1, 8, 8, 1))
  task_a = np.concatenate([a["support"]["x"][0], a["query"]["x"][0]])
  task_b = np.concatenate([b["support"]["x"][0], b["query"]["x"][0]])
  angles = jnp.deg2rad(jnp.linspace(-180.0, 180.0, 721))
  errors = [float(jnp.abs(augment.rotate(images(task_a[:1]), angle[None]) -
                          images(task_b[:1])).max()) for angle in angles]
  best = angles[int(np.argmin(errors))]
  rotated = augment.rotate(images(task_a), jnp.full((task_a.shape[0],), best))
  np.testing.assert_allclose(rotated.reshape(task_b.shape), task_b, atol=0.05)
  eval_a = plain.eval_batch(data, 0)
  eval_b = turned.eval_batch(data, 0)
  np.testing.assert_array_equal(eval_a["support"]["x"], eval_b["support"]["x"])



def _ssl_task(*overrides):
  config, task, state, data = _setup("tiny_ssl", *overrides)
  batch = task.train_batch(data, jax.random.key(5), 0)
  one = jax.tree.map(lambda a: a[0], batch)
  predict = lambda t, params=state.params, config=config: closed_form.ssl_predict(
      config, params, t, task.spec.num_classes)[0]
  return config, task, state, one, predict


def test_vfsa_predictions_ignore_attribute_order_and_padding():
  config, task, state, one, predict = _ssl_task()
  d_t = int(one["column_mask"].sum())
  assert d_t >= 2
  order = np.concatenate([np.random.default_rng(0).permutation(d_t),
                          np.arange(d_t, config.closed_form.max_attributes)])
  reordered = jax.tree.map(lambda a: a, one)
  for part in ("labeled", "unlabeled", "query"):
    reordered[part] = dict(one[part], x=one[part]["x"][:, order])
  reordered["column_mask"] = one["column_mask"][order]
  before = predict(one)
  np.testing.assert_allclose(predict(reordered), before, atol=2e-5)
  # three more padded attribute columns: the same network, the same predictions
  padded = jax.tree.map(lambda a: a, one)
  for part in ("labeled", "unlabeled", "query"):
    padded[part] = dict(one[part], x=jnp.pad(one[part]["x"], ((0, 0), (0, 3))))
  padded["column_mask"] = jnp.pad(one["column_mask"], (0, 3))
  np.testing.assert_allclose(predict(padded), before, atol=2e-5)


def test_without_unlabeled_rows_the_prediction_does_not_read_them():
  config, task, state, one, predict = _ssl_task("closed_form.use_unlabeled=False")
  other = jax.tree.map(lambda a: a, one)
  other["unlabeled"] = dict(one["unlabeled"], x=one["unlabeled"]["x"] + 3.0)
  np.testing.assert_allclose(predict(other), predict(one), atol=1e-6)
  with_u, _, _, _, predict_u = _ssl_task()
  assert not np.allclose(predict_u(other), predict_u(one), atol=1e-4)


def test_label_spreading_equals_scikit_learn():
  from sklearn.semi_supervised import LabelSpreading
  rng = np.random.default_rng(3)
  x = np.concatenate([rng.normal(size=(15, 2)), rng.normal(size=(15, 2)) + 3.0])
  y = np.repeat([0, 1], 15)
  known = np.zeros(30, bool)
  known[[0, 1, 15, 16]] = True
  bandwidth = float(closed_form._median_bandwidth(jnp.asarray(x)))  # pylint: disable=protected-access
  kernel = lambda a, b: np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * bandwidth ** 2))
  ours = closed_form.label_spreading(jnp.asarray(x), jax.nn.one_hot(jnp.asarray(y), 2),
                                     jnp.asarray(known, jnp.float32), 0.99)
  theirs = LabelSpreading(kernel=kernel, alpha=0.99, max_iter=10000, tol=1e-10).fit(
      x, np.where(known, y, -1))
  np.testing.assert_array_equal(np.asarray(ours).argmax(-1), theirs.transduction_)
  np.testing.assert_allclose(np.asarray(ours) / np.asarray(ours).sum(1, keepdims=True),
                             theirs.label_distributions_, atol=1e-4)


def test_scikit_learn_table_tasks_draw_classes_and_attributes_of_one_table():
  config, task, _, _ = _setup("tiny_ssl")
  arrays = task.eval_arrays("test")
  assert list(arrays["classes"]) == [3, 3, 2, 10] and list(arrays["features"]) == [4, 13, 30, 64]
  data = jax.tree.map(jnp.asarray, arrays)
  batch = task.eval_batch(data, 0)
  c = config.closed_form
  d_t = np.asarray(batch["column_mask"]).sum(1)
  assert ((d_t >= 2) & (d_t <= c.max_attributes)).all()
  x_l = np.asarray(batch["labeled"]["x"])
  assert (x_l[np.asarray(batch["column_mask"])[:, None, :].repeat(x_l.shape[1], 1) == 0] == 0).all()
  support = np.concatenate([x_l, np.asarray(batch["unlabeled"]["x"])], 1)
  np.testing.assert_allclose(support.mean(1), 0.0, atol=1e-4)   # support-standardised
