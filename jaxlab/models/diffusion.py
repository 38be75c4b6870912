"""Class-conditional denoising diffusion (DDPM, Ho et al. 2020, arXiv 2006.11239): noise
schedules, the forward marginal, the DDPM ancestral and DDIM (Song et al. 2021, arXiv
2010.02502) samplers, classifier-free guidance (Ho & Salimans 2022, arXiv 2207.12598), the
reconstruction R_t of docs/specs/generative_and_finetuning.md §5(b), and the frozen generator
`G(z, c)` other methods read a trained run through.

Steps are t = 0..T with x_0 the data, alpha_bar[0] = 1, and
    q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).
The model works in [-1, 1] (images in [0, 1] are mapped by 2x - 1 and back).

Schedules (`diffusion.schedule`): `linear` (DDPM: beta from `beta_start` to `beta_end`; with
`scale_betas`, the default, both are multiplied by 1000 / T as improved DDPM does, Nichol &
Dhariwal 2021, arXiv 2102.09672, so that a short chain still ends near pure noise: at T = 200
the unscaled 1e-4..0.02 would leave alpha_bar_T = 0.13, a third of the signal's amplitude),
and `cosine` (improved DDPM, s = 0.008, betas clipped at 0.999).

Samplers: `ddpm` takes posterior steps q(x_{t'} | x_t, x0_hat) between consecutive points of
the step grid (all of 1..t_start, or `steps` of them: the respaced chain), variance
`small` (the posterior's, beta_tilde) or `large` (beta); `ddim` takes DDIM steps with `eta`
(eta = 1 over every step is the ancestral chain; eta = 0 is deterministic). `clip` clips the
predicted x_0 to [-1, 1] at each step (DDPM's sampler; the implied epsilon follows it).

Guidance: eps = eps(x, t, null) + s (eps(x, t, c) - eps(x, t, null)); s = 1 is the plain
conditional model (the default, one pass), s = 0 the unconditional one, s > 1 guided. (Ho &
Salimans write (1 + w) eps_c - w eps_null: w = s - 1.)

Randomness: every example carries its own key (`keys` [B]); the noise of step t is
normal(fold_in(key, t)) and the forward noise of a reconstruction normal(fold_in(key, 0)), so
an example's sample depends on its key only, not on the batch it is drawn in.
"""

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.errors import UserError, unknown
from jaxlab.models import unet

SCHEDULES = ("linear", "cosine")
SAMPLERS = ("ddpm", "ddim")
VARIANCES = ("small", "large")
EpsFn = Callable[[jax.Array, jax.Array], jax.Array]   # (x_t [B, ...], t [B]) -> epsilon


@flax.struct.dataclass
class Schedule:
  betas: jax.Array        # [T + 1], betas[0] = 0
  alpha_bars: jax.Array   # [T + 1], alpha_bars[0] = 1

  @property
  def steps(self) -> int:
    return self.betas.shape[0] - 1


def make_schedule(kind: str = "linear", steps: int = 1000, beta_start: float = 1e-4,
                  beta_end: float = 0.02, scale_betas: bool = True) -> Schedule:
  """The noise schedule of T = `steps` steps (computed in float64, stored in float32)."""
  if kind == "linear":
    scale = 1000.0 / steps if scale_betas else 1.0
    betas = np.linspace(scale * beta_start, scale * beta_end, steps, dtype=np.float64)
  elif kind == "cosine":
    f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2
    u = np.arange(steps + 1, dtype=np.float64) / steps
    betas = np.minimum(1.0 - f(u[1:]) / f(u[:-1]), 0.999)
  else:
    raise unknown("noise schedule (diffusion.schedule)", kind, SCHEDULES)
  if not (np.all(betas > 0) and np.all(betas < 1)):
    raise UserError(f"diffusion betas must lie in (0, 1); {kind} with T={steps}, "
                    f"beta {beta_start}..{beta_end} gives {betas.min():.3g}..{betas.max():.3g}")
  betas = np.concatenate([[0.0], betas])
  return Schedule(betas=jnp.asarray(betas, jnp.float32),
                  alpha_bars=jnp.asarray(np.cumprod(1.0 - betas), jnp.float32))


def _expand(values: jax.Array, x: jax.Array) -> jax.Array:
  return values.reshape(values.shape + (1,) * (x.ndim - values.ndim))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
  """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t [B] (t = 0: x_0 itself)."""
  ab = _expand(schedule.alpha_bars[t], x0)
  return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * eps


def step_grid(t_start: int, sampler: str, steps: int = 0) -> np.ndarray:
  """[S, 2] int pairs (t, t_prev) from t_start down to 0: every step, or `steps` of them
  evenly spaced (rounded, duplicates dropped)."""
  if sampler not in SAMPLERS:
    raise unknown("sampler", sampler, SAMPLERS)
  if t_start <= 0:
    return np.zeros((0, 2), np.int32)
  n = t_start if steps <= 0 else min(steps, t_start)
  points = np.unique(np.round(np.linspace(0, t_start, n + 1)).astype(np.int32))[::-1]
  return np.stack([points[:-1], points[1:]], axis=1)


def _noise(keys: jax.Array, t: jax.Array, shape: Sequence[int]) -> jax.Array:
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, t), tuple(shape)))(keys)


def reverse(eps_fn: EpsFn, schedule: Schedule, x: jax.Array, t_start: int,
            keys: Optional[jax.Array] = None, *, sampler: str = "ddpm", steps: int = 0,
            eta: float = 0.0, clip: bool = True, variance: str = "small") -> jax.Array:
  """x_0 sampled from x = x_{t_start} by the reverse process (see the module docstring)."""
  if variance not in VARIANCES:
    raise unknown("sampler variance (diffusion.variance)", variance, VARIANCES)
  grid = step_grid(int(t_start), sampler, steps)
  stochastic = sampler == "ddpm" or eta > 0
  if stochastic and keys is None:
    raise ValueError(f"the {sampler} sampler with eta={eta} draws noise: pass keys")
  if not len(grid):
    return x

  def body(x, pair):
    t, t_prev = pair[0], pair[1]
    eps = eps_fn(x, jnp.full((x.shape[0],), t))
    ab_t, ab_prev = schedule.alpha_bars[t], schedule.alpha_bars[t_prev]
    x0 = (x - jnp.sqrt(1.0 - ab_t) * eps) / jnp.sqrt(ab_t)
    if clip:
      x0 = jnp.clip(x0, -1.0, 1.0)
      eps = (x - jnp.sqrt(ab_t) * x0) / jnp.sqrt(1.0 - ab_t)
    noise = _noise(keys, t, x.shape[1:]) if stochastic else jnp.zeros_like(x)
    if sampler == "ddpm":
      beta = 1.0 - ab_t / ab_prev          # beta_t itself between consecutive steps
      mean = (jnp.sqrt(ab_prev) * beta / (1.0 - ab_t) * x0
              + jnp.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab_t) * x)
      var = beta * (1.0 - ab_prev) / (1.0 - ab_t) if variance == "small" else beta
      var = jnp.where(t_prev == 0, 0.0, var)  # the last step adds no noise
      return mean + jnp.sqrt(var) * noise, None
    sigma = eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev))
    direction = jnp.sqrt(jnp.maximum(1.0 - ab_prev - sigma ** 2, 0.0))
    return jnp.sqrt(ab_prev) * x0 + direction * eps + sigma * noise, None

  x, _ = jax.lax.scan(body, x, jnp.asarray(grid))
  return x


def reconstruct(eps_fn: EpsFn, schedule: Schedule, x0: jax.Array, t: int, keys: jax.Array,
                **sampler) -> jax.Array:
  """R_t(x_0): forward-noise x_0 to step t (noise of fold_in(key, 0)), then reverse to 0."""
  x_t = q_sample(schedule, x0, jnp.full((x0.shape[0],), t, jnp.int32),
                 _noise(keys, 0, x0.shape[1:]))
  return reverse(eps_fn, schedule, x_t, t, keys, **sampler)


def with_null(c: jax.Array) -> jax.Array:
  """c [B, K] -> [B, K + 1]: the null slot 0 (a class condition, hard or soft)."""
  return jnp.concatenate([c, jnp.zeros(c.shape[:-1] + (1,), c.dtype)], -1)


def null_condition(batch: int, num_classes: int) -> jax.Array:
  return jax.nn.one_hot(jnp.full((batch,), num_classes), num_classes + 1)


def to_model_space(images: jax.Array) -> jax.Array:
  return 2.0 * images - 1.0


def to_images(x: jax.Array) -> jax.Array:
  return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Diffusion:
  """A noise predictor with its schedule: what a `ddpm` run trains and other runs read."""
  net: nn.Module
  schedule: Schedule
  num_classes: int
  image_shape: Tuple[int, ...]

  def init(self, rng: jax.Array):
    x = jnp.zeros((2,) + tuple(self.image_shape))
    return dict(self.net.init(rng, x, jnp.ones((2,), jnp.int32),
                              null_condition(2, self.num_classes)))

  def eps_fn(self, variables, c: jax.Array, guidance: float = 1.0) -> EpsFn:
    """epsilon(x, t) for the class condition c [B, K] (one-hot or probabilities), guided."""
    cond = with_null(c)
    null = null_condition(c.shape[0], self.num_classes)
    if guidance == 1.0:
      return lambda x, t: self.net.apply(variables, x, t, cond)
    if guidance == 0.0:
      return lambda x, t: self.net.apply(variables, x, t, null)

    def guided(x, t):
      both = self.net.apply(variables, jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                            jnp.concatenate([cond, null.astype(cond.dtype)]))
      eps_c, eps_u = jnp.split(both, 2)
      return eps_u + guidance * (eps_c - eps_u)
    return guided

  def loss(self, params, images: jax.Array, labels: jax.Array, rng: jax.Array,
           p_uncond: float = 0.0) -> jax.Array:
    """The simple DDPM loss ||eps - eps_theta(x_t, t, c)||^2 per example [B], t uniform in
    1..T, the class label dropped to the null one with probability `p_uncond`."""
    t_key, eps_key, drop_key = jax.random.split(rng, 3)
    n = images.shape[0]
    x0 = to_model_space(images)
    t = jax.random.randint(t_key, (n,), 1, self.schedule.steps + 1)
    eps = jax.random.normal(eps_key, x0.shape)
    dropped = jax.random.bernoulli(drop_key, p_uncond, (n,))
    c = jax.nn.one_hot(jnp.where(dropped, self.num_classes, labels), self.num_classes + 1)
    pred = self.net.apply({"params": params}, q_sample(self.schedule, x0, t, eps), t, c)
    return jnp.mean((pred - eps) ** 2, axis=tuple(range(1, x0.ndim)))

  def sample(self, variables, z: jax.Array, c: jax.Array, keys: Optional[jax.Array] = None,
             guidance: float = 1.0, **sampler) -> jax.Array:
    """Images in [0, 1] generated from x_T = z [B, H, W, C] for the conditions c [B, K]."""
    x = reverse(self.eps_fn(variables, c, guidance), self.schedule, z, self.schedule.steps,
                keys, **sampler)
    return to_images(x)

  def reconstruct(self, variables, images: jax.Array, c: jax.Array, t: int, keys: jax.Array,
                  guidance: float = 1.0, **sampler) -> jax.Array:
    """R_t of images in [0, 1] (back in [0, 1]); t = 0 returns them unchanged."""
    x = reconstruct(self.eps_fn(variables, c, guidance), self.schedule,
                    to_model_space(images), t, keys, **sampler)
    return to_images(x) if t else images


def build(model_config, diffusion_config, num_classes: int,
          image_shape: Sequence[int]) -> Diffusion:
  """The diffusion model `config.model` (the network) and `config.diffusion` describe."""
  d = diffusion_config
  return Diffusion(net=unet.build_net(model_config, num_classes, image_shape),
                   schedule=make_schedule(d.schedule, d.timesteps, d.beta_start, d.beta_end,
                                          d.scale_betas),
                   num_classes=num_classes, image_shape=tuple(image_shape))


@dataclasses.dataclass(frozen=True)
class DiffusionGenerator:
  """A trained diffusion model as the frozen conditional generator G(z, c) -> x of the
  generator-fed methods (docs/specs/generative_and_finetuning.md §0.4): z [B, H*W*C] ~ N(0, I)
  is x_T, and the deterministic DDIM chain (eta = 0, `steps` steps) maps it to an image in
  [0, 1], differentiably in z and c. Its variables are the `ddpm` run's {"params", "ema"};
  `ema` selects the exponential moving average of the weights (the DDPM convention)."""
  diffusion: Diffusion
  steps: int = 20
  guidance: float = 1.0
  ema: bool = True
  clip: bool = True

  @property
  def latent_dim(self) -> int:
    return math.prod(self.diffusion.image_shape)

  @property
  def num_classes(self) -> int:
    return self.diffusion.num_classes

  def init(self, rng: jax.Array):
    variables = self.diffusion.init(rng)
    return {"params": variables["params"], "ema": variables["params"]}

  def apply(self, variables, z: jax.Array, c: jax.Array, train: bool = False) -> jax.Array:
    del train  # a frozen sampler: the same in training and evaluation
    weights = {"params": variables["ema"] if self.ema else variables["params"]}
    x_T = z.reshape((z.shape[0],) + tuple(self.diffusion.image_shape))
    return self.diffusion.sample(weights, x_T, c, guidance=self.guidance, sampler="ddim",
                                 steps=self.steps, eta=0.0, clip=self.clip)
