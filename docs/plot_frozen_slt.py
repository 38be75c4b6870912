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
            "balanced": "frozen, p = r = f / 2", "all_lock": "frozen, r = f"}


def collect(runs: str):
  """{(family, s): [(bits, [accuracies]) sorted by bits]}."""
  points = {}
  for path in glob.glob(os.path.join(runs, "frozen_slt", "*", "*", "seed*", "results.json")):
    arm, sparsity = path.split(os.sep)[-4:-2]
    with open(path) as f:
      results = json.load(f)
    family = "dense" if arm.startswith("dense") else arm.rsplit("_f", 1)[0]
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
      ax.errorbar(x, y, yerr=err, marker="o", capsize=2, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("model size (kbit: stored mask bits)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"target sparsity {sparsity[1:]}", fontsize=9)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(args.out, dpi=120)
  print("wrote", args.out)


if __name__ == "__main__":
  main()
