"""Draws the figures of the docs pages from the runs' metrics.jsonl, with `jaxlab plot`'s code.

Every figure is (file, runs, metrics): the runs are globs under RUNS (each `.../seed<k>`; the
seeds of one arm are drawn as a mean with a min-max band by `jaxlab.plots`). Only runs that
kept their metrics.jsonl can be drawn: the maml, finetune and mgr tables' runs did not (their
pages have no curves until they are re-run), so the figures cover supermask.md, ssl.md,
robust.md and tta.md (whose heat maps are drawn from the runs' results.json).

  python docs/make_figures.py [--runs docs/runs]
"""

import argparse
import glob
import json
import os

from jaxlab import plots

DOCS = os.path.dirname(os.path.abspath(__file__))

FIGURES = [
    ("supermask_digits_w1.png",
     ["supermask_digits/edge_popup/w1/seed*", "supermask_digits/edge_popup_signed/w1/seed*",
      "supermask_digits/iterand_r0/w1/seed*"], ("train/loss", "train/accuracy")),
    ("meta_ticket_width_5w1s.png",
     [f"meta_ticket_width/meta_ticket/f{f}_5w1s/seed*" for f in (1, 2, 4)],
     ("train/loss", "train/sparsity/all")),
    ("meta_ticket_sinusoid.png", ["meta_ticket_sinusoid/meta_ticket/all/seed*"],
     ("train/loss", "train/sparsity/all")),
    ("ssl_digits_k4.png",
     [f"ssl_digits/{arm}/k4/seed*" for arm in ("random_synthetic", "pseudo_conditional",
                                               "meta_gen_ssl")],
     ("train/loss", "test/accuracy", "train/meta/anchor_class_agreement")),
    ("robust_aft_nr_curves.png", ["robust_digits/aft_nr/all/seed*"],
     ("train/loss", "train/accuracy", "train/steps_per_sec")),
    ("tta_digits_mixed.png",
     [f"tta_digits/{arm}/mixed/seed*" for arm in ("source", "bn_adapt", "tent", "cafe")],
     ("train/error", "train/entropy")),
]
# heat maps of the online error per corruption x severity, the mean over seeds of each cell:
# (file, runs, title)
HEAT_MAPS = [
    (f"tta_digits_single_all_{arm}.png", f"tta_digits/{arm}/single_all/seed*",
     f"{arm}, digits, reset per corruption x severity")
    for arm in ("source", "tent", "cafe")]


def heat_map(out: str, runs, title: str) -> None:
  from jaxlab.methods import tta  # pylint: disable=g-import-not-at-top
  tables = []
  for run in runs:
    with open(os.path.join(run, "results.json")) as f:
      tables.append(json.load(f))
  keys = [k for k in tables[0] if k.startswith("online/") and k.endswith("/error")
          and k.count("/") == 3]
  mean = {k: sum(t[k] for t in tables) / len(tables) for k in keys}
  pairs = [(k.split("/")[1], int(k.split("/")[2])) for k in keys]
  tta.heat_map(mean, pairs, out, f"{title} ({len(runs)} seeds)")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", default=os.path.join(DOCS, "runs"))
  args = parser.parse_args()
  os.makedirs(os.path.join(DOCS, "figures"), exist_ok=True)
  for name, patterns, metrics in FIGURES:
    runs = sorted(os.path.dirname(p) for pattern in patterns for p in glob.glob(
        os.path.join(args.runs, pattern, "metrics.jsonl")))
    if not runs:
      print(f"{name}: no runs with metrics.jsonl under {args.runs}")
      continue
    out = os.path.join(DOCS, "figures", name)
    plots.plot(runs, out, metrics)
    print(f"wrote {os.path.relpath(out, DOCS)} from {len(runs)} runs")
  for name, pattern, title in HEAT_MAPS:
    runs = sorted(os.path.dirname(p) for p in glob.glob(
        os.path.join(args.runs, pattern, "results.json")))
    if not runs:
      print(f"{name}: no runs under {args.runs}")
      continue
    out = os.path.join(DOCS, "figures", name)
    heat_map(out, runs, title)
    print(f"wrote {os.path.relpath(out, DOCS)} from {len(runs)} runs")


if __name__ == "__main__":
  main()
