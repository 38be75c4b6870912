"""Optimizers and learning-rate schedules from `config.optimizer`.

Fields: name (`sgd`, `adam`, `adamw`), learning_rate, schedule (`constant`,
`cosine`, `step`), warmup_steps, decay_steps (0: the run's total steps),
step_boundaries/step_factor (for `step`), momentum, nesterov, b1, b2, eps,
weight_decay (decoupled for adamw, L2 added to the gradient for sgd/adam, as
PyTorch's `weight_decay`), grad_clip_norm, grad_clip_value (0: off).

`apply_gradients` is the one optimizer step of a train state, shared by every method.
"""

from typing import Optional

import optax

from jaxlab.errors import unknown

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
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
    warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
    return optax.join_schedules([warmup, main], [cfg.warmup_steps])
  return main


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
  schedule = make_schedule(cfg, total_steps)
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
