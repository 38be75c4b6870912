"""Model merging library (docs/specs/robustness_tta_merging.md §5, §6): permutation specs
derived from each model's computation preserve its function, weight matching recovers a
known permutation, and interpolation curves have the right endpoints and barriers."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxlab import models
from jaxlab.errors import UserError
from jaxlab.merge import interpolate, matching, permutation

# every classifier backbone of jaxlab.models, small; with the number of hidden-unit
# permutations the spec must find (a residual stage shares one)
MODELS = {
    "mlp": (dict(name="mlp", hidden=(16, 12)), (8, 8, 1), 2),
    "mlp_batch_norm": (dict(name="mlp", hidden=(16, 12), norm="batch_norm"), (8, 8, 1), 2),
    "cnn_batch_norm": (dict(name="cnn", channels=(8, 16), norm="batch_norm"), (8, 8, 1), 2),
    "conv4_pool": (dict(name="conv4", filters=8, variant="pool"), (28, 28, 1), 4),
    "conv4_strided": (dict(name="conv4", filters=8, variant="strided"), (28, 28, 1), 4),
    # the flatten of the last conv's 4x4 map pins its channels: 6 convs + 2 dense - 1
    "conv6": (dict(name="conv6", width=0.125), (16, 16, 3), 7),
    # 4 residual streams + one inner permutation per block (8 blocks)
    "resnet18": (dict(name="resnet18", width=8, stem="cifar", norm="batch_norm"),
                 (16, 16, 3), 12),
    "resnet12": (dict(name="resnet12", width=8), (16, 16, 3), 12),
    # the stem's output (the first bottleneck projects it) + 4 streams + 2 inner per
    # bottleneck block (3 + 4 + 6 + 3)
    "resnet50": (dict(name="resnet50", width=4, stem="cifar", norm="batch_norm"),
                 (16, 16, 3), 1 + 4 + 2 * 16),
    "wide_resnet": (dict(name="wide_resnet", depth=10, widen=1), (16, 16, 3), 6),
}


def _model(name):
  config, shape, groups = MODELS[name]
  model = models.build(ml_collections.ConfigDict(config), 5)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2,) + shape),
                                             train=False))
  # random values (numpy: no per-shape compilation), statistics away from their initial
  # 0 / 1 so that a mis-permuted one would show; variances positive
  rng = np.random.default_rng(0)
  fill = lambda path, a: jnp.asarray(
      np.abs(rng.normal(size=a.shape)) + 0.5 if "var" in jax.tree_util.keystr(path) else
      rng.normal(size=a.shape) / np.sqrt(np.prod(a.shape[:-1]) if len(a.shape) > 1 else 1.0),
      jnp.float32)
  return model, jax.tree_util.tree_map_with_path(fill, shapes), shape, groups


@pytest.fixture(autouse=True)
def _xla_convolutions(monkeypatch):
  """XLA's convolution, cheaper to compile here than the CPU im2col form (the function is the
  same; the spec is derived in this form in any case)."""
  monkeypatch.setenv("JAXLAB_CONV_IMPL", "xla")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_permuting_any_model_by_its_derived_spec_keeps_its_function(name):
  model, variables, shape, groups = _model(name)
  spec = permutation.derive(model, variables, shape)
  assert len(spec.groups) == groups, {g: spec.sizes[g] for g in spec.groups}
  x = jax.random.uniform(jax.random.key(3), (4,) + shape)
  apply = jax.jit(lambda v: model.apply(v, x, train=False))
  permuted = jax.jit(lambda p: apply(permutation.permute(variables, spec, p)))
  before = apply(variables)
  for seed in range(2):
    perms = permutation.random_permutations(spec, jax.random.key(seed))
    assert any(bool(jnp.any(p != jnp.arange(len(p)))) for p in perms.values())
    after = permuted(perms)
    np.testing.assert_allclose(after, before, rtol=2e-5, atol=2e-5 * float(jnp.abs(before).max()))


@pytest.mark.parametrize("name", ["mlp", "cnn_batch_norm"])
def test_weight_matching_recovers_a_known_permutation_exactly(name):
  model, variables, shape, _ = _model(name)
  spec = permutation.derive(model, variables, shape)
  scrambled = permutation.permute(variables, spec, permutation.random_permutations(
      spec, jax.random.key(7)))
  found = matching.weight_matching(spec, variables, scrambled, jax.random.key(0))
  restored = permutation.permute(scrambled, spec, found)
  jax.tree.map(np.testing.assert_array_equal, restored, variables)


def test_interpolation_endpoints_and_the_barrier_of_a_model_with_itself():
  model, variables, shape, _ = _model("mlp")
  other = jax.tree.map(lambda a: a * 0.5 + 0.1, variables)
  x = jax.random.uniform(jax.random.key(1), (32,) + shape)
  labels = jax.random.randint(jax.random.key(2), (32,), 0, 5)
  loss = lambda v: -jnp.mean(jax.nn.log_softmax(model.apply(v, x))[jnp.arange(32), labels])
  lams = interpolate.grid()
  values = jax.jit(lambda a, b: interpolate.curve(loss, a, b, lams))(variables, other)
  assert float(values[0]) == pytest.approx(float(loss(variables)), rel=1e-6)
  assert float(values[-1]) == pytest.approx(float(loss(other)), rel=1e-6)
  same = jax.jit(lambda a: interpolate.curve(loss, a, a, lams))(variables)
  assert float(interpolate.barrier(same, lams)) == pytest.approx(0.0, abs=1e-6)
  # a loss convex along the line has no barrier; a bump in the middle is measured
  assert float(interpolate.barrier(jnp.asarray([1.0, 3.0, 2.0]), jnp.asarray([0, .5, 1.]))) == (
      pytest.approx(1.5))


def test_weight_matching_runs_inside_jit_warm_started_and_never_lowers_the_objective():
  model, variables, shape, _ = _model("mlp")
  spec = permutation.derive(model, variables, shape)
  other = model.init(jax.random.key(11), jnp.zeros((2,) + shape))
  solve = jax.jit(lambda a, b, key, init: matching.weight_matching(spec, a, b, key, 100, init))
  perms = solve(variables, other, jax.random.key(0), matching.identity(spec))
  before = matching.objective(spec, variables, other, matching.identity(spec))
  after = matching.objective(spec, variables, other, perms)
  assert float(after) > float(before)
  for group, p in perms.items():  # each a permutation
    np.testing.assert_array_equal(np.sort(np.asarray(p)), np.arange(spec.sizes[group]))
  # warm-started at its own answer, coordinate ascent is at a fixed point
  again = solve(variables, other, jax.random.key(3), perms)
  jax.tree.map(np.testing.assert_array_equal, again, perms)


def test_activation_matching_recovers_a_known_permutation_and_rejects_residual_groups():
  model, variables, shape, _ = _model("mlp")
  spec = permutation.derive(model, variables, shape)
  truth = permutation.random_permutations(spec, jax.random.key(5))
  scrambled = permutation.permute(variables, spec, truth)
  # centred inputs: no hidden unit is off on the whole batch (a dead unit has no order)
  x = jax.random.normal(jax.random.key(1), (256,) + shape)
  found = jax.jit(lambda a, b: matching.activation_matching(spec, model, a, b, x))(
      variables, scrambled)
  restored = permutation.permute(scrambled, spec, found)
  jax.tree.map(np.testing.assert_array_equal, restored, variables)
  model, variables, shape, _ = _model("resnet18")
  spec = permutation.derive(model, variables, shape)
  with pytest.raises(UserError, match="residual stream"):
    matching.activation_matching(spec, model, variables, variables, jnp.zeros((2,) + shape))


def test_permutation_keeps_singular_values_and_alignment_recovers_after_matching():
  from jaxlab.merge import analysis  # pylint: disable=g-import-not-at-top
  model, variables, shape, _ = _model("mlp")
  spec = permutation.derive(model, variables, shape)
  scrambled = permutation.permute(variables, spec, permutation.random_permutations(
      spec, jax.random.key(3)))
  for before, after in zip(analysis.singular_values(variables),
                           analysis.singular_values(scrambled)):
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)
  assert float(analysis.alignment(variables, variables)["R"]) == pytest.approx(1.0, abs=1e-5)
  assert float(analysis.alignment(variables, variables)["A_k"]) == pytest.approx(1.0, abs=1e-5)
  assert float(analysis.alignment(variables, scrambled)["R"]) < 0.9
  found = matching.weight_matching(spec, variables, scrambled, jax.random.key(0))
  restored = permutation.permute(scrambled, spec, found)
  assert float(analysis.alignment(variables, restored)["R"]) == pytest.approx(1.0, abs=1e-5)


def test_truncation_effective_rank_overlap_and_the_alignment_matrix_against_numpy():
  from jaxlab.merge import analysis  # pylint: disable=g-import-not-at-top
  model, variables, shape, _ = _model("cnn_batch_norm")
  cut = analysis.truncate(variables, 2)
  for path, w in jax.tree_util.tree_leaves_with_path(variables["params"]):
    low = dict(jax.tree_util.tree_leaves_with_path(cut["params"]))[path]
    if w.ndim < 2:
      np.testing.assert_array_equal(low, w)
      continue
    matrix = np.moveaxis(np.asarray(w, np.float64), -1, 0).reshape(w.shape[-1], -1)
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    expected = np.moveaxis(((u[:, :2] * s[:2]) @ vt[:2]).reshape(
        (w.shape[-1],) + w.shape[:-1]), 0, -1)
    np.testing.assert_allclose(low, expected, rtol=1e-4, atol=1e-5)
  assert cut["batch_stats"] is variables["batch_stats"]
  full = max(min(m.shape) for m in analysis.matrices(variables))
  for a, b in zip(jax.tree.leaves(analysis.truncate(variables, full)),
                  jax.tree.leaves(variables)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert float(analysis.energy_kept(variables, full)) == pytest.approx(1.0)
  # exp(entropy): two equal singular values and zeros -> 2; the identity of n -> n
  assert float(analysis.effective_rank(jnp.diag(jnp.array([3.0, 3.0, 0.0, 0.0])))) == (
      pytest.approx(2.0, rel=1e-5))
  assert float(analysis.effective_rank(jnp.eye(7))) == pytest.approx(7.0, rel=1e-5)
  w = jnp.asarray(np.random.default_rng(1).normal(size=(6, 9)), jnp.float32)
  q = jnp.asarray(np.linalg.qr(np.random.default_rng(2).normal(size=(9, 9)))[0], jnp.float32)
  # a rotation of the input space leaves the output-side (left) singular subspace as it was
  assert float(analysis.subspace_overlap(w, w @ q, 3)) == pytest.approx(1.0, abs=1e-4)
  np.testing.assert_allclose(analysis.alignment_matrix(w, w, 4), np.eye(4), atol=1e-4)
  flipped = analysis.alignment_matrix(w, w[::-1], 6)  # rows permuted: v's kept, u's moved
  assert flipped.shape == (6, 6) and float(jnp.max(flipped)) <= 1.0 + 1e-5


def _block_pair(depth=3, width=4, inputs=5, classes=3):
  """Two bias-free MLPs side by side in one 2*width network: A's hidden units are the first
  half, B's the second, each layer reading only its own half. Then each model's weights
  annihilate the other's features and ReLU is additive on disjoint supports: LEWC holds
  exactly, h_l(theta_lam) = (1-lam)^l h_l^a + lam^l h_l^b."""
  model = models.build(ml_collections.ConfigDict(dict(name="mlp", hidden=(2 * width,) * (
      depth - 1), use_bias=False)), classes)
  rng = np.random.default_rng(0)
  params = {}
  sides = []
  for side in range(2):
    layer_params = {}
    for index in range(depth):
      rows = inputs if index == 0 else 2 * width
      cols = classes if index == depth - 1 else 2 * width
      kernel = np.zeros((rows, cols), np.float32)
      own_in = slice(None) if index == 0 else slice(side * width, (side + 1) * width)
      own_out = slice(None) if index == depth - 1 else slice(side * width, (side + 1) * width)
      block = kernel[own_in, own_out]
      kernel[own_in, own_out] = rng.normal(size=block.shape) / np.sqrt(block.shape[0])
      name = "head" if index == depth - 1 else f"Dense_{index}"
      layer_params[name] = {"kernel": jnp.asarray(kernel)}
    sides.append({"params": layer_params})
  del params
  x = jnp.asarray(rng.normal(size=(32, inputs)), jnp.float32).reshape(32, inputs, 1, 1)
  return model, sides[0], sides[1], x


def test_lewc_probe_is_exact_on_two_models_with_disjoint_features():
  from jaxlab.merge import width  # pylint: disable=g-import-not-at-top
  model, a, b, x = _block_pair()
  probes = jax.device_get(width.probe(model, a, b, x, lam=0.5))
  np.testing.assert_allclose(probes["cos"], 1.0, atol=1e-5)
  np.testing.assert_allclose(probes["rel_error"], 0.0, atol=1e-5)
  np.testing.assert_allclose(probes["additivity"], 0.0, atol=1e-6)
  np.testing.assert_allclose(probes["orthogonality"], [1.0, 0.0, 0.0], atol=1e-6)
  # ||h_l(1/2)|| / ||(h^a + h^b) / 2|| = 2^-l / 2^-1
  np.testing.assert_allclose(probes["magnitude"], [1.0, 0.5, 0.25], rtol=1e-5)
  at_quarter = jax.device_get(width.probe(model, a, b, x, lam=0.25))
  np.testing.assert_allclose(at_quarter["cos"], 1.0, atol=1e-5)
  # one model alone is not LEWC with another whose features it does not annihilate
  dense = model.init(jax.random.key(1), x)
  crossed = jax.device_get(width.probe(model, a, dense, x))
  assert float(crossed["orthogonality"][1]) > 0.1


def test_calibrated_temperature_undoes_the_midpoint_logit_shrinkage():
  from jaxlab.merge import width  # pylint: disable=g-import-not-at-top
  model, a, _, x = _block_pair()
  # B: A's weights moved onto the second half, the same function on disjoint units
  b = jax.tree.map(lambda w: w, a)
  for name, w in a["params"].items():
    w = np.asarray(w["kernel"])
    half = w.shape[1] // 2 if name != "head" else None
    moved = np.zeros_like(w)
    if name == "Dense_0":
      moved[:, half:] = w[:, :half]
    elif name == "head":
      moved[w.shape[0] // 2:] = w[:w.shape[0] // 2]
    else:
      moved[half:, half:] = w[:half, :half]
    b["params"][name] = {"kernel": jnp.asarray(moved)}
  logits_a = model.apply(a, x)
  np.testing.assert_allclose(model.apply(b, x), logits_a, rtol=1e-5, atol=1e-6)
  labels = jnp.argmax(logits_a + jnp.asarray(np.random.default_rng(3).normal(
      size=logits_a.shape), jnp.float32), -1)
  mask = jnp.ones(labels.shape)
  temps = width.log_temperatures()
  ends = width.nll_by_temperature(logits_a, labels, mask, temps)
  logp = jax.nn.log_softmax(logits_a / 2.0)
  assert float(ends[jnp.argmin(jnp.abs(temps - jnp.log(2.0)))]) == pytest.approx(
      -float(jnp.sum(jnp.take_along_axis(logp, labels[:, None], 1))), rel=1e-2)
  middle = width.nll_by_temperature(model.apply(interpolate.lerp(0.5, a, b), x), labels, mask,
                                    temps)
  table = jnp.stack([ends, middle])
  best, loss = width.calibrated(table, table, temps)
  # three linear layers: the midpoint's logits are 2^(1-3) of A's, so T*(1/2) = T*(A) / 4
  # and the calibrated losses are equal
  assert float(best[1] - best[0]) == pytest.approx(np.log(0.25), abs=0.06)
  assert float(loss[1]) == pytest.approx(float(loss[0]), rel=1e-3)
  assert float(middle.min()) == pytest.approx(float(ends.min()), rel=1e-3)
