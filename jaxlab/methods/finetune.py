"""Fine-tuning a pretrained backbone with a new head, with and without feature regularisers.

Papers and variants (bound option `regulariser`):
  `finetune`  plain fine-tuning (FT): cross-entropy only (AdaRand's FT baseline);
  `l2sp`      L2-SP, Li, Grandvalet, Davoine, ICML 2018 (arXiv 1802.01483), the
              starting-point regulariser: CE + alpha/2 ||w_body - w_0||^2 + beta/2 ||w_head||^2
              with w_0 the pretrained body (`finetune.l2sp_alpha`, `finetune.l2sp_beta`);
  `randreg`   RandReg, Zhong & Maki (arXiv 1908.05997), as AdaRand's code runs it: CE +
              lambda mean((F - Z)^2), Z drawn fresh each step from `finetune.prior`: uniform
              U(0,1)^d, normal N(0, I), or pretrained N(m, diag s^2) with the pretrained
              backbone's marginal feature statistics on the target train split (RandReg-Pre);
  `adarand`   AdaRand, Yamaguchi et al., CVPR 2024 (arXiv 2403.10097): class-conditional
              Gaussian priors initialised from the pretrained per-class feature statistics;
              their means follow running class means (intra term) and are pushed to mutual
              orthogonality (inter term) by their own Adam optimiser, after each classifier
              step.
Spec: docs/specs/generative_and_finetuning.md §0.4 and §1 (AdaRand exact from the
official updaters). A run starts from a pretrained backbone
(`init_from`, with `init_skip="params/head"`): the head is new, W ~ N(0, 0.01^2), b = 0.
Per step, in the official order:
  1. logits, F = model(x) in train mode (F the penultimate features);
  2. reference vectors Z (stop-gradient) from the prior: `randreg` U(0,1)^d ("uniform"),
     N(0, I) ("normal") or N(m, diag s^2) with the pretrained marginal feature statistics
     ("pretrained"); `adarand` mu_y + sigma_y * eps with the class-conditional prior;
  3. L = CE + lambda * mean((F - Z)^2) (mean over batch and dimensions, as PyTorch's
     mse_loss); `l2sp`: CE + alpha/2 ||w_body - w_0||^2 + beta/2 ||w_head||^2; `finetune`: CE;
  4. the classifier's optimizer step;
  5. (`adarand`) running class means m_k <- a m_k + (1 - a) mean_{y_i = k} sg(F_i) for the
     classes in the batch (the others keep theirs), a = 0.5;
  6. L_prior(M) = mean_k (1 - cos(mu_k, m_k))^2 + mean_{k != l} cos(mu_k, mu_l)^2;
  7. an Adam step (lr 1e-2, lr * cos(7 pi t / 16 T)) on the prior means M only; sigma stays
     at the pretrained per-class std (as the code; its "running sigma" is dead code).
The statistics (marginal and per-class mean/std of the pretrained features) come from one
eval-mode pass of the pretrained backbone over the target train split (`start_from`).
Diagnostics (§0.4): pairwise-distance entropy d/(B(B-1)) sum_{i!=j} log||F_i - F_j|| (pairs
of identical rows skipped), feature norm ||mean_i F_i||, head-gradient norm.
"""

import math
from typing import Any, Dict

import flax
import jax
import jax.numpy as jnp
import optax

from jaxlab import models
from jaxlab.data import tasks
from jaxlab.errors import UserError, unknown
from jaxlab.train import losses, optim, supervised
from jaxlab.train.protocol import Variant
from jaxlab.train.state import TrainState

VARIANTS = {name: Variant(regulariser=regulariser, blocks=("finetune",)) for name, regulariser in (
    ("finetune", "none"), ("l2sp", "l2sp"), ("randreg", "randreg"), ("adarand", "adarand"))}
PRIORS = ("uniform", "normal", "pretrained")


@flax.struct.dataclass
class FinetuneState(TrainState):
  source_params: Any       # L2-SP's anchor w_0 (the pretrained body)
  prior_mean: jax.Array    # [K, d] (AdaRand, trainable) or [1, d] (RandReg-Pre marginal)
  prior_std: jax.Array     # same shape, fixed
  running_mean: jax.Array  # [K, d] AdaRand's running class means
  prior_opt_state: Any     # Adam state over prior_mean


def make_task(config, num_devices: int = 1, *, regulariser: str) -> tasks.SupervisedTask:
  f = config.finetune
  if f.prior not in PRIORS:
    raise unknown("finetune.prior", f.prior, PRIORS)
  if not config.init_from:
    name = "finetune" if regulariser == "none" else regulariser
    raise UserError(f"{name} fine-tunes a pretrained backbone: set --config.init_from "
                    "to the workdir of the pretraining run (e.g. configs/finetune.py:"
                    "digits_pretrain) or an .npz of its weights")
  return tasks.supervised(config, num_devices)


def _needs_statistics(config, kind: str) -> bool:
  return kind == "adarand" or (kind == "randreg" and config.finetune.prior == "pretrained")


def _prior_optimizer(config) -> optax.GradientTransformation:
  lr, total = config.finetune.prior_lr, max(1, config.train.steps)
  return optax.adam(lambda t: lr * jnp.cos(math.pi * 7.0 / 16.0 * t / total))


def init(config, rng: jax.Array, spec: tasks.Spec, *, regulariser: str) -> FinetuneState:
  state = supervised.init(config, rng, spec)
  head = dict(state.params["head"])
  head["kernel"] = 0.01 * jax.random.normal(jax.random.fold_in(rng, 1), head["kernel"].shape)
  head["bias"] = jnp.zeros_like(head["bias"])
  params = {**state.params, "head": head}
  k = spec.num_classes
  d = models.feature_dim(models.build(config.model, k), spec.input_shape)
  rows = k if regulariser == "adarand" else 1
  prior_mean = jnp.zeros((rows, d))
  return FinetuneState(
      step=state.step, params=params, model_state=state.model_state, opt_state=state.opt_state,
      source_params={n: v for n, v in params.items() if n != "head"},
      prior_mean=prior_mean, prior_std=jnp.ones((rows, d)), running_mean=jnp.zeros((rows, d)),
      prior_opt_state=_prior_optimizer(config).init(prior_mean))


def pretrained_statistics(model, variables, images: jax.Array, labels: jax.Array,
                          num_classes: int, chunk: int = 256) -> Dict[str, jax.Array]:
  """Marginal [d] and per-class [K, d] mean and std of eval-mode features of `images`."""
  n = images.shape[0]
  features = models.eval_features(model, variables, images, chunk)
  counts = jnp.maximum(jax.ops.segment_sum(jnp.ones(n), labels, num_classes), 1.0)[:, None]
  class_mean = jax.ops.segment_sum(features, labels, num_classes) / counts
  class_var = jax.ops.segment_sum(features**2, labels, num_classes) / counts - class_mean**2
  return {"mean": features.mean(0), "std": features.std(0), "class_mean": class_mean,
          "class_std": jnp.sqrt(jnp.maximum(class_var, 0.0))}


def start_from(state: FinetuneState, train_data, *, config, spec,
               regulariser: str) -> FinetuneState:
  """With the pretrained body in place (the head keeps its fresh init via init_skip): the
  L2-SP anchor and the priors' statistics."""
  state = state.replace(source_params={n: v for n, v in state.params.items() if n != "head"})
  if not _needs_statistics(config, regulariser):
    return state
  model = models.build(config.model, spec.num_classes)
  stats = pretrained_statistics(model, {"params": state.params, **state.model_state},
                                train_data["image"], train_data["label"], spec.num_classes)
  if regulariser == "adarand":
    mean, std = stats["class_mean"], stats["class_std"]
  else:
    mean, std = stats["mean"][None], stats["std"][None]
  return state.replace(prior_mean=mean, prior_std=std, running_mean=mean,
                       prior_opt_state=_prior_optimizer(config).init(mean))


def reference_vectors(state: FinetuneState, labels: jax.Array, rng: jax.Array, config,
                      regulariser: str) -> jax.Array:
  """Z [B, d], one draw per example from the regulariser's prior (no gradient)."""
  shape = (labels.shape[0], state.prior_mean.shape[-1])
  f = config.finetune
  if regulariser == "adarand":
    z = state.prior_mean[labels] + state.prior_std[labels] * jax.random.normal(rng, shape)
  elif f.prior == "uniform":
    z = jax.random.uniform(rng, shape)
  elif f.prior == "normal":
    z = jax.random.normal(rng, shape)
  else:
    z = state.prior_mean + state.prior_std * jax.random.normal(rng, shape)
  return jax.lax.stop_gradient(z)


def _cos_matrix(a: jax.Array, b: jax.Array) -> jax.Array:
  """Pairwise cosine similarities with PyTorch's eps guard (1e-8 on each norm); the guard is
  inside the square root so a zero row has a zero, not NaN, gradient."""
  norm = lambda v: jnp.sqrt(jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), 1e-16))
  return (a / norm(a)) @ (b / norm(b)).T


def prior_loss(prior_mean: jax.Array, running_mean: jax.Array) -> jax.Array:
  """AdaRand's L_prior: intra (1 - cos(mu_k, m_k))^2 + inter cos(mu_k, mu_l)^2, k != l."""
  k = prior_mean.shape[0]
  intra = jnp.mean((1.0 - jnp.diagonal(_cos_matrix(prior_mean, running_mean))) ** 2)
  off_diagonal = 1.0 - jnp.eye(k)
  inter = jnp.sum(_cos_matrix(prior_mean, prior_mean) ** 2 * off_diagonal) / max(1, k * (k - 1))
  return intra + inter


def update_running_means(running_mean: jax.Array, features: jax.Array, labels: jax.Array,
                         momentum: float) -> jax.Array:
  """m_k <- momentum m_k + (1 - momentum) * batch mean of class k, for classes present."""
  k = running_mean.shape[0]
  counts = jax.ops.segment_sum(jnp.ones(labels.shape[0]), labels, k)[:, None]
  batch_mean = jax.ops.segment_sum(features, labels, k) / jnp.maximum(counts, 1.0)
  return jnp.where(counts > 0, momentum * running_mean + (1 - momentum) * batch_mean,
                   running_mean)


def feature_entropy(features: jax.Array, mask: jax.Array) -> jax.Array:
  """d/(B(B-1)) sum_{i != j} log ||F_i - F_j|| over the rows with mask 1; pairs at distance 0
  (one image drawn twice) are left out."""
  d = features.shape[-1]
  sq = jnp.sum((features[:, None] - features[None]) ** 2, -1)
  pair = mask[:, None] * mask[None] * (1.0 - jnp.eye(features.shape[0])) * (sq > 0)
  logs = 0.5 * jnp.log(jnp.where(pair > 0, sq, 1.0))
  return d * jnp.sum(logs * pair) / jnp.maximum(pair.sum(), 1.0)


def feature_norm(features: jax.Array, mask: jax.Array) -> jax.Array:
  mean = jnp.sum(features * mask[:, None], 0) / jnp.maximum(mask.sum(), 1.0)
  return jnp.linalg.norm(mean)


def _sum_squares(tree) -> jax.Array:
  return sum(jnp.sum(x**2) for x in jax.tree.leaves(tree))


def train_step(state: FinetuneState, batch, rng: jax.Array, *, config, spec: tasks.Spec,
               regulariser: str):
  f, kind = config.finetune, regulariser
  prior_rng, dropout_rng = jax.random.split(rng)
  x, y = batch["image"], batch["label"]
  model = models.build(config.model, spec.num_classes)
  z = reference_vectors(state, y, prior_rng, config, kind)

  def loss_fn(params):
    logits, features, model_state = models.logits_and_features(
        model, {"params": params, **state.model_state}, x, train=True,
        mutable=list(state.model_state), rngs={"dropout": dropout_rng})
    ce = losses.cross_entropy(logits, y).mean()
    gap = jnp.mean((features - z) ** 2)
    if kind == "randreg":
      # the reference's stop-epoch quirk, off by default (configs/finetune.py)
      free = f.get("randreg_unweighted_last_steps", 0)
      penalty = jnp.where(state.step >= config.train.steps - free, 0.0, f.weight) * gap
    elif kind == "adarand":
      penalty = f.weight * gap
    elif kind == "l2sp":
      body = {n: v for n, v in params.items() if n != "head"}
      penalty = (f.l2sp_alpha / 2 * _sum_squares(jax.tree.map(jnp.subtract, body,
                                                               state.source_params))
                 + f.l2sp_beta / 2 * _sum_squares(params["head"]))
    else:
      penalty = jnp.zeros(())
    return ce + penalty, (logits, features, ce, gap, model_state)

  (loss, (logits, features, ce, gap, model_state)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  state = optim.apply_gradients(state, grads, config, model_state=model_state)
  ones = jnp.ones(y.shape[0])
  metrics = {"loss": loss, "ce": ce, "gap": gap, "accuracy": losses.correct(logits, y).mean(),
             "feature_norm": feature_norm(features, ones),
             "feature_entropy": feature_entropy(features, ones),
             "head_grad_norm": optax.tree.norm(grads["head"]["kernel"])}
  if kind == "adarand":
    running = update_running_means(state.running_mean, jax.lax.stop_gradient(features), y,
                                   f.running_momentum)
    value, prior_grad = jax.value_and_grad(prior_loss)(state.prior_mean, running)
    prior_updates, prior_opt_state = _prior_optimizer(config).update(
        prior_grad, state.prior_opt_state, state.prior_mean)
    state = state.replace(running_mean=running, prior_opt_state=prior_opt_state,
                          prior_mean=optax.apply_updates(state.prior_mean, prior_updates))
    metrics["prior_loss"] = value
  return state, metrics


def eval_step(state: FinetuneState, batch, key: jax.Array, *, config, spec: tasks.Spec):
  model = models.build(config.model, spec.num_classes)
  logits, features, _ = models.logits_and_features(
      model, {"params": state.params, **state.model_state}, batch["image"], train=False)
  y, mask = batch["label"], batch["mask"]
  # the feature diagnostics are batch-level (a norm of the batch mean, a pairwise entropy):
  # one scalar per batch, which the loop averages over batches without a per-example CI
  return {"accuracy": losses.correct(logits, y), "loss": losses.cross_entropy(logits, y),
          "feature_norm": feature_norm(features, mask),
          "feature_entropy": feature_entropy(features, mask)}
