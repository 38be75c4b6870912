"""The closed-form solver library (jaxlab.meta.solvers) against float64 numpy / scipy, with
masks and batching, and its gradients against finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from jax.test_util import check_grads

from jaxlab.meta import solvers


def _spd(rng, d):
  a = rng.normal(size=(d, d))
  return a @ a.T + d * np.eye(d)


@pytest.fixture(autouse=True)
def float64():
  with jax.enable_x64(True):
    yield


def test_the_jnp_cholesky_and_solves_equal_numpy():
  rng = np.random.default_rng(9)
  a, b = _spd(rng, 7), rng.normal(size=(7, 3))
  factor = solvers.cholesky(jnp.asarray(a))
  np.testing.assert_allclose(factor, np.linalg.cholesky(a), rtol=1e-12)
  np.testing.assert_allclose(solvers.cho_solve(factor, jnp.asarray(b)), np.linalg.solve(a, b),
                             rtol=1e-10)
  np.testing.assert_allclose(solvers.tri_solve(factor, jnp.asarray(b)),
                             np.linalg.solve(np.linalg.cholesky(a), b), rtol=1e-10)
  assert np.isnan(np.asarray(solvers.cholesky(jnp.asarray(-a)))).any()
  with jax.enable_x64(False):  # float32, as the methods run
    factor32 = solvers.cholesky(jnp.asarray(a, jnp.float32))
    np.testing.assert_allclose(factor32, np.linalg.cholesky(a), rtol=1e-5, atol=1e-6)


def test_spd_solve_retries_with_more_jitter_when_the_first_factor_fails():
  m = np.diag([1.0, 1.0, 1.0, -2e-6])     # indefinite by less than 100x the base jitter
  b = np.ones(4)
  jitter = 1e-6 * np.trace(m) / 4
  assert np.isnan(np.asarray(solvers.cholesky(jnp.asarray(m + jitter * np.eye(4))))).any()
  x = solvers.spd_solve(jnp.asarray(m), jnp.asarray(b))
  np.testing.assert_allclose(x, np.linalg.solve(m + 100 * jitter * np.eye(4), b), rtol=1e-6)
  well = _spd(np.random.default_rng(0), 4)  # no retry: the first factor's solve
  np.testing.assert_allclose(solvers.spd_solve(jnp.asarray(well), jnp.asarray(b)),
                             np.linalg.solve(well + 1e-6 * np.trace(well) / 4 * np.eye(4), b))


def test_weighted_ridge_primal_equals_dual_and_numpy_and_ignores_padding():
  rng = np.random.default_rng(1)
  z, y, w = rng.normal(size=(9, 5)), rng.normal(size=(9, 2)), rng.uniform(0.2, 1, 9)
  lam = 0.3
  expected = np.linalg.solve(z.T @ np.diag(w) @ z + lam * np.eye(5), z.T @ np.diag(w) @ y)
  for dual in (False, True):
    np.testing.assert_allclose(solvers.ridge(jnp.asarray(z), jnp.asarray(y), lam, jnp.asarray(w),
                                             dual=dual, jitter=0.0), expected, rtol=1e-9)
  # the dual form is the default when N < K; padded rows (w = 0) change nothing
  small = solvers.ridge(jnp.asarray(z[:3]), jnp.asarray(y[:3, 0]), lam, jitter=0.0)
  np.testing.assert_allclose(small, np.linalg.solve(z[:3].T @ z[:3] + lam * np.eye(5),
                                                    z[:3].T @ y[:3, 0]), rtol=1e-9)
  padded_w = np.r_[np.ones(3), np.zeros(6)]
  for dual in (False, True):
    np.testing.assert_allclose(solvers.ridge(jnp.asarray(z), jnp.asarray(y[:, 0]), lam,
                                             jnp.asarray(padded_w), dual=dual, jitter=0.0),
                               small, rtol=1e-9)
  batched = jax.vmap(lambda z, y: solvers.ridge(z, y, lam, jitter=0.0))(
      jnp.asarray(np.stack([z, 2 * z])), jnp.asarray(np.stack([y, y])))
  np.testing.assert_allclose(batched[1], np.linalg.solve(4 * z.T @ z + lam * np.eye(5),
                                                         2 * z.T @ y), rtol=1e-9)
  check_grads(jax.jit(lambda z, y, lam: solvers.ridge(z, y, lam, jnp.asarray(w))),
              (jnp.asarray(z), jnp.asarray(y), 0.3), order=1, modes=["rev"])


def test_laplacian_regularised_least_squares_equals_numpy():
  rng = np.random.default_rng(2)
  z_all = rng.normal(size=(10, 3))
  z_l, y = z_all[:4], rng.normal(size=4)
  lam, gamma, h = 0.1, 0.5, 1.3
  sq = ((z_all[:, None] - z_all[None]) ** 2).sum(-1)
  a = np.exp(-sq / (2 * h * h)) * (1 - np.eye(10))
  lap = np.diag(a.sum(1)) - a
  expected = np.linalg.solve(z_l.T @ z_l + lam * np.eye(3) + gamma * z_all.T @ lap @ z_all,
                             z_l.T @ y)
  got = solvers.laprls(jnp.asarray(z_l), jnp.asarray(y), jnp.asarray(z_all), lam, gamma, h,
                       jitter=0.0)
  np.testing.assert_allclose(got, expected, rtol=1e-9)
  # gamma = 0 is ridge
  np.testing.assert_allclose(solvers.laprls(jnp.asarray(z_l), jnp.asarray(y), jnp.asarray(z_all),
                                            lam, 0.0, h, jitter=0.0),
                             solvers.ridge(jnp.asarray(z_l), jnp.asarray(y), lam, dual=False,
                                           jitter=0.0), rtol=1e-9)


def test_rulsif_is_stationary_equals_numpy_and_is_ulsif_at_alpha_zero():
  rng = np.random.default_rng(3)
  phi_a, phi_b = rng.uniform(size=(12, 4)), rng.uniform(size=(15, 4))
  w_b = np.r_[np.ones(11), np.zeros(4)]
  lam = 0.05
  for alpha in (0.0, 0.5):
    theta, pe = solvers.lsif(jnp.asarray(phi_a), jnp.asarray(phi_b), lam, alpha,
                             w_b=jnp.asarray(w_b), jitter=0.0)
    pb = phi_b[:11]
    h = alpha * phi_a.T @ phi_a / 12 + (1 - alpha) * pb.T @ pb / 11
    expected = np.linalg.solve(h + lam * np.eye(4), phi_a.mean(0))
    np.testing.assert_allclose(theta, expected, rtol=1e-9)
    objective = lambda t: (alpha / 2 * jnp.mean((jnp.asarray(phi_a) @ t) ** 2)
                           + (1 - alpha) / 2 * jnp.mean((jnp.asarray(pb) @ t) ** 2)
                           - jnp.mean(jnp.asarray(phi_a) @ t) + lam / 2 * t @ t)
    np.testing.assert_allclose(jax.grad(objective)(theta), 0.0, atol=1e-12)
    r_a, r_b = phi_a @ expected, pb @ expected
    np.testing.assert_allclose(pe, -alpha / 2 * np.mean(r_a ** 2)
                               - (1 - alpha) / 2 * np.mean(r_b ** 2) + r_a.mean() - 0.5,
                               rtol=1e-9)
  check_grads(jax.jit(lambda a, b, lam: solvers.lsif(a, b, lam, 0.5)), (jnp.asarray(phi_a),
                                                              jnp.asarray(phi_b), 0.05),
              order=1, modes=["rev"])


def test_class_gaussians_and_mixture_log_density_equal_numpy_and_scipy():
  rng = np.random.default_rng(4)
  z = rng.normal(size=(14, 3))
  labels = np.r_[np.zeros(6, int), np.ones(8, int)]
  onehot = np.eye(3)[labels]                 # class 2 is padding
  mask = np.array([1.0, 1.0, 0.0])
  eps = 0.1
  g = solvers.class_gaussians(jnp.asarray(z), jnp.asarray(onehot), eps,
                              class_mask=jnp.asarray(mask))
  queries = rng.normal(size=(5, 3))
  logs = []
  for c, n in ((0, 6), (1, 8)):
    members = z[labels == c]
    cov = np.cov(members, rowvar=False, bias=True) + eps * np.eye(3)
    np.testing.assert_allclose(g["cov"][c], cov, rtol=1e-10)
    np.testing.assert_allclose(g["mean"][c], members.mean(0), rtol=1e-10)
    logs.append(np.log(n / 14) + scipy.stats.multivariate_normal(members.mean(0), cov).logpdf(
        queries))
  np.testing.assert_allclose(solvers.gmm_logpdf(jnp.asarray(queries), g),
                             scipy.special.logsumexp(np.stack(logs), axis=0), rtol=1e-10)
  assert g["log_prior"][2] == -np.inf
  diag = solvers.class_gaussians(jnp.asarray(z), jnp.asarray(onehot), eps, covariance="diag",
                                 class_mask=jnp.asarray(mask))
  np.testing.assert_allclose(diag["cov"][0], np.diag(np.diag(g["cov"][0])), rtol=1e-10)
  shared = solvers.class_gaussians(jnp.asarray(z), jnp.asarray(onehot), eps, covariance="shared",
                                   class_mask=jnp.asarray(mask))
  pooled = sum(np.cov(z[labels == c], rowvar=False, bias=True) * n
               for c, n in ((0, 6), (1, 8))) / 14
  np.testing.assert_allclose(shared["cov"][1], pooled + eps * np.eye(3), rtol=1e-10)
  # padded rows (w = 0) change nothing
  padded = solvers.class_gaussians(jnp.asarray(np.r_[z, rng.normal(size=(3, 3))]),
                                   jnp.asarray(np.r_[onehot, np.eye(3)[[0, 1, 1]]]), eps,
                                   w=jnp.asarray(np.r_[np.ones(14), np.zeros(3)]),
                                   class_mask=jnp.asarray(mask))
  np.testing.assert_allclose(padded["cov"][:2], g["cov"][:2], rtol=1e-10)
  check_grads(jax.jit(lambda z, q: solvers.gmm_logpdf(q, solvers.class_gaussians(
      z, jnp.asarray(onehot), eps, class_mask=jnp.asarray(mask)))),
              (jnp.asarray(z), jnp.asarray(queries)), order=1, modes=["rev"])


def test_soft_kmeans_em_climbs_the_mixture_likelihood_and_ignores_padding():
  rng = np.random.default_rng(5)
  centres = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
  z_l = np.concatenate([centres + 0.3 * rng.normal(size=(3, 2)) for _ in range(2)])
  onehot = np.tile(np.eye(3), (2, 1))
  z_u = centres[rng.integers(0, 3, 30)] + 0.8 * rng.normal(size=(30, 2))
  args = (jnp.asarray(z_l), jnp.asarray(onehot), jnp.asarray(z_u))
  values = []
  for steps in range(6):
    prototypes, _ = solvers.soft_kmeans_em(*args, steps, 1.0)
    values.append(float(solvers.prototype_loglik(*args, prototypes, 1.0)))
  assert all(b >= a - 1e-9 for a, b in zip(values, values[1:])) and values[-1] > values[0]
  padded = solvers.soft_kmeans_em(jnp.asarray(z_l), jnp.asarray(onehot),
                                  jnp.asarray(np.r_[z_u, 50 + rng.normal(size=(5, 2))]), 4, 1.0,
                                  w_u=jnp.asarray(np.r_[np.ones(30), np.zeros(5)]))
  np.testing.assert_allclose(padded[0], solvers.soft_kmeans_em(*args, 4, 1.0)[0], rtol=1e-10)
  check_grads(jax.jit(lambda z_u, s: solvers.soft_kmeans_em(args[0], args[1], z_u, 3, s)[0]),
              (args[2], 1.0), order=1, modes=["rev"])


def test_implicit_gradient_of_a_converged_em_equals_the_unrolled_one():
  rng = np.random.default_rng(6)
  z_l = jnp.asarray(rng.normal(size=(4, 2)))
  onehot = jnp.asarray(np.eye(2)[[0, 0, 1, 1]])
  z_u = jnp.asarray(rng.normal(size=(20, 2)) * 2)

  def em_step(prototypes, params):
    z_u, s = params
    r = jax.nn.softmax(solvers.prototype_logits(z_u, prototypes, s), -1)
    return (onehot.T @ z_l + r.T @ z_u) / (onehot.sum(0) + r.sum(0))[:, None]

  start = (onehot.T @ z_l) / onehot.sum(0)[:, None]
  loss = lambda implicit: lambda params: jnp.sum(
      solvers.fixed_point(em_step, start, params, 200, implicit=implicit) ** 2)
  params = (z_u, jnp.asarray(2.0))
  unrolled, implicit = jax.grad(loss(False))(params), jax.grad(loss(True))(params)
  for a, b in zip(jax.tree.leaves(unrolled), jax.tree.leaves(implicit)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(solvers.fixed_point(em_step, start, params, 200, implicit=True),
                             solvers.fixed_point(em_step, start, params, 200), rtol=1e-12)
