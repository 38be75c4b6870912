"""Differentiable closed-form solvers for meta-learners that adapt per task by a fit instead
of gradient steps (docs/specs/closed_form_meta_learning.md §9.3).

Every solver is a pure function of fixed-shape arrays: padded rows carry weight 0 (`w`, [N];
None = all 1), padded classes a 0 in `class_mask`, so one compiled function serves every task
of a meta-batch and `jax.vmap` batches them. Gradients flow through every solve.

  cholesky, cho_solve, tri_solve    the SPD factorisation and its substitutions, in jnp loops
  spd_solve(M, b)                   M^-1 b with relative jitter (jitter * tr(M) / K on the
                                    diagonal) and one retry at 100x jitter if the result is
                                    not finite (lax.cond)
  ridge(Z, y, lam, w)               (Z^T W Z + lam I)^-1 Z^T W y; the dual form
                                    Z^T W^1/2 (W^1/2 Z Z^T W^1/2 + lam I)^-1 W^1/2 y when
                                    N < K (or `dual=`); y may be [N] or [N, M]
  laprls(...)                       Laplacian-regularised least squares (Belkin et al. 2006):
                                    + gamma Z^T L Z, L the Laplacian of an RBF graph over all
                                    support rows, labelled or not
  lsif(...)                         uLSIF (alpha = 0, Kanamori et al. 2009) / RuLSIF (Yamada
                                    et al. 2011): theta = (alpha H_A + (1 - alpha) H_B +
                                    lam I)^-1 h_A for r(x) = theta^T phi(x), with the
                                    relative Pearson divergence estimate PE_alpha
  class_gaussians(...)              per-class weights, means, covariances (full / diagonal /
                                    shared, + eps I, optional shrinkage to the pooled one)
                                    and their Cholesky factors
  gauss_logpdf_chol, gmm_logpdf     log N(z | mu, L L^T) by a triangular solve; the masked
                                    mixture by logsumexp
  soft_kmeans_em(...)               prototype EM with the labelled assignments clamped (soft
                                    k-means, Snell et al.'s semi-supervised prototypes),
                                    unrolled with lax.scan, each step under jax.checkpoint
  fixed_point(f, x0, params, ...)   iterating x <- f(x, params): gradients by the unrolled
                                    iterations or, `implicit=True`, by the implicit function
                                    theorem at the fixed point (adjoint v = g + v df/dx solved
                                    by the same number of iterations)

Cholesky and the substitutions are jnp loops, not jax.scipy.linalg: jaxlib's CPU LAPACK
kernels run a batch of small solves with ParallelBatchMap on XLA's intra-op thread pool, and
two such thunks in flight can wait on each other (seen here: a test-time adaptation run
stalled for good at a random step on 2 cores). The matrices here are K x K with K a few
dozen, so the loops cost little; on accelerators XLA fuses them.

Positive hyperparameters (lam, eps, temperatures, bandwidths) are passed as values; the
methods store them as logs. For float64 internals, trace under `jax.enable_x64()` with
float64 inputs (the tests check the solvers so against numpy / scipy).
"""

from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from jaxlab.errors import unknown

COVARIANCES = ("full", "diag", "shared")


# -- factorisation ---------------------------------------------------------------------------

def cholesky(a: jax.Array) -> jax.Array:
  """The lower Cholesky factor of an SPD matrix, column by column (NaN where a is not
  positive definite)."""
  n = a.shape[-1]
  index = jnp.arange(n)

  def column(j, factor):
    row = jnp.where(index < j, factor[j], 0.0)
    pivot = jnp.sqrt(a[j, j] - row @ row)
    values = (a[:, j] - factor @ row) / pivot
    return factor.at[:, j].set(jnp.where(index > j, values, 0.0).at[j].set(pivot))

  return jax.lax.fori_loop(0, n, column, jnp.zeros_like(a))


def tri_solve(factor: jax.Array, b: jax.Array) -> jax.Array:
  """y with L y = b, L lower triangular (b: [n] or [n, m])."""
  n = factor.shape[-1]

  def forward(i, y):  # rows > i of y are still 0
    return y.at[i].set((b[i] - factor[i] @ y) / factor[i, i])

  return jax.lax.fori_loop(0, n, forward, jnp.zeros_like(b))


def cho_solve(factor: jax.Array, b: jax.Array) -> jax.Array:
  """x with (L L^T) x = b, by forward then back substitution (b: [n] or [n, m])."""
  n = factor.shape[-1]
  y = tri_solve(factor, b)

  def back(k, x):
    i = n - 1 - k
    return x.at[i].set((y[i] - factor[:, i] @ x) / factor[i, i])

  return jax.lax.fori_loop(0, n, back, jnp.zeros_like(b))


def _jittered(m: jax.Array, jitter: float) -> jax.Array:
  k = m.shape[-1]
  return m + (jitter * jnp.trace(m) / k + jnp.finfo(m.dtype).tiny) * jnp.eye(k, dtype=m.dtype)


def spd_factor(m: jax.Array, jitter: float = 1e-6) -> jax.Array:
  """The Cholesky factor of m + jitter tr(m)/K I, retried once at 100x jitter when the first
  is not finite."""
  first = cholesky(_jittered(m, jitter))
  return jax.lax.cond(jnp.all(jnp.isfinite(first)), lambda: first,
                      lambda: cholesky(_jittered(m, 100.0 * jitter)))


def spd_solve(m: jax.Array, b: jax.Array, jitter: float = 1e-6) -> jax.Array:
  """m^-1 b for an SPD (up to rounding) m, through `spd_factor`."""
  return cho_solve(spd_factor(m, jitter), b)


def _weights(z: jax.Array, w: Optional[jax.Array]) -> jax.Array:
  return jnp.ones(z.shape[0], z.dtype) if w is None else w.astype(z.dtype)


# -- least squares ---------------------------------------------------------------------------

def ridge(z: jax.Array, y: jax.Array, lam, w: Optional[jax.Array] = None,
          dual: Optional[bool] = None, jitter: float = 1e-6) -> jax.Array:
  """The weighted ridge solution [K] or [K, M] of z [N, K] onto y [N] or [N, M]."""
  w = _weights(z, w)
  dual = z.shape[0] < z.shape[1] if dual is None else dual
  root = jnp.sqrt(w)
  a = z * root[:, None]
  b = y * (root if y.ndim == 1 else root[:, None])
  if dual:
    gram = a @ a.T + lam * jnp.eye(a.shape[0], dtype=z.dtype)
    # padded rows: a zero row with lam on its diagonal gives a zero dual weight
    return a.T @ spd_solve(gram, b, jitter)
  return spd_solve(a.T @ a + lam * jnp.eye(a.shape[1], dtype=z.dtype), a.T @ b, jitter)


def rbf_laplacian(z: jax.Array, w: Optional[jax.Array], bandwidth) -> jax.Array:
  """L = D - A of A_ij = w_i w_j exp(-||z_i - z_j||^2 / (2 h^2)) (i != j)."""
  w = _weights(z, w)
  sq = jnp.sum((z[:, None] - z[None]) ** 2, -1)
  affinity = jnp.exp(-sq / (2.0 * bandwidth ** 2)) * (w[:, None] * w[None])
  affinity = affinity * (1.0 - jnp.eye(z.shape[0], dtype=z.dtype))
  return jnp.diag(affinity.sum(1)) - affinity


def laprls(z_labeled: jax.Array, y: jax.Array, z_all: jax.Array, lam, gamma, bandwidth,
           w_labeled: Optional[jax.Array] = None, w_all: Optional[jax.Array] = None,
           jitter: float = 1e-6) -> jax.Array:
  """(Z_l^T W Z_l + lam I + gamma Z_all^T L Z_all)^-1 Z_l^T W y: ridge whose solution is also
  smooth over the graph of all support rows (labelled and unlabelled)."""
  wl = _weights(z_labeled, w_labeled)
  lap = rbf_laplacian(z_all, w_all, bandwidth)
  k = z_labeled.shape[1]
  m = (z_labeled * wl[:, None]).T @ z_labeled + lam * jnp.eye(k, dtype=z_labeled.dtype) \
      + gamma * z_all.T @ lap @ z_all
  rhs = (z_labeled * wl[:, None]).T @ y
  return spd_solve(m, rhs, jitter)


def _mean_outer(phi: jax.Array, w: jax.Array) -> jax.Array:
  return (phi * w[:, None]).T @ phi / jnp.maximum(w.sum(), 1e-12)


def _mean(phi: jax.Array, w: jax.Array) -> jax.Array:
  return (phi * w[:, None]).sum(0) / jnp.maximum(w.sum(), 1e-12)


def lsif(phi_a: jax.Array, phi_b: jax.Array, lam, alpha: float = 0.0,
         w_a: Optional[jax.Array] = None, w_b: Optional[jax.Array] = None,
         jitter: float = 1e-6) -> Tuple[jax.Array, jax.Array]:
  """(theta, PE_alpha) of the relative density ratio r_alpha = p_A / (alpha p_A + (1 - alpha)
  p_B) modelled as theta^T phi(x), from samples phi_a [N_A, K] ~ p_A and phi_b [N_B, K] ~ p_B:
  theta minimises alpha/2 E_A[r^2] + (1 - alpha)/2 E_B[r^2] - E_A[r] + lam/2 ||theta||^2, and
  PE_alpha = -alpha/2 E_A[r^2] - (1 - alpha)/2 E_B[r^2] + E_A[r] - 1/2 (Yamada et al.)."""
  w_a, w_b = _weights(phi_a, w_a), _weights(phi_b, w_b)
  h_a, h_b = _mean_outer(phi_a, w_a), _mean_outer(phi_b, w_b)
  k = phi_a.shape[1]
  h = alpha * h_a + (1.0 - alpha) * h_b
  target = _mean(phi_a, w_a)
  theta = spd_solve(h + lam * jnp.eye(k, dtype=phi_a.dtype), target, jitter)
  pe = -0.5 * theta @ h @ theta + target @ theta - 0.5
  return theta, pe


# -- Gaussians -------------------------------------------------------------------------------

def class_gaussians(z: jax.Array, onehot: jax.Array, eps, w: Optional[jax.Array] = None,
                    covariance: str = "full", shrink: float = 0.0,
                    class_mask: Optional[jax.Array] = None) -> Dict[str, jax.Array]:
  """Maximum-likelihood class Gaussians of z [N, K] with soft or hard assignments onehot
  [N, C]: {"log_prior" [C] (masked classes -inf), "mean" [C, K], "cov" [C, K, K], "chol"}.
  cov = (1 - shrink) S_c + shrink S_pooled + eps I; `diag` keeps the diagonal of S_c,
  `shared` uses S_pooled for every class."""
  if covariance not in COVARIANCES:
    raise unknown("covariance", covariance, COVARIANCES)
  w = _weights(z, w)
  c = onehot.shape[1]
  class_mask = jnp.ones(c, z.dtype) if class_mask is None else class_mask.astype(z.dtype)
  r = onehot * w[:, None] * class_mask[None]                  # [N, C]
  counts = r.sum(0)
  mean = (r.T @ z) / jnp.maximum(counts, 1e-12)[:, None]
  centred = z[None] - mean[:, None]                          # [C, N, K]
  scatter = jnp.einsum("cn,cnk,cnl->ckl", r.T, centred, centred)
  per_class = scatter / jnp.maximum(counts, 1e-12)[:, None, None]
  pooled = scatter.sum(0) / jnp.maximum(counts.sum(), 1e-12)
  k = z.shape[1]
  if covariance == "shared":
    cov = jnp.broadcast_to(pooled, per_class.shape)
  else:
    cov = (1.0 - shrink) * per_class + shrink * pooled[None]
    if covariance == "diag":
      cov = cov * jnp.eye(k, dtype=z.dtype)[None]
  cov = cov + eps * jnp.eye(k, dtype=z.dtype)[None]
  log_prior = jnp.where(class_mask > 0, jnp.log(jnp.maximum(counts, 1e-30) /
                                                 jnp.maximum(counts.sum(), 1e-30)), -jnp.inf)
  return {"log_prior": log_prior, "mean": mean, "cov": cov,
          "chol": jax.vmap(cholesky)(cov)}


def gauss_logpdf_chol(z: jax.Array, mean: jax.Array, chol: jax.Array) -> jax.Array:
  """log N(z | mean, L L^T) of z [..., K] for one Gaussian."""
  k = mean.shape[-1]
  diff = (z - mean).reshape(-1, k)
  solved = tri_solve(chol, diff.T)                         # [K, M]
  quad = jnp.sum(solved ** 2, 0)
  logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))
  return (-0.5 * (k * jnp.log(2.0 * jnp.pi) + logdet + quad)).reshape(z.shape[:-1])


def class_logpdfs(z: jax.Array, gaussians: Dict[str, jax.Array]) -> jax.Array:
  """[..., C]: log pi_c + log N(z | mu_c, Sigma_c)."""
  per_class = jax.vmap(lambda m, l: gauss_logpdf_chol(z, m, l))(gaussians["mean"],
                                                                 gaussians["chol"])
  return jnp.moveaxis(per_class, 0, -1) + gaussians["log_prior"]


def gmm_logpdf(z: jax.Array, gaussians: Dict[str, jax.Array]) -> jax.Array:
  """log sum_c pi_c N(z | mu_c, Sigma_c) over the unmasked classes."""
  return jax.nn.logsumexp(class_logpdfs(z, gaussians), axis=-1)


# -- EM ----------------------------------------------------------------------------------------

def prototype_logits(z: jax.Array, prototypes: jax.Array, temperature,
                     class_mask: Optional[jax.Array] = None) -> jax.Array:
  """-||z - mu_c||^2 / s [..., C]; masked classes -inf."""
  logits = -jnp.sum((z[..., None, :] - prototypes) ** 2, -1) / temperature
  return logits if class_mask is None else jnp.where(class_mask > 0, logits, -jnp.inf)


def soft_kmeans_em(z_l: jax.Array, onehot_l: jax.Array, z_u: jax.Array, steps: int,
                   temperature, w_l: Optional[jax.Array] = None,
                   w_u: Optional[jax.Array] = None,
                   class_mask: Optional[jax.Array] = None) -> Tuple[jax.Array, jax.Array]:
  """(prototypes [C, K], responsibilities of z_u [N_U, C]) after `steps` EM steps from the
  labelled means: E r_nc = softmax_c(-||z_n - mu_c||^2 / s) for the unlabelled rows; M mu_c =
  (sum_l 1[y=c] z + sum_u r_nc z) / (N_c + sum_u r_nc). With s = 2 sigma^2 this is EM for the
  equal-weight isotropic Gaussian mixture with the labelled assignments fixed, so it never
  lowers that mixture's log-likelihood (`prototype_loglik`)."""
  w_l, w_u = _weights(z_l, w_l), _weights(z_u, w_u)
  labeled = onehot_l * w_l[:, None]
  sums_l, counts_l = labeled.T @ z_l, labeled.sum(0)

  def m_step(r):
    r = r * w_u[:, None]
    return (sums_l + r.T @ z_u) / jnp.maximum(counts_l + r.sum(0), 1e-12)[:, None]

  def e_step(prototypes):
    return jax.nn.softmax(prototype_logits(z_u, prototypes, temperature, class_mask), -1)

  @jax.checkpoint
  def step(prototypes, _):
    return m_step(e_step(prototypes)), None

  prototypes = sums_l / jnp.maximum(counts_l, 1e-12)[:, None]
  prototypes, _ = jax.lax.scan(step, prototypes, None, length=steps)
  return prototypes, e_step(prototypes)


def prototype_loglik(z_l, onehot_l, z_u, prototypes, temperature, w_l=None, w_u=None,
                     class_mask=None) -> jax.Array:
  """The log-likelihood (up to constants) that `soft_kmeans_em` climbs: labelled rows under
  their class's component, unlabelled rows under the equal-weight mixture."""
  w_l, w_u = _weights(z_l, w_l), _weights(z_u, w_u)
  labelled = jnp.sum(w_l * jnp.sum(onehot_l * prototype_logits(z_l, prototypes, temperature,
                                                               class_mask), -1))
  unlabelled = jnp.sum(w_u * jax.nn.logsumexp(
      prototype_logits(z_u, prototypes, temperature, class_mask), -1))
  return labelled + unlabelled


def fixed_point(f: Callable, x0, params, steps: int, implicit: bool = False):
  """x after `steps` iterations of x <- f(x, params). The gradient w.r.t. params is that of
  the unrolled iterations, or (`implicit`) the implicit-function one at the result x*:
  dL/dparams = v df/dparams with v = g + v df/dx (solved by `steps` iterations), exact when
  x* is a fixed point and the iteration contracts."""
  def iterate(params, x):
    return jax.lax.fori_loop(0, steps, lambda _, x: f(x, params), x)

  if not implicit:
    return iterate(params, x0)

  @jax.custom_vjp
  def solve(params, x):
    return iterate(params, x)

  def forward(params, x):
    x_star = iterate(jax.lax.stop_gradient(params), x)
    return x_star, (params, x_star)

  def backward(residuals, g):
    params, x_star = residuals
    _, vjp_x = jax.vjp(lambda x: f(x, params), x_star)
    v = jax.lax.fori_loop(0, steps, lambda _, v: jax.tree.map(jnp.add, g, vjp_x(v)[0]), g)
    _, vjp_params = jax.vjp(lambda p: f(x_star, p), params)
    return vjp_params(v)[0], jax.tree.map(jnp.zeros_like, x_star)

  solve.defvjp(forward, backward)
  return solve(params, x0)
