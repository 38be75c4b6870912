"""Episodic meta-learning machinery shared by the families that adapt per task.

A meta-batch holds tasks with a `support` and a `query` set (`jaxlab.data.episodes`). Here:
running a function over the tasks of a meta-batch (`over_tasks`, task parallelism as
configuration), adapting parameters on a task's support set with `jaxlab.meta.adapt` and
scoring the adapted ones on its query set (`adapt_and_evaluate`), the per-episode evaluation
(`evaluate_episodes`), and which leaves adapt (`trainable_mask`: all / head / body, MAML /
ANIL / BOIL). Used by the MAML family (`methods/maml.py`) and Meta-ticket
(`methods/supermask.py`); closed-form meta-learners reuse `over_tasks` with another solver.

Spec: docs/specs/meta_learning_and_sparse.md §1. BatchNorm is the transductive
batch-statistics kind (§0.4 B1): the support pass and the query pass normalise with their
own statistics. `meta.inner_frozen` adds path substrings that never adapt, e.g.
"BatchStatNorm" for MAML-TF's convention of BN offsets learned only by the outer loop
(§1(h)3; default: BN adapts, the torchmeta/BOIL convention).
"""

import functools
from typing import Callable, Dict

import jax
import jax.numpy as jnp

from jaxlab import models
from jaxlab.data import tasks
from jaxlab.errors import unknown
from jaxlab.meta.inner import adapt as adapt_params
from jaxlab.meta.inner import path_mask
from jaxlab.train import losses

ADAPTS = ("all", "head", "body")
TASK_PARALLEL = ("auto", "vmap", "groups", "map", "unroll")


def trainable_mask(model_params, adapt: str, inner_frozen: str):
  """Which leaves adapt in the inner loop: variant (`all`/`head`/`body`) minus `inner_frozen`."""
  if adapt not in ADAPTS:
    raise unknown("adapted leaves", adapt, ADAPTS)
  frozen = [k.strip() for k in inner_frozen.split(",") if k.strip()]
  def adapts(path: str) -> bool:
    is_head = path.startswith("head/")
    chosen = adapt == "all" or (adapt == "head") == is_head
    return chosen and not any(k in path for k in frozen)
  return path_mask(model_params, adapts)


def loss_and_metric(spec: tasks.Spec) -> Callable:
  """(outputs, targets) -> (mean loss, metrics): MSE for regression, CE + accuracy else."""
  if spec.kind == "regression":
    def mse(out, y):
      err = jnp.square(out - y).mean()
      return err, {"mse": err}
    return mse
  def ce(logits, y):
    return losses.cross_entropy(logits, y).mean(), {"accuracy": losses.correct(logits, y).mean()}
  return ce


def task_parallel(config) -> str:
  """`meta.task_parallel`, with `auto` resolved to the measured best for this backend.

  benchmarks/maml_step.py (Omniglot shape, 2-core CPU): one vmap over 32 tasks
  ~730-850 ms/step, 8 vmapped groups of 4 tasks ~550-710 ms (XLA:CPU runs the
  independent groups concurrently), lax.map ~700 ms, a loop over all 32 tasks
  similar to groups but ~150 s to compile. So `auto` is `groups` on a single CPU
  device and `vmap` elsewhere (accelerators, and any sharded task axis).
  """
  choice = config.meta.task_parallel
  if choice not in TASK_PARALLEL:
    raise unknown("meta.task_parallel", choice, TASK_PARALLEL)
  if choice == "auto":
    return "groups" if jax.default_backend() == "cpu" and jax.device_count() == 1 else "vmap"
  return choice


def over_tasks(fn: Callable, batch, how: str, groups: int = 8):
  """Applies `fn(task)` to every task of a meta-batch (leading axis).

  `vmap`: one vectorised computation; `groups`: vmap within `groups` contiguous
  groups of tasks, the groups unrolled; `map`: `lax.map`, one task at a time;
  `unroll`: a Python loop over tasks.
  """
  size = jax.tree.leaves(batch)[0].shape[0]
  if how == "vmap":
    return jax.vmap(fn)(batch)
  if how == "map":
    return jax.lax.map(fn, batch)
  if how == "groups":
    groups = max(g for g in range(1, min(groups, size) + 1) if size % g == 0)
    chunk = size // groups
    outs = [jax.vmap(fn)(jax.tree.map(lambda x, g=g: x[g * chunk:(g + 1) * chunk], batch))
            for g in range(groups)]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *outs)
  outs = [fn(jax.tree.map(lambda x, i=i: x[i], batch)) for i in range(size)]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


def adapt_and_evaluate(inner_params, task, *, config, spec: tasks.Spec, steps: int,
                       first_order: bool, adapt: str, inner_lr, to_model: Callable = lambda p: p):
  """Adapts `inner_params` on `task["support"]`; returns (query loss, query metrics, inner losses).

  The model computes with `to_model(inner_params)` (identity for MAML; the masked
  weights for Meta-ticket), so the inner gradients are taken through that map.
  """
  model = models.build(config.model, spec.num_classes)
  loss_metric = loss_and_metric(spec)
  forward = lambda p, x: model.apply({"params": to_model(p)}, x, train=True)
  inner_loss = lambda p, s: loss_metric(forward(p, s["x"]), s["y"])[0]
  adapted, inner_losses = adapt_params(
      inner_loss, inner_params, task["support"], steps=steps, inner_lr=inner_lr,
      first_order=first_order, trainable=trainable_mask(inner_params, adapt,
                                                        config.meta.inner_frozen),
      unroll=not config.meta.scan_inner, return_losses=True)
  loss, metrics = loss_metric(forward(adapted, task["query"]["x"]), task["query"]["y"])
  return loss, metrics, inner_losses


def evaluate_episodes(inner_params, batch, *, config, spec: tasks.Spec, adapt: str, inner_lr,
                      to_model: Callable = lambda p: p) -> Dict:
  """Per-episode query metrics after `meta.test_steps` steps (regression: after 0, 1 and
  `test_steps` steps). One vmap: evaluation is first order and runs rarely, so compile
  time matters more here than in the train step."""
  run = functools.partial(adapt_and_evaluate, config=config, spec=spec, first_order=True,
                          adapt=adapt, inner_lr=inner_lr, to_model=to_model)
  def per_task(task):
    if spec.kind == "regression":
      return {f"mse_step{k}": run(inner_params, task, steps=k)[1]["mse"]
              for k in sorted({0, 1, config.meta.test_steps})}
    loss, metrics, _ = run(inner_params, task, steps=config.meta.test_steps)
    return {"loss": loss, **metrics}
  return jax.vmap(per_task)({k: batch[k] for k in ("support", "query")})
