"""`meta_gen_ssl`: semi-supervised learning whose unlabeled data are meta-optimised samples of
a frozen conditional generator, with no real unlabeled image.

Variants: `meta_gen_ssl` (the full method and, by flag, its non-meta arms of §3(g)).
Yamaguchi, "Generative Semi-supervised Learning with Meta-Optimized Synthetic Samples"
(ACML 2023, arXiv 2309.16143); spec: docs/specs/generative_and_finetuning.md §3. The
paper's method name and loss details were not retrieved ([N]); what is here is the spec's
reconstruction [R], each open choice a `config.meta_gen_ssl` flag.

A pool of P latent pairs nu_j = (u_j, a_j) (`pool_size`; the presets use 10x the labels)
drives the frozen generator G (the input `generator`, a `cgan` run):
x_j = G(u_j, softmax(a_j)). Each latent is tied to a labeled anchor image x_pi(j),
pi(j) = j mod N (N labeled images). At the start u_j ~ N(0, I) and a_j = log C_s(x_pi(j)) with
the frozen source classifier C_s (the input `source_classifier`, a classifier run on the
generator's classes: "pseudo conditional sampling", `latent_init="pseudo_conditional"`), or
a_j = log one-hot of a uniform class (`latent_init="random"`). Per iteration, on a mini-batch
nu_b of `synthetic_batch` latents:
  (i)  meta phase (`meta=True`; the classifier theta constant): one Adam step on nu_b (lr
       `lr_u` on u, `lr_a` on a; a lazy Adam with per-row moments and step counts,
       `optim.row_adam_update`: rows outside nu_b neither move nor age) on
         L_val(nu_b) + beta * L_sim(nu_b),
         L_val = CE(f_theta'(x_v), y_v),  theta' = theta - eta grad_theta[CE(f_theta(x_l), y_l)
                                                   + lambda_u L_u(psi; G(nu_b))]
         (the one look-ahead of `jaxlab.meta.lookahead_gradient`, `hvp_mode`; eta = the
         classifier's current learning rate; (x_v, y_v) a labeled batch drawn apart from
         (x_l, y_l), `meta_val="train"`, as 1-10 labels per class leave nothing to hold out;
         or the carved validation split, "validation"),
         L_sim = mean_j [1 - cos(e(G(nu_j)), e(x_pi(j)))],  e = sg(g_psi), the classifier's
         penultimate features (`resemblance_encoder="classifier"`) or C_s's ("source");
       then u is projected back to the shell ||u|| = sqrt(d_u) (`renormalise`);
  (ii) SSL phase (nu constant): one classifier step on
         CE(f(x_l), y_l) + lambda_u L_u(psi; sg(G(nu_b))),
         L_u(psi; x) = mean_j [1 - cos(g_psi(T1(x_j)), sg(g_psi(T2(x_j))))]
       on the feature extractor g_psi only (the head gets no gradient from it), T1 = the
       FixMatch strong view of `config.ssl` and T2 its weak view (`target_view="weak"`) or the
       identity ("identity"); `unsup_stop_gradient=False` drops the sg.
With `meta=False` the latents stay at their initialisation: the non-meta arms of §3(g)
(random synthetic + consistency, pseudo-conditional synthetic). Not implemented: the
amortised finder variant of the latents, the MMD resemblance, and the anchor-feature L_u.
"""

import math
from typing import Any

import chex
import flax
import jax
import jax.numpy as jnp
import optax

from jaxlab import meta, models, streams
from jaxlab.data import augment, tasks
from jaxlab.errors import UserError, unknown
from jaxlab.eval import classification
from jaxlab.train import inputs, losses, optim, supervised
from jaxlab.train.protocol import Variant
from jaxlab.train.state import TrainState

LATENT_INITS = ("pseudo_conditional", "random")
TARGET_VIEWS = ("weak", "identity")
RESEMBLANCE_ENCODERS = ("classifier", "source")
META_VAL = ("train", "validation")

_source_classes = lambda config, spec: config.meta_gen_ssl.source_classes
VARIANTS = {"meta_gen_ssl": Variant(blocks=("ssl", "meta_gen_ssl", "generator"), inputs=(
    inputs.generator("generator", "a cgan run on the generator's classes (see configs/ssl.py)",
                     classes=_source_classes),
    inputs.classifier("source_classifier", "a classifier run on the generator's classes (see "
                      "configs/ssl.py)", classes=_source_classes)))}

eval_step = classification.eval_step


@flax.struct.dataclass
class MetaGenSslState(TrainState):  # + the frozen `generator` and `source_classifier`
  latents: Any             # {"u": [P, d_u], "a": [P, source classes]}
  latent_opt_state: Any


def _source_model(config):
  return inputs.classifier_model(config, "source_classifier",
                                 config.meta_gen_ssl.source_classes)


class MetaGenSslTask(tasks.SupervisedTask):
  """The labeled task; each batch adds `latent_index` (the pool rows of nu_b) and their
  anchors' labels, and with `meta` the anchor images and a second labeled (or validation)
  batch for L_val."""

  def __init__(self, config, num_devices: int = 1):
    self._config = config
    super().__init__(config, num_devices)

  def train_arrays(self):
    train = super().train_arrays()
    m = self._config.meta_gen_ssl
    if not (m.meta and m.meta_val == "validation"):
      return train
    val = self.split_arrays("validation")
    return {**train, "val_image": val["image"], "val_label": val["label"]}

  def train_batch(self, data, key: jax.Array, step: jax.Array):
    m = self._config.meta_gen_ssl
    batch = super().train_batch(data, key, step)
    rows = tasks.epoch_indices(streams.fold(key, "data", "latent_rows"), step, m.synthetic_batch,
                               m.pool_size)
    anchors = rows % data["image"].shape[0]
    batch.update(latent_index=rows, anchor_label=data["label"][anchors])
    if m.meta:  # the resemblance term's anchors and L_val's batch
      batch["anchor_image"] = augment.to_float(data["image"][anchors])
      keys = ("val_image", "val_label") if m.meta_val == "validation" else ("image", "label")
      images, labels = self.extra_batch(data, key, step, self.batch_size, *keys)
      batch.update(val_image=images, val_label=labels)
    return batch


def make_task(config, num_devices: int = 1) -> MetaGenSslTask:
  m = config.meta_gen_ssl
  for field, value, choices in (("latent_init", m.latent_init, LATENT_INITS),
                                ("target_view", m.target_view, TARGET_VIEWS),
                                ("resemblance_encoder", m.resemblance_encoder,
                                 RESEMBLANCE_ENCODERS),
                                ("meta_val", m.meta_val, META_VAL),
                                ("hvp_mode", m.hvp_mode, meta.HVP_MODES)):
    if value not in choices:
      raise unknown(f"meta_gen_ssl.{field}", value, choices)
  if m.pool_size < m.synthetic_batch:
    raise UserError(f"meta_gen_ssl.pool_size={m.pool_size} must be >= "
                    f"meta_gen_ssl.synthetic_batch={m.synthetic_batch}")
  if m.meta and m.meta_val == "validation" and not config.data.val_fraction > 0:
    raise UserError("meta_gen_ssl.meta_val='validation' needs data.val_fraction > 0 "
                    "(or meta_val='train')")
  return MetaGenSslTask(config, num_devices)


def init(config, rng: jax.Array, spec: tasks.Spec) -> MetaGenSslState:
  """Placeholder latents of the right shapes; `start_from` sets them from the labeled images
  (the lazy Adam's initial state depends on the shapes only, so it is final here)."""
  m = config.meta_gen_ssl
  state = supervised.init(config, rng, spec)
  latents = {"u": jnp.zeros((m.pool_size, _latent_dim(config, spec))),
             "a": jnp.zeros((m.pool_size, m.source_classes))}
  return MetaGenSslState(step=state.step, params=state.params, model_state=state.model_state,
                         opt_state=state.opt_state, latents=latents,
                         latent_opt_state=optim.row_adam_init(latents))


def renormalise(u: jax.Array) -> jax.Array:
  """Each row scaled to norm sqrt(d_u), the typical radius of N(0, I) in d_u dimensions."""
  return u * math.sqrt(u.shape[-1]) / jnp.maximum(jnp.linalg.norm(u, axis=-1, keepdims=True),
                                                   1e-12)


def initial_latents(config, state: MetaGenSslState, labeled_images: jax.Array,
                    rng: jax.Array):
  """{"u", "a"} for the pool: u ~ N(0, I) (renormalised when `renormalise`), a = log C_s of
  the anchor image x_(j mod N) or log one-hot of a uniform class (floored at log 1e-6)."""
  m = config.meta_gen_ssl
  u_key, class_key = jax.random.split(rng)
  u = jax.random.normal(u_key, state.latents["u"].shape)
  if m.renormalise:
    u = renormalise(u)
  if m.latent_init == "random":
    labels = jax.random.randint(class_key, (m.pool_size,), 0, m.source_classes)
    a = jnp.log(jnp.maximum(jax.nn.one_hot(labels, m.source_classes), 1e-6))
  else:
    anchors = labeled_images[jnp.arange(m.pool_size) % labeled_images.shape[0]]
    logits = _source_model(config).apply(state.frozen["source_classifier"], anchors, train=False)
    a = jax.nn.log_softmax(logits)
  return {"u": u, "a": a}


def start_from(state: MetaGenSslState, train_data, *, config, spec: tasks.Spec):
  """The pool's initial latents, once the frozen C_s is in place (keyed by config.seed)."""
  return state.replace(latents=initial_latents(
      config, state, augment.to_float(train_data["image"]),
      streams.run_stream(config.seed, "start")))


def _latent_dim(config, spec: tasks.Spec) -> int:
  return inputs.generator_model(config, spec, config.meta_gen_ssl.source_classes).latent_dim


def synthesize(config, spec: tasks.Spec, generator_variables, latents) -> jax.Array:
  """G(u, softmax(a)) for a batch of latents; differentiable in them."""
  generator = inputs.generator_model(config, spec, config.meta_gen_ssl.source_classes)
  return generator.apply(generator_variables, latents["u"], jax.nn.softmax(latents["a"]),
                         train=False)


def cosine_distance(a: jax.Array, b: jax.Array) -> jax.Array:
  """Per-row 1 - cos(a, b)."""
  return 1.0 - losses.cosine_similarity(a, b)


def unsupervised_loss(config, features_fn, params, images: jax.Array,
                      rng: jax.Array) -> jax.Array:
  """L_u: mean 1 - cos(g(T1(x)), sg(g(T2(x)))) over the synthetic images.

  `features_fn(params, x)`. The stop-gradient is on the classifier's parameters in the target
  branch, not on its input: the meta-gradient still sees how the target features move with
  the latents."""
  m = config.meta_gen_ssl
  weak, strong = augment.weak_and_strong(images, rng, config)
  target = weak if m.target_view == "weak" else images
  target_params = jax.lax.stop_gradient(params) if m.unsup_stop_gradient else params
  return cosine_distance(features_fn(params, strong), features_fn(target_params, target)).mean()


def _forward(config, spec, state: MetaGenSslState, rng):
  """(params, x) -> (logits, features, model_state) of the classifier in training mode."""
  model = models.build(config.model, spec.num_classes)
  return lambda params, x: models.logits_and_features(
      model, {"params": params, **state.model_state}, x, train=True,
      mutable=list(state.model_state), rngs={"dropout": rng})


def classifier_loss(config, spec, state: MetaGenSslState, params, batch, synthetic, rng):
  """(CE(x_l) + lambda_u L_u(synthetic), (ce, unsup, logits, model_state)); with BatchNorm
  the running statistics are the labeled pass's."""
  forward = _forward(config, spec, state, rng)
  logits, _, model_state = forward(params, batch["image"])
  ce = losses.cross_entropy(logits, batch["label"], config.train.label_smoothing).mean()
  unsup = unsupervised_loss(config, lambda p, x: forward(p, x)[1], params, synthetic,
                            jax.random.fold_in(rng, 1))
  return ce + config.meta_gen_ssl.weight * unsup, (ce, unsup, logits, model_state)


def resemblance_loss(config, spec, state: MetaGenSslState, synthetic, anchors) -> jax.Array:
  """L_sim: mean 1 - cos(e(x_j), e(x_pi(j))) with e a frozen encoder (no gradient to it)."""
  if config.meta_gen_ssl.resemblance_encoder == "source":
    model, variables = _source_model(config), state.frozen["source_classifier"]
  else:
    model = models.build(config.model, spec.num_classes)
    variables = {"params": state.params, **state.model_state}
  variables = jax.lax.stop_gradient(variables)
  encode = lambda x: models.logits_and_features(model, variables, x, train=False)[1]
  return cosine_distance(encode(synthetic), encode(anchors)).mean()


def meta_objective(config, spec, state: MetaGenSslState, batch, latents, rng, inner_lr):
  """(L_val + beta L_sim, (L_val, L_sim), grad in `latents`): the meta phase's objective on
  the mini-batch of latents and its gradient."""
  m = config.meta_gen_ssl
  model = models.build(config.model, spec.num_classes)

  def inner_loss(params, nu):
    synthetic = synthesize(config, spec, state.frozen["generator"], nu)
    return classifier_loss(config, spec, state, params, batch, synthetic, rng)[0]

  def outer_loss(params):
    logits, _ = model.apply({"params": params, **state.model_state}, batch["val_image"],
                            train=True, mutable=list(state.model_state))
    return losses.cross_entropy(logits, batch["val_label"]).mean()

  if m.meta_weight:
    val_loss, val_grad = meta.lookahead_gradient(inner_loss, outer_loss, state.params, latents,
                                                 inner_lr=inner_lr, mode=m.hvp_mode,
                                                 epsilon=m.fd_epsilon)
    val_grad = jax.tree.map(lambda g: m.meta_weight * g, val_grad)
  else:  # the look-ahead switched off (a test checks L_sim alone then decreases)
    val_loss, val_grad = jnp.zeros(()), jax.tree.map(jnp.zeros_like, latents)
  sim, sim_grad = jax.value_and_grad(lambda nu: resemblance_loss(
      config, spec, state, synthesize(config, spec, state.frozen["generator"], nu),
      batch["anchor_image"]))(latents)
  grads = jax.tree.map(lambda v, s: v + m.beta * s, val_grad, sim_grad)
  return m.meta_weight * val_loss + m.beta * sim, (val_loss, sim), grads


def meta_step(config, spec, state: MetaGenSslState, batch, rng, inner_lr):
  """(latents, latent opt state, metrics): one Adam step of the sampled latents nu_b (spec
  §3(c)): a lazy Adam whose moments and step counts are per pool row, so rows outside nu_b
  neither move nor age."""
  m = config.meta_gen_ssl
  rows = batch["latent_index"]
  nu = jax.tree.map(lambda x: x[rows], state.latents)
  _, (val_loss, sim), grads = meta_objective(config, spec, state, batch, nu, rng, inner_lr)
  latents, opt_state = optim.row_adam_update(state.latents, grads, state.latent_opt_state, rows,
                                             {"u": m.lr_u, "a": m.lr_a})
  if m.renormalise:  # the stepped rows only: the others stay bit for bit
    latents = {**latents, "u": latents["u"].at[rows].set(renormalise(latents["u"][rows]))}
  metrics = {"meta/lookahead_loss": val_loss, "meta/resemblance": sim,
             "meta/grad_norm": optax.tree.norm(grads)}
  return latents, opt_state, metrics


def train_step(state: MetaGenSslState, batch, rng: jax.Array, *, config, spec: tasks.Spec):
  m = config.meta_gen_ssl
  total = config.train.steps
  meta_key, step_key = jax.random.split(rng)
  latents, latent_opt_state, metrics = state.latents, state.latent_opt_state, {}
  if m.meta:
    inner_lr = m.lookahead_lr or optim.make_schedule(config.optimizer, total)(state.step)
    latents, latent_opt_state, metrics = meta_step(config, spec, state, batch, meta_key,
                                                   inner_lr)
  nu = jax.tree.map(lambda x: x[batch["latent_index"]], latents)
  chex.assert_shape(nu["a"], (m.synthetic_batch, m.source_classes))
  synthetic = jax.lax.stop_gradient(synthesize(config, spec, state.frozen["generator"], nu))

  def loss_fn(params):
    return classifier_loss(config, spec, state, params, batch, synthetic, step_key)

  (loss, (ce, unsup, logits, model_state)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  conditions = jax.nn.softmax(nu["a"])
  metrics.update({
      "loss": loss, "ce": ce, "unsup": unsup, "grad_norm": optax.tree.norm(grads),
      "accuracy": losses.correct(logits, batch["label"]).mean(),
      # how often a latent's class (argmax softmax(a)) is its anchor's label, when the
      # generator's classes are the task's (the §3(g) digits setting)
      "meta/anchor_class_agreement": (jnp.argmax(conditions, -1)
                                      == batch["anchor_label"]).mean(),
      "meta/condition_entropy": losses.entropy(conditions).mean()})
  return optim.apply_gradients(state, grads, config, model_state=model_state, latents=latents,
                               latent_opt_state=latent_opt_state), metrics
