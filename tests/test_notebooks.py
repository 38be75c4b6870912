"""The notebooks run headless on CPU with their tiny settings, and stay in step with their
jupytext `.py` twins."""

import glob
import os
import subprocess
import sys

import jupytext
import nbformat
import pytest

from conftest import DATA_DIR, REPO

NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")))
# the figures each notebook ends with (written under JAXLAB_RUNS)
FIGURES = {
    "quickstart": ["quickstart_curves.png", "quickstart_by_hand.png"],
    "meta_learning": ["meta_curves.png", "meta_by_hand.png"],
    "generative_ssl": ["cgan/samples.png", "generative_curves.png"],
    "robustness": ["robustness_radii.png"],
    "merging": ["merging_by_hand.png", "merge_ste/merge_curves.png"],
    "test_time_adaptation": ["tta_corruptions.png", "tta_online_error.png"],
    "diffusion": ["ddpm/samples.png", "diffusion_samplers.png", "diffusion_reconstructions.png"],
}
# one notebook, executed by nbclient in its own process: a failing cell raises
# CellExecutionError with the cell's traceback, which the test shows
EXECUTE = """
import sys, nbclient, nbformat
source, target, folder = sys.argv[1:]
notebook = nbformat.read(source, as_version=4)
nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                        resources={"metadata": {"path": folder}}).execute()
nbformat.write(notebook, target)
"""


def _name(path):
  return os.path.splitext(os.path.basename(path))[0]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
  """{name: (executed notebook path, runs directory, exit status, output)}: the notebooks run
  two at a time (kernel start-up, imports and XLA compilation are mostly one core each)."""
  root = tmp_path_factory.mktemp("notebooks")
  env = {**os.environ, "JAXLAB_NOTEBOOK_TINY": "1", "JAXLAB_DATA_DIR": DATA_DIR}
  done, running, waiting = {}, {}, list(NOTEBOOKS)
  while waiting or running:
    while waiting and len(running) < 2:
      path = waiting.pop(0)
      runs, target = root / _name(path), root / (_name(path) + ".ipynb")
      proc = subprocess.Popen(
          [sys.executable, "-c", EXECUTE, path, str(target), os.path.dirname(path)],
          env={**env, "JAXLAB_RUNS": str(runs)}, stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT, text=True)
      running[_name(path)] = (proc, target, runs)
    name, (proc, target, runs) = next(iter(running.items()))
    output = proc.communicate(timeout=900)[0]
    done[name] = (target, runs, proc.returncode, output)
    del running[name]
  return done


def test_every_notebook_is_listed_and_paired():
  assert sorted(map(_name, NOTEBOOKS)) == sorted(FIGURES)
  for path in NOTEBOOKS:
    twin = jupytext.read(path[:-len(".ipynb")] + ".py")
    saved = nbformat.read(path, as_version=4)
    assert [(c.cell_type, c.source) for c in twin.cells] == [
        (c.cell_type, c.source) for c in saved.cells], (
            f"{path} and its .py differ: run `jupytext --sync {path}`")


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_runs_headless(executed, name):
  target, runs, status, output = executed[name]
  assert status == 0, output[-4000:]
  notebook = nbformat.read(target, as_version=4)
  errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors
  for figure in FIGURES[name]:
    assert (runs / figure).stat().st_size > 1000, figure
  shown = [o for c in notebook.cells for o in c.get("outputs", [])
           if "image/png" in o.get("data", {})]
  assert shown, "the notebook displays its figure"
