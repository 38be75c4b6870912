"""Shared test set-up: an isolated data directory and a helper to run the CLI."""

import os
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Embedded datasets are built once per test session in a private directory.
DATA_DIR = os.environ.setdefault("JAXLAB_DATA_DIR", tempfile.mkdtemp(prefix="jaxlab_data_"))


def run_main(*args, env=None, timeout=300):
  """Runs `python -m jaxlab.main ARGS` from the repository root; returns CompletedProcess."""
  full_env = {**os.environ, "JAXLAB_DATA_DIR": DATA_DIR, **(env or {})}
  return subprocess.run([sys.executable, "-m", "jaxlab.main", *args], cwd=REPO, env=full_env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tiny_args():
  """The tiny digits preset, as CLI arguments."""
  return ["--config=configs/erm.py:tiny"]
