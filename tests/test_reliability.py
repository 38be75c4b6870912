"""Runs that never mix, lose or silently corrupt work, and one line for every bad input: workdir
ownership, checkpoint integrity, finished runs, signals, simulated devices, the CLI from any
directory, and config validation before anything is written."""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import pytest

from conftest import DATA_DIR, REPO, cli, run_main

TINY = ["--config=configs/erm.py:tiny"]
MAML = ["--config=configs/maml.py:tiny"]


def snapshot(directory):
  """{relative path: bytes} of every file below `directory`."""
  files = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, directory)] = f.read()
  return files


def assert_one_line(code, err, *fragments, exit_code=2):
  lines = [l for l in err.splitlines() if l.startswith("jaxlab: error:")]
  assert code == exit_code and len(lines) == 1, err[-2000:]
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("args,fragment", [
    # bad inputs that ended in a traceback
    (TINY + ["--config.model.hidden=abc"], "config.model.hidden=('abc',): 'abc' is not a number"),
    (TINY + ["--config.train.batch_size=0"],
     "config.train.batch_size=0 is out of range: it must be >= 1"),
    (TINY + ["--config.train.batch_size=-4"], "config.train.batch_size=-4 is out of range"),
    (TINY + ["--config.train.eval_batch_size=0"], "config.train.eval_batch_size=0"),
    (["--config=README.md"], "is not a Python file"),
    (TINY + ["--config.method=maml"], "method maml reads config.meta, config.episodes"),
    (TINY + ["--config.method=pgd_at"], "method pgd_at reads config.adv"),
    (TINY + ["--config.method=cgan"], "configs/cgan.py"),
    (TINY + ["--config.method=edge_popup"], "configs/supermask.py"),
    (TINY + ["--config.data.image_size=-3"], "config.data.image_size=-3 is out of range"),
    (TINY + ["--config.distributed.enabled=True", "--config.distributed.num_processes=2",
             "--config.distributed.coordinator_address=127.0.0.1:1",
             "--config.distributed.process_id=2"], "process_id=2 must be < "),
    # nonsense values that ran with exit 0
    (TINY + ["--config.train.steps=-5"], "config.train.steps=-5 is out of range: it must be >= 0"),
    (TINY + ["--config.data.classes=range:5-20"], "reaches label 20, but 'digits' has 10 classes"),
    (TINY + ["--config.data.train_fraction=0.0"], "train_fraction=0.0 is out of range"),
    (TINY + ["--config.train.keep_checkpoints=0"], "keep_checkpoints=0 is out of range"),
    (TINY + ["--config.train.checkpoint_every=-1"], "checkpoint_every=-1 is out of range"),
    (TINY + ["--config.train.eval_every=-1"], "eval_every=-1 is out of range"),
    (TINY + ["--config.aug.crop_padding=-1"], "crop_padding=-1 is out of range"),
    (TINY + ["--config.optimizer.learning_rate=-1.0"], "learning_rate=-1.0 is out of range"),
    (MAML + ["--config.meta.inner_lr=-1.0"], "inner_lr=-1.0 is out of range"),
    (MAML + ["--config.method=erm"], "episodic preset"),
    (MAML + ["--config.episodes.shots=0"], "episodes.shots=0 is out of range: it must be >= 1"),
    (TINY + ["--config.train.select_by=test/nope"],
     "train.select_by='test/nope' is not an evaluated metric (lowest wins; prefix max: for highest); valid: test/accuracy, test/loss"),
    (TINY + ["--config.train.keep_schedule=every:0"],
     "train.keep_schedule='every:0' is not valid; valid: '' (none), 'ends' (steps 0 and 40)"),
    # the input pipeline
    (TINY + ["--config.data.pipeline=disk"], "data.pipeline='disk' is not valid; valid: auto, "
                                             "device, stream"),
    (TINY + ["--config.data.train_pp=resize(8)|blur(3)"], "unknown op 'blur(3)'"),
    (TINY + ["--config.data.name=folder:/nonexistent/images"], "is not a directory"),
    (TINY + ["--config.data.pipeline=stream", "--config.data.eval_splits=nope"],
     "dataset 'digits' has no split 'nope'; valid splits: train, test"),
    (MAML + ["--config.data.pipeline=stream"], "episodic tasks hold their classes"),
    (["--config=configs/ssl.py:digits", "--config.data.pipeline=stream"],
     "method 'fixmatch' holds its data on the device"),
])
def test_bad_input_is_one_line_before_anything_is_written(tmp_path, args, fragment):
  workdir = tmp_path / "run"
  code, _, err = cli(*args, f"--workdir={workdir}")
  assert_one_line(code, err, fragment)
  assert not workdir.exists()


def test_workdir_that_is_a_file_or_cannot_be_created():
  assert_one_line(*cli(*TINY, f"--workdir={REPO}/README.md")[::2], "is a file, not a directory")
  assert_one_line(*cli(*TINY, "--workdir=gs://bucket/runs/a")[::2],
                  "is a URL; jaxlab writes checkpoints, logs and results with local file")
  assert not os.path.exists(os.path.join(REPO, "gs:"))
  assert_one_line(*cli(*TINY, "--workdir=/proc/jaxlab_cannot")[::2], "cannot be created")


def test_a_workdir_belongs_to_one_run(tmp_path):
  workdir = tmp_path / "erm"
  assert cli(*TINY, f"--workdir={workdir}")[0] == 0
  before = snapshot(workdir)
  for args, fragment in (
      (["--config=configs/robust.py:digits"], "differs in method ('erm' there, 'pgd_at' here)"),
      (TINY + ["--config.optimizer.learning_rate=0.1"], "optimizer.learning_rate (0.001 there"),
      (TINY + ["--config.model.hidden=(64,)"], "model.hidden ([32] there, [64] here)")):
    assert_one_line(*cli(*args, f"--workdir={workdir}")[::2], "holds another run", fragment)
    assert snapshot(workdir) == before  # nothing written, moved or cut
  # a checkpoint of another model, without the config.json that would say so: left in place
  other = tmp_path / "other"
  shutil.copytree(workdir / "checkpoints", other / "checkpoints")
  before = snapshot(other)
  code, _, err = cli(*TINY, "--config.model.hidden=(64,)", f"--workdir={other}")
  assert_one_line(code, err, "holds the variables of another model or method",
                  "shapes differ at", "it is left in place")
  assert snapshot(other) == before


def test_a_finished_run_started_again_changes_nothing(tmp_path):
  workdir = tmp_path / "run"
  assert cli(*TINY, f"--workdir={workdir}")[0] == 0
  before = snapshot(workdir)
  assert "train/loss" in json.loads(before["results.json"])
  code, out, _ = cli(*TINY, f"--workdir={workdir}", "--config.train.log_every=5")
  assert code == 0 and "holds a finished run (step 40); nothing to do" in out
  assert snapshot(workdir) == before


def _flip_bytes(path, count=4096):
  """Overwrites `count` bytes in the middle of a file with their complement (same size)."""
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    start = max(0, len(data) // 2 - count // 2)
    data[start:start + count] = bytes(255 - b for b in data[start:start + count])
    f.seek(0)
    f.write(data)


def test_a_silently_corrupted_checkpoint_is_detected_and_the_previous_one_used(tmp_path):
  full, damaged = tmp_path / "full", tmp_path / "damaged"
  assert cli(*TINY, f"--workdir={full}")[0] == 0
  shutil.copytree(full, damaged)
  os.remove(damaged / "results.json")  # as if killed during the final evaluation
  data_files = [os.path.join(root, name) for root, _, names in
                os.walk(damaged / "checkpoints" / "40" / "default") for name in names
                if os.sep + "d" + os.sep in os.path.join(root, name) + os.sep]
  largest = max(data_files, key=os.path.getsize)
  size = os.path.getsize(largest)
  _flip_bytes(largest)
  assert os.path.getsize(largest) == size
  code, out, err = cli(*TINY, f"--workdir={damaged}")
  assert code == 0, err[-2000:]
  assert "checkpoint at step 40 is unreadable" in out
  assert "resuming from the checkpoint at step 20" in out
  assert (damaged / "checkpoints" / "40.unreadable").is_dir()
  assert (damaged / "results.json").read_text() == (full / "results.json").read_text()


def _train_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if r["split"] == "train"}


def test_four_simulated_devices_at_the_presets_log_interval(tmp_path):
  """erm digits (log_every 250) used to abort after a 40 s all-reduce rendezvous timeout."""
  args = ["--config=configs/erm.py:digits", "--config.train.steps=300"]
  one = run_main(*args, f"--workdir={tmp_path / 'one'}")
  four = run_main(*args, f"--workdir={tmp_path / 'four'}",
                  env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  assert one.returncode == 0 and four.returncode == 0, four.stderr[-2000:]
  a, b = _train_losses(tmp_path / "one"), _train_losses(tmp_path / "four")
  assert sorted(a) == sorted(b) == [250, 300]
  # the first window as the first 20 steps (test_train_loop); later ones drift with the
  # reassociated all-reduce sums (benchmarks/four_devices.py: 3e-7 over steps 1-100)
  assert abs(a[250] - b[250]) <= 1e-5 * abs(a[250]), (a[250], b[250])
  assert abs(a[300] - b[300]) <= 1e-3 * abs(a[300]), (a[300], b[300])


def test_the_command_line_from_another_directory(tmp_path):
  env = {**os.environ, "JAXLAB_DATA_DIR": DATA_DIR}
  for config in ("configs/erm.py:tiny", "erm.py:tiny"):
    workdir = tmp_path / config.split(":")[0].replace("/", "_")
    result = subprocess.run([sys.executable, "-m", "jaxlab.main", f"--config={config}",
                             "--config.train.steps=2", f"--workdir={workdir}"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (workdir / "results.json").exists()


def test_download_without_a_network_fails_at_once(tmp_path):
  started = time.time()
  code, _, err = cli("--config=configs/erm.py:mnist", "--config.data.download=True",
                     f"--config.data.data_dir={tmp_path / 'empty'}", f"--workdir={tmp_path / 'r'}")
  assert_one_line(code, err, "data.download=True, but", "cannot be reached", "tfds build mnist")
  assert time.time() - started < 30


def test_zero_steps_says_it_only_evaluates_and_large_batches_warn(tmp_path):
  code, out, _ = cli(*TINY, "--config.train.steps=0", f"--workdir={tmp_path / 'eval'}")
  assert code == 0 and "train.steps=0: evaluating only" in out
  code, out, _ = cli(*TINY, "--config.train.steps=1", "--config.train.batch_size=5000",
                     f"--workdir={tmp_path / 'big'}")
  assert code == 0 and "train.batch_size=5000 exceeds the 1438 training examples" in out


# -- signals and TensorBoard events ------------------------------------------------------------

LONG = ["--config=configs/erm.py:tiny", "--config.train.steps=3000", "--config.train.log_every=50",
        "--config.train.checkpoint_every=100", "--config.train.eval_every=1000"]


def _tensorboard_steps(workdir, tag="train/loss"):
  """The steps TensorBoard shows for `tag`: events read in file order, a restart marker
  (SessionLog START at step s, tensorboardX's `purge_step`) hiding the earlier events at
  steps >= s, as TensorBoard does."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  steps = set()
  directory = os.path.join(workdir, "tensorboard")
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as f:
      data = f.read()
    offset = 0
    while offset + 12 <= len(data):
      length = struct.unpack("<Q", data[offset:offset + 8])[0]
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      if event.HasField("session_log") and event.session_log.status == 1:  # START
        steps = {s for s in steps if s < event.step}
      elif event.HasField("summary") and any(v.tag == tag for v in event.summary.value):
        steps.add(event.step)
  return sorted(steps)


def _start(workdir):
  return subprocess.Popen([sys.executable, "-m", "jaxlab.main", *LONG, f"--workdir={workdir}"],
                          cwd=REPO, env={**os.environ, "JAXLAB_DATA_DIR": DATA_DIR},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc):
  deadline = time.time() + 240
  while not path.exists():
    assert proc.poll() is None, "run ended too early"
    assert time.time() < deadline
    time.sleep(0.005)


@pytest.fixture(scope="module")
def reference_400(tmp_path_factory):
  """An uninterrupted run of LONG's settings cut to 400 steps."""
  reference = tmp_path_factory.mktemp("reference") / "run"
  assert cli(*LONG[:1], "--config.train.steps=400", *LONG[2:], f"--workdir={reference}")[0] == 0
  return reference


@pytest.mark.parametrize("number,exit_code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_a_checkpoint_and_the_run_resumes_exactly(tmp_path, reference_400,
                                                                  number, exit_code):
  reference = reference_400
  workdir = tmp_path / "run"
  proc = _start(workdir)
  _wait_for(workdir / "checkpoints" / "100", proc)
  proc.send_signal(number)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == exit_code, err[-2000:]
  assert "Traceback" not in err
  line = [l for l in err.splitlines() if l.startswith("jaxlab: interrupted")]
  assert len(line) == 1 and "resume with the same command" in line[0], err[-2000:]
  stopped = int(line[0].split(" at step ")[1].split(";")[0])
  assert 100 <= stopped < 3000 and (workdir / "checkpoints" / str(stopped)).is_dir()
  # resumed (to 400 steps, if it stopped before): what an uninterrupted run computes
  if stopped < 400:
    assert cli(*LONG[:1], "--config.train.steps=400", *LONG[2:], f"--workdir={workdir}")[0] == 0
    assert (workdir / "results.json").read_text() == (reference / "results.json").read_text()
    assert _train_losses(workdir) == _train_losses(reference)
    assert _tensorboard_steps(workdir) == _tensorboard_steps(reference) == list(
        range(50, 401, 50))


def test_tensorboard_has_no_hole_after_a_kill(tmp_path, reference_400):
  workdir = tmp_path / "run"
  proc = _start(workdir)
  _wait_for(workdir / "checkpoints" / "300", proc)
  proc.kill()
  proc.communicate()  # reaps it and closes its pipes
  shown = _tensorboard_steps(workdir)
  assert set(range(50, 201, 50)) <= set(shown)  # flushed with the checkpoint at 200
  assert cli(*LONG[:1], "--config.train.steps=400", *LONG[2:], f"--workdir={workdir}")[0] == 0
  assert _tensorboard_steps(workdir) == list(range(50, 401, 50))
  assert (workdir / "results.json").read_text() == (reference_400 / "results.json").read_text()


def test_the_jaxlab_command_is_not_shadowed_by_a_folder_named_jaxlab(tmp_path):
  """`python -m jaxlab.main` imports from the current directory first; the installed
  `jaxlab` command does not, so workdirs may live under a folder named jaxlab."""
  command = os.path.join(os.path.dirname(sys.executable), "jaxlab")
  assert os.path.exists(command), "the jaxlab console script is installed with the package"
  (tmp_path / "jaxlab" / "runs").mkdir(parents=True)
  result = subprocess.run([command, "--config=erm.py:tiny", "--config.train.steps=2",
                           "--workdir=jaxlab/runs/tiny"], cwd=tmp_path,
                          env={**os.environ, "JAXLAB_DATA_DIR": DATA_DIR}, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert (tmp_path / "jaxlab" / "runs" / "tiny" / "results.json").exists()
