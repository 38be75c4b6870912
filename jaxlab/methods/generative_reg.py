"""Generative regularisation: a classifier regularised with samples of a frozen
class-conditional generator, optionally with a meta-learned latent sampler.

Papers and variants (bound options `regulariser` and the default `sampler`):
  `gda`  naive generative data augmentation, the baseline of MGR: CE(real) + lambda_g
         CE(f(G(u, c)), c), u ~ N(0, I), c uniform (regulariser gda, sampler uniform;
         `generative.sampler="finder"` gives the GDA + MPS ablation);
  `pcr`  pseudo consistency regularisation with uniform latents (regulariser pcr, sampler
         uniform);
  `mgr`  meta generative regularisation, Yamaguchi et al., NeurIPS 2023 (arXiv 2307.13899):
         PCR + meta pseudo sampling, a finder MLP meta-learned through the classifier's
         one-step look-ahead (regulariser pcr, sampler finder).
The frozen generator is the input `generator` (`inputs.generator`: a `cgan` run on the task's
classes, e.g. configs/cgan.py:digits), in `state.frozen`.
Spec: docs/specs/generative_and_finetuning.md §2 and §0.4. The paper's loss details are
not retrieved ([N]); what is here is the spec's reconstruction [R], every open choice a
`config.generative` flag.

Synthetic samples x_p = G(w, c), c one-hot of a uniform class, with the frozen generator and
w = u ~ N(0, I) (`sampler="uniform"`) or w = u + F_phi(u) (`sampler="finder"`, MPS: the
finder MLP, output layer zero-initialised so it starts at uniform sampling; LeakyReLU hidden
layers; `finder_class_input` adds c).
Regulariser (`regulariser`, bound by the variant):
  gda  CE(f(x_p), c): the synthetic pairs enter the classification loss (naive GDA);
  pcr  PCR(psi; x_p) = mean_j ||g(T1(x_p,j)) - g(T2(x_p,j))||^2 on the penultimate features g
       (the head gets no gradient from it), T = random shift (`pcr_shift` pixels) + rotation
       (`pcr_rotation` degrees) [+ flip]; flags: `pcr_views` two_augmented | clean_augmented
       (T1 = identity), `pcr_stop_gradient` (sg on the second branch, SimSiam-style),
       `pcr_reduction` sum (over feature dims, the spec's first reconstruction) | mean (PyTorch
       mse_loss, the spec's alternative (iv); the presets' choice, see configs/mgr.py).
The loss is `real_weight` * CE(f(x), y) + `weight` * R; `real_weight` = 0 with `gda` trains
on synthetic pairs alone: the pseudo pre-training (PP) of §4 (configs/pp_pssl.py:pp).
Per step:
  1. (finder only, every `meta_every` steps) the meta step on phi: with
       L_in(theta; phi) = CE(f_theta(x), y) + lambda R(theta; x_p(phi)),
       theta'(phi) = theta - eta L_in'(theta; phi)   (plain SGD, eta = the classifier's current
                                                    learning rate or `lookahead_lr`),
     phi <- Adam(`finder_lr`) on grad_phi CE(f_theta'(phi)(x_v), y_v), through
     `jaxlab.meta.lookahead_gradient` (`hvp_mode` exact | finite_difference;
     `lookahead_exclude` path prefixes kept out of the look-ahead); (x_v, y_v) a batch of the
     carved validation split (`meta_val="validation"`) or of the training split ("train");
  2. the classifier step on CE + lambda R(theta; sg(x_p)) with fresh noise (or the meta
     step's, `reuse_noise`) through the updated finder.
The generator is never differentiated into: it is outside the optimised parameters and its
variables pass through `state.frozen` unchanged (a test checks them bitwise).
Diagnostics: meta/lookahead_loss, meta/grad_norm, meta/latent_shift (mean ||w - u||) and with
`log_meta_gain` meta/gain = L_val(theta'(phi_new)) - L_val(theta'(phi_old)) (negative: the
meta step lowered the look-ahead validation loss).
"""

from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxlab import meta, models
from jaxlab.data import augment, tasks
from jaxlab.errors import UserError, unknown
from jaxlab.eval import classification
from jaxlab.models import gan
from jaxlab.train import inputs, losses, optim, supervised
from jaxlab.train.protocol import Variant
from jaxlab.train.state import TrainState

SAMPLERS = ("uniform", "finder")
PCR_VIEWS = ("two_augmented", "clean_augmented")
PCR_REDUCTIONS = ("sum", "mean")
META_VAL = ("validation", "train")

GENERATOR = inputs.generator(
    "generator", "a cgan run on the task's classes (e.g. configs/cgan.py:digits)",
    classes=lambda config, spec: spec.num_classes)
VARIANTS = {
    name: Variant(regulariser=regulariser, default_sampler=default_sampler, inputs=(GENERATOR,),
                  blocks=("generator", "generative"))
    for name, regulariser, default_sampler in (("gda", "gda", "uniform"),
                                               ("pcr", "pcr", "uniform"),
                                               ("mgr", "pcr", "finder"))}

eval_step = classification.eval_step


def sampler(config, default_sampler: str) -> str:
  """`generative.sampler`, or the variant's own ('' = uniform for gda/pcr, finder for mgr)."""
  return config.generative.sampler or default_sampler


@flax.struct.dataclass
class GenerativeRegState(TrainState):  # + the frozen generator in `frozen["generator"]`
  finder_params: Any
  finder_opt_state: Any


class Finder(nn.Module):
  """w = u + F(u[, c]): an MLP with LeakyReLU hidden layers and a zero-initialised output."""
  latent_dim: int
  hidden: Sequence[int] = (32, 32)
  class_input: bool = False

  @nn.compact
  def __call__(self, u, c):
    x = jnp.concatenate([u, c.astype(u.dtype)], -1) if self.class_input else u
    for width in self.hidden:
      x = nn.leaky_relu(nn.Dense(width)(x))
    return u + nn.Dense(self.latent_dim, kernel_init=nn.initializers.zeros)(x)


def _generator(config, spec: tasks.Spec):
  """The frozen generator on the task's classes (a cgan or a ddpm run, `generator.kind`)."""
  return inputs.generator_model(config, spec, spec.num_classes)


def _finder(config, spec: tasks.Spec) -> Finder:
  g = config.generative
  return Finder(latent_dim=_generator(config, spec).latent_dim, hidden=tuple(g.finder_hidden),
                class_input=g.finder_class_input)


class GenerativeTask(tasks.SupervisedTask):
  """The supervised task plus, when the finder is meta-learned, a batch of the meta step's
  validation data (`val_image`, `val_label`)."""

  def __init__(self, config, num_devices: int = 1, *, meta_learned: bool = False):
    self._config = config
    self._meta = meta_learned
    super().__init__(config, num_devices)

  def _val_keys(self):
    """Where the meta step's batch comes from: the carved validation split, or (meta_val
    = 'train') the training arrays themselves."""
    if self._config.generative.meta_val == "train":
      return "image", "label"
    return "val_image", "val_label"

  def train_arrays(self):
    train = super().train_arrays()
    if not self._meta or self._val_keys()[0] == "image":
      return train
    val = self.split_arrays("validation")
    return {**train, "val_image": val["image"], "val_label": val["label"]}

  def train_batch(self, data, key: jax.Array, step: jax.Array):
    batch = super().train_batch(data, key, step)
    if not self._meta:
      return batch
    images, labels = self.extra_batch(data, key, step, self.batch_size, *self._val_keys())
    return {**batch, "val_image": images, "val_label": labels}


def make_task(config, num_devices: int = 1, *, default_sampler: str) -> GenerativeTask:
  g = config.generative
  chosen = sampler(config, default_sampler)
  for field, value, choices in (("sampler", chosen, SAMPLERS),
                                ("pcr_views", g.pcr_views, PCR_VIEWS),
                                ("pcr_reduction", g.pcr_reduction, PCR_REDUCTIONS),
                                ("meta_val", g.meta_val, META_VAL),
                                ("hvp_mode", g.hvp_mode, meta.HVP_MODES)):
    if value not in choices:
      raise unknown(f"generative.{field}", value, choices)
  if g.meta_val == "validation" and chosen == "finder" and not config.data.val_fraction > 0:
    raise UserError("the finder's meta step needs a validation split: set "
                    "data.val_fraction > 0 or generative.meta_val='train'")
  return GenerativeTask(config, num_devices, meta_learned=chosen == "finder")


def init(config, rng: jax.Array, spec: tasks.Spec) -> GenerativeRegState:
  state = supervised.init(config, rng, spec)
  latent = jnp.zeros((1, _generator(config, spec).latent_dim))
  finder_params = _finder(config, spec).init(jax.random.fold_in(rng, 2), latent,
                                       jnp.zeros((1, spec.num_classes)))
  return GenerativeRegState(
      step=state.step, params=state.params, model_state=state.model_state,
      opt_state=state.opt_state, finder_params=finder_params,
      finder_opt_state=optax.adam(config.generative.finder_lr).init(finder_params))


def synthetic_batch(config, spec: tasks.Spec, generator_variables, finder_params,
                    rng: jax.Array, n: int, use_finder: bool):
  """(x_p [n, H, W, C], labels [n], mean ||w - u||) from the frozen generator."""
  generator = _generator(config, spec)
  u, labels, c = gan.sample_conditions(rng, n, spec.num_classes, generator.latent_dim)
  w = _finder(config, spec).apply(finder_params, u, c) if use_finder else u
  images = generator.apply(generator_variables, w, c, train=False)
  return images, labels, jnp.linalg.norm(w - u, axis=-1).mean()


def pcr_loss(features_fn, images: jax.Array, rng: jax.Array, g) -> jax.Array:
  """Pseudo consistency regularisation between two variations of each synthetic image."""
  transform = lambda key: augment.augment(images, key, crop_padding=g.pcr_shift,
                                          flip=g.pcr_flip, rotation=g.pcr_rotation)
  first = images if g.pcr_views == "clean_augmented" else transform(jax.random.fold_in(rng, 0))
  second = transform(jax.random.fold_in(rng, 1))
  features = features_fn(jnp.concatenate([first, second]))
  a, b = jnp.split(features, 2)
  if g.pcr_stop_gradient:
    b = jax.lax.stop_gradient(b)
  squared = jnp.square(a - b)
  return squared.mean() if g.pcr_reduction == "mean" else squared.sum(-1).mean()


def regularised_loss(config, spec: tasks.Spec, state: GenerativeRegState, params, batch,
                     synthetic, labels, rng: jax.Array, regulariser: str):
  """(CE(real) + lambda R(synthetic), (ce, reg, logits, updated model_state))."""
  model = models.build(config.model, spec.num_classes)
  mutable = list(state.model_state)

  def forward(x):
    return models.logits_and_features(model, {"params": params, **state.model_state}, x,
                                      train=True, mutable=mutable, rngs={"dropout": rng})

  logits, _, model_state = forward(batch["image"])
  ce = losses.cross_entropy(logits, batch["label"], config.train.label_smoothing).mean()
  if regulariser == "gda":
    reg = losses.cross_entropy(forward(synthetic)[0], labels).mean()
  else:
    reg = pcr_loss(lambda x: forward(x)[1], synthetic, jax.random.fold_in(rng, 1),
                   config.generative)
  g = config.generative
  return g.real_weight * ce + g.weight * reg, (ce, reg, logits, model_state)


def _lookahead_problem(config, spec, state: GenerativeRegState, batch, rng, regulariser: str):
  """(inner_loss(theta, phi), outer_loss(theta), trainable mask) of the meta step."""
  g = config.generative
  model = models.build(config.model, spec.num_classes)

  def inner_loss(params, finder_params):
    synthetic, labels, _ = synthetic_batch(config, spec, state.frozen["generator"],
                                           finder_params, jax.random.fold_in(rng, 0),
                                           g.synthetic_batch, use_finder=True)
    return regularised_loss(config, spec, state, params, batch, synthetic, labels,
                            jax.random.fold_in(rng, 1), regulariser)[0]

  def outer_loss(params):
    logits, _ = model.apply({"params": params, **state.model_state}, batch["val_image"],
                            train=True, mutable=list(state.model_state))
    return losses.cross_entropy(logits, batch["val_label"]).mean()

  excluded = tuple(p.strip() for p in g.lookahead_exclude.split(",") if p.strip())
  trainable = meta.path_mask(state.params, lambda path: not any(
      path == p or path.startswith(p.rstrip("/") + "/") for p in excluded))
  return inner_loss, outer_loss, trainable


def meta_gradient(config, spec, state: GenerativeRegState, batch, rng: jax.Array, inner_lr,
                  regulariser: str):
  """(look-ahead validation loss, its gradient in the finder's parameters)."""
  inner_loss, outer_loss, trainable = _lookahead_problem(config, spec, state, batch, rng,
                                                         regulariser)
  return meta.lookahead_gradient(inner_loss, outer_loss, state.params, state.finder_params,
                                 inner_lr=inner_lr, mode=config.generative.hvp_mode,
                                 trainable=trainable, epsilon=config.generative.fd_epsilon)


def _meta_step(config, spec, state: GenerativeRegState, batch, rng, inner_lr, regulariser: str):
  """(new finder params, new finder opt state, metrics): one Adam step on phi."""
  g = config.generative
  value, grads = meta_gradient(config, spec, state, batch, rng, inner_lr, regulariser)
  updates, opt_state = optax.adam(g.finder_lr).update(grads, state.finder_opt_state,
                                                      state.finder_params)
  finder_params = optax.apply_updates(state.finder_params, updates)
  metrics = {"meta/lookahead_loss": value, "meta/grad_norm": optax.tree.norm(grads)}
  if g.log_meta_gain:
    inner_loss, outer_loss, trainable = _lookahead_problem(config, spec, state, batch, rng,
                                                           regulariser)
    after = meta.lookahead_loss(inner_loss, outer_loss, state.params, finder_params,
                                inner_lr=inner_lr, trainable=trainable)
    metrics["meta/gain"] = after - value
  return finder_params, opt_state, metrics


def train_step(state: GenerativeRegState, batch, rng: jax.Array, *, config,
               spec: tasks.Spec, regulariser: str, default_sampler: str):
  g = config.generative
  total = config.train.steps
  meta_key, sample_key, step_key = jax.random.split(rng, 3)
  finder_params, finder_opt_state, metrics = state.finder_params, state.finder_opt_state, {}
  use_finder = sampler(config, default_sampler) == "finder"
  if use_finder:
    inner_lr = g.lookahead_lr or optim.make_schedule(config.optimizer, total)(state.step)
    run_meta = lambda s: _meta_step(config, spec, s, batch, meta_key, inner_lr, regulariser)
    if g.meta_every > 1:
      skipped = lambda s: (s.finder_params, s.finder_opt_state, jax.tree.map(
          jnp.zeros_like, jax.eval_shape(run_meta, s)[2]))
      ran = state.step % g.meta_every == 0
      finder_params, finder_opt_state, metrics = jax.lax.cond(ran, run_meta, skipped, state)
      # the meta step's metrics exist at its steps only: the loop logs them from those
      metrics.update({f"measured/{k}": ran.astype(jnp.float32) for k in list(metrics)})
    else:
      finder_params, finder_opt_state, metrics = run_meta(state)
  noise_key = jax.random.fold_in(meta_key, 0) if g.reuse_noise else sample_key
  synthetic, labels, shift = synthetic_batch(config, spec, state.frozen["generator"],
                                             finder_params, noise_key, g.synthetic_batch,
                                             use_finder)
  synthetic = jax.lax.stop_gradient(synthetic)

  def loss_fn(params):
    return regularised_loss(config, spec, state, params, batch, synthetic, labels, step_key,
                            regulariser)

  (loss, (ce, reg, logits, model_state)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  metrics.update({"loss": loss, "ce": ce, "reg": reg, "meta/latent_shift": shift,
                  "accuracy": losses.correct(logits, batch["label"]).mean(),
                  "grad_norm": optax.tree.norm(grads)})
  return optim.apply_gradients(state, grads, config, model_state=model_state,
                               finder_params=finder_params,
                               finder_opt_state=finder_opt_state), metrics

