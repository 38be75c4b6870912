"""Curves of runs from their `metrics.jsonl`: `jaxlab plot WORKDIR... [--out=PNG]`.

One panel per metric (`split/name`, e.g. `train/loss`, `test/accuracy`,
`train/steps_per_sec`), every run overlaid. Runs whose `config.json` differ only in `seed`
are one curve: the mean over seeds at the steps all of them logged, with a band from the
lowest to the highest seed. The figure is `PANEL_SIZE` inches a panel at `DPI`, so its pixel
size is fixed: `len(metrics) * 450` x 320.
"""

import json
import os
import re
from typing import Dict, List, Sequence, Tuple

import numpy as np

from jaxlab.errors import UserError

PANEL_SIZE = (4.5, 3.2)
DPI = 100
DEFAULT_METRICS = ("train/loss", "*/accuracy", "train/steps_per_sec")
Curve = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # steps, mean, low, high


def read_metrics(workdir: str) -> Dict[str, Dict[int, float]]:
  """{"split/name": {step: value}} of one run (the last record of a step wins, as a resumed
  run rewrites the steps after its checkpoint)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise UserError(f"{workdir!r} has no metrics.jsonl: give the workdir of a jaxlab run")
  series: Dict[str, Dict[int, float]] = {}
  with open(path) as f:
    for line in f:
      record = json.loads(line)
      for key, value in record.items():
        if key not in ("step", "split") and isinstance(value, (int, float)):
          series.setdefault(f"{record['split']}/{key}", {})[record["step"]] = float(value)
  return series


def _config_without_seed(workdir: str) -> str:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return workdir
  with open(path) as f:
    config = json.load(f)
  config.pop("seed", None)
  config.pop("provenance", None)
  # a per-seed input (a fine-tune of the pretraining of the same seed) names its run
  # .../seed<k>: the same config for this purpose
  return re.sub(r"seed\d+", "seed*", json.dumps(config, sort_keys=True))


def group_runs(workdirs: Sequence[str]) -> Dict[str, List[str]]:
  """{label: workdirs} with the seeds of one config together. A label is made of the path
  components that tell the groups apart (e.g. "edge_popup/w1"), else the run's directory
  (its parent for a seed<k> directory), plus "(k seeds)" when there are several."""
  groups: Dict[str, List[str]] = {}
  for workdir in workdirs:
    groups.setdefault(_config_without_seed(workdir), []).append(workdir)
  paths = [os.path.normpath(runs[0]).split(os.sep) for runs in groups.values()]
  differing = [i for i in range(min(map(len, paths)))
               if len({p[i] for p in paths}) > 1] if len(paths) > 1 else []
  labels = {}
  for parts, runs in zip(paths, groups.values()):
    if differing:
      name = "/".join(parts[i] for i in differing)
    else:
      name = parts[-2] if re.fullmatch(r"seed\d+", parts[-1]) and len(runs) > 1 else parts[-1]
    labels[name if len(runs) == 1 else f"{name} ({len(runs)} seeds)"] = runs
  return labels


def curves(workdirs: Sequence[str], metrics: Sequence[str]) -> Dict[str, Dict[str, Curve]]:
  """{metric: {label: (steps, mean, low, high)}}: what `plot` draws."""
  runs = {w: read_metrics(w) for w in workdirs}
  available = sorted({k for series in runs.values() for k in series})
  wanted = []
  for metric in metrics:
    split, _, name = metric.partition("/")
    matched = [k for k in available if (split == "*" or k.split("/", 1)[0] == split)
               and k.split("/", 1)[1] == name]
    if not matched and "*" not in metric:
      raise UserError(f"no run logged {metric!r}; logged: {', '.join(available)}")
    wanted += [k for k in matched if k not in wanted]
  out: Dict[str, Dict[str, Curve]] = {}
  for metric in wanted:
    for label, members in group_runs(workdirs).items():
      series = [runs[w][metric] for w in members if metric in runs[w]]
      if not series:
        continue
      steps = np.asarray(sorted(set.intersection(*(set(s) for s in series))))
      values = np.asarray([[s[int(t)] for t in steps] for s in series])
      out.setdefault(metric, {})[label] = (steps, values.mean(0), values.min(0), values.max(0))
  return out


def plot(workdirs: Sequence[str], out: str, metrics: Sequence[str] = DEFAULT_METRICS):
  """Writes the PNG; returns `curves(...)`, the numbers drawn."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  data = curves(workdirs, metrics)
  if not data:
    raise UserError(f"none of {', '.join(metrics)} was logged by these runs")
  fig, axes = plt.subplots(1, len(data), figsize=(PANEL_SIZE[0] * len(data), PANEL_SIZE[1]),
                           dpi=DPI, squeeze=False)
  for ax, (metric, by_label) in zip(axes[0], data.items()):
    for label, (steps, mean, low, high) in by_label.items():
      line, = ax.plot(steps, mean, label=label, marker="." if len(steps) < 30 else None)
      if np.any(high > low):  # several seeds: the band from the lowest to the highest
        ax.fill_between(steps, low, high, alpha=0.25, color=line.get_color(), linewidth=0)
    ax.set_title(metric)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=DPI)
  plt.close(fig)
  return data


def main(args: List[str]) -> str:
  """`jaxlab plot WORKDIR... [--out=FILE.png] [--metrics=a/b,c/d]`; returns the line it prints."""
  out, metrics, workdirs = "curves.png", DEFAULT_METRICS, []
  for arg in args:
    if arg.startswith("--out="):
      out = arg.split("=", 1)[1]
    elif arg.startswith("--metrics="):
      metrics = tuple(m.strip() for m in arg.split("=", 1)[1].split(",") if m.strip())
    elif arg.startswith("-"):
      raise UserError(f"jaxlab plot: unknown option {arg!r}; valid: --out=FILE.png, "
                      "--metrics=split/name,...")
    else:
      workdirs.append(arg)
  if not workdirs:
    raise UserError("jaxlab plot needs one or more run workdirs")
  data = plot(workdirs, out, metrics)
  return f"jaxlab: wrote {out} ({', '.join(data)}; {len(workdirs)} runs)"
