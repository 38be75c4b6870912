"""Bad input: one clear line on stderr naming the valid choices, a non-zero exit, no traceback.
The table runs through the command line's entry point in this process (`conftest.cli`); the
last two cases start the real command."""

import subprocess

import pytest

from conftest import cli, run_main


def _assert_one_line_error(result, code, *fragments):
  assert result.returncode == code, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith("jaxlab: error:")]
  assert len(errors) == 1, result.stderr[-2000:]
  for fragment in fragments:
    assert fragment in errors[0], errors[0]


@pytest.mark.parametrize("args,fragments", [
    (["--config=configs/erm.py:tiny", "--config.method=nope"],
     ["unknown method (config.method) 'nope'", "erm"]),
    (["--config=configs/erm.py:nope"],
     ["unknown preset 'nope'", "digits", "glyphs_color32", "tiny"]),
    (["--config=configs/erm.py:tiny", "--config.data.name=no_such_dataset"],
     ["unknown dataset 'no_such_dataset'", "digits", "glyphs", "tfds.list_builders()"]),
    (["--config=configs/erm.py:tiny", "--config.data.name=glyphs/nope"],
     ["unknown configuration in dataset 'glyphs/nope'", "glyphs/color32"]),
    (["--config=configs/erm.py:tiny", "--config.train.nope=3"],
     ["unknown config key 'config.train.nope'", "batch_size", "steps"]),
    (["--config=configs/erm.py:tiny", "--config.nope.deeper=3"],
     ["unknown config key 'config.nope.deeper'", "method", "train"]),
    (["--config=configs/erm.py:tiny", "--config.model.name=nope"],
     ["unknown model 'nope'", "conv4", "mlp", "resnet18"]),
    (["--config=configs/erm.py:tiny", "--config.optimizer.name=nope"],
     ["unknown optimizer (optimizer.name) 'nope'", "adam", "sgd"]),
    (["--config=configs/erm.py:tiny", "--config.data.train_split=nope"],
     ["no split 'nope'", "train, test"]),
    (["--config=configs/nope.py:tiny"], ["config file 'configs/nope.py' not found", "erm.py"]),
    (["--config=configs/erm.py:tiny", "--config.train.steps=abc"], ["--config.train.steps"]),
])
def test_user_errors(tmp_path, args, fragments):
  code, _, err = cli(*args, f"--workdir={tmp_path / 'run'}")
  _assert_one_line_error(subprocess.CompletedProcess(args, code, "", err), 2, *fragments)


def test_missing_workdir():
  _assert_one_line_error(run_main("--config=configs/erm.py:tiny"), 2, "--workdir is required")


def test_unprepared_tfds_dataset_says_how_to_prepare(tmp_path):
  empty = tmp_path / "empty_data_dir"
  result = run_main("--config=configs/erm.py:mnist", f"--config.data.data_dir={empty}",
                    f"--workdir={tmp_path / 'run'}")
  _assert_one_line_error(result, 2, "dataset 'mnist' is not prepared in", str(empty),
                         "tfds build mnist", "--config.data.download=True")
  assert not (tmp_path / "run").exists()  # nothing written for a run that could not start
