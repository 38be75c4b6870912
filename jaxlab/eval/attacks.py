"""Adversarial attacks as pure, jittable functions.

Spec: docs/specs/robustness_tta_merging.md §3. FGSM (Goodfellow et al., arXiv
1412.6572), PGD with l-inf or l-2 balls and random start (Madry et al., arXiv 1706.06083),
APGD with the cross-entropy, DLR and targeted-DLR losses and its published step-size
schedule, momentum and checkpoints, and "AA-lite" = APGD-CE then APGD-T keeping the worst
case per example (Croce & Hein, AutoAttack, arXiv 2003.01690). FAB-T and Square are not
here, so AA-lite is an upper bound on AutoAttack's robust accuracy.

Every attack takes `logits_fn(x) -> logits` (the model in eval mode), images `x` in
[0, 1] of any shape with a leading batch axis, integer labels `y`, an explicit PRNG key
where it is random, and returns adversarial images inside the threat model (the eps ball
around `x`, intersected with [0, 1]). Batches keep a fixed shape: points that are already
broken stay in the batch (masked), which gives the same results as the reference's
sub-indexing and keeps everything jittable.
"""

from typing import Callable, List, Tuple

import chex
import jax
import jax.numpy as jnp

from jaxlab.train.losses import cross_entropy, logit_margin

LogitsFn = Callable[[jax.Array], jax.Array]


# ----------------------------------------------------------------------------- losses


def dlr(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Per-example untargeted DLR loss, -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3 + 1e-12).

  Invariant to z -> a z + b for a > 0; needs at least 3 classes.
  """
  if logits.shape[-1] < 3:
    raise ValueError(f"the DLR loss needs at least 3 classes, got {logits.shape[-1]}")
  ordered = jnp.sort(logits, axis=-1)
  return -logit_margin(logits, y) / (ordered[:, -1] - ordered[:, -3] + 1e-12)


def dlr_targeted(logits: jax.Array, y: jax.Array, target: jax.Array) -> jax.Array:
  """Per-example targeted DLR, -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12).

  Needs at least 4 classes.
  """
  if logits.shape[-1] < 4:
    raise ValueError(f"the targeted DLR loss needs at least 4 classes, got {logits.shape[-1]}")
  ordered = jnp.sort(logits, axis=-1)
  pick = lambda labels: jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  return -(pick(y) - pick(target)) / (
      ordered[:, -1] - 0.5 * (ordered[:, -3] + ordered[:, -4]) + 1e-12)


def _per_example_loss(name: str):
  losses = {"ce": lambda z, y, t: cross_entropy(z, y), "dlr": lambda z, y, t: dlr(z, y),
            "dlr_targeted": dlr_targeted}
  if name not in losses:
    raise ValueError(f"unknown attack loss {name!r}; valid choices: {', '.join(losses)}")
  return losses[name]


# ------------------------------------------------------------------------ projections


def _batch_dims(x: jax.Array) -> Tuple[int, ...]:
  return tuple(range(1, x.ndim))


def project_linf(x_adv: jax.Array, x: jax.Array, eps: float) -> jax.Array:
  """Clip to the l-inf ball of radius eps around x, then to [0, 1]."""
  return jnp.clip(jnp.clip(x_adv, x - eps, x + eps), 0.0, 1.0)


def project_l2(x_adv: jax.Array, x: jax.Array, eps: float) -> jax.Array:
  """Scale the perturbation into the l-2 ball of radius eps, then clip to [0, 1].

  Clipping to the box only shrinks each coordinate's perturbation, so the result stays in
  the ball.
  """
  delta = x_adv - x
  norm = jnp.sqrt(jnp.sum(jnp.square(delta), axis=_batch_dims(x), keepdims=True))
  delta = delta * jnp.minimum(1.0, eps / jnp.maximum(norm, 1e-12))
  return jnp.clip(x + delta, 0.0, 1.0)


def _l2_normalise(g: jax.Array) -> jax.Array:
  norm = jnp.sqrt(jnp.sum(jnp.square(g), axis=_batch_dims(g), keepdims=True))
  return g / jnp.maximum(norm, 1e-12)


# ---------------------------------------------------------------------- FGSM and PGD


def _loss_grad(logits_fn: LogitsFn, loss: str):
  per_example = _per_example_loss(loss)

  def total(x, y, target):
    logits = logits_fn(x)
    values = per_example(logits, y, target)
    return values.sum(), (values, logits)

  return jax.grad(total, has_aux=True)


def fgsm(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, eps: float) -> jax.Array:
  """One signed-gradient step of size eps on the cross-entropy."""
  chex.assert_equal_shape_prefix((x, y), 1)
  grad, _ = _loss_grad(logits_fn, "ce")(x, y, y)
  return project_linf(x + eps * jnp.sign(grad), x, eps)


def pgd(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *, eps: float,
        step_size: float, steps: int, norm: str = "linf", random_start: bool = True,
        loss: str = "ce", count_correct_steps: bool = False):
  """Projected gradient ascent on `loss`; returns the last iterate (Madry et al.).

  With `count_correct_steps`, also the number of the `steps` iterates the model still
  classified correctly before each step (per example; GAIRAT's kappa).

  l-inf: delta_0 ~ U[-eps, eps], steps of step_size * sign(grad). l-2: delta_0 uniform in
  direction with radius eps * U[0, 1], steps of step_size * grad / ||grad||_2.
  """
  chex.assert_equal_shape_prefix((x, y), 1)
  if norm not in ("linf", "l2"):
    raise ValueError(f"unknown norm {norm!r}; valid choices: linf, l2")
  project = project_linf if norm == "linf" else project_l2
  direction = jnp.sign if norm == "linf" else _l2_normalise
  if random_start and norm == "linf":
    start = x + jax.random.uniform(key, x.shape, x.dtype, -eps, eps)
  elif random_start:
    k_dir, k_rad = jax.random.split(key)
    radius = eps * jax.random.uniform(k_rad, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype)
    start = x + radius * _l2_normalise(jax.random.normal(k_dir, x.shape, x.dtype))
  else:
    start = x
  grad_fn = _loss_grad(logits_fn, loss)

  def body(_, carry):
    x_adv, correct_steps = carry
    grad, (_, logits) = grad_fn(x_adv, y, y)
    correct_steps += (jnp.argmax(logits, -1) == y).astype(jnp.int32)
    return project(x_adv + step_size * direction(grad), x, eps), correct_steps

  x_adv, correct_steps = jax.lax.fori_loop(
      0, steps, body, (project(start, x, eps), jnp.zeros(y.shape, jnp.int32)))
  return (x_adv, correct_steps) if count_correct_steps else x_adv


# ------------------------------------------------------------------------------- APGD


def apgd_checkpoints(n_iter: int) -> List[int]:
  """Iterations after which APGD may halve its step size.

  The first window is 0.22 N iterations, each next one 0.03 N shorter, at least 0.06 N
  (integer versions, as the reference code computes them): [22, 41, ..., 99] for N = 100.
  """
  window, shortest, shrink = (max(int(f * n_iter), 1) for f in (0.22, 0.06, 0.03))
  points, at = [], window
  while at <= n_iter:
    points.append(at)
    window = max(window - shrink, shortest)
    at += window
  return points


@chex.dataclass
class APGDResult:
  """x_adv: the last misclassified iterate per example (x_max where none was);
  robust: still classified correctly at every iterate; best_loss: f_max per iteration,
  shape [n_iter + 1, batch] (row 0 is the starting point)."""
  x_adv: jax.Array
  robust: jax.Array
  best_loss: jax.Array


def apgd(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *, eps: float,
         n_iter: int = 100, loss: str = "ce", target: jax.Array | None = None,
         rho: float = 0.75, exact_quirk: bool = False) -> APGDResult:
  """APGD (l-inf) with one restart.

  Start x_0 = clip(x + eps t / ||t||_inf), t ~ U[-1, 1]; step size 2 eps per example;
  momentum 1 at the first iteration, 0.75 after; the best point (x_max, f_max, its
  gradient) updated on strict improvement; at each checkpoint of `apgd_checkpoints` the
  step size is halved and the iterate restarted from x_max for an example whose loss
  increased in at most rho of the window's iterations, or whose step was not halved at
  the previous checkpoint and whose f_max did not improve since.

  `exact_quirk=True` reproduces the reference's first window, whose oldest comparison is
  against a zero-initialised slot (always an increase for CE, never for DLR); by default
  the first comparison is against the loss at the starting point.
  """
  chex.assert_equal_shape_prefix((x, y), 1)
  if loss == "dlr_targeted" and target is None:
    raise ValueError("loss='dlr_targeted' needs target classes")
  target = y if target is None else target
  grad_fn = _loss_grad(logits_fn, loss)
  batch_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  per_example = lambda v: v.reshape(batch_shape)

  t = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
  t_max = jnp.max(jnp.abs(t), axis=_batch_dims(x), keepdims=True)
  x0 = jnp.clip(x + eps * t / t_max, 0.0, 1.0)
  g0, (f0, logits0) = grad_fn(x0, y, target)
  robust0 = jnp.argmax(logits0, -1) == y
  checkpoints = apgd_checkpoints(n_iter)
  is_checkpoint = jnp.zeros(n_iter + 1, bool).at[jnp.asarray(checkpoints)].set(True)
  # the length of the window that starts at iteration 0 and at each checkpoint (0 after the
  # last one, which no checkpoint ends)
  starts = [0] + checkpoints
  window_len = jnp.zeros(n_iter + 1, jnp.float32).at[jnp.asarray(starts)].set(
      jnp.asarray([end - start for start, end in zip(starts, checkpoints + starts[-1:])],
                  jnp.float32))

  carry = dict(
      x_k=x0, x_prev=x0, g_k=g0, f_prev=jnp.zeros_like(f0) if exact_quirk else f0,
      eta=jnp.full(f0.shape, 2.0 * eps, x.dtype), x_max=x0, f_max=f0, g_max=g0,
      x_adv=x0, robust=robust0, count=jnp.zeros(f0.shape, jnp.float32),
      reduced_last=jnp.ones(f0.shape, bool), f_max_last=f0,
      window=window_len[0])

  def body(c, k):
    momentum = jnp.where(k == 0, 1.0, 0.75)
    u = project_linf(c["x_k"] + per_example(c["eta"]) * jnp.sign(c["g_k"]), x, eps)
    x_new = project_linf(c["x_k"] + momentum * (u - c["x_k"])
                         + (1.0 - momentum) * (c["x_k"] - c["x_prev"]), x, eps)
    g_new, (f_new, logits) = grad_fn(x_new, y, target)
    wrong = jnp.argmax(logits, -1) != y
    x_adv = jnp.where(per_example(wrong), x_new, c["x_adv"])
    robust = c["robust"] & ~wrong
    count = c["count"] + (f_new > c["f_prev"])
    improved = f_new > c["f_max"]
    x_max = jnp.where(per_example(improved), x_new, c["x_max"])
    g_max = jnp.where(per_example(improved), g_new, c["g_max"])
    f_max = jnp.maximum(f_new, c["f_max"])

    at_checkpoint = is_checkpoint[k + 1]
    reduce = (count <= rho * c["window"]) | (
        ~c["reduced_last"] & (c["f_max_last"] >= f_max))
    reduce = reduce & at_checkpoint
    eta = jnp.where(reduce, c["eta"] / 2.0, c["eta"])
    x_next = jnp.where(per_example(reduce), x_max, x_new)
    g_next = jnp.where(per_example(reduce), g_max, g_new)
    new = dict(
        x_k=x_next, x_prev=c["x_k"], g_k=g_next, f_prev=f_new, eta=eta, x_max=x_max,
        f_max=f_max, g_max=g_max, x_adv=x_adv, robust=robust,
        count=jnp.where(at_checkpoint, 0.0, count),
        reduced_last=jnp.where(at_checkpoint, reduce, c["reduced_last"]),
        f_max_last=jnp.where(at_checkpoint, f_max, c["f_max_last"]),
        window=jnp.where(at_checkpoint, window_len[k + 1], c["window"]))
    return new, f_max

  final, trace = jax.lax.scan(body, carry, jnp.arange(n_iter))
  # where no iterate was misclassified, return the strongest point found
  x_adv = jnp.where(per_example(final["robust"]), final["x_max"], final["x_adv"])
  return APGDResult(x_adv=x_adv, robust=final["robust"],
                    best_loss=jnp.concatenate([f0[None], trace], axis=0))


def aa_lite(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *, eps: float,
            n_iter: int = 100, n_targets: int = 9) -> Tuple[jax.Array, jax.Array]:
  """APGD-CE, then APGD-T (targeted DLR against the 2nd..(n_targets+1)-th largest clean
  logits); an example is robust only if no stage breaks it. Returns (x_adv, robust).

  Every stage runs on the whole batch (the targets vmapped) and an example takes the first
  stage that breaks it, which equals running each stage on the still-robust points only.
  """
  chex.assert_equal_shape_prefix((x, y), 1)
  ce_key, targets_key = jax.random.split(key)
  ce = apgd(logits_fn, x, y, ce_key, eps=eps, n_iter=n_iter, loss="ce")
  clean_logits = logits_fn(x)
  n_targets = min(n_targets, clean_logits.shape[-1] - 1)
  targets = jnp.argsort(-clean_logits, axis=-1)[:, 1:n_targets + 1].T  # [targets, batch]
  targeted = jax.vmap(lambda k, t: apgd(logits_fn, x, y, k, eps=eps, n_iter=n_iter,
                                        loss="dlr_targeted", target=t))(
      jax.random.split(targets_key, n_targets), targets)
  broken = jnp.concatenate([~ce.robust[None], ~targeted.robust])       # [stages, batch]
  candidates = jnp.concatenate([ce.x_adv[None], targeted.x_adv])
  first = jnp.argmax(broken, axis=0)  # the first stage that broke it (0 if none did)
  x_adv = jnp.take_along_axis(candidates, first.reshape((1, -1) + (1,) * (x.ndim - 1)),
                              axis=0)[0]
  return x_adv, ~jnp.any(broken, axis=0)
