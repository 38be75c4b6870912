"""Runs bad inputs through the command line and prints one table row each: the input, the exit
code, how many lines the run printed on stderr, whether a Python traceback appeared, and
whether the workdir changed. Every row should read: exit 2 (a user error), one error line, no
traceback, workdir unchanged.

  python benchmarks/bad_inputs.py [--jobs 2] [--only SUBSTRING]

Each input runs `python -m jaxlab.main` in a fresh process from the repository root, with the
embedded datasets in a private data directory (built once). Inputs that need another run
(a finished erm run, a cgan run, ...) get it from a set-up run first.
"""

import argparse
import concurrent.futures
import hashlib
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ERM = "--config=configs/erm.py:tiny"
MAML = "--config=configs/maml.py:tiny"
ROBUST = "--config=configs/robust.py:digits"
MGR = ["--config=configs/mgr.py:digits,steps=4", "--config.generator.width=8",
       "--config.generator.discriminator_width=8"]


def cases(runs: str):
  """(name, argv without --workdir, workdir or None for a fresh one)."""
  erm_run, cgan_run = f"{runs}/erm_tiny", f"{runs}/cgan"
  fresh = None
  yield from [
      ("no --config", ["--workdir=WORKDIR"], fresh),
      ("no --workdir", [ERM], "none"),
      ("missing config file", ["--config=configs/nope.py:tiny"], fresh),
      ("config file that is not Python", ["--config=README.md"], fresh),
      ("unknown preset", ["--config=configs/erm.py:nope"], fresh),
      ("bad preset argument value", ["--config=configs/supermask.py:digits_mlp,width=abc"], fresh),
      ("unknown preset argument", ["--config=configs/supermask.py:digits_mlp,nope=3"], fresh),
      ("preset argument without =", ["--config=configs/supermask.py:digits_mlp,width"], fresh),
      ("unknown flag", [ERM, "--foo=3"], fresh),
      ("stray argument", [ERM, "extra"], fresh),
      ("unknown config key", [ERM, "--config.train.nope=3"], fresh),
      ("unknown config block", [ERM, "--config.nope.deeper=3"], fresh),
      ("int key given text", [ERM, "--config.train.steps=abc"], fresh),
      ("int key given a float", [ERM, "--config.train.steps=1.5"], fresh),
      ("tuple of ints given text", [ERM, "--config.model.hidden=abc"], fresh),
      ("tuple with a string element", [ERM, "--config.model.hidden=(3,'a')"], fresh),
      ("seed given text", [ERM, "--config.seed=abc"], fresh),
      ("bool given text", [ERM, "--config.aug.flip=maybe"], fresh),
      ("unknown method", [ERM, "--config.method=nope"], fresh),
      ("maml on an erm preset", [ERM, "--config.method=maml"], fresh),
      ("pgd_at on an erm preset", [ERM, "--config.method=pgd_at"], fresh),
      ("cgan on an erm preset", [ERM, "--config.method=cgan"], fresh),
      ("edge_popup on an erm preset", [ERM, "--config.method=edge_popup"], fresh),
      ("mgr on an erm preset", [ERM, "--config.method=mgr"], fresh),
      ("erm on an episodic preset", [MAML, "--config.method=erm"], fresh),
      ("mgr without its generator", MGR, fresh),
      ("mgr with a missing generator run", MGR + ["--config.inputs.generator=/nonexistent"],
       fresh),
      ("mgr with a generator that is no run", MGR + [f"--config.inputs.generator={REPO}/docs"],
       fresh),
      ("mgr with a generator of another shape", MGR + [
          f"--config.inputs.generator={cgan_run}", "--config.generator.width=16"], fresh),
      ("pssl without its inputs", ["--config=configs/pp_pssl.py:digits,method=pssl"], fresh),
      ("arrest without init_from", [ROBUST + ",method=arrest"], fresh),
      ("finetune without init_from", ["--config=configs/finetune.py:digits,method=finetune"],
       fresh),
      ("init_from that does not exist", [ERM, "--config.init_from=/nonexistent"], fresh),
      ("init_from of another architecture", [ERM, f"--config.init_from={erm_run}",
                                             "--config.model.hidden=(64,)"], fresh),
      ("init_from a text file", [ERM, f"--config.init_from={REPO}/README.md"], fresh),
      ("negative steps", [ERM, "--config.train.steps=-5"], fresh),
      ("zero batch size", [ERM, "--config.train.batch_size=0"], fresh),
      ("negative batch size", [ERM, "--config.train.batch_size=-4"], fresh),
      ("zero eval batch size", [ERM, "--config.train.eval_batch_size=0"], fresh),
      ("zero log_every", [ERM, "--config.train.log_every=0"], fresh),
      ("negative eval_every", [ERM, "--config.train.eval_every=-1"], fresh),
      ("negative checkpoint_every", [ERM, "--config.train.checkpoint_every=-1"], fresh),
      ("zero keep_checkpoints", [ERM, "--config.train.keep_checkpoints=0"], fresh),
      ("label smoothing 1.5", [ERM, "--config.train.label_smoothing=1.5"], fresh),
      ("train_fraction 0", [ERM, "--config.data.train_fraction=0.0"], fresh),
      ("val_fraction 1", [ERM, "--config.data.val_fraction=1.0"], fresh),
      ("negative per_class", [ERM, "--config.data.per_class=-1"], fresh),
      ("per_class beyond a class's size", [ERM, "--config.data.per_class=1000"], fresh),
      ("negative image size", [ERM, "--config.data.image_size=-3"], fresh),
      ("negative crop padding", [ERM, "--config.aug.crop_padding=-1"], fresh),
      ("negative learning rate", [ERM, "--config.optimizer.learning_rate=-1.0"], fresh),
      ("momentum 1.5", [ERM, "--config.optimizer.momentum=1.5"], fresh),
      ("negative weight decay", [ERM, "--config.optimizer.weight_decay=-0.1"], fresh),
      ("unknown optimizer", [ERM, "--config.optimizer.name=nope"], fresh),
      ("unknown schedule", [ERM, "--config.optimizer.schedule=nope"], fresh),
      ("unknown model", [ERM, "--config.model.name=nope"], fresh),
      ("unknown norm", [ERM, "--config.model.norm=nope"], fresh),
      ("unknown initialiser", [ERM, "--config.model.weight_init=nope"], fresh),
      ("negative inner lr", [MAML, "--config.meta.inner_lr=-1.0"], fresh),
      ("zero shots", [MAML, "--config.episodes.shots=0"], fresh),
      ("one way", [MAML, "--config.episodes.ways=1"], fresh),
      ("unknown task parallelism", [MAML, "--config.meta.task_parallel=nope"], fresh),
      ("unknown dataset", [ERM, "--config.data.name=no_such_dataset"], fresh),
      ("unknown dataset configuration", [ERM, "--config.data.name=glyphs/nope"], fresh),
      ("unknown split", [ERM, "--config.data.train_split=nope"], fresh),
      ("class range beyond the dataset", [ERM, "--config.data.classes=range:5-20"], fresh),
      ("class range not understood", [ERM, "--config.data.classes=bogus"], fresh),
      ("unprepared TFDS dataset", ["--config=configs/erm.py:mnist",
                                  "--config.data.data_dir=/tmp/jaxlab_empty_data"], fresh),
      ("download without a network", ["--config=configs/erm.py:mnist",
                                      "--config.data.data_dir=/tmp/jaxlab_empty_data",
                                      "--config.data.download=True"], fresh),
      ("select_by an unknown metric", [ERM, "--config.train.select_by=test/nope"], fresh),
      ("select_by a split not evaluated", [ERM, "--config.train.select_by=validation/loss"],
       fresh),
      ("distributed without a coordinator", [ERM, "--config.distributed.enabled=True"], fresh),
      ("process_id >= num_processes", [ERM, "--config.distributed.enabled=True",
                                       "--config.distributed.coordinator_address=127.0.0.1:1",
                                       "--config.distributed.num_processes=2",
                                       "--config.distributed.process_id=2"], fresh),
      ("workdir that is a file", [ERM], f"{REPO}/README.md"),
      ("workdir that cannot be created", [ERM], "/proc/jaxlab_cannot"),
      ("another method on a finished workdir", [ROBUST], erm_run),
      ("another learning rate on a workdir", [ERM, "--config.optimizer.learning_rate=0.1"],
       erm_run),
      ("another architecture on a workdir", [ERM, "--config.model.hidden=(64,)"], erm_run),
      ("unknown SOVR switch rule", [ROBUST + ",method=sovr", "--config.sovr.switch_rule=nope"],
       fresh),
      ("unknown attack", [ROBUST, "--config.adv.eval_attacks=nope"], fresh),
      ("margin bins not numbers", [ROBUST, "--config.adv.margin_bins=abc"], fresh),
      ("negative attack radius", [ROBUST, "--config.adv.train_eps=-0.1"], fresh),
      ("unknown fine-tuning prior", ["--config=configs/finetune.py:digits,method=randreg",
                                     f"--config.init_from={erm_run}",
                                     "--config.finetune.prior=nope"], fresh),
      ("unknown RGKD distance", [ROBUST + ",method=arrest", f"--config.init_from={erm_run}",
                                 "--config.arrest.rgkd_distance=nope"], fresh),
      ("FixMatch threshold 1.5", ["--config=configs/ssl.py:digits",
                                  "--config.ssl.threshold=1.5"], fresh),
      ("unknown unlabeled pool", ["--config=configs/ssl.py:digits",
                                  "--config.ssl.unlabeled=pool"], fresh),
      ("unknown generative sampler", MGR + [f"--config.inputs.generator={cgan_run}",
                                            "--config.generative.sampler=nope"], fresh),
      ("unknown latent init", ["--config=configs/ssl.py:digits,method=meta_gen_ssl",
                               "--config.meta_gen_ssl.latent_init=nope"], fresh),
  ]


def _snapshot(directory: str):
  """{relative path: sha256} of every file below `directory` ({} if it does not exist)."""
  out = {}
  if not os.path.isdir(directory):
    return out
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return out


def run(argv, env):
  return subprocess.run([sys.executable, "-m", "jaxlab.main", *argv], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def check(case, runs, env):
  name, argv, workdir = case
  if workdir is None:
    workdir = tempfile.mkdtemp(prefix="bad_input_", dir=runs)
    os.rmdir(workdir)  # a fresh workdir: it must not be created for a run that cannot start
  args = argv + ([] if workdir == "none" else [f"--workdir={workdir}"])
  before = _snapshot(workdir) if workdir != "none" else {}
  result = run(args, env)
  after = _snapshot(workdir) if workdir != "none" else {}
  lines = result.stderr.strip().splitlines()
  shown = " ".join(a for a in args if not a.startswith("--workdir")).replace(runs, "<runs>")
  return {"input": name, "args": shown,
          "exit": result.returncode, "error_lines": sum(l.startswith("jaxlab: error:")
                                                        for l in lines),
          "traceback": "Traceback" in result.stderr,
          "workdir_changed": before != after,
          "message": next((l for l in lines if l.startswith("jaxlab: error:")),
                          lines[-1] if lines else ""),
          }


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--jobs", type=int, default=2)
  parser.add_argument("--only", default="")
  args = parser.parse_args()
  runs = tempfile.mkdtemp(prefix="jaxlab_bad_inputs_")
  env = {**os.environ, "JAXLAB_DATA_DIR": os.environ.get("JAXLAB_DATA_DIR",
                                                          os.path.join(runs, "data"))}
  for setup in ([ERM, f"--workdir={runs}/erm_tiny"],
                ["--config=configs/cgan.py:digits,steps=2", "--config.generator.width=8",
                 "--config.generator.discriminator_width=8", f"--workdir={runs}/cgan"]):
    done = run(setup, env)
    assert done.returncode == 0, done.stderr[-2000:]
  selected = [c for c in cases(runs) if args.only in c[0]]
  with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
    rows = list(pool.map(lambda c: check(c, runs, env), selected))
  print("| # | input | exit | error lines | traceback | workdir changed | the line |")
  print("|---|---|---|---|---|---|---|")
  for i, r in enumerate(rows, 1):
    line = r["message"].replace("jaxlab: error: ", "").replace("|", "\\|").replace(runs, "<runs>")
    line = line if len(line) <= 160 else line[:157] + "..."
    print(f"| {i} | {r['input']} (`{r['args']}`) | {r['exit']} | {r['error_lines']} | "
          f"{'yes' if r['traceback'] else 'no'} | {'yes' if r['workdir_changed'] else 'no'} | "
          f"{line} |")
  bad = [r for r in rows if r["exit"] != 2 or r["error_lines"] != 1 or r["traceback"]
         or r["workdir_changed"]]
  print(f"\n{len(rows)} inputs: {sum(r['traceback'] for r in rows)} tracebacks, "
        f"{sum(r['exit'] == 0 for r in rows)} accepted (exit 0), "
        f"{sum(r['workdir_changed'] for r in rows)} workdirs changed, "
        f"{len(rows) - len(bad)} with exit 2, one error line and the workdir unchanged")
  for r in bad:
    print(f"  NOT AS EXPECTED: {r['input']}: exit {r['exit']}, {r['message']}")


if __name__ == "__main__":
  main()
