"""The method registry: one module per family under jaxlab/methods, variants bound by the
registry (never by reading config.method), families that never import each other, and frozen
inputs declared per variant."""

import ast
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlab
from jaxlab import methods
from jaxlab.data.tasks import Spec
from jaxlab.errors import UserError
from jaxlab.train import inputs

from conftest import REPO

METHODS_DIR = os.path.join(REPO, "jaxlab", "methods")
FAMILY_FILES = sorted(f for f in os.listdir(METHODS_DIR) if f.endswith(".py") and
                      f != "__init__.py")


def test_one_file_per_family_and_no_alias_or_underscore_modules():
  assert sorted(f[:-3] for f in FAMILY_FILES) == sorted(methods.FAMILIES)
  assert not [f for f in os.listdir(METHODS_DIR) if f.startswith("_") and f != "__init__.py"
              and f.endswith(".py")]
  registry = methods.registry()
  for family in methods.FAMILIES:  # every family module declares at least one variant
    assert any(m.family == family for m in registry.values()), family


def _imported_modules(path):
  tree = ast.parse(open(path).read())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # relative imports would be from another method module
        yield "." * node.level + (node.module or "")
      elif node.module == "jaxlab.methods":
        yield from (f"jaxlab.methods.{alias.name}" for alias in node.names)
      else:
        yield node.module


@pytest.mark.parametrize("filename", FAMILY_FILES)
def test_no_family_module_imports_another_or_reads_config_method(filename):
  path = os.path.join(METHODS_DIR, filename)
  imported = set(_imported_modules(path))
  others = {m for m in imported if m.startswith(".") or m == "jaxlab.methods"
            or m.startswith("jaxlab.methods.")}
  assert not others, f"{filename} imports {sorted(others)}"
  reads = [node for node in ast.walk(ast.parse(open(path).read()))
           if isinstance(node, ast.Attribute) and node.attr == "method"
           and isinstance(node.value, ast.Name) and node.value.id == "config"]
  assert not reads, f"{filename} reads config.method (line {reads[0].lineno})"


def test_variants_of_a_family_differ_in_what_the_registry_binds():
  registry = methods.registry()
  def signature(method):
    functions = tuple((f, getattr(method, f)) for f in methods.PROTOCOL)
    plain = lambda fn: getattr(fn, "func", fn)  # the function under a partial
    return (tuple(sorted(method.options.items())),
            tuple((f, plain(fn)) for f, fn in functions),
            tuple(i.name for i in method.inputs))
  for a, b in itertools.combinations(registry.values(), 2):
    if a.family == b.family:
      assert signature(a) != signature(b), (a.name, b.name)
  # the options reach the functions that take them
  assert registry["adarand"].train_step.keywords == {"regulariser": "adarand"}
  assert registry["mgr"].train_step.keywords == {"regulariser": "pcr",
                                                 "default_sampler": "finder"}
  assert registry["iterand"].train_step.keywords == {"rerandomize": True}
  assert [i.name for i in registry["pssl"].inputs] == ["generator", "source_classifier"]
  assert [i.name for i in registry["kd"].inputs] == ["source_classifier"]
  with pytest.raises(UserError, match="unknown method .* valid choices: adarand, .*anil"):
    methods.get_method("adarnd")


def _adarand_state(method_name_in_config):
  config = jaxlab.load_config("configs/finetune.py:digits,method=adarand,n=5",
                              {"model.hidden": (16,), "method": method_name_in_config})
  spec = Spec(input_shape=(8, 8, 1), num_classes=5)
  state = jaxlab.get_method("adarand").init(config, jax.random.key(0), spec)
  state = state.replace(prior_mean=jax.random.normal(jax.random.key(3), state.prior_mean.shape))
  return config, spec, state


def test_a_variant_runs_itself_whatever_config_method_says():
  """adarand called with a config whose method is 'finetune' still runs AdaRand (its prior
  moves), and gives exactly what it gives with method='adarand'."""
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.uniform(size=(16, 8, 8, 1)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 5, 16))}
  results = {}
  for name in ("finetune", "adarand"):
    config, spec, state = _adarand_state(name)
    new, metrics = jax.jit(lambda s, b, c=config, sp=spec: jaxlab.get_method(
        "adarand").train_step(s, b, jax.random.key(1), config=c, spec=sp))(state, batch)
    assert "prior_loss" in metrics and float(metrics["gap"]) > 0
    assert not np.allclose(new.prior_mean, state.prior_mean)
    results[name] = new
  jax.tree.map(np.testing.assert_array_equal, results["finetune"], results["adarand"])
  # and the other way round: finetune with method='adarand' in its config is plain FT
  config, spec, _ = _adarand_state("adarand")
  finetune = jaxlab.get_method("finetune")
  state = finetune.init(config, jax.random.key(0), spec)
  assert state.prior_mean.shape[0] == 1  # no class-conditional prior
  _, metrics = finetune.train_step(state, batch, jax.random.key(1), config=config, spec=spec)
  assert "prior_loss" not in metrics
  # an iterand variant with an edge_popup config still re-randomises on its schedule
  config = jaxlab.load_config("configs/supermask.py:digits_mlp,method=iterand",
                              {"method": "edge_popup", "supermask.rerand_period": 1,
                               "supermask.rerand_rate": 1.0})
  spec = Spec(input_shape=(8, 8, 1), num_classes=10)
  state = jaxlab.get_method("iterand").init(config, jax.random.key(0), spec)
  new, _ = jaxlab.get_method("iterand").train_step(state, batch, jax.random.key(1),
                                                   config=config, spec=spec)
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(state.model_state["weights"]), jax.tree.leaves(new.model_state["weights"])))
  with pytest.raises(UserError, match="edge_popup never re-randomises"):
    jaxlab.get_method("edge_popup").init(config, jax.random.key(0), spec)


def test_frozen_inputs_are_declared_checked_and_placed_in_one_state_field(tmp_path):
  config = jaxlab.load_config("configs/mgr.py:digits,method=pcr", {"generator.width": 8})
  spec = Spec(input_shape=(8, 8, 1), num_classes=10)
  method = jaxlab.get_method("pcr")
  with pytest.raises(UserError, match="pcr needs --config.inputs.generator: the workdir of a "
                                      "cgan run"):
    inputs.check(method.inputs, config, "pcr")
  state = method.init(config, jax.random.key(0), spec)
  assert set(state.frozen) == {"generator"}
  expected = jax.eval_shape(lambda: method.inputs[0].variables(config, spec))
  assert jax.tree.structure(state.frozen["generator"]) == jax.tree.structure(expected)
  # a method whose preset has no such field says so
  erm_config = jaxlab.load_config("configs/erm.py:digits")
  with pytest.raises(UserError, match=r"reads inputs.generator \(a cgan run .*\), which this "
                                      "config has no field"):
    inputs.check(method.inputs, erm_config, "pcr")
  # an optional input that is not given is not in the state
  cgan_config = jaxlab.load_config("configs/cgan.py:digits", {"generator.width": 8})
  cgan_state = jax.eval_shape(lambda: jaxlab.get_method("cgan").init(
      cgan_config, jax.random.key(0), spec))
  assert cgan_state.frozen == {}


def test_the_readme_programmatic_example_runs(tmp_path):
  text = open(os.path.join(REPO, "README.md")).read()
  block = text.split("## Programmatic use")[1].split("```python")[1].split("```")[0]
  assert "jaxlab.get_method(config.method)" in block and "load_inputs" in block
  block = block.replace('{"train.steps": 500}', '{"train.steps": 20}').replace(
      "/tmp/runs/digits_500", str(tmp_path / "run")).replace("print(", "(")
  namespace = {}
  exec(compile(block, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  assert int(namespace["state"].step) == 100 and np.isfinite(float(namespace["metrics"]["loss"]))
  assert (tmp_path / "run" / "results.json").exists()
  assert namespace["per_example"]["accuracy"].shape == (namespace["config"].train.eval_batch_size,)
