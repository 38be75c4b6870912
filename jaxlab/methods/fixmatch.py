"""`fixmatch`: semi-supervised learning with confidence-thresholded pseudo-labels.

FixMatch (Sohn et al., NeurIPS 2020, arXiv 2001.07685), the SSL baseline of
shared/methods/generative_and_finetuning.md §3 (the real-unlabeled oracle) and the SSL
algorithm of §4's P-SSL. Per step, with a labeled batch of B and an unlabeled batch of
mu * B (`ssl.unlabeled_ratio`):

  L = CE(f(weak(x_l)), y) + lambda_u * mean_j [max_k p_jk >= tau] * CE(f(strong(u_j)), yhat_j),
  p = softmax(sg(f(weak(u)))),  yhat = argmax_k p_jk

(tau = `ssl.threshold`, lambda_u = `ssl.weight`; the mean runs over all mu * B unlabeled
images, masked ones included, as in the paper). Labeled and both unlabeled views go through
the network in one forward pass, so BatchNorm sees them together.

Data: the labeled set is the training pool carved by `data.per_class` (labels per class) or
`data.train_fraction`; the unlabeled set is the whole pool with its labels dropped
(`ssl.unlabeled="all"`, the paper's choice) or only what was not kept as labeled ("rest").
The pool's true labels are used only for the `pseudo_label_accuracy` diagnostic.
Augmentation (on device): weak = the task's shift (+ flip) of `config.aug`; strong = weak +
rotation (`ssl.strong_rotation` degrees) + cutout (`ssl.strong_cutout` pixels) + Gaussian
pixel noise (`ssl.strong_noise`), the "FixMatch-lite" of §3(g). RandAugment's other
operations and the paper's EMA of the weights for evaluation are not implemented.
"""

from typing import Tuple

import jax
import jax.numpy as jnp
import optax

from jaxlab import models
from jaxlab.data import augment, tasks
from jaxlab.errors import UserError, unknown
from jaxlab.methods import erm
from jaxlab.train import losses, optim
from jaxlab.train.state import TrainState

UNLABELED = ("all", "rest")

init = erm.init
eval_step = erm.eval_step


def pseudo_label_loss(weak_logits: jax.Array, strong_logits: jax.Array,
                      threshold: float) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """(mean masked CE on the strong view, mask [N], pseudo-labels [N]).

  The weak view only labels: no gradient flows into `weak_logits`."""
  probs = jax.nn.softmax(jax.lax.stop_gradient(weak_logits).astype(jnp.float32))
  pseudo_labels = jnp.argmax(probs, -1)
  mask = (probs.max(-1) >= threshold).astype(jnp.float32)
  loss = (mask * losses.cross_entropy(strong_logits, pseudo_labels)).mean()
  return loss, mask, pseudo_labels


class FixMatchTask(tasks.SupervisedTask):
  """The supervised task plus an unlabeled pool, batched mu times larger."""

  def __init__(self, config, num_devices: int = 1):
    self._ssl = config.ssl
    super().__init__(config, num_devices)

  def train_arrays(self):
    labeled = super().train_arrays()
    pool = (self.split_arrays("rest") if self._ssl.unlabeled == "rest" else
            self.split_arrays(self._data.train_split))
    if not len(pool["label"]):
      raise UserError("ssl.unlabeled='rest' left no unlabeled images: every training image "
                      "is labeled (lower data.per_class or data.train_fraction)")
    return {**labeled, "unlabeled_image": pool["image"], "unlabeled_label": pool["label"]}

  def train_batch(self, data, key: jax.Array, step: jax.Array):
    batch = super().train_batch(data, key, step)
    images, labels = self.extra_batch(data, key, step, self._ssl.unlabeled_ratio *
                                      self.batch_size, "unlabeled_image", "unlabeled_label")
    return {**batch, "unlabeled_image": images, "unlabeled_label": labels}


def check_ssl(config) -> None:
  """One-line errors for bad `config.ssl` values (FixMatch and P-SSL)."""
  s = config.ssl
  if s.unlabeled not in UNLABELED:
    raise unknown("ssl.unlabeled", s.unlabeled, UNLABELED)
  if not 0.0 < s.threshold <= 1.0:
    raise UserError(f"ssl.threshold={s.threshold} must be in (0, 1]")
  if s.unlabeled_ratio < 1:
    raise UserError(f"ssl.unlabeled_ratio={s.unlabeled_ratio} must be an integer >= 1")


def make_task(config, num_devices: int = 1) -> FixMatchTask:
  check_ssl(config)
  return FixMatchTask(config, num_devices)


def weak_and_strong(config, images: jax.Array, rng: jax.Array):
  """The two views of the unlabeled images (strong = weak's ops + the ssl.strong_* ones)."""
  weak_key, strong_key = jax.random.split(rng)
  weak = augment.augment(images, weak_key, crop_padding=config.aug.crop_padding,
                         flip=config.aug.flip)
  strong = augment.augment(images, strong_key, crop_padding=config.aug.crop_padding,
                           flip=config.aug.flip, rotation=config.ssl.strong_rotation,
                           cutout_size=config.ssl.strong_cutout, noise=config.ssl.strong_noise)
  return weak, strong


def ssl_step(state: TrainState, batch, unlabeled: jax.Array, rng: jax.Array, *, config,
             spec: tasks.Spec, unlabeled_labels=None):
  """(state, metrics): one FixMatch step on `batch` (labeled, augmented) and the float
  `unlabeled` images (augmented here); `unlabeled_labels`, when known, only feed the
  pseudo-label accuracy diagnostic. P-SSL (`pssl`) calls it with generated images."""
  s = config.ssl
  model = models.build(config.model, spec.num_classes)
  aug_key, dropout_key = jax.random.split(rng)
  weak, strong = weak_and_strong(config, unlabeled, aug_key)
  images = jnp.concatenate([batch["image"], weak, strong])
  n_labeled = batch["image"].shape[0]

  def loss_fn(params):
    logits, model_state = model.apply(
        {"params": params, **state.model_state}, images, train=True,
        mutable=list(state.model_state), rngs={"dropout": dropout_key})
    labeled_logits = logits[:n_labeled]
    weak_logits, strong_logits = jnp.split(logits[n_labeled:], 2)
    ce = losses.cross_entropy(labeled_logits, batch["label"],
                              config.train.label_smoothing).mean()
    unsup, mask, pseudo = pseudo_label_loss(weak_logits, strong_logits, s.threshold)
    return ce + s.weight * unsup, (ce, unsup, mask, pseudo, labeled_logits, dict(model_state))

  (loss, (ce, unsup, mask, pseudo, logits, model_state)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  tx = optim.make_optimizer(config.optimizer, config.train.steps)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  metrics = {"loss": loss, "ce": ce, "unsup": unsup, "mask_rate": mask.mean(),
             "accuracy": losses.correct(logits, batch["label"]).mean(),
             "grad_norm": optax.tree.norm(grads)}
  if unlabeled_labels is not None:
    right = (pseudo == unlabeled_labels).astype(jnp.float32)
    metrics["pseudo_label_accuracy"] = (mask * right).sum() / jnp.maximum(mask.sum(), 1.0)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       model_state=model_state, opt_state=opt_state), metrics


def train_step(state: TrainState, batch, rng: jax.Array, *, config, spec: tasks.Spec):
  return ssl_step(state, batch, batch["unlabeled_image"], rng, config=config, spec=spec,
                  unlabeled_labels=batch["unlabeled_label"])
