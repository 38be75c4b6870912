"""Random streams (jaxlab.streams): every key a run derives is distinct from every other key
of that run and of any other seed's run (issue 20.5)."""

import jax
import numpy as np

import jaxlab
from jaxlab import streams
from jaxlab.data import episodes, tasks

SEEDS = range(4)
STEPS = range(3)


def _data(key):
  return tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())


def _children(key, n=3):
  """What code does with a stream: split it (= fold_in 0..n-1 in this JAX) or fold in more."""
  return [key] + [jax.random.fold_in(key, i) for i in range(n)]


def _run_keys(seed):
  """{name: key} of one run: its streams, the keys of steps 0-2 (with the splits a method
  makes of them), the data keys of those steps and epochs, and the keys of evaluation
  batches 0-2 of two splits with their attack, margin and latent keys (and the per-attack
  folds)."""
  keys = {"run": streams.run_key(seed)}
  for name in streams.TAGS["run"]:
    keys[name] = streams.run_stream(seed, name)
  for t in STEPS:
    for i, k in enumerate(_children(jax.random.fold_in(keys["step"], t))):
      keys[f"step{t}/{i}"] = k
  for name in streams.TAGS["data"]:
    stream = streams.fold(keys["data"], "data", name)
    keys[f"data/{name}"] = stream
    for t in STEPS:  # a step (augmentation) or an epoch (indices, extra, latent rows)
      for i, k in enumerate(_children(jax.random.fold_in(stream, t), 2)):
        keys[f"data/{name}/{t}/{i}"] = k
  for split in ("validation", "test"):
    for index in range(3):
      batch = streams.eval_batch_key(seed, split, index)
      keys[f"eval/{split}/{index}"] = batch
      for name in streams.TAGS["eval_batch"]:
        for i, k in enumerate(_children(streams.fold(batch, "eval_batch", name), 4)):
          keys[f"eval/{split}/{index}/{name}/{i}"] = k
  return keys


def _episode_keys(eval_seed=0, batches=3, per_batch=4):
  root = streams.eval_episodes_root(eval_seed)
  keys = {"episodes": root}
  for index in range(batches):
    for j, k in enumerate(_children(jax.random.fold_in(root, index), per_batch)):
      keys[f"episodes/{index}/{j}"] = k
  return keys


def test_the_keys_of_steps_and_evaluations_are_pairwise_distinct_across_seeds():
  owner = {}
  for seed in SEEDS:
    for name, key in _run_keys(seed).items():
      other = owner.setdefault(_data(key), (seed, name))
      assert other == (seed, name), f"seed {seed} {name} = seed {other[0]} {other[1]}"
  for name, key in _episode_keys().items():  # shared by every seed, but no run's key
    other = owner.setdefault(_data(key), ("episodes", name))
    assert other == ("episodes", name), f"{name} = seed {other[0]} {other[1]}"
  assert len(owner) == len(SEEDS) * len(_run_keys(0)) + len(_episode_keys())
  # the derivations this replaced would have failed here: the attack key key(seed + 1) was
  # the next seed's run key, the episode root key(eval_seed) seed 0's, and the
  # augmentation key split(data)[1] the second batch's fold_in(data, 1)
  assert owner[_data(jax.random.key(0 + 1))] == (1, "run")
  assert owner[_data(jax.random.key(0))] == (0, "run")
  data0 = streams.run_stream(0, "data")
  assert _data(jax.random.split(data0)[1]) == _data(jax.random.fold_in(data0, 1))


def test_the_code_draws_from_the_streams():
  """The loop's keys are the streams' (init/data/step keep the values of split(run, 3), so
  initialisations and batch orders are unchanged), and the tasks sample with them."""
  run = streams.run_key(5)
  np.testing.assert_array_equal(
      jax.random.key_data(jax.random.split(run, 3)),
      np.stack([jax.random.key_data(streams.run_stream(5, n)) for n in ("init", "data", "step")]))
  config = jaxlab.load_config("configs/ssl.py:digits,labels=2,method=fixmatch")
  task = tasks.SupervisedTask(config)
  data = {"image": np.arange(200 * 4, dtype=np.uint8).reshape(200, 2, 2, 1) % 255,
          "label": np.arange(200) % 10}
  key = streams.run_stream(5, "data")
  batch = jax.jit(lambda d: task.train_batch(d, key, 0))(data)
  rows = tasks.epoch_indices(streams.fold(key, "data", "indices"), 0, task.batch_size, 200)
  np.testing.assert_array_equal(batch["label"], data["label"][rows])
  images, _ = jax.jit(lambda d: task.extra_batch(d, key, 0, 7, "image"))(data)
  rows = tasks.epoch_indices(streams.fold(key, "data", "extra"), 0, 7, 200)
  np.testing.assert_allclose(np.asarray(images[..., 0]) * 255, data["image"][rows][..., 0],
                             atol=1e-3)
  meta = jaxlab.load_config("configs/maml.py:glyphs_5w1s")
  assert _data(episodes.make_task(meta).eval_key) == _data(streams.eval_episodes_root(0))
