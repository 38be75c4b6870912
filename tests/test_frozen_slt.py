"""Strong lottery tickets in partially frozen networks (jaxlab.models.supermask's freeze masks,
`frozen_slt` in jaxlab.methods.supermask; arXiv 2402.14029, spec §4): freezing nothing is
global edge-popup exactly, locked weights are always on and pruned ones always off (forward
and gradients), the layer ratios and the ticket's size match by-hand counts, and a saved
ticket (seed + free bits) rebuilds the trained masks."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlab
from jaxlab import streams
from jaxlab.data.tasks import Spec
from jaxlab.errors import UserError
from jaxlab.models import supermask

from conftest import cli

SHAPES = {"Dense_0/kernel": (64, 32), "Dense_1/kernel": (32, 32), "head/kernel": (32, 10)}


def _scores(seed=0):
  rng = np.random.default_rng(seed)
  return {p: jnp.asarray(rng.normal(size=s), jnp.float32) for p, s in SHAPES.items()}


def test_freezing_nothing_is_global_edge_popup_exactly():
  scores = _scores()
  none = {p: jnp.zeros(s, jnp.int8) for p, s in SHAPES.items()}
  frozen = supermask.masks(scores, "global_abs", 0.6, frozen=none)
  plain = supermask.masks(scores, "global_abs", 0.6)
  for p in SHAPES:
    np.testing.assert_array_equal(frozen[p], plain[p])
  grad = lambda **kw: jax.grad(lambda s: sum(jnp.sum(m * w) for m, w in zip(
      jax.tree.leaves(supermask.masks(s, "global_abs", 0.6, **kw)),
      jax.tree.leaves(_scores(1)))))(scores)
  for a, b in zip(jax.tree.leaves(grad(frozen=none)), jax.tree.leaves(grad())):
    np.testing.assert_array_equal(a, b)
  # and through the method: frozen_slt with f = 0 trains exactly as edge_popup would with
  # the same global threshold and score initialiser
  spec = Spec(input_shape=(8, 8, 1), num_classes=10)
  runs = {}
  for method in ("frozen_slt", "edge_popup"):
    config = jaxlab.load_config(f"configs/frozen_slt.py:tiny,freeze=0.0")
    config.method = method
    config.supermask.score_init = "kaiming_normal"
    runs[method] = _run(config, 3, spec)
  for a, b in zip(jax.tree.leaves(runs["frozen_slt"].params),
                  jax.tree.leaves(runs["edge_popup"].params)):
    np.testing.assert_array_equal(a, b)


def _run(config, steps, spec):
  method = jaxlab.get_method(config.method)
  task = method.make_task(config)
  state = method.init(config, jax.random.key(0), spec)
  data = jax.device_put(task.train_arrays())
  step = jax.jit(lambda s: method.train_step(s, task.train_batch(data, jax.random.key(1), s.step),
                                             jax.random.fold_in(jax.random.key(2), s.step),
                                             config=config, spec=spec))
  for _ in range(steps):
    state, _ = step(state)
  return state


@pytest.mark.parametrize("dist", ["uniform", "erk"])
def test_locked_weights_are_always_on_pruned_always_off_in_forward_and_gradients(dist):
  frozen = supermask.freeze_masks(jax.random.key(0), SHAPES, prune=0.3, lock=0.2, dist=dist)
  for s in (0.1, 0.4, 0.6, 0.9):  # below p, inside [p, 1 - r], above 1 - r
    for seed in range(2):
      scores = _scores(seed)
      hard = supermask.masks(scores, "global_abs", s, frozen=frozen)
      for p in SHAPES:
        m, f = np.asarray(hard[p]), np.asarray(frozen[p])
        assert set(np.unique(m)) <= {0.0, 1.0}
        assert (m[f > 0] == 1).all() and (m[f < 0] == 0).all()
      kept = sum(float(hard[p].sum()) for p in SHAPES)
      total = sum(np.prod(v) for v in SHAPES.values())
      locked = sum(int((np.asarray(f) > 0).sum()) for f in frozen.values())
      pruned = sum(int((np.asarray(f) < 0).sum()) for f in frozen.values())
      # the global sparsity is s where p <= s <= 1 - r; else the frozen part decides
      expected = min(max(total - int(s * total), locked), total - pruned)
      assert kept == expected, (s, kept, expected)
  weights = _scores(3)
  grads = jax.grad(lambda sc: sum(jnp.sum(supermask.masks(sc, "global_abs", 0.5,
                                                          frozen=frozen)[p] * weights[p])
                                  for p in SHAPES))(_scores(0))
  for p in SHAPES:
    g, f = np.asarray(grads[p]), np.asarray(frozen[p])
    assert (g[f != 0] == 0).all() and (g[f == 0] != 0).any()


def test_layer_ratios_and_the_ticket_size_match_counts_by_hand():
  frozen = supermask.freeze_masks(jax.random.key(1), SHAPES, prune=0.25, lock=0.25)
  for p, s in SHAPES.items():  # uniform: floor(n / 4) pruned and locked in every layer
    n = int(np.prod(s))
    assert int((frozen[p] < 0).sum()) == n // 4 and int((frozen[p] > 0).sum()) == n // 4
  assert supermask.free_bits(frozen) == sum(
      int(np.prod(s)) - 2 * (int(np.prod(s)) // 4) for s in SHAPES.values())  # 1696
  # ERK: the kept fractions average to the density, none above 1, sparser for larger layers
  density = supermask.layer_densities(SHAPES, 0.3, "erk")
  sizes = {p: np.prod(s) for p, s in SHAPES.items()}
  assert sum(density[p] * sizes[p] for p in SHAPES) == pytest.approx(0.3 * sum(sizes.values()))
  assert max(density.values()) <= 1.0
  assert density["Dense_0/kernel"] < density["head/kernel"]
  assert supermask.layer_densities(SHAPES, 0.9, "erk")["head/kernel"] == 1.0
  with pytest.raises(UserError, match="freeze ratios"):
    supermask.freeze_masks(jax.random.key(0), SHAPES, prune=0.7, lock=0.5)


def test_a_saved_ticket_rebuilds_the_trained_masks_from_the_seed(tmp_path):
  code, _, err = cli("--config=configs/frozen_slt.py:tiny,freeze=0.6,split=balanced",
                     f"--workdir={tmp_path}")
  assert code == 0, err
  with open(tmp_path / "results.json") as f:
    results = json.load(f)
  # MLP 64-32-32-10: 3,392 masked weights; 30% pruned and 30% locked per layer (floor)
  by_hand = sum(n - 2 * int(np.floor(n * 0.3)) for n in (64 * 32, 32 * 32, 32 * 10))
  assert results["ticket/mask_bits"] == by_hand and results["ticket/weights"] == 3392
  assert results["ticket/compression_vs_dense_slt"] == pytest.approx(3392 / by_hand)
  assert results["ticket/sparsity"] == pytest.approx(0.5, abs=1e-3)
  saved = np.load(tmp_path / "ticket.npz")
  assert saved["bits"].size == -(-by_hand // 8)
  config = jaxlab.load_config("configs/frozen_slt.py:tiny,freeze=0.6,split=balanced")
  spec = Spec(input_shape=(8, 8, 1), num_classes=10)
  method = jaxlab.get_method("frozen_slt")
  # F and W from the seed: the run's init stream
  fresh = method.init(config, streams.run_stream(int(saved["seed"]), "init"), spec)
  from jaxlab.train.checkpoint import load_pretrained  # pylint: disable=g-import-not-at-top
  trained = load_pretrained(str(tmp_path), {"params": fresh.params, **fresh.model_state})
  for name in ("weights", "frozen"):  # never trained: the seed gives them back
    for a, b in zip(jax.tree.leaves(trained[name]), jax.tree.leaves(fresh.model_state[name])):
      np.testing.assert_array_equal(a, b)
  masks = supermask.unpack_ticket(saved["bits"], fresh.model_state["frozen"])
  expected = supermask.masks(supermask.flatten(trained["params"]["scores"]), "global_abs", 0.5,
                             frozen=fresh.model_state["frozen"])
  for p, m in masks.items():
    np.testing.assert_array_equal(m, expected[p])


def test_bad_freezing_is_one_line(tmp_path):
  for args, message in (
      (["--config=configs/frozen_slt.py:tiny,split=half"], "split='half'"),
      (["--config=configs/frozen_slt.py:tiny", "--config.supermask.policy=topk_abs"],
       "supermask.policy=global_abs"),
      (["--config=configs/frozen_slt.py:tiny", "--config.method=edge_popup"],
       "method=frozen_slt"),
      (["--config=configs/frozen_slt.py:tiny,freeze=0.9,split=all_lock",
        "--config.supermask.freeze_prune=0.5"], "freeze ratios")):
    code, _, err = cli(*args, f"--workdir={tmp_path / 'bad'}")
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1, err
