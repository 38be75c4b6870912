"""The one training loop, shared by every method: `train_and_evaluate(config, workdir)`.

What it does, in order:
  1. joins a multi-process run if configured, builds the `data` mesh;
  2. asks the method for its task (data + samplers) and validates everything a
     user can get wrong before writing to `workdir`;
  3. restores the newest readable checkpoint, or initialises the state
     replicated on the mesh (from the weights of `config.init_from` when set: another
     run's workdir or an .npz, less the `init_skip` prefixes; the method's frozen inputs,
     `config.inputs.*` read by `jaxlab.train.inputs.load` before anything is written, go to
     `state.frozen`; a method whose state holds more, e.g. fine-tuning's priors, fills it in
     `start_from(state, train_data, *, config, spec)`, called with both in place; train_data
     is `task.start_data`: the training split, on the device);
  4. runs the jitted step: the task draws the batch on device from
     `fold_in(data_key, step)`, the batch is sharded on `data`, the method
     updates the state with `fold_in(step_key, step)`; so a resumed run
     replays exactly what an uninterrupted one computes;
  5. every `log_every` steps checks that all metrics since the last check are
     finite (else stops without saving: `TrainingDiverged`), writes
     `metrics.jsonl` and prints a progress line with steps/s and ETA;
  6. evaluates every `eval_every` steps (a progress line every 30 s when that is long),
     checkpoints every `checkpoint_every` steps and at the end, and writes `results.json`
     from the final evaluation
     (plus `train/<metric>` of the final step, and with `train.select_by` the evaluation
     with the lowest validation metric as `selected/*`, and what the method's optional
     `report(state, task, workdir, ...)` returns, e.g. a generator's quality score).

Outputs in `workdir`: `config.json`, `metrics.jsonl`, `results.json`, `selection.json`,
`checkpoints/<step>/`, `trajectory/<step>.npz` (the weights of the steps
`train.keep_schedule` keeps for good: a run's trajectory) and `tensorboard/` when tensorboardX
is installed.
"""

import contextlib
import datetime
import functools
import json
import math
import os
import signal
import sys
import threading
import time
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxlab import methods, streams, validation
from jaxlab.errors import Interrupted, TrainingDiverged, UserError
from jaxlab.train import inputs, provenance, sharding
from jaxlab.train import workdir as workdir_lib
from jaxlab.train.checkpoint import (TRAJECTORY, Checkpointer, keep_steps, load_pretrained,
                                     save_variables)
from jaxlab.train.metrics import MetricWriter


def _write_json(path: str, payload) -> None:
  """Atomic write: a kill never leaves half a file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def summarize(outputs, masks) -> Dict[str, float]:
  """Mean and 95% CI half-width (1.96 std / sqrt(n)) of every per-item metric; a metric an
  evaluation batch returns as one scalar (a batch-level diagnostic, e.g. fine-tuning's
  feature entropy) is the mean over batches weighted by their valid items, without a CI."""
  mask = np.concatenate(masks) > 0
  summary = {}
  for key in outputs[0]:
    if np.ndim(outputs[0][key]) == 0:
      weights = np.asarray([np.sum(np.asarray(m) > 0) for m in masks], np.float64)
      values = np.asarray([float(o[key]) for o in outputs])
      summary[key] = float(np.sum(values * weights) / max(weights.sum(), 1.0))
      continue
    values = np.concatenate([np.asarray(o[key]).reshape(len(m), -1).mean(-1)
                             for o, m in zip(outputs, masks)])[mask]
    summary[key] = float(values.mean())
    summary[key + "_ci95"] = float(1.96 * values.std() / math.sqrt(max(1, len(values))))
  return summary


MEASURED = "measured/"


def window_means(stacked) -> Dict[str, float]:
  """Mean over a window of steps of each train metric ([steps] arrays). A metric a step does
  not measure (e.g. MGR's meta/* when generative.meta_every > 1) comes with a 0/1 flag
  "measured/<name>": it is averaged over the steps that measured it, and left out of the log
  when none did; the flags themselves are not logged."""
  out = {}
  for key, values in stacked.items():
    if key.startswith(MEASURED):
      continue
    flags = stacked.get(MEASURED + key)
    if flags is None:
      out[key] = float(np.mean(values))  # in the metric's dtype, as the log always was
    elif np.sum(flags) > 0:
      flags = np.asarray(flags, np.float64)
      out[key] = float(np.sum(np.asarray(values, np.float64) * flags) / np.sum(flags))
  return out


def _check_finite(pending, first_step: int, checkpoints: Checkpointer) -> Dict[str, float]:
  """`window_means` of the pending train metrics; raises TrainingDiverged on any NaN/Inf."""
  stacked = jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *pending))
  for key, values in stacked.items():
    bad = np.flatnonzero(~np.isfinite(np.asarray(values, np.float64)))
    if bad.size:
      step = first_step + int(bad[0])
      checkpoints.wait()
      saved = checkpoints.steps()
      kept = f"the last good checkpoint (step {saved[-1]}) is intact in {checkpoints.directory}" if (
          saved) else "no checkpoint had been saved"
      raise TrainingDiverged(
          f"training diverged: train/{key} = {float(np.asarray(values)[bad[0]])} at step {step}; "
          f"stopped before saving it; {kept} (lower optimizer.learning_rate or add "
          f"optimizer.grad_clip_norm)")
  return window_means(stacked)


def _with_pretrained(state, loaded):
  """The state with every loaded variable in place of its initial value (skipped ones keep
  their init; the optimizer state of SGD/Adam does not depend on the parameter values)."""
  flat = traverse_util.flatten_dict({"params": state.params, **state.model_state}, sep="/")
  flat.update(traverse_util.flatten_dict(loaded, sep="/"))
  variables = traverse_util.unflatten_dict(flat, sep="/")
  return state.replace(params=variables.pop("params"), model_state=variables)


class _Selection:
  """Model selection by a validation metric (the fine-tuning group protocol): keeps the
  evaluation with the lowest `select_by` (e.g. "validation/loss"; with a "max:" prefix the
  highest, e.g. "max:validation/accuracy"; earliest on ties) and reports it as
  `selected/<split>/<metric>` and `selected/step`. Kept in `workdir/selection.json` so a
  resumed run selects as an uninterrupted one."""

  def __init__(self, workdir: str, select_by: str, resume_step: int, lead: bool):
    self.highest = select_by.startswith("max:")
    self.key, self.lead = select_by[4:] if self.highest else select_by, lead
    self.path = os.path.join(workdir, "selection.json")
    self.best = None
    if select_by and resume_step and os.path.exists(self.path):
      with open(self.path) as f:
        saved = json.load(f)
      if saved["step"] <= resume_step:  # later ones are recomputed by the replay
        self.best = saved

  def offer(self, step: int, evaluation: Dict[str, float]) -> None:
    if not self.key:  # (the key is an evaluated metric: checked before training)
      return
    sign = -1.0 if self.highest else 1.0
    if self.best is None or sign * evaluation[self.key] < sign * self.best["metrics"][self.key]:
      self.best = {"step": step, "metrics": dict(evaluation)}
      if self.lead:
        _write_json(self.path, self.best)

  def results(self) -> Dict[str, float]:
    if self.best is None:
      return {}
    return {"selected/step": self.best["step"],
            **{f"selected/{k}": v for k, v in self.best["metrics"].items()}}


def _interactive() -> bool:
  return sys.stdout.isatty() and os.environ.get("TERM", "") != "dumb"


def _logger(lead: bool):
  """Progress lines: printed by the lead process, above the progress bar on a terminal."""
  if not lead:
    return lambda *a, **k: None
  if _interactive():
    import tqdm  # pylint: disable=g-import-not-at-top
    return lambda message: tqdm.tqdm.write(message)
  return functools.partial(print, flush=True)


def _progress_bar(lead: bool, start: int, total: int):
  """A tqdm bar of the training steps on a terminal; None in logs and CI (plain lines)."""
  if not (lead and _interactive() and total > start):
    return None
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, leave=False)


def _closing(feed):
  """Closes a streamed feed (its grain worker processes) however the loop leaves it."""
  return contextlib.closing(feed) if hasattr(feed, "close") else contextlib.nullcontext(feed)


def _eta(seconds: float) -> str:
  return str(datetime.timedelta(seconds=int(seconds)))


class _StopSignals:
  """SIGINT / SIGTERM while training: remembered and acted on at the next step boundary (a
  checkpoint, then `Interrupted`); a second Ctrl-C stops at once (KeyboardInterrupt)."""

  def __enter__(self):
    self.received, self._previous = None, {}
    if threading.current_thread() is threading.main_thread():
      for number in (signal.SIGINT, signal.SIGTERM):
        self._previous[number] = signal.signal(number, self._handle)
    return self

  def _handle(self, number, frame):
    del frame
    if self.received is not None and number == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = number

  def __exit__(self, *exc):
    for number, handler in self._previous.items():
      signal.signal(number, handler)


def _eval_metric_names(eval_fn, abstract, eval_data) -> Dict[str, tuple]:
  """{split: names of the per-example metrics the jitted evaluation returns}, traced, not run."""
  return {split: tuple(eval_fn.eval_shape(abstract, data, jnp.int32(0),
                                          jax.random.key(0))[0])
          for split, data in eval_data.items()}


def _check_select_by(select_by: str, names: Dict[str, tuple]) -> None:
  if not select_by:
    return
  split, _, metric = select_by.removeprefix("max:").partition("/")
  valid = [f"{s}/{n}" for s, ns in names.items() for n in ns]
  if split not in names or metric not in names[split]:
    raise UserError(f"train.select_by={select_by!r} is not an evaluated metric (lowest wins; "
                    "prefix max: for highest); valid: " + ", ".join(valid))


def train_and_evaluate(config, workdir: str) -> Dict[str, float]:
  """Trains `config.method` as configured, resuming from `workdir` if possible; returns results."""
  method = methods.get_method(config.method)
  validation.validate(config, method)
  workdir_lib.check(workdir, config)
  sharding.initialize_distributed(config)  # before anything asks JAX about devices
  lead = jax.process_index() == 0
  log = _logger(lead)
  finished = workdir_lib.finished_results(workdir, config)
  if finished is not None:
    log(f"jaxlab: {workdir} holds a finished run (step {finished['step']}); nothing to do; "
        + " ".join(f"{k} {v:.4f}" for k, v in finished.items()
                   if isinstance(v, float) and not k.endswith("_ci95")))
    return finished
  mesh = sharding.make_mesh()
  task = method.make_task(config, mesh.size)
  spec = task.spec
  eval_splits = tuple(s.strip() for s in config.data.eval_splits.split(",") if s.strip())
  # a task whose data fixes the run's length (a test-time adaptation stream, train.steps =
  # -1) says how many steps it has
  total = getattr(task, "fixed_steps", None) or config.train.steps
  kept = set(keep_steps(config.train.get("keep_schedule", ""), total))

  init_key, data_key, step_key = (streams.run_stream(config.seed, name)
                                  for name in ("init", "data", "step"))
  init = lambda rng: method.init(config, rng, spec)
  repl = sharding.replicated(mesh)
  abstract = jax.eval_shape(init, init_key)
  state_sharding = jax.tree.map(lambda _: repl, abstract)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl),
                          abstract)

  def train_fn(state, data):
    batch = sharding.shard_batch(task.train_batch(data, data_key, state.step), mesh)
    rng = jax.random.fold_in(step_key, state.step)
    return method.train_step(state, batch, rng, config=config, spec=spec)

  def eval_fn(state, data, index, key):
    batch = sharding.shard_batch(task.eval_batch(data, index), mesh)
    return method.eval_step(state, batch, key, config=config, spec=spec), batch["mask"]

  donate = (0,) if jax.default_backend() != "cpu" else ()  # XLA:CPU cannot donate
  train_fn = jax.jit(train_fn, donate_argnums=donate, out_shardings=(state_sharding, repl))
  eval_fn = jax.jit(eval_fn, out_shardings=repl)
  select_by = config.train.get("select_by", "")
  _check_select_by(select_by, _eval_metric_names(
      eval_fn, abstract, {split: task.eval_input_like(split, mesh) for split in eval_splits}))
  pretrained = None
  if config.get("init_from"):  # read (and checked) before anything is written
    pretrained = load_pretrained(config.init_from,
                                 {"params": abstract.params, **abstract.model_state},
                                 skip=config.get("init_skip", ""))
  # frozen weights the method reads from other runs (e.g. MGR's generator), also checked now
  frozen = inputs.load_method_inputs(method, config, spec)

  # a config error that only the step's trace meets (e.g. an unknown sovr.switch_rule) stops
  # the run now, not after it wrote checkpoints (the jitted step reuses this trace)
  train_fn.eval_shape(abstract, task.train_input_like(mesh))
  # (a checkpoint of another model stops the run here, before config.json is touched)
  workdir_lib.create(workdir)
  checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"), config.train.keep_checkpoints)
  restored = checkpoints.restore_latest(abstract)
  if lead:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(workdir_lib.config_json(config, provenance.collect()))
  if restored is None:
    state, start = jax.jit(init, out_shardings=state_sharding)(init_key), 0
    if pretrained is not None or frozen or method.start_from:
      extra = method.start_from or (lambda s, d, **_: s)
      place = lambda s, p, f: (s if p is None else _with_pretrained(s, p)).replace(frozen=f)
      begin = lambda s, p, f, d: extra(place(s, p, f), d, config=config, spec=spec)
      start_data = task.start_data(mesh) if method.start_from else None
      state = jax.jit(begin, out_shardings=state_sharding)(state, pretrained, frozen, start_data)
  else:
    state, start = restored
    log(f"jaxlab: resuming from the checkpoint at step {start} in {checkpoints.directory}")
  def keep(state, step: int) -> None:
    if step in kept and lead:
      save_variables(os.path.join(workdir, TRAJECTORY, f"{step}.npz"),
                     {"params": state.params, **state.model_state})

  if restored is None:
    keep(state, 0)
  pending = checkpoints.notes(start).get("pending_metrics", []) if restored else []
  writer = MetricWriter(workdir, resume_step=start if restored else None)

  compiled_eval = set()

  def evaluate(state) -> Dict[str, float]:
    results = {}
    for split in eval_splits:
      outputs, masks = [], []
      batches, feed = task.eval_feed(split, mesh)
      started_eval, shown = time.time(), time.time()
      with _closing(feed):
        for index, data in zip(range(batches), feed):
          key = streams.eval_batch_key(config.seed, split, index)
          first = split not in compiled_eval
          if first:  # (an attack-heavy evaluation can take minutes to compile)
            log(f"evaluating {split}: compiling the evaluation step")
            compiling = time.time()
          out, mask = jax.device_get(eval_fn(state, data, jnp.int32(index), key))
          if first:
            compiled_eval.add(split)
            log(f"evaluating {split}: compiled and ran batch 1/{batches} in "
                f"{time.time() - compiling:.1f} s")
          outputs.append(out)
          masks.append(mask)
          now = time.time()
          if now - shown > 30 and index + 1 < batches:  # long (e.g. AutoAttack) evaluations
            shown, per_batch = now, (now - started_eval) / (index + 1)
            log(f"evaluating {split}: batch {index + 1}/{batches} | {per_batch:.1f} s/batch | "
                f"ETA {_eta(per_batch * (batches - index - 1))}")
      results.update({f"{split}/{k}": v for k, v in summarize(outputs, masks).items()})
    return results

  selection = _Selection(workdir, select_by, start if restored else 0, lead)

  if total == 0:
    log("jaxlab: train.steps=0: evaluating only, no training step")
  log_every = max(1, config.train.log_every)
  # simulated CPU devices run each step's all-reduce in threads that time out when many
  # steps are queued; one step in flight keeps them in step
  sync_each_step = jax.default_backend() == "cpu" and jax.device_count() > 1
  final_train_path = os.path.join(workdir, "final_train_metrics.json")
  started, last_time, last_step = time.time(), time.time(), start
  metrics = {}
  bar = _progress_bar(lead, start, total)
  try:
    with _StopSignals() as signals, _closing(task.train_feed(mesh, start, total)) as feed:
      for step, train_data in zip(range(start, total), feed):
        state, metrics = train_fn(state, train_data)
        if sync_each_step or step == start:
          jax.block_until_ready(metrics)
        if step == start:  # the rates below leave the compilation out
          log(f"jaxlab: compiled and ran the train step in {time.time() - last_time:.1f} s")
          last_time, last_step = time.time(), step + 1
        if bar:
          bar.update(1)
        pending.append(metrics)
        done = step + 1
        keep(state, done)
        final = done == total
        stop = signals.received is not None
        do_eval = (bool(config.train.eval_every) and done % config.train.eval_every == 0
                   and not final and not stop)
        do_save = stop or final or (config.train.checkpoint_every
                                    and done % config.train.checkpoint_every == 0)
        log_now = final or do_eval or done % log_every == 0
        if log_now or do_save:  # nothing non-finite is ever logged or saved
          means = _check_finite(pending, done - len(pending) + 1, checkpoints)
        if log_now:
          pending = []
          now = time.time()
          rate = (done - last_step) / max(now - last_time, 1e-9) if done > last_step else None
          last_time, last_step = now, done
          writer.write(done, "train", {**means, **({"steps_per_sec": rate} if rate else {})})
          shown = " ".join(f"{k} {v:.4g}" for k, v in means.items())
          speed = (f"{rate:.1f} steps/s | ETA {_eta((total - done) / max(rate, 1e-9))}"
                   if rate else "compiling")
          log(f"step {done}/{total} | {shown} | {speed}")
        if do_eval:
          evaluation = evaluate(state)
          selection.offer(done, evaluation)
          for split in eval_splits:
            writer.write(done, split, {k.split("/", 1)[1]: v for k, v in evaluation.items()
                                       if k.startswith(split + "/")})
          log(f"step {done}/{total} | " + " ".join(f"{k} {v:.4g}" for k, v in evaluation.items()
                                                    if not k.endswith("_ci95")))
        if do_save:  # with the steps of an unfinished log window, so a resumed run logs it whole
          writer.flush()  # first: a checkpoint on disk implies its events are too
          checkpoints.save(done, state, {"pending_metrics": [
              {k: float(v) for k, v in m.items()} for m in jax.device_get(pending)]})
        if final and lead:  # for results.json, should the final evaluation be cut short
          _write_json(final_train_path, window_means(
              {k: np.asarray(v)[None] for k, v in jax.device_get(metrics).items()}))
        if do_eval or do_save:  # the next rate counts training steps only
          last_time = time.time()
        if stop:
          name = signal.Signals(signals.received).name
          raise Interrupted(f"interrupted ({name}) at step {done}; the checkpoint at step "
                            f"{done} is saved in {checkpoints.directory}; resume with the same "
                            "command", 128 + signals.received)
    final_evaluation = evaluate(state)
    selection.offer(total, final_evaluation)
    if not metrics and os.path.exists(final_train_path):  # resumed after the last step
      with open(final_train_path) as f:
        metrics = json.load(f)
    results = {"step": int(jax.device_get(state.step)), **final_evaluation, **selection.results(),
               # the final step's own training metrics (e.g. per-layer sparsity); one step,
               # not a window mean, so a resumed run writes the same file
               **{f"train/{k}": float(v) for k, v in jax.device_get(metrics).items()}}
    for split in eval_splits:
      writer.write(results["step"], split, {k.split("/", 1)[1]: v for k, v in results.items()
                                            if k.startswith(split + "/")})
    if method.report:  # whole-run outputs (e.g. a generator's samples and score)
      results.update(method.report(state, task, workdir, config=config, spec=spec,
                                   write_files=lead))
  finally:
    if bar:
      bar.close()
    checkpoints.close()
    writer.close()
  if lead:
    _write_json(os.path.join(workdir, "results.json"),
                {**results, provenance.KEY: provenance.collect()})
  log(f"jaxlab: done in {time.time() - started:.1f}s; " + " ".join(
      f"{k} {v:.4f}" for k, v in results.items() if k != "step" and not k.endswith("_ci95"))
      + f"; wrote {os.path.join(workdir, 'results.json')}")
  return results
