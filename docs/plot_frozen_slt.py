"""Accuracy against model size in bits of the §4(g) frozen-SLT runs (docs/repro_frozen_slt.sh):
one panel per target sparsity, mean +- std over seeds, from the runs' results.json.

  python docs/plot_frozen_slt.py --runs docs/runs --out docs/figures/frozen_slt_digits.png
"""

import argparse
import glob
import json
import os
import statistics

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

FAMILIES = {"dense": "dense source, narrower", "all_prune": "randomly pruned source (p = f)",
            "balanced": "frozen, p = r = f / 2", "all_lock": "frozen, r = f",
            "none": "no search left (s <= p or s >= 1 - r)"}


def searched(config) -> bool:
  """Whether edge-popup chooses anything: p < s < 1 - r (else the frozen part decides the
  whole mask: s <= p keeps every free weight of the randomly pruned source, s >= 1 - r keeps
  only the locked ones)."""
  masking = config["supermask"]
  p, r, s = masking["freeze_prune"], masking["freeze_lock"], masking["sparsity"]
  return p + 1e-9 < s < 1 - r - 1e-9


def collect(runs: str):
  """{(family, s): [(bits, [accuracies]) sorted by bits]}; family "no search" holds the runs
  whose mask the freezing alone decides."""
  points = {}
  for path in glob.glob(os.path.join(runs, "frozen_slt", "*", "*", "seed*", "results.json")):
    arm, sparsity = path.split(os.sep)[-4:-2]
    with open(path) as f:
      results = json.load(f)
    with open(os.path.join(os.path.dirname(path), "config.json")) as f:
      config = json.load(f)
    family = "dense" if arm.startswith("dense") else arm.rsplit("_f", 1)[0]
    if not searched(config):
      family = "none"
    key = (family, sparsity)
    bits = results["ticket/mask_bits"]
    points.setdefault(key, {}).setdefault(arm, {"bits": bits, "accuracy": []})
    points[key][arm]["accuracy"].append(100 * results["test/accuracy"])
  return {k: sorted(v.values(), key=lambda p: p["bits"]) for k, v in points.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", default="runs")
  parser.add_argument("--out", default="docs/figures/frozen_slt_digits.png")
  args = parser.parse_args()
  points = collect(args.runs)
  sparsities = sorted({s for _, s in points})
  fig, axes = plt.subplots(1, len(sparsities), figsize=(5 * len(sparsities), 3.6),
                           squeeze=False)
  for ax, sparsity in zip(axes[0], sparsities):
    for family, label in FAMILIES.items():
      series = points.get((family, sparsity), [])
      if not series:
        continue
      x = [p["bits"] / 1000 for p in series]
      y = [statistics.mean(p["accuracy"]) for p in series]
      err = [statistics.stdev(p["accuracy"]) if len(p["accuracy"]) > 1 else 0.0
             for p in series]
      style = dict(marker="x", linestyle="none", color="grey") if family == "none" else dict(
          marker="o")
      ax.errorbar(x, y, yerr=err, capsize=2, label=label, **style)
    ax.set_xlabel("model size (kbit: stored mask bits)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"target sparsity {sparsity[1:]}", fontsize=9)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(args.out, dpi=120)
  print("wrote", args.out)


if __name__ == "__main__":
  main()
