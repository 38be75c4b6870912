"""The command line's help and listings, `jaxlab plot`, and the README tables they share a
source with."""

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from jaxlab import catalog, methods, plots
from jaxlab import config as config_lib

from conftest import REPO, run_main
from test_reliability import assert_one_line, cli


def test_help_without_a_config_lists_the_config_files_and_commands():
  for args in (["--help"], []):
    code, out, _ = cli(*args)
    assert code == 0
    for path in catalog.config_files():
      assert path in out
    for command in ("jaxlab presets", "jaxlab methods", "jaxlab plot"):
      assert command in out


def test_presets_lists_every_preset_with_its_default():
  code, out, _ = cli("presets")
  assert code == 0
  for path in catalog.config_files():
    for name in config_lib.list_presets(path):
      assert re.search(rf"\b{name}\b", out), (path, name)
  code, out, _ = cli("presets", "configs/maml.py")
  assert code == 0 and "glyphs_5w1s (default)" in out and "configs/erm.py" not in out
  assert_one_line(*cli("presets", "configs/nope.py")[::2], "config file 'configs/nope.py' not found; configs in")


def test_methods_lists_every_variant():
  code, out, _ = cli("methods")
  assert code == 0
  for name in methods.available():
    assert re.search(rf"\b{name}\b", out), name


def test_every_preset_is_in_one_row_and_the_readme_shows_the_rows():
  for path in catalog.config_files():
    module = config_lib._import(config_lib.resolve_path(path))  # pylint: disable=protected-access
    named = [n.strip() for names, _ in module.ROWS for n in names.split(",")]
    assert sorted(named) == sorted(module.PRESETS), path
    assert module.DEFAULT in module.PRESETS, path
  readme = open(os.path.join(REPO, "README.md")).read()
  assert catalog.readme_presets_table() in readme, (
      "the README's preset table drifted from the configs: paste `python -m jaxlab.catalog`")
  listed = set(re.findall(r"`(\w+)`", "\n".join(
      line.split("|")[2] for line in readme.split("## Methods")[1].split("\n\n")[1].splitlines()
      if line.startswith("|") and not line.startswith("|---"))))
  assert listed - {"variant"} == set(methods.available())


def test_readme_links_resolve():
  readme = open(os.path.join(REPO, "README.md")).read()
  for target in re.findall(r"\]\(([^)#]+)\)", readme):
    if "://" not in target:
      assert os.path.exists(os.path.join(REPO, target)), target


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("plot")
  for name, extra in (("s0", []), ("s1", ["--config.seed=1"]),
                      ("fast", ["--config.optimizer.learning_rate=0.01"])):
    result = run_main("--config=configs/erm.py:tiny", f"--workdir={root / name}", *extra)
    assert result.returncode == 0, result.stderr[-2000:]
  return root


def test_plot_draws_what_metrics_jsonl_holds(three_runs, tmp_path):
  runs = [str(three_runs / n) for n in ("s0", "s1", "fast")]
  out = tmp_path / "curves.png"
  code, printed, err = cli("plot", *runs, f"--out={out}", "--metrics=train/loss,test/accuracy")
  assert code == 0, err
  assert "wrote" in printed
  assert Image.open(out).size == (2 * 450, 320)
  drawn = plots.plot(runs, str(tmp_path / "again.png"), ("train/loss", "test/accuracy"))
  records = {n: [json.loads(l) for l in open(three_runs / n / "metrics.jsonl")]
             for n in ("s0", "s1", "fast")}
  loss = lambda n: {r["step"]: r["loss"] for r in records[n] if r["split"] == "train"}
  # seeds 0 and 1 differ only in the seed: one curve, their mean, with a min-max band
  steps, mean, low, high = drawn["train/loss"]["s0 (2 seeds)"]
  assert list(steps) == [10, 20, 30, 40]
  both = np.array([[loss(n)[s] for s in steps] for n in ("s0", "s1")])
  np.testing.assert_allclose(mean, both.mean(0))
  np.testing.assert_allclose(low, both.min(0))
  np.testing.assert_allclose(high, both.max(0))
  np.testing.assert_allclose(drawn["train/loss"]["fast"][1], [loss("fast")[s] for s in steps])
  accuracy = {r["step"]: r["accuracy"] for r in records["fast"] if r["split"] == "test"}
  fast_test = drawn["test/accuracy"]["fast"]
  assert dict(zip(fast_test[0].tolist(), fast_test[1].tolist())) == pytest.approx(accuracy)


def test_plot_errors_are_one_line(three_runs, tmp_path):
  assert_one_line(*cli("plot")[::2], "jaxlab plot needs one or more run workdirs")
  assert_one_line(*cli("plot", str(tmp_path))[::2], "has no metrics.jsonl")
  assert_one_line(*cli("plot", str(three_runs / "s0"), "--metrics=train/nope")[::2],
                  "no run logged 'train/nope'; logged: ")
  assert_one_line(*cli("plot", str(three_runs / "s0"), "--colour=red")[::2],
                  "unknown option '--colour=red'")


def test_the_first_progress_lines_say_what_compiling_took(tmp_path):
  result = run_main("--config=configs/erm.py:tiny", f"--workdir={tmp_path}",
                    "--config.train.log_every=1", "--config.train.steps=4")
  lines = result.stdout.splitlines()
  assert lines[0].startswith("jaxlab: compiled and ran the train step in ")
  assert lines[1].startswith("step 1/4") and lines[1].endswith("| compiling")
  assert "steps/s" in lines[2]
  assert "evaluating test: compiling the evaluation step" in result.stdout
  assert "Downloading" not in result.stdout and "dataset_info.json" not in result.stderr
