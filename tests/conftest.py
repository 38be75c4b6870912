"""Shared test set-up: an isolated data directory and a helper to run the CLI."""

import os
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Embedded datasets are built once per test session in a private directory.
DATA_DIR = os.environ.setdefault("JAXLAB_DATA_DIR", tempfile.mkdtemp(prefix="jaxlab_data_"))
# One persistent XLA compilation cache for the session and every command it starts (set
# before jax is imported): the many runs of the same tiny presets compile each step once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxlab_xla_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def run_main(*args, env=None, timeout=300):
  """Runs `python -m jaxlab.main ARGS` from the repository root; returns CompletedProcess."""
  full_env = {**os.environ, "JAXLAB_DATA_DIR": DATA_DIR, **(env or {})}
  return subprocess.run([sys.executable, "-m", "jaxlab.main", *args], cwd=REPO, env=full_env,
                        capture_output=True, text=True, timeout=timeout)


def cli(*args):
  """(exit code, stdout, stderr) of `jaxlab.main.cli`, run in this process (no interpreter
  start per call); an exception escaping it fails the test, as a traceback would."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  from jaxlab import main  # pylint: disable=g-import-not-at-top
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = main.cli(["jaxlab", *args])
  return code, out.getvalue(), err.getvalue()


@pytest.fixture
def tiny_args():
  """The tiny digits preset, as CLI arguments."""
  return ["--config=configs/erm.py:tiny"]


def one_train_step(config_arg, overrides, state=None):
  """One jitted train step of `config_arg` on a random 8x8 batch of 32 (model 16 wide).

  Returns (new state, metrics, config, spec, batch, the state it started from); every call
  with the same config starts from the same initialisation and uses the same step key.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np

  import jaxlab
  from jaxlab.data.tasks import Spec
  config = jaxlab.load_config(config_arg, {"model.hidden": (16,), **overrides})
  spec = Spec(input_shape=(8, 8, 1), num_classes=10)
  method = jaxlab.get_method(config.method)
  state = method.init(config, jax.random.key(0), spec) if state is None else state
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.uniform(size=(32, 8, 8, 1)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, 32))}
  new, metrics = jax.jit(lambda s, b: method.train_step(s, b, jax.random.key(1), config=config,
                                                        spec=spec))(state, batch)
  return new, metrics, config, spec, batch, state
