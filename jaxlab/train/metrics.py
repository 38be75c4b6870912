"""The one metrics writer: `metrics.jsonl`, plus TensorBoard events when tensorboardX is installed.

Each line of `workdir/metrics.jsonl` is `{"step": s, "split": "train", "loss": ..., ...}`.
Only process 0 writes. On resume, lines after the restored step (written by the
interrupted run and about to be recomputed, identically) are dropped, so the
file reads like one uninterrupted run; TensorBoard is told the same (`purge_step`: events
after the restored step are hidden and written again), and its events are flushed with every
checkpoint, so a killed run loses none that its checkpoint covers.
"""

import json
import math
import os
import time
from typing import Dict, Optional

import jax


def _clean(value):
  value = float(value)
  return value if math.isfinite(value) else str(value)


def _after_earlier_events(directory: str) -> None:
  """Waits, if need be, until the clock is past the second of the newest event file in
  `directory`. TensorBoard orders event files by name, which starts with the second the file
  was opened in, and its files are numbered per run: a resumed run that opened its first file
  in the same second as the interrupted run would take that run's name and overwrite it."""
  if not os.path.isdir(directory):
    return
  seconds = [int(n.split(".")[3]) for n in os.listdir(directory)
             if n.startswith("events.out.tfevents.") and n.split(".")[3].isdigit()]
  while seconds and time.time() < max(seconds) + 1:
    time.sleep(0.05)


class MetricWriter:

  def __init__(self, workdir: str, resume_step: Optional[int] = None):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not self.enabled:
      return
    if os.path.exists(self.path):
      keep = []
      with open(self.path) as f:
        for line in f:
          try:
            record = json.loads(line)
          except json.JSONDecodeError:  # a line cut short by a kill
            continue
          if resume_step is not None and record.get("step", 0) <= resume_step:
            keep.append(line if line.endswith("\n") else line + "\n")
      with open(self.path, "w") as f:
        f.writelines(keep)
    self._tb_dir, self._tb_files = os.path.join(workdir, "tensorboard"), 0
    _after_earlier_events(self._tb_dir)
    self._tb = self._open_tensorboard(None if resume_step is None else resume_step + 1)

  def _open_tensorboard(self, purge_step: Optional[int] = None):
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    except ImportError:
      return None
    self._tb_files += 1  # file names hold the second they were opened in: keep them apart
    return SummaryWriter(self._tb_dir, purge_step=purge_step,
                         filename_suffix=f".{self._tb_files:05d}")

  def write(self, step: int, split: str, values: Dict[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "split": split, **{k: _clean(v) for k, v in values.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for key, value in values.items():
        self._tb.add_scalar(f"{split}/{key}", float(value), int(step))

  def flush(self) -> None:
    """Every event written so far is in its file when this returns (tensorboardX's own flush
    leaves the events its writer thread has not taken yet: closing drains them)."""
    if self._tb is not None:
      self._tb.close()
      self._tb = self._open_tensorboard()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
