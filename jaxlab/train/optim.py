"""Optimizers and learning-rate schedules from `config.optimizer`.

Fields: name (`sgd`, `adam`, `adamw`), learning_rate, schedule (`constant`,
`cosine`, `step`), warmup_steps W, warmup_offset o (optional, default 0: the warm-up lr at
step t < W is lr (t + o) / (W + o)), decay_steps (0: the run's total steps),
step_boundaries/step_factor (for `step`), momentum, nesterov, b1, b2, eps,
weight_decay (decoupled for adamw, L2 added to the gradient for sgd/adam, as
PyTorch's `weight_decay`), grad_clip_norm, grad_clip_value (0: off).

`apply_gradients` is the one optimizer step of a train state, shared by every method;
`row_adam_update` the lazy Adam of a pool whose rows are sampled per step (meta_gen_ssl).
"""

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from jaxlab.errors import unknown

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")


def make_schedule(cfg, total_steps: int, updates_per_step: int = 1) -> optax.Schedule:
  """The learning rate as a function of the optimizer's update count. With
  `updates_per_step` k > 1 (k updates per training step, e.g. a GAN's discriminator steps)
  the schedule runs on training steps: update n takes the rate of step n // k."""
  if updates_per_step > 1:
    per_step = make_schedule(cfg, total_steps)
    return lambda count: per_step(count // updates_per_step)
  decay_steps = (cfg.get("decay_steps", 0) or total_steps) - cfg.warmup_steps
  if cfg.schedule == "constant":
    main = optax.constant_schedule(cfg.learning_rate)
  elif cfg.schedule == "cosine":
    main = optax.cosine_decay_schedule(cfg.learning_rate, max(1, decay_steps))
  elif cfg.schedule == "step":
    boundaries = {int(b) - cfg.warmup_steps: cfg.step_factor for b in cfg.step_boundaries}
    main = optax.piecewise_constant_schedule(cfg.learning_rate, boundaries)
  else:
    raise unknown("schedule (optimizer.schedule)", cfg.schedule, SCHEDULES)
  if cfg.warmup_steps:
    offset, steps, lr = cfg.get("warmup_offset", 0), cfg.warmup_steps, cfg.learning_rate
    if offset:  # lr (t + o) / (W + o): Meta-ticket's schedulers.py has o = 1 (lr / (W + 1) at 0)
      warmup = lambda t: lr * (t + offset) / (steps + offset)
    else:       # lr t / W, big_vision's and optax's ramp from 0
      warmup = optax.linear_schedule(0.0, lr, steps)
    return optax.join_schedules([warmup, main], [steps])
  return main


def make_optimizer(cfg, total_steps: int,
                   updates_per_step: int = 1) -> optax.GradientTransformation:
  schedule = make_schedule(cfg, total_steps, updates_per_step)
  parts = []
  if cfg.get("grad_clip_value", 0.0):
    parts.append(optax.clip(cfg.grad_clip_value))
  if cfg.get("grad_clip_norm", 0.0):
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  wd = cfg.get("weight_decay", 0.0)
  if cfg.name == "sgd":
    if wd:
      parts.append(optax.add_decayed_weights(wd))
    parts.append(optax.sgd(schedule, momentum=cfg.get("momentum", 0.0) or None,
                           nesterov=cfg.get("nesterov", False)))
  elif cfg.name == "adam":
    if wd:
      parts.append(optax.add_decayed_weights(wd))
    parts.append(optax.adam(schedule, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                            eps=cfg.get("eps", 1e-8)))
  elif cfg.name == "adamw":
    parts.append(optax.adamw(schedule, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                             eps=cfg.get("eps", 1e-8), weight_decay=wd))
  else:
    raise unknown("optimizer (optimizer.name)", cfg.name, OPTIMIZERS)
  return optax.chain(*parts)


def apply_gradients(state, grads, config, tx: Optional[optax.GradientTransformation] = None,
                    **fields):
  """`state` after one step of `tx` (default: `config.optimizer` over `config.train.steps`)
  on `grads`: params and opt_state updated, step + 1, the other `fields` replaced."""
  tx = tx or make_optimizer(config.optimizer, config.train.steps)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state, **fields)


def row_adam_init(params: dict) -> dict:
  """State of `row_adam_update` for `params`, a dict of arrays sharing a leading row axis
  [P, ...]: per-row step counts and per-row first and second moments, all zero."""
  rows = jax.tree.leaves(params)[0].shape[0]
  zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)
  return {"count": jnp.zeros((rows,), jnp.int32), "mu": zeros(params), "nu": zeros(params)}


def row_adam_update(params: dict, row_grads: dict, state: dict, rows: jax.Array, learning_rates,
                    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> tuple:
  """(params, state) after one Adam step of the rows `rows` of `params` only: a lazy
  ("sparse") Adam, as PyTorch's SparseAdam or an Adam over the sampled rows alone.

  `row_grads` holds the gradient of each entry of `rows` ([B, ...] per leaf); a row listed
  twice gets the sum of its gradients and one step. Rows not in `rows` keep their values, their
  moments and their step count, so a row moves exactly as an Adam that sees it only at the
  steps where it is sampled (bias correction by the row's own count). `learning_rates` is a
  float or a dict of floats with `params`' keys (e.g. {"u": lr_u, "a": lr_a}); `params` is a
  dict of arrays.
  A dense Adam over the pool with zero gradients for absent rows would instead keep moving
  them on their stale momentum."""
  size = state["count"].shape[0]
  present = jnp.zeros((size,), bool).at[rows].set(True)
  count = state["count"] + present
  if not isinstance(learning_rates, dict):
    learning_rates = {k: learning_rates for k in params}

  def leaf(lr, p, g, mu, nu):
    grad = jnp.zeros_like(p).at[rows].add(g)
    mask = present.reshape((size,) + (1,) * (p.ndim - 1))
    new_mu = jnp.where(mask, b1 * mu + (1 - b1) * grad, mu)
    new_nu = jnp.where(mask, b2 * nu + (1 - b2) * grad * grad, nu)
    t = jnp.maximum(count, 1).astype(p.dtype).reshape(mask.shape)
    step = lr * (new_mu / (1 - b1 ** t)) / (jnp.sqrt(new_nu / (1 - b2 ** t)) + eps)
    return jnp.where(mask, p - step, p), new_mu, new_nu

  out = {k: leaf(learning_rates[k], params[k], row_grads[k], state["mu"][k], state["nu"][k])
         for k in params}
  pick = lambda i: {k: out[k][i] for k in out}
  return pick(0), {"count": count, "mu": pick(1), "nu": pick(2)}
