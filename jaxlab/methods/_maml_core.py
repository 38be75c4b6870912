"""Gradient-based meta-learning shared by `maml`, `fomaml`, `anil` and `boil`.

One outer step (shared/methods/meta_learning_and_sparse.md §1(c)): for every
task of the meta-batch, adapt the meta-parameters theta on the support set with
`jaxlab.meta.adapt` (train steps), evaluate the adapted parameters on the query
set, and update theta with the outer optimizer on the mean query loss,
differentiated through the inner steps (second order unless first-order).
BatchNorm is the transductive batch-statistics kind (§0.4 B1): the support pass
and the query pass normalise with their own statistics.

The variants differ in `first_order` and in which leaves adapt:
  all   every leaf (MAML, FOMAML);
  head  only the head (ANIL, Raghu et al. 2020, arXiv 1909.09157);
  body  everything but the head (BOIL, Oh et al. 2021, arXiv 2008.08882).
Leaves frozen in the inner loop are still meta-learned (as in Meta-ticket's
code base, §1(h)4). `meta.inner_frozen` adds path substrings that never adapt,
e.g. "BatchStatNorm" for MAML-TF's convention of BN offsets learned only by the
outer loop (§1(h)3; default: BN adapts, the torchmeta/BOIL convention).

Meta-SGD (`meta.learn_inner_lr`): per-parameter inner learning rates, initialised
to `meta.inner_lr` and meta-learned with theta.

Config fields (`config.meta`): inner_lr, train_steps, test_steps, learn_inner_lr,
inner_frozen, task_parallel (`auto`, `vmap`, `groups`, `map`, `unroll`), task_groups,
scan_inner.
"""

import functools
from typing import Callable, Dict

import jax
import jax.numpy as jnp
import optax

from jaxlab import meta, models
from jaxlab.data import episodes, tasks
from jaxlab.errors import UserError, unknown
from jaxlab.train import losses, optim
from jaxlab.train.state import TrainState

ADAPTS = ("all", "head", "body")
TASK_PARALLEL = ("auto", "vmap", "groups", "map", "unroll")


def make_task(config, num_devices: int = 1):
  if config.data.name == "sinusoid":
    return episodes.SinusoidTask(config, num_devices)
  return episodes.EpisodicTask(config, num_devices)


def init(config, rng: jax.Array, spec: tasks.Spec) -> TrainState:
  model = models.build(config.model, spec.num_classes)
  variables = model.init(rng, jnp.zeros((2,) + tuple(spec.input_shape)), train=True)
  if set(variables) != {"params"}:
    raise UserError(f"model.norm={config.model.get('norm')!r} keeps running statistics, which "
                    "episodic meta-learning does not use; set model.norm to 'batch_stats' or 'none'")
  params = {"model": variables["params"], "inner_lr": {}}
  if config.meta.learn_inner_lr:
    params["inner_lr"] = jax.tree.map(lambda p: jnp.full_like(p, config.meta.inner_lr),
                                      variables["params"])
  tx = optim.make_optimizer(config.optimizer, config.train.steps)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state={},
                    opt_state=tx.init(params))


def trainable_mask(model_params, adapt: str, inner_frozen: str):
  """Which leaves adapt in the inner loop: variant (`all`/`head`/`body`) minus `inner_frozen`."""
  if adapt not in ADAPTS:
    raise unknown("adapted leaves", adapt, ADAPTS)
  frozen = [k.strip() for k in inner_frozen.split(",") if k.strip()]
  def adapts(path: str) -> bool:
    is_head = path.startswith("head/")
    chosen = adapt == "all" or (adapt == "head") == is_head
    return chosen and not any(k in path for k in frozen)
  return meta.path_mask(model_params, adapts)


def _loss_and_metric(spec: tasks.Spec) -> Callable:
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
  loss_metric = _loss_and_metric(spec)
  forward = lambda p, x: model.apply({"params": to_model(p)}, x, train=True)
  inner_loss = lambda p, s: loss_metric(forward(p, s["x"]), s["y"])[0]
  adapted, inner_losses = meta.adapt(
      inner_loss, inner_params, task["support"], steps=steps, inner_lr=inner_lr,
      first_order=first_order, trainable=trainable_mask(inner_params, adapt,
                                                        config.meta.inner_frozen),
      unroll=not config.meta.scan_inner, return_losses=True)
  loss, metrics = loss_metric(forward(adapted, task["query"]["x"]), task["query"]["y"])
  return loss, metrics, inner_losses


def _inner_lr(params, config):
  return params["inner_lr"] if config.meta.learn_inner_lr else config.meta.inner_lr


def train_step(state: TrainState, batch, rng: jax.Array, *, config, spec: tasks.Spec,
               first_order: bool, adapt: str):
  del rng  # the episodes carry all the randomness
  def meta_loss(params):
    per_task = lambda task: adapt_and_evaluate(
        params["model"], task, config=config, spec=spec, steps=config.meta.train_steps,
        first_order=first_order, adapt=adapt, inner_lr=_inner_lr(params, config))
    loss, metrics, inner_losses = over_tasks(per_task, batch, task_parallel(config),
                                             config.meta.task_groups)
    aux = {k: v.mean() for k, v in metrics.items()}
    if inner_losses.shape[-1]:
      aux["inner/loss_before"] = inner_losses[:, 0].mean()
    return loss.mean(), aux
  (loss, aux), grads = jax.value_and_grad(meta_loss, has_aux=True)(state.params)
  tx = optim.make_optimizer(config.optimizer, config.train.steps)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads)}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(state: TrainState, batch, *, config, spec: tasks.Spec, adapt: str) -> Dict:
  return evaluate_episodes(state.params["model"], batch, config=config, spec=spec, adapt=adapt,
                           inner_lr=_inner_lr(state.params, config))


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


def method_functions(first_order: bool, adapt: str):
  """The (train_step, eval_step) of one variant."""
  return (functools.partial(train_step, first_order=first_order, adapt=adapt),
          functools.partial(eval_step, adapt=adapt))
