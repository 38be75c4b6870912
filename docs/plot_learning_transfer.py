"""Curves of the §5(g) learning-transfer runs (docs/repro_learning_transfer.sh), from their
metrics.jsonl: per activation, the validation accuracy of the transferred point theta_t
against t for the naive, GMT, FGMT and oracle arms (mean +- std over the seed pairs; the
trained runs' final validation accuracy dashed), and the validation accuracy while fine-tuning
3 epochs from each arm's best point and from scratch (MLPs; the CNN has no fine-tuning arm).

  python docs/plot_learning_transfer.py --runs docs/runs --out docs/figures/learning_transfer_digits.png
"""

import argparse
import glob
import json
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

ARMS = ("naive", "gmt", "fgmt", "oracle")
INITS = ("scratch",) + ARMS
COLOURS = {"scratch": "grey", "naive": "C0", "gmt": "C1", "fgmt": "C2", "oracle": "C3"}
ACTIVATIONS = {"none": "deep linear MLP (the code's)", "relu": "ReLU MLP",
               "cnn": "CNN 32-64-64, global pool"}


def validation_curve(workdir: str):
  """[(step, validation accuracy in %)] of one run."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [(r["step"], 100 * r["accuracy"]) for r in rows if r.get("split") == "validation"]


def mean_curve(workdirs):
  """(steps, mean, std) over runs that share their evaluation steps."""
  curves = [dict(validation_curve(w)) for w in workdirs]
  steps = sorted(set.intersection(*(set(c) for c in curves)))
  values = np.asarray([[c[s] for s in steps] for c in curves])
  return np.asarray(steps), values.mean(0), values.std(0)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", default="runs")
  parser.add_argument("--out", default="docs/figures/learning_transfer_digits.png")
  args = parser.parse_args()
  fig, axes = plt.subplots(len(ACTIVATIONS), 2, figsize=(10, 3.4 * len(ACTIVATIONS)),
                           squeeze=False)
  for row, (act, title) in enumerate(ACTIVATIONS.items()):
    ax = axes[row][0]
    for arm in ARMS:
      runs = sorted(glob.glob(os.path.join(args.runs, "learning_transfer", arm, act, "seed*")))
      if runs:
        steps, mean, std = mean_curve(runs)
        ax.errorbar(steps, mean, yerr=std, capsize=2, marker="o", color=COLOURS[arm],
                    label=f"{arm} ({len(runs)})")
    trained = glob.glob(os.path.join(args.runs, "learning_transfer", "trained", act, "seed*",
                                     "results.json"))
    if trained:
      final = [100 * json.load(open(p))["validation/accuracy"] for p in trained]
      ax.axhline(np.mean(final), linestyle="--", color="black",
                 label=f"trained ({len(final)} runs)")
    ax.set_xlabel("trajectory step t (T = 10, cosine)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"transferred theta_t, {title}", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[row][1]
    if not glob.glob(os.path.join(args.runs, f"learning_transfer_ft_{act}")):
      ax.axis("off")  # (no fine-tuning arm for this network)
      continue
    for init in INITS:
      runs = sorted(glob.glob(os.path.join(args.runs, f"learning_transfer_ft_{act}", init, "e3",
                                           "seed*")))
      if runs:
        steps, mean, std = mean_curve(runs)
        ax.errorbar(steps, mean, yerr=std, capsize=2, marker=".", color=COLOURS[init],
                    label=f"from {init}")
    ax.set_xlabel("fine-tuning step (SGD lr 0.01, batch 128; 11 steps = 1 epoch)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"fine-tuning 3 epochs, {title}", fontsize=9)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(args.out, dpi=120)
  print("wrote", args.out)


if __name__ == "__main__":
  main()
