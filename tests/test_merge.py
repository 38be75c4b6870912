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
