"""The notebooks run headless on CPU with their tiny settings, and stay in step with their
jupytext `.py` twins."""

import glob
import os

import jupytext
import nbclient
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
}


def test_every_notebook_is_listed_and_paired():
  names = [os.path.splitext(os.path.basename(p))[0] for p in NOTEBOOKS]
  assert sorted(names) == sorted(FIGURES)
  for path in NOTEBOOKS:
    twin = jupytext.read(path[:-len(".ipynb")] + ".py")
    saved = nbformat.read(path, as_version=4)
    assert [(c.cell_type, c.source) for c in twin.cells] == [
        (c.cell_type, c.source) for c in saved.cells], (
            f"{path} and its .py differ: run `jupytext --sync {path}`")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: os.path.basename(p))
def test_notebook_runs_headless(tmp_path, path, monkeypatch):
  runs = tmp_path / "runs"
  monkeypatch.setenv("JAXLAB_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("JAXLAB_RUNS", str(runs))
  monkeypatch.setenv("JAXLAB_DATA_DIR", DATA_DIR)
  notebook = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": os.path.dirname(path)}})
  client.execute()  # a failing cell raises CellExecutionError with its traceback
  errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors
  name = os.path.splitext(os.path.basename(path))[0]
  for figure in FIGURES[name]:
    assert (runs / figure).stat().st_size > 1000, figure
  shown = [o for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get(
      "data", {})]
  assert shown, "the notebook displays its figure"
