"""Closed-form meta-learners: a shared network embeds a task's few examples, a task-specific
model is fitted to the embedded support in closed form (jaxlab.meta.solvers), and the network
is meta-trained by backpropagating the query loss through that fit
(docs/specs/closed_form_meta_learning.md §0.4; no public code exists for these papers, so every
formulation marked [R] there is ours, behind a flag). Tasks: jaxlab.data.meta_tasks.

Variants:
  `meta_ssl`   Iwata & Kumagai, arXiv 2311.05088 (§1): a task's labelled, unlabelled and
               query rows over its own attributes, embedded jointly by the VFSA network
               (jaxlab.models.sets.VariableFeatureAttention; queries read the support, never
               each other); class prototypes adapted by `em_steps` soft k-means EM steps with
               the labelled assignments clamped (temperature s = exp(learned)); query
               cross-entropy meta-loss (§1(b) [R]). Arms by flag: `use_unlabeled=False` (U
               neither attended to nor used by EM: supervised meta-learning),
               `row_attention=False` (each row embedded alone). Baselines on the raw
               standardised attributes: L2-regularised logistic regression on L by gradient
               descent, and label spreading (Zhou et al. 2004, alpha = `spreading_alpha`,
               0.2 as sklearn's LabelSpreading, which the spec names; RBF affinities at the
               median distance, as sklearn's gamma = 20 leaves no edges between standardised
               rows) over L, U and the queries (transductive, as sklearn's is used). Zhou et
               al.'s alpha = 0.99 degenerates on a task's few dozen rows: (I - alpha S)^-1 is
               then dominated by S's leading eigenvector, so every row gets the class whose
               labelled rows have the larger degree (chance accuracy, measured).
  `meta_ood`   Iwata & Kumagai, arXiv 2206.09543 (§2): the encoder `config.model` (an MLP,
               64-128-128-16 at §2(g)'s scale) maps a task's in-distribution support to a
               latent space where one Gaussian per class is fitted by maximum likelihood
               (`closed_form.covariance` full [S] | diag | shared; + eps I with eps = exp(a
               learned log, §2(b) [R])); the OoD score is -log p(z | S) under the mixture
               (`score=gmm`) or the distance to the nearest class mean (`score=proto`, the
               ProtoNet baseline). Meta-loss [R]: 1 - the smoothed AUROC of OoD over ID
               queries (temperature `tau`); `aux_ce` adds the ID queries' mixture
               cross-entropy (§2(b) M3). `encoder=pca`: the mixture on the first `pca_dim`
               principal components of the meta-training images (a no-meta baseline; run it
               with train.steps=0, as the untrained encoder is run).
  `meta_pu`    Kumagai, Iwata & Fujiwara, arXiv 2406.03680 (§3): phi(x; P, U) of a DeepSets
               summary of the positive and unlabelled supports (jaxlab.models.sets); the
               ratio r = p_P / p_U = theta^T phi by uLSIF in closed form (lam = exp(learned));
               the Bayes classifier g = pi r - 1/2. Meta-loss [R]: the sigmoid loss of
               y g / kappa on the labelled queries (natural proportions, so the PN risk).
               Evaluated with the true prior and with pi_hat = clip(1 / max r over P and U,
               0.05, 0.95) (§3(b) [R]).
  `meta_rdre`  Kumagai, Iwata & Fujiwara, arXiv 2107.00801 (§4): phi(x; A, B) likewise; the
               relative ratio r_alpha = theta^T phi by RuLSIF in closed form; meta-loss: the
               RuLSIF loss on the queries (alpha/2 E_QA r^2 + (1 - alpha)/2 E_QB r^2 -
               E_QA r), which needs no true ratio. Metrics: MSE against the true r_alpha
               (Gaussian pairs), AUROC of -r on B (outlier tasks), and in the report the
               Spearman correlation of PE_alpha with the true relative Pearson divergence
               over B's at growing shifts (dataset comparison).
Every evaluation also scores the per-task baselines of §2(f)-§4(g) on the same tasks, with no
meta-learning: a GMM on the raw inputs (`baseline/raw_gmm_auroc`); uLSIF with Gaussian
kernels on the raw inputs and a linear nnPU / uPU classifier trained by gradient descent on
the task's P and U (`baseline/ulsif_accuracy`, `baseline/nnpu_accuracy`,
`baseline/upu_accuracy`); kernel RuLSIF on the raw inputs (`baseline/rulsif_*`). Kernel
bandwidths are the median pairwise distance of the task's support; `baseline_lam` is their
ridge.
"""

import math
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlab import models
from jaxlab.data import meta_tasks, tasks
from jaxlab.errors import UserError, unknown
from jaxlab.meta import episodic, solvers
from jaxlab.models import sets
from jaxlab.train import optim
from jaxlab.train.protocol import Variant
from jaxlab.train.state import TrainState

SCORES = ("gmm", "proto")
ENCODERS = ("network", "pca")
KINDS = {"meta_ssl": ("tables",), "meta_ood": ("ood",), "meta_pu": ("pu", "pu_gauss"),
         "meta_rdre": ("ratio_gauss", "ratio_outlier")}


def make_task(config, num_devices: int = 1, *, kind: str) -> meta_tasks.MetaTask:
  c = config.closed_form
  if c.source not in KINDS[kind]:
    raise UserError(f"{kind} reads tasks of closed_form.source in {', '.join(KINDS[kind])}, "
                    f"not {c.source!r}")
  if kind == "meta_ood":
    for field, value, choices in (("score", c.score, SCORES), ("encoder", c.encoder, ENCODERS),
                                  ("covariance", c.covariance, solvers.COVARIANCES)):
      if value not in choices:
        raise unknown(f"closed_form.{field}", value, choices)
    if c.encoder == "pca" and config.train.steps:
      raise UserError("closed_form.encoder=pca has nothing to meta-learn: run it with "
                      "train.steps=0")
  return meta_tasks.make_task(config, num_devices)


# -- networks ----------------------------------------------------------------------------------

def _encoder(config):
  return models.build(config.model, config.closed_form.embedding)


def _set_net(config) -> sets.SetConditionedEmbedding:
  c = config.closed_form
  return sets.SetConditionedEmbedding(features=c.embedding, hidden=tuple(c.hidden),
                                      summary=c.summary, shared_eta=c.shared_eta,
                                      nonnegative=c.nonnegative)


def _vfsa(config) -> sets.VariableFeatureAttention:
  c = config.closed_form
  return sets.VariableFeatureAttention(width=c.width, heads=c.heads, layers=c.layers,
                                       features=c.embedding, row_attention=c.row_attention)


def init(config, rng: jax.Array, spec: tasks.Spec, *, kind: str) -> TrainState:
  c = config.closed_form
  x = jnp.zeros((2, spec.input_shape[0]))
  if kind == "meta_ssl":
    j = spec.input_shape[0] + spec.num_classes
    net = _vfsa(config).init(rng, jnp.zeros((3, j)), jnp.zeros((3, j)), jnp.zeros(j),
                             jnp.ones(j), jnp.ones(3))["params"]
    params = {"net": net, "log_s": jnp.log(c.temperature_init)}
  elif kind == "meta_ood":
    net = _encoder(config).init(rng, x, train=False)["params"]
    params = {"net": net, "log_eps": jnp.log(c.eps_init), "log_tau": jnp.log(c.tau)}
  else:
    net = _set_net(config).init(rng, x, (x, x))["params"]
    params = {"net": net, "log_lam": jnp.log(c.lam_init), "log_kappa": jnp.log(c.kappa)}
  model_state = {}
  if kind == "meta_ood" and c.encoder == "pca":
    model_state = {"pca_mean": jnp.zeros(spec.input_shape[0]),
                   "pca_components": jnp.zeros((spec.input_shape[0], c.pca_dim))}
  tx = optim.make_optimizer(config.optimizer, config.train.steps)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                    opt_state=tx.init(params))


def start_from(state: TrainState, train_data, *, config, spec, kind: str) -> TrainState:
  """The PCA baseline's projection, from every meta-training image (once)."""
  if not state.model_state:
    return state
  images, counts = train_data["images"], train_data["counts"]
  real = jnp.arange(images.shape[1])[None] < counts[:, None]
  x = images.reshape(-1, images.shape[-1]).astype(jnp.float32) / 255.0
  w = real.reshape(-1).astype(jnp.float32)
  mean = (x * w[:, None]).sum(0) / w.sum()
  cov = ((x - mean) * w[:, None]).T @ (x - mean) / w.sum()
  _, vectors = jnp.linalg.eigh(cov)
  return state.replace(model_state={
      "pca_mean": mean, "pca_components": vectors[:, ::-1][:, :config.closed_form.pca_dim]})


# -- meta-SSL across attribute spaces (§1) ---------------------------------------------------

def ssl_grid(task, ways: int, use_unlabeled: bool):
  """The VFSA input of a task: (values, missing, is_label, column_mask, key_rows) over the
  rows L, U, Q and the columns attributes + one label column a class."""
  x = jnp.concatenate([task["labeled"]["x"], task["unlabeled"]["x"], task["query"]["x"]])
  n_l, n_u = task["labeled"]["x"].shape[0], task["unlabeled"]["x"].shape[0]
  n = x.shape[0]
  known = jnp.arange(n) < n_l
  onehot_l = jax.nn.one_hot(task["labeled"]["y"], ways)
  labels = jnp.concatenate([onehot_l, jnp.zeros((n - n_l, ways))])
  values = jnp.concatenate([x, labels], -1)
  missing = jnp.concatenate([jnp.zeros_like(x),
                             jnp.broadcast_to(~known[:, None], (n, ways)).astype(x.dtype)], -1)
  d = x.shape[1]
  is_label = jnp.concatenate([jnp.zeros(d), jnp.ones(ways)])
  column_mask = jnp.concatenate([task["column_mask"], jnp.ones(ways)])
  support = jnp.arange(n) < (n_l + n_u if use_unlabeled else n_l)
  return values, missing, is_label, column_mask, support.astype(x.dtype)


def ssl_predict(config, params, task, ways: int):
  """(query log-probabilities [Q, C], unlabelled responsibilities [U, C])."""
  c = config.closed_form
  z = _vfsa(config).apply({"params": params["net"]}, *ssl_grid(task, ways, c.use_unlabeled))
  n_l, n_u = task["labeled"]["x"].shape[0], task["unlabeled"]["x"].shape[0]
  z_l, z_u, z_q = z[:n_l], z[n_l:n_l + n_u], z[n_l + n_u:]
  s = jnp.exp(params["log_s"])
  w_u = jnp.full((n_u,), 1.0 if c.use_unlabeled else 0.0)
  prototypes, r = solvers.soft_kmeans_em(z_l, jax.nn.one_hot(task["labeled"]["y"], ways), z_u,
                                         c.em_steps, s, w_u=w_u)
  return jax.nn.log_softmax(solvers.prototype_logits(z_q, prototypes, s)), r


def _ssl_task_loss(params, model_state, task, *, config, ways: int):
  del model_state
  log_p, r = ssl_predict(config, params, task, ways)
  y = task["query"]["y"]
  loss = -jnp.mean(jnp.take_along_axis(log_p, y[:, None], 1))
  return loss, {"accuracy": jnp.mean(log_p.argmax(-1) == y),
                "unlabeled_accuracy": jnp.mean(r.argmax(-1) == task["unlabeled"]["y"])}


def _logistic(x, y, ways: int, steps: int, lr: float, l2: float):
  """Multinomial logistic regression by gradient descent from zero."""
  onehot = jax.nn.one_hot(y, ways)

  def loss(p):
    logits = x @ p[0] + p[1]
    return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), -1)) + l2 * jnp.sum(p[0] ** 2)

  def step(p, _):
    return jax.tree.map(lambda a, g: a - lr * g, p, jax.grad(loss)(p)), None

  (w, b), _ = jax.lax.scan(step, (jnp.zeros((x.shape[1], ways)), jnp.zeros(ways)), None,
                           length=steps)
  return lambda z: z @ w + b


def label_spreading(x, y_onehot, known, alpha: float) -> jax.Array:
  """Zhou et al. (2004): F = (I - alpha S)^-1 Y, S = D^-1/2 W D^-1/2, W the RBF affinities
  (bandwidth: median distance, zero diagonal), Y the labelled rows' one-hots; class scores of
  every row."""
  w = _kernel(x, x, _median_bandwidth(x)) * (1.0 - jnp.eye(x.shape[0]))
  d = jax.lax.rsqrt(jnp.maximum(w.sum(1), 1e-12))
  spread = d[:, None] * w * d[None]
  y = y_onehot * known[:, None]
  return jnp.linalg.solve(jnp.eye(x.shape[0]) - alpha * spread, y)


def _ssl_baselines(config, task, ways: int) -> Dict[str, jax.Array]:
  c = config.closed_form
  lab, unl, qry = task["labeled"], task["unlabeled"], task["query"]
  g = _logistic(lab["x"], lab["y"], ways, c.baseline_steps, c.baseline_lr, c.baseline_l2)
  x = jnp.concatenate([lab["x"], unl["x"], qry["x"]])
  n_l, n_q = lab["x"].shape[0], qry["x"].shape[0]
  known = (jnp.arange(x.shape[0]) < n_l).astype(x.dtype)
  onehot = jnp.concatenate([jax.nn.one_hot(lab["y"], ways), jnp.zeros((x.shape[0] - n_l, ways))])
  scores = label_spreading(x, onehot, known, c.spreading_alpha)[-n_q:]
  return {"baseline/logistic_accuracy": jnp.mean(g(qry["x"]).argmax(-1) == qry["y"]),
          "baseline/label_spreading_accuracy": jnp.mean(scores.argmax(-1) == qry["y"])}


# -- meta OoD (§2) -------------------------------------------------------------------------------

def _embed_ood(config, state_params, model_state, x):
  if model_state:
    return (x - model_state["pca_mean"]) @ model_state["pca_components"]
  return _encoder(config).apply({"params": state_params["net"]}, x, train=False)


def ood_scores(config, params, model_state, task, ways: int):
  """(OoD scores of the queries, ID mixture log-posteriors of the queries [Q, ways])."""
  c = config.closed_form
  z_s = _embed_ood(config, params, model_state, task["support"]["x"])
  z_q = _embed_ood(config, params, model_state, task["query"]["x"])
  if c.score == "proto":
    means = jax.nn.one_hot(task["support"]["y"], ways).T @ z_s / c.shots
    logits = solvers.prototype_logits(z_q, means, 1.0)
    return -logits.max(-1), jax.nn.log_softmax(logits)
  g = solvers.class_gaussians(z_s, jax.nn.one_hot(task["support"]["y"], ways),
                              jnp.exp(params["log_eps"]), covariance=c.covariance,
                              shrink=c.shrink)
  joint = solvers.class_logpdfs(z_q, g)
  return -jax.nn.logsumexp(joint, -1), jax.nn.log_softmax(joint)


def _ood_task_loss(params, model_state, task, *, config, ways: int):
  c = config.closed_form
  scores, log_post = ood_scores(config, params, model_state, task, ways)
  ood = task["query"]["ood"]
  n = ood.shape[0] // 2                   # ID queries first, then as many OoD ones
  soft = meta_tasks.soft_auroc(scores[n:], scores[:n], jnp.exp(params["log_tau"]))
  ce = -jnp.mean(jnp.take_along_axis(log_post[:n], task["query"]["y"][:n, None], 1))
  loss = 1.0 - soft + (c.aux_ce * ce if c.aux_ce else 0.0)
  metrics = {"auroc": meta_tasks.auroc(scores[n:], scores[:n]), "soft_auroc": soft,
             "id_accuracy": jnp.mean(log_post[:n].argmax(-1) == task["query"]["y"][:n])}
  return loss, metrics


def _raw_gmm_auroc(config, task, ways: int) -> jax.Array:
  c = config.closed_form
  x_s, x_q = task["support"]["x"], task["query"]["x"]
  g = solvers.class_gaussians(x_s, jax.nn.one_hot(task["support"]["y"], ways),
                              c.baseline_eps, covariance=c.covariance)
  scores = -solvers.gmm_logpdf(x_q, g)
  n = x_q.shape[0] // 2
  return meta_tasks.auroc(scores[n:], scores[:n])


# -- meta PU (§3) ----------------------------------------------------------------------------------

def pu_fit(config, params, task):
  """(ratio function of rows, pi_hat) fitted on the task's P and U."""
  net = _set_net(config)
  p, u = task["support"]["p"], task["support"]["u"]
  v = net.apply({"params": params["net"]}, (p, u), method=net.summarise)
  embed = lambda x: net.apply({"params": params["net"]}, x, v, method=net.embed)
  theta, _ = solvers.lsif(embed(p), embed(u), jnp.exp(params["log_lam"]), 0.0)
  ratio = lambda x: embed(x) @ theta
  r_max = jnp.max(jnp.concatenate([ratio(p), ratio(u)]))
  return ratio, jnp.clip(1.0 / jnp.maximum(r_max, 1e-6), 0.05, 0.95)


def _pu_task_loss(params, model_state, task, *, config, ways: int):
  del model_state, ways
  ratio, prior_hat = pu_fit(config, params, task)
  x, y, prior = task["query"]["x"], task["query"]["y"], task["prior"]
  g = prior * ratio(x) - 0.5
  loss = jnp.mean(jax.nn.sigmoid(-y * g / jnp.exp(params["log_kappa"])))
  positive = (y > 0).astype(jnp.float32)
  metrics = {"accuracy": jnp.mean((g >= 0) == (y > 0)),
             "accuracy_estimated_prior": jnp.mean((prior_hat * ratio(x) - 0.5 >= 0) == (y > 0)),
             "prior_error": jnp.abs(prior_hat - prior),
             "auroc": meta_tasks.auroc(g, g, positive, 1.0 - positive)}
  return loss, metrics


def _median_bandwidth(x: jax.Array) -> jax.Array:
  d = jnp.sqrt(jnp.sum((x[:, None] - x[None]) ** 2, -1) + 1e-12)
  return jnp.median(d[jnp.triu_indices(x.shape[0], 1)])


def _kernel(x: jax.Array, centres: jax.Array, bandwidth) -> jax.Array:
  return jnp.exp(-jnp.sum((x[:, None] - centres[None]) ** 2, -1) / (2.0 * bandwidth ** 2))


def _linear_pu(p, u, prior, steps: int, lr: float, non_negative: bool):
  """A linear classifier g(x) = w^T x + b trained on P and U by gradient descent on the
  unbiased PU risk with the sigmoid loss (uPU, du Plessis et al. 2015) or its non-negative
  correction (nnPU, Kiryo et al. 2017, arXiv 1703.00593)."""
  loss_of = lambda m: jax.nn.sigmoid(-m)

  def risk(params):
    gp, gu = p @ params[0] + params[1], u @ params[0] + params[1]
    positive = prior * loss_of(gp).mean()
    negative = loss_of(-gu).mean() - prior * loss_of(-gp).mean()
    return positive + (jnp.maximum(negative, 0.0) if non_negative else negative)

  def step(params, _):
    grads = jax.grad(risk)(params)
    return jax.tree.map(lambda a, g: a - lr * g, params, grads), None

  start = (jnp.zeros(p.shape[1]), jnp.zeros(()))
  (w, b), _ = jax.lax.scan(step, start, None, length=steps)
  return lambda x: x @ w + b


def _pu_baselines(config, task) -> Dict[str, jax.Array]:
  c = config.closed_form
  p, u = task["support"]["p"], task["support"]["u"]
  x, y, prior = task["query"]["x"], task["query"]["y"], task["prior"]
  bandwidth = _median_bandwidth(jnp.concatenate([p, u]))
  theta, _ = solvers.lsif(_kernel(p, p, bandwidth), _kernel(u, p, bandwidth), c.baseline_lam)
  ulsif = prior * (_kernel(x, p, bandwidth) @ theta) - 0.5
  out = {"baseline/ulsif_accuracy": jnp.mean((ulsif >= 0) == (y > 0))}
  for name, non_negative in (("nnpu", True), ("upu", False)):
    g = _linear_pu(p, u, prior, c.baseline_steps, c.baseline_lr, non_negative)
    out[f"baseline/{name}_accuracy"] = jnp.mean((g(x) >= 0) == (y > 0))
  return out


# -- meta relative density ratio (§4) ---------------------------------------------------------

def rdre_fit(config, params, a, b, w_b=None):
  """(ratio function of rows, PE_alpha estimate) fitted on the supports A and B."""
  net = _set_net(config)
  v = net.apply({"params": params["net"]}, (a, b), method=net.summarise)
  embed = lambda x: net.apply({"params": params["net"]}, x, v, method=net.embed)
  theta, pe = solvers.lsif(embed(a), embed(b), jnp.exp(params["log_lam"]),
                           config.closed_form.alpha, w_b=w_b)
  return (lambda x: embed(x) @ theta), pe


def rulsif_loss(r_a: jax.Array, r_b: jax.Array, alpha: float) -> jax.Array:
  return alpha / 2 * jnp.mean(r_a ** 2) + (1 - alpha) / 2 * jnp.mean(r_b ** 2) - jnp.mean(r_a)


def _clip(r, config):
  return jnp.maximum(r, 0.0) if config.closed_form.clip_ratio else r


def _rdre_task_loss(params, model_state, task, *, config, ways: int):
  del model_state, ways
  c = config.closed_form
  s, q = task["support"], task["query"]
  ratio, pe = rdre_fit(config, params, s["a"], s["b"])
  loss = rulsif_loss(ratio(q["a"]), ratio(q["b"]), c.alpha)
  metrics = {"query_rulsif_loss": loss, "pe": pe}
  if "mixture" in task:
    metrics["mse"] = jnp.mean((_clip(ratio(task["mixture"]["x"]), config)
                               - task["mixture"]["ratio"]) ** 2)
  if "outlier" in s:
    r_b = ratio(s["b"])
    metrics["outlier_auroc"] = meta_tasks.auroc(-r_b, -r_b, s["outlier"], 1.0 - s["outlier"])
  return loss, metrics


def kernel_rulsif(a, b, alpha, lam):
  """Per-task RuLSIF with Gaussian kernels centred at A's points (median bandwidth)."""
  bandwidth = _median_bandwidth(jnp.concatenate([a, b]))
  theta, pe = solvers.lsif(_kernel(a, a, bandwidth), _kernel(b, a, bandwidth), lam, alpha)
  return (lambda x: _kernel(x, a, bandwidth) @ theta), pe


def _rdre_baselines(config, task) -> Dict[str, jax.Array]:
  c = config.closed_form
  s = task["support"]
  ratio, _ = kernel_rulsif(s["a"], s["b"], c.alpha, c.baseline_lam)
  out = {}
  if "mixture" in task:
    out["baseline/rulsif_mse"] = jnp.mean((_clip(ratio(task["mixture"]["x"]), config)
                                           - task["mixture"]["ratio"]) ** 2)
  if "outlier" in s:
    r_b = ratio(s["b"])
    out["baseline/rulsif_outlier_auroc"] = meta_tasks.auroc(-r_b, -r_b, s["outlier"],
                                                            1.0 - s["outlier"])
  return out


# -- the protocol -------------------------------------------------------------------------------

TASK_LOSS = {"meta_ssl": _ssl_task_loss, "meta_ood": _ood_task_loss, "meta_pu": _pu_task_loss, "meta_rdre": _rdre_task_loss}


def _baselines(config, task, kind: str, ways: int) -> Dict[str, jax.Array]:
  if kind == "meta_ssl":
    return _ssl_baselines(config, task, ways)
  if kind == "meta_ood":
    return {"baseline/raw_gmm_auroc": _raw_gmm_auroc(config, task, ways)}
  if kind == "meta_pu":
    return _pu_baselines(config, task)
  return _rdre_baselines(config, task)


def train_step(state: TrainState, batch, rng: jax.Array, *, config, spec: tasks.Spec,
               kind: str):
  del rng  # the tasks are the only randomness
  task_loss = lambda p, t: TASK_LOSS[kind](p, state.model_state, t, config=config,
                                            ways=spec.num_classes)

  def loss_fn(params):
    losses, metrics = episodic.over_tasks(lambda t: task_loss(params, t), batch,
                                          episodic.task_parallel(config))
    return losses.mean(), jax.tree.map(jnp.mean, metrics)

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  return optim.apply_gradients(state, grads, config), {
      "loss": loss, **metrics, "grad_norm": optax.tree.norm(grads)}


def eval_step(state: TrainState, batch, key: jax.Array, *, config, spec: tasks.Spec,
              kind: str):
  """Per-task metrics of the meta-learner and of the per-task baselines."""
  del key

  def per_task(task):
    loss, metrics = TASK_LOSS[kind](state.params, state.model_state, task, config=config,
                                    ways=spec.num_classes)
    return {"loss": loss, **metrics, **_baselines(config, task, kind, spec.num_classes)}
  return jax.vmap(per_task)({k: v for k, v in batch.items() if k != "mask"})


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
  ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
  return float(np.corrcoef(ra, rb)[0, 1])


def report(state: TrainState, task, workdir: str, *, config, spec: tasks.Spec,
           write_files: bool = True, kind: str) -> Dict[str, float]:
  """meta_rdre on Gaussian pairs: dataset comparison. For `comparison_tasks` tasks, B is A's
  law shifted by 0, 0.5, ..., 2 (in units of `spread`) along a random direction; the Spearman
  correlation, per task, of the estimated PE_alpha (meta and kernel RuLSIF) with the true
  relative Pearson divergence (Monte Carlo, 20,000 draws)."""
  del workdir, write_files
  c = config.closed_form
  if kind != "meta_rdre" or c.source != "ratio_gauss" or not c.comparison_tasks:
    return {}
  shifts = jnp.linspace(0.0, 2.0, 5) * c.spread
  d, alpha = task.dim, c.alpha

  def one(key):
    keys = jax.random.split(key, 6)
    mean_a = c.spread * jax.random.normal(keys[0], (d,))
    w = jax.random.normal(keys[1], (d, d))
    cov = w @ w.T / d + 0.5 * jnp.eye(d)
    root = jnp.linalg.cholesky(cov)
    direction = jax.random.normal(keys[2], (d,))
    direction = direction / jnp.linalg.norm(direction)
    a = mean_a + jax.random.normal(keys[3], (c.support_a, d)) @ root.T

    def at_shift(i, shift):
      mean_b = mean_a + shift * direction
      b = mean_b + jax.random.normal(jax.random.fold_in(keys[4], i), (c.support_b, d)) @ root.T
      _, pe_meta = rdre_fit(config, state.params, a, b)
      _, pe_kernel = kernel_rulsif(a, b, alpha, c.baseline_lam)
      # true PE_alpha = 1/2 E_mix[(r_alpha - 1)^2], by Monte Carlo
      k = jax.random.fold_in(keys[5], i)
      from_a = jax.random.bernoulli(k, alpha, (20000,))
      draws = jnp.where(from_a[:, None], mean_a, mean_b) + jax.random.normal(
          jax.random.fold_in(k, 1), (20000, d)) @ root.T
      r = meta_tasks.true_relative_ratio(draws, mean_a, cov, mean_b, cov, alpha)
      return jnp.stack([pe_meta, pe_kernel, 0.5 * jnp.mean((r - 1.0) ** 2)])
    return jax.lax.map(lambda args: at_shift(*args), (jnp.arange(len(shifts)), shifts))

  keys = jax.random.split(jax.random.key(c.comparison_seed), c.comparison_tasks)
  table = np.asarray(jax.jit(lambda k: jax.lax.map(one, k))(keys))   # [tasks, shifts, 3]
  meta = [_spearman(t[:, 0], t[:, 2]) for t in table]
  kernel = [_spearman(t[:, 1], t[:, 2]) for t in table]
  return {"comparison/meta_spearman": float(np.mean(meta)),
          "comparison/rulsif_spearman": float(np.mean(kernel))}


VARIANTS = {kind: Variant(kind=kind, blocks=("episodes", "closed_form"))
            for kind in ("meta_ssl", "meta_ood", "meta_pu", "meta_rdre")}
