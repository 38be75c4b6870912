"""Four simulated CPU devices against one: each preset runs at its own logging interval (the
setting that used to deadlock) on 4 devices, and once more per step (`train.log_every=1`, which
changes what is logged, not what is computed) on 1 and 4 devices; prints the largest relative
difference of the per-step training losses over the first 20 and 100 steps and over all (the
4 devices sum the gradient in another order, so the runs part by float rounding that training
amplifies as the loss shrinks).

  python benchmarks/four_devices.py
"""

import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = [("configs/erm.py:digits", []),
           ("configs/robust.py:digits", ["--config.train.steps=300"])]


def run(args, workdir, devices):
  env = {**os.environ}
  if devices > 1:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  started = time.time()
  result = subprocess.run([sys.executable, "-m", "jaxlab.main", *args, f"--workdir={workdir}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
  if result.returncode:
    raise SystemExit(f"{args} on {devices} devices: exit {result.returncode}\n"
                     f"{result.stderr[-2000:]}")
  return time.time() - started


def losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if r["split"] == "train"}


def main():
  root = tempfile.mkdtemp(prefix="jaxlab_four_devices_")
  print("| preset | 4 devices at the preset's log_every | steps | max rel. diff, steps 1-20 "
        "| steps 1-100 | all steps |")
  print("|---|---|---|---|---|---|")
  for preset, extra in PRESETS:
    args = [f"--config={preset}", *extra]
    name = preset.replace("/", "_").replace(":", "_")
    seconds = run(args, f"{root}/{name}_default4", 4)
    per_step = {}
    for devices in (1, 4):
      workdir = f"{root}/{name}_{devices}"
      run(args + ["--config.train.log_every=1"], workdir, devices)
      per_step[devices] = losses(workdir)
    one, four = per_step[1], per_step[4]
    assert sorted(one) == sorted(four)
    rel = {s: abs(one[s] - four[s]) / max(abs(one[s]), 1e-30) for s in one}
    upto = lambda n: max(rel[s] for s in one if s <= n)
    print(f"| {' '.join(args)} | finished in {seconds:.0f} s | {len(one)} | {upto(20):.2e} | "
          f"{upto(100):.2e} | {max(rel.values()):.2e} (step {max(rel, key=rel.get)}, loss "
          f"{one[max(rel, key=rel.get)]:.2e}) |")


if __name__ == "__main__":
  main()
