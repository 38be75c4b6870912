"""What produced a run: written into its `config.json` and `results.json` as `provenance`.

The jaxlab version and, when jaxlab runs from a git checkout, its commit and whether the
tree had uncommitted changes; the versions of the packages that compute (jax, jaxlib, flax,
optax, orbax-checkpoint, grain, tensorflow-datasets, numpy, Python); the backend, device kind
and counts, and the number of processes. Nothing that changes when the same run is resumed
(no time, no host name), so a resumed run writes the results an uninterrupted one writes.
"""

import functools
import importlib.metadata
import os
import platform
import subprocess
from typing import Any, Dict, Optional

import jax

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "tensorflow-datasets",
            "numpy")
KEY = "provenance"


def _version(package: str) -> Optional[str]:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


@functools.lru_cache(maxsize=1)
def _git() -> Dict[str, Any]:
  """{"commit", "dirty"} of the checkout jaxlab is imported from, or {} outside one."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if not os.path.exists(os.path.join(root, ".git")):
    return {}
  try:
    run = lambda *args: subprocess.run(["git", "-C", root, *args], capture_output=True,
                                       text=True, timeout=10, check=True).stdout
    commit = run("rev-parse", "HEAD").strip()
    dirty = bool(run("status", "--porcelain", "--untracked-files=no").strip())
  except (OSError, subprocess.SubprocessError):
    return {}
  return {"commit": commit, "dirty": dirty}


def collect() -> Dict[str, Any]:
  from jaxlab import __version__  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  return {
      "jaxlab": {"version": __version__, **_git()},
      "packages": {p: _version(p) for p in PACKAGES},
      "python": platform.python_version(),
      "backend": jax.default_backend(),
      "device_kind": devices[0].device_kind,
      "device_count": len(devices),
      "local_device_count": jax.local_device_count(),
      "process_count": jax.process_count(),
  }
