"""The generic loop: resume after SIGKILL, corrupt checkpoints, NaN guard, sharding, multi-process."""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import DATA_DIR, REPO, run_main

# 3000 steps of the tiny preset: long enough to be killed mid-run (a few seconds).
LONG = ["--config=configs/erm.py:tiny", "--config.train.steps=3000", "--config.train.log_every=100",
        "--config.train.checkpoint_every=100", "--config.train.eval_every=1000"]


def _train_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def _tree_digest(path):
  digest = hashlib.sha256()
  for root, _, files in sorted(os.walk(path)):
    for name in sorted(files):
      full = os.path.join(root, name)
      digest.update(os.path.relpath(full, path).encode())
      digest.update(open(full, "rb").read())
  return digest.hexdigest()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The uninterrupted LONG run, on the device path."""
  workdir = tmp_path_factory.mktemp("full")
  full = run_main(*LONG, f"--workdir={workdir}")
  assert full.returncode == 0, full.stderr[-2000:]
  return workdir


@pytest.mark.parametrize("pipeline", [
    [],
    # streamed by two worker processes: the batches, resumed mid-epoch, are the device path's
    ["--config.data.pipeline=stream", "--config.data.workers=2"]], ids=["device", "stream"])
def test_resume_after_sigkill_reproduces_uninterrupted_run(tmp_path, uninterrupted, pipeline):
  workdir = tmp_path / "killed"
  cmd = [sys.executable, "-m", "jaxlab.main", *LONG, *pipeline, f"--workdir={workdir}"]
  env = {**os.environ, "JAXLAB_DATA_DIR": DATA_DIR}
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  first_checkpoint = workdir / "checkpoints" / "100"  # appears only once committed
  deadline = time.time() + 240
  while not first_checkpoint.exists():
    assert proc.poll() is None, "run ended before its first checkpoint"
    assert time.time() < deadline
    time.sleep(0.005)
  proc.kill()
  proc.wait()
  assert not (workdir / "results.json").exists(), "killed too late: the run had finished"
  # (1797 digits / 32 = 56 steps an epoch: step 100 is mid-epoch)

  resumed = run_main(*LONG, *pipeline, f"--workdir={workdir}")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resuming from the checkpoint at step" in resumed.stdout
  assert (workdir / "results.json").read_text() == (uninterrupted / "results.json").read_text()
  assert _train_losses(workdir) == _train_losses(uninterrupted)


def test_unreadable_checkpoint_is_skipped_with_a_warning(tmp_path):
  args = ["--config=configs/erm.py:tiny", f"--workdir={tmp_path / 'run'}"]
  assert run_main(*args).returncode == 0  # checkpoints at 20 and 40
  newest = tmp_path / "run" / "checkpoints" / "40"
  for root, _, files in os.walk(newest):  # damage every array file of the newest checkpoint
    for name in files:
      if "ocdbt" in root or name.startswith("manifest") or root.endswith("/d"):
        with open(os.path.join(root, name), "wb") as f:
          f.write(b"garbage")
  result = run_main(*args, "--config.train.steps=60")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "checkpoint at step 40 is unreadable" in result.stdout
  assert "resuming from the checkpoint at step 20" in result.stdout
  assert (tmp_path / "run" / "checkpoints" / "40.unreadable").is_dir()  # kept, not deleted
  reference = run_main("--config=configs/erm.py:tiny", "--config.train.steps=60",
                       f"--workdir={tmp_path / 'reference'}")
  assert reference.returncode == 0
  assert (tmp_path / "run" / "results.json").read_text() == (
      tmp_path / "reference" / "results.json").read_text()


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
  good = tmp_path / "good"
  assert run_main("--config=configs/erm.py:tiny", f"--workdir={good}").returncode == 0
  # its checkpoints, continued with a learning rate that diverges (in a workdir of their own:
  # a changed learning rate on the good run's workdir would be another run)
  workdir = tmp_path / "run"
  checkpoints = workdir / "checkpoints"
  shutil.copytree(good / "checkpoints", checkpoints)
  before = {step: _tree_digest(checkpoints / step) for step in ("20", "40")}
  result = run_main("--config=configs/erm.py:tiny", "--config.train.steps=100",
                    "--config.optimizer.learning_rate=1e30", f"--workdir={workdir}")
  assert result.returncode == 3, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  line = [l for l in result.stderr.splitlines() if l.startswith("jaxlab: error:")]
  assert len(line) == 1
  assert "training diverged: train/" in line[0] and "the last good checkpoint (step 40)" in line[0]
  assert sorted(os.listdir(checkpoints)) == ["20", "40"]
  assert {step: _tree_digest(checkpoints / step) for step in ("20", "40")} == before


def test_four_devices_match_one_device(tmp_path):
  args = ["--config=configs/erm.py:tiny", "--config.train.steps=20", "--config.train.log_every=1",
          "--config.train.checkpoint_every=0"]
  one = run_main(*args, f"--workdir={tmp_path / 'one'}")
  four = run_main(*args, f"--workdir={tmp_path / 'four'}",
                  env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  assert one.returncode == 0 and four.returncode == 0, four.stderr[-2000:]
  a, b = _train_losses(tmp_path / "one"), _train_losses(tmp_path / "four")
  assert sorted(a) == list(range(1, 21))
  for step in a:
    assert abs(a[step] - b[step]) <= 1e-5 * abs(a[step]), (step, a[step], b[step])


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.parametrize("pipeline", [
    [],
    # each process reads and decodes only its half of every batch
    ["--config.data.pipeline=stream", "--config.data.workers=1"]], ids=["device", "stream"])
def test_two_processes_match_one_process(tmp_path, pipeline):
  args = ["--config=configs/erm.py:tiny", "--config.train.steps=20", "--config.train.log_every=1"]
  one = run_main(*args, f"--workdir={tmp_path / 'one'}")  # one process, device path
  assert one.returncode == 0
  port = _free_port()
  env = {**os.environ, "JAXLAB_DATA_DIR": DATA_DIR}
  procs = [subprocess.Popen(
      [sys.executable, "-m", "jaxlab.main", *args, *pipeline, f"--workdir={tmp_path / 'two'}",
       "--config.distributed.enabled=True",
       f"--config.distributed.coordinator_address=127.0.0.1:{port}",
       "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
  a, b = _train_losses(tmp_path / "one"), _train_losses(tmp_path / "two")
  assert sorted(a) == sorted(b) == list(range(1, 21))
  for step in a:
    assert abs(a[step] - b[step]) <= 1e-5 * abs(a[step])
  two, one = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("two", "one"))
  assert (two.pop("provenance")["process_count"], one.pop("provenance")["process_count"]) == (2, 1)
  assert two == pytest.approx(one, rel=1e-5)


def test_checkpoints_of_the_layout_before_frozen_inputs_resume_and_others_stay(tmp_path):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jaxlab.errors import UserError
  from jaxlab.train.checkpoint import Checkpointer
  from jaxlab.train.state import TrainState
  state = TrainState(step=jnp.array(7, jnp.int32), params={"w": jnp.arange(3.0)},
                     model_state={}, opt_state={"m": jnp.ones(3)})
  older = {"step": state.step, "params": state.params, "model_state": {},
           "opt_state": state.opt_state}
  saver = Checkpointer(str(tmp_path / "old"))
  saver.save(7, older)  # what a jaxlab state without the `frozen` field wrote
  saver.close()
  abstract = jax.eval_shape(lambda: state)
  restored, step = Checkpointer(str(tmp_path / "old")).restore_latest(abstract)
  assert step == 7 and restored.frozen == {}
  np.testing.assert_array_equal(restored.params["w"], [0.0, 1.0, 2.0])
  # a state of another layout (a field renamed) is not taken for a damaged checkpoint
  saver = Checkpointer(str(tmp_path / "other"))
  saver.save(7, {**older, "generator": {"b": jnp.zeros(2)}})
  saver.close()
  with pytest.raises(UserError, match=r"holds the variables of another model or method "
                                      r"\(unexpected \['generator/b'\]\): it is left in place"):
    Checkpointer(str(tmp_path / "other")).restore_latest(abstract)
  assert os.listdir(tmp_path / "other") == ["7"]
