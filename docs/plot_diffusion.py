"""The reconstruction gap over t of the §5(g) digits runs (docs/repro_diffusion.sh): test
accuracy of CNNs trained on D^(t), and D^(t)'s measures in the reference classifier's
features, for guidance 1 and 3, mean +- std over seeds, from the runs' results.json.

  python docs/plot_diffusion.py --runs docs/runs --out docs/figures/diffusion_gap_digits.png
"""

import argparse
import glob
import json
import os
import statistics

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

PANELS = [("accuracy", "test accuracy of a CNN trained on D^(t) (%)"),
          ("centroid_distance", "distance to the class centroid"),
          ("confidence", "reference confidence"),
          ("recall", "recall / coverage (dashed)"),
          ("precision", "precision"),
          ("frechet_distance", "Frechet distance to the real set")]


def _mean_std(values):
  return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def accuracy(runs: str, guidance: str):
  """[(t, [accuracies over seeds])], t = 0 being the real training set."""
  points = {0.0: [100 * json.load(open(p))["test/accuracy"] for p in glob.glob(
      os.path.join(runs, "diffusion_accuracy", "real", "t0", "seed*", "results.json"))]}
  for path in glob.glob(os.path.join(runs, "diffusion_accuracy", f"g{guidance}", "t*", "seed*",
                                     "results.json")):
    t = float(path.split(os.sep)[-3][1:])
    with open(path) as f:
      points.setdefault(t, []).append(100 * json.load(f)["test/accuracy"])
  return sorted(points.items())


def gap(runs: str, guidance: str, metric: str):
  """[(t, [values over seeds])] of one measure of the analysis runs."""
  points = {}
  for path in glob.glob(os.path.join(runs, "diffusion_gap", f"g{guidance}", "metrics", "seed*",
                                     "results.json")):
    with open(path) as f:
      results = json.load(f)
    for key, value in results.items():
      parts = key.split("/")
      if len(parts) == 3 and parts[0] == "gap" and parts[2] == metric:
        points.setdefault(float(parts[1][1:]), []).append(value)
  return sorted(points.items())


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", default="runs")
  parser.add_argument("--out", default="docs/figures/diffusion_gap_digits.png")
  args = parser.parse_args()
  fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
  for ax, (metric, title) in zip(axes.flat, PANELS):
    for guidance, color in (("1", "tab:blue"), ("3", "tab:red")):
      series = [(metric, "-")] + ([("coverage", "--")] if metric == "recall" else [])
      for name, style in series:
        points = (accuracy(args.runs, guidance) if name == "accuracy"
                  else gap(args.runs, guidance, name))
        if not points:
          continue
        ts = [t for t, _ in points]
        means, stds = zip(*(_mean_std(v) for _, v in points))
        label = f"guidance {guidance}" + ("" if style == "-" else f" ({name})")
        ax.errorbar(ts, means, yerr=stds, fmt="o" + style, color=color, capsize=3,
                    label=label, markersize=4)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("t / T")
    ax.grid(alpha=0.3)
  axes.flat[0].legend(fontsize=8)
  axes.flat[3].legend(fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  fig.savefig(args.out, dpi=110)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
