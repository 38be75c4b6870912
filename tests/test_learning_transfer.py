"""Learning-trajectory transfer (jaxlab.methods.learning_transfer; GMT / FGMT, arXiv 2305.14122,
spec §5): a run keeps its trajectory (`train.keep_schedule`); GMT whose matching cannot move
(max_sweeps 0) is the naive transfer; a run's own trajectory is reproduced point by point; the
matched objective sum_t ||g^tau_t - pi g^s_t||^2 never rises over sweeps and the stacked
matching is the LAP of the summed costs (scipy); the cosine schedule has the published
values; bad input is one line."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import jaxlab
from jaxlab.data.tasks import Spec
from jaxlab.merge import matching, permutation
from jaxlab.methods import learning_transfer
from jaxlab.train.checkpoint import load_pretrained, trajectory_steps

from conftest import cli

TINY = "--config=configs/learning_transfer.py:tiny"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A tiny source run (seed 101) keeping steps 0, 6 and 12."""
  workdir = str(tmp_path_factory.mktemp("lt") / "source")
  code, out, err = cli("--config=configs/learning_transfer.py:tiny_source", f"--workdir={workdir}")
  assert code == 0, out + err
  return workdir


def _transfer(tmp_path, name, source, *overrides):
  workdir = str(tmp_path / name)
  code, out, err = cli(TINY, f"--config.inputs.source={source}", f"--workdir={workdir}",
                       "--config.train.keep_schedule=every:1", *overrides)
  assert code == 0, out + err
  return workdir


def _points(workdir):
  return {s: load_pretrained(os.path.join(workdir, "trajectory", f"{s}.npz"), _like())["params"]
          for s in trajectory_steps(workdir)}


def _like():
  config = jaxlab.load_config("configs/learning_transfer.py:tiny")
  model = jaxlab.models.build(config.model, 10)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1))))


def _accuracies(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [(r["step"], r["accuracy"]) for r in rows if r.get("split") == "validation"]


def test_the_source_keeps_its_trajectory(source):
  assert trajectory_steps(source) == [0, 6, 12]
  final = load_pretrained(source, _like())  # the newest checkpoint
  kept = load_pretrained(os.path.join(source, "trajectory", "12.npz"), _like())
  for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(kept)):
    np.testing.assert_array_equal(a, b)


def test_gmt_that_cannot_move_is_the_naive_transfer(source, tmp_path):
  gmt = _transfer(tmp_path, "gmt", source, "--config.transfer.max_sweeps=0")
  naive = _transfer(tmp_path, "naive", source, "--config.method=transfer_naive")
  for s, params in _points(naive).items():
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(_points(gmt)[s])):
      np.testing.assert_array_equal(a, b)
  assert _accuracies(gmt) == _accuracies(naive)
  # and with the matching on, it moves units and lands elsewhere
  moving = _transfer(tmp_path, "moving", source)
  with open(os.path.join(moving, "results.json")) as f:
    assert json.load(f)["transfer/units_moved"] > 0.5


@pytest.mark.parametrize("mode", ["gmt", "fgmt", "oracle"])
def test_a_runs_own_trajectory_is_reproduced(source, tmp_path, mode):
  """Source = the target's own run (seed 101): theta^tau_0 is the source's step 0, the
  gradients match under the identity, so every transferred point is the source's point."""
  extra = [f"--config.inputs.target={source}"] if mode == "oracle" else []
  workdir = _transfer(tmp_path, mode, source, f"--config.method=transfer_{mode}",
                      "--config.seed=101", *extra)
  kept = {s: load_pretrained(os.path.join(source, "trajectory", f"{s}.npz"), _like())["params"]
          for s in (0, 12)}
  lam = [0.0, 0.5, 0.875, 1.0]  # 1 + cos(pi u / 3) = 2, 1.5, 0.5, normalised and summed
  for s, params in _points(workdir).items():
    expected = jax.tree.map(lambda a, b: a + lam[s] * (b - a), kept[0], kept[12])
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["transfer/units_moved"] == 0.0
  with open(os.path.join(source, "results.json")) as f:
    assert results["test/accuracy"] == json.load(f)["test/accuracy"]


def test_cosine_schedule_has_the_published_values():
  lam = learning_transfer.segment_weights(10, "cosine")
  np.testing.assert_allclose(lam, [0, .18, .36, .52, .67, .79, .88, .94, .98, .996, 1],
                             atol=6e-3)
  np.testing.assert_allclose(learning_transfer.segment_weights(4, "uniform"),
                             [0, .25, .5, .75, 1])
  segment, weight = learning_transfer.point_table(3, 2, "uniform")  # two segments of 2
  np.testing.assert_array_equal(segment, [0, 0, 1, 1, 1])
  np.testing.assert_allclose(weight, [0, .5, 0, .5, 1])


def _gradient_pairs(pairs=3, hidden=(12, 9)):
  """A ReLU MLP with two hidden permutations and `pairs` (target, source) gradient pairs at
  random points on random batches."""
  config = jaxlab.load_config("configs/learning_transfer.py:tiny", {"model.hidden": hidden})
  spec = Spec(input_shape=(8, 8, 1), num_classes=10)
  model = jaxlab.models.build(config.model, 10)
  pspec = learning_transfer.permutation_spec(config, spec)
  rng = np.random.default_rng(0)

  def grad(seed, x, y):
    params = model.init(jax.random.key(seed), jnp.zeros((2, 8, 8, 1)))["params"]
    loss = lambda p: jaxlab.train.losses.cross_entropy(model.apply({"params": p}, x), y).mean()
    return jax.grad(loss)(params)

  targets, sources = [], []
  for c in range(pairs):
    x = jnp.asarray(rng.normal(size=(16, 8, 8, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 16))
    targets.append(grad(2 * c, x, y))
    sources.append(grad(2 * c + 1, x, y))
  stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
  return pspec, stack(targets), stack(sources)


def test_matching_objective_does_not_rise_over_sweeps():
  pspec, target, source = _gradient_pairs()
  assert len(pspec.groups) == 2
  values = []
  for sweeps in range(6):
    perms = matching.weight_matching(pspec, {"params": target}, {"params": source},
                                     jax.random.key(3), sweeps, batch_dims=1)
    values.append(float(learning_transfer._mismatch(pspec, target, source, perms)))
  assert all(b <= a + 1e-4 for a, b in zip(values, values[1:])), values
  assert values[-1] < values[0] - 1e-3, values


def test_stacked_matching_is_the_lap_of_the_summed_costs():
  """One permutation group: the stacked search is one LAP of sum_c A_c B_c^T, solved here by
  scipy on numpy-built costs."""
  pspec, target, source = _gradient_pairs(pairs=4, hidden=(16,))
  (group,) = pspec.groups
  perms = matching.weight_matching(pspec, {"params": target}, {"params": source},
                                   jax.random.key(0), 100, batch_dims=1)
  t, s = (jax.tree.map(np.asarray, x) for x in (target, source))
  cost = (np.einsum("cki,ckj->ij", t["Dense_0"]["kernel"], s["Dense_0"]["kernel"])
          + np.einsum("cio,cjo->ij", t["head"]["kernel"], s["head"]["kernel"]))
  rows, cols = scipy.optimize.linear_sum_assignment(cost, maximize=True)
  np.testing.assert_array_equal(np.asarray(perms[group]), cols[np.argsort(rows)])


@pytest.mark.parametrize("overrides,message", [
    (["--config.train.steps=5"], "train.steps=5 but the source trajectory has 3 steps (1 "
                                 "segments x transfer.num_splits=3): set train.steps=-1"),
    (["--config.transfer.schedule=linear"], "unknown trajectory schedule (transfer.schedule) "
                                            "'linear'; valid choices: cosine, uniform"),
    (["--config.method=transfer_oracle"], "transfer_oracle needs --config.inputs.target"),
])
def test_bad_transfer_input_is_one_line(source, tmp_path, overrides, message):
  code, out, err = cli(TINY, f"--config.inputs.source={source}",
                       f"--workdir={tmp_path / 'bad'}", *overrides)
  assert code != 0 and message in err, err
  assert not os.path.exists(tmp_path / "bad" / "config.json")


def test_a_source_without_trajectory_or_of_another_model_is_one_line(source, tmp_path):
  plain = str(tmp_path / "plain")
  assert cli("--config=configs/erm.py:tiny", "--config.train.steps=2", f"--workdir={plain}")[0] == 0
  code, _, err = cli(TINY, f"--config.inputs.source={plain}", f"--workdir={tmp_path / 'x'}")
  assert code != 0 and "kept no trajectory" in err and "train.keep_schedule" in err, err
  code, _, err = cli(TINY, f"--config.inputs.source={source}", "--config.model.hidden=(16,)",
                     f"--workdir={tmp_path / 'y'}")
  assert code != 0 and "use the same config.model" in err, err
  code, _, err = cli(TINY, f"--config.inputs.source={source}", "--config.method=transfer_oracle",
                     f"--config.inputs.target={source}", f"--workdir={tmp_path / 'z'}")
  assert code != 0 and "set seed=101" in err, err


def test_batchnorm_statistics_are_re_estimated_at_each_point(tmp_path):
  """A BatchNorm MLP: without statistics batches the run is one line; with them, the own
  trajectory is reproduced and final.npz's running mean and variance are the (biased)
  statistics of the first training batch under the final weights, computed here in numpy."""
  bn = "--config.model.norm=batch_norm"
  source = str(tmp_path / "bn_source")
  assert cli("--config=configs/learning_transfer.py:tiny_source", bn, f"--workdir={source}")[0] == 0
  code, _, err = cli(TINY, bn, f"--config.inputs.source={source}", f"--workdir={tmp_path / 'x'}")
  assert code != 0 and "set transfer.bn_stats_iters >= 1" in err, err
  workdir = str(tmp_path / "bn_own")
  code, out, err = cli(TINY, bn, f"--config.inputs.source={source}", "--config.seed=101",
                       "--config.transfer.bn_stats_iters=1", f"--workdir={workdir}")
  assert code == 0, out + err
  with np.load(os.path.join(workdir, "final.npz")) as final, np.load(
      os.path.join(source, "trajectory", "12.npz")) as kept:
    np.testing.assert_allclose(final["params/Dense_0/kernel"], kept["params/Dense_0/kernel"],
                               rtol=1e-5, atol=1e-6)
    config = jaxlab.load_config("configs/learning_transfer.py:tiny")
    task = jaxlab.data.tasks.SupervisedTask(config)
    images = task.train_arrays()["image"][:128].astype(np.float64) / 255.0
    x = ((images - config.model.mean[0]) / config.model.std[0]).reshape(128, -1)
    hidden = x @ final["params/Dense_0/kernel"].astype(np.float64)
    stats = [k for k in final.files if k.startswith("batch_stats/")]
    mean = final[[k for k in stats if k.endswith("/mean")][0]]
    var = final[[k for k in stats if k.endswith("/var")][0]]
    np.testing.assert_allclose(mean, hidden.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(var, hidden.var(0), rtol=1e-3, atol=1e-5)
