"""`arrest`: adversarial fine-tuning with representation-guided distillation and noisy
replay (ARREST, Suzuki et al., ICCV 2023, arXiv 2308.16454).

Variants: `arrest` (no bound options; its four arms of §1(g) are config flags).
Spec: docs/specs/robustness_tta_merging.md §1. Only the abstract could be read, so the
losses are the spec's reconstruction ([R]); every open choice is a flag in `config.arrest`:
  AFT    the run starts from a standardly trained model (`init_from`, required), which
         also stays, frozen, as the teacher (the input `teacher`, in `state.frozen`; by
         default the `init_from` run, or another run of the same architecture named by
         `inputs.teacher`);
  RGKD   + `rgkd_weight` * mean d(g(x~), sg(g_pre(x))): the student's penultimate features
         of the input it trains on (`rgkd_student_input="same_as_ce"`, or "clean") against
         the teacher's features of the clean input (eval mode); d = `rgkd_distance`:
         one_minus_cos (default), angle, l2, l2_on_normalized. `rgkd_weight=0` turns it off;
  NR     with `noisy_replay`, an example whose clean-input features have drifted,
         cos(sg(g(x)), g_pre(x)) < `nr_threshold` (per example, or the batch mean with
         `nr_scope="per_batch"`), trains on clip(x + noise) instead of its PGD example;
         noise U[-eps, eps] (`nr_noise="uniform"`) or N(0, `nr_sigma`^2) ("gaussian").
         The spec's third reading (noise at an angle phi to the attack) is not implemented.
The adversarial examples are PGD-AT's (PGD-CE on the current model, `jaxlab.eval.attacks`).
The four arms of §1(g) are AFT (rgkd_weight=0, noisy_replay=False), AFT+RGKD, AFT+NR and
ARREST (both). Evaluation is the classifier's (`jaxlab.eval.classification`) plus
`feature_cosine`: cos(g(x), g_pre(x)) on the clean test inputs.
"""

import jax
import jax.numpy as jnp
import optax

from jaxlab import models
from jaxlab.data import tasks
from jaxlab.errors import UserError, unknown
from jaxlab.eval import attacks, classification
from jaxlab.train import inputs, losses, optim, supervised
from jaxlab.train.protocol import Variant
from jaxlab.train.state import TrainState

DISTANCES = ("one_minus_cos", "angle", "l2", "l2_on_normalized")

TEACHER = inputs.own_model("teacher", "a run of this model, the frozen teacher (default: the "
                           "init_from run)", fallback="init_from")
VARIANTS = {"arrest": Variant(inputs=(TEACHER,), blocks=("adv", "arrest"))}

init = supervised.init


def make_task(config, num_devices: int = 1) -> tasks.SupervisedTask:
  a = config.arrest
  if not config.init_from:
    raise UserError("arrest fine-tunes a standardly trained model: set --config.init_from to "
                    "the workdir of a finished run (e.g. method=erm) or an .npz of its weights")
  if a.rgkd_distance not in DISTANCES:
    raise unknown("arrest.rgkd_distance", a.rgkd_distance, DISTANCES)
  for field, value, valid in (("rgkd_student_input", a.rgkd_student_input,
                               ("same_as_ce", "clean")),
                              ("nr_scope", a.nr_scope, ("per_sample", "per_batch")),
                              ("nr_noise", a.nr_noise, ("uniform", "gaussian"))):
    if value not in valid:
      raise unknown(f"arrest.{field}", value, valid)
  return tasks.supervised(config, num_devices)


def distance(student: jax.Array, teacher: jax.Array, kind: str) -> jax.Array:
  """Per-example representation distance d(student, teacher) of the RGKD term."""
  if kind == "one_minus_cos":
    return 1.0 - losses.cosine_similarity(student, teacher)
  if kind == "angle":  # clipped so the gradient of arccos stays finite at cos = +-1
    return jnp.arccos(jnp.clip(losses.cosine_similarity(student, teacher), -1.0 + 1e-6, 1.0 - 1e-6))
  if kind == "l2":
    return jnp.linalg.norm(student - teacher, axis=-1)
  if kind == "l2_on_normalized":
    unit = lambda v: v / (jnp.linalg.norm(v, axis=-1, keepdims=True) + 1e-12)
    return jnp.linalg.norm(unit(student) - unit(teacher), axis=-1)
  raise unknown("arrest.rgkd_distance", kind, DISTANCES)


def _features(model, variables, x):
  """Eval-mode penultimate features, no gradient."""
  return jax.lax.stop_gradient(model.apply(variables, x, train=False, return_features=True))


def _student(state: TrainState):
  return {"params": state.params, **state.model_state}


def noisy_replay(state: TrainState, x, x_adv, teacher_features, rng, *, config, spec):
  """(training inputs, switched mask, drift cosine): NR's replacement of drifted examples."""
  a, eps = config.arrest, config.adv.train_eps
  model = models.build(config.model, spec.num_classes)
  drift = losses.cosine_similarity(_features(model, _student(state), x), teacher_features)
  switch = drift < a.nr_threshold
  if a.nr_scope == "per_batch":
    switch = jnp.broadcast_to(drift.mean() < a.nr_threshold, drift.shape)
  if a.nr_noise == "uniform":
    noise = jax.random.uniform(rng, x.shape, x.dtype, -eps, eps)
  else:
    noise = a.nr_sigma * jax.random.normal(rng, x.shape, x.dtype)
  noisy = jnp.clip(x + noise, 0.0, 1.0)
  chosen = jnp.where(switch.reshape((-1,) + (1,) * (x.ndim - 1)), noisy, x_adv)
  return chosen, switch, drift


def train_step(state: TrainState, batch, rng: jax.Array, *, config, spec: tasks.Spec):
  a = config.arrest
  attack_rng, dropout_rng = jax.random.split(rng)  # as pgd_at: AFT alone is its step
  noise_rng = jax.random.fold_in(attack_rng, 1)
  x, y = batch["image"], batch["label"]
  model = models.build(config.model, spec.num_classes)
  adv = config.adv
  x_adv = jax.lax.stop_gradient(attacks.pgd(
      models.logits_fn(model, _student(state), train=adv.attack_train_mode), x, y, attack_rng,
      eps=adv.train_eps, step_size=adv.step_size, steps=adv.steps))
  teacher = _features(model, state.frozen["teacher"], x)
  if a.noisy_replay:
    x_train, switch, drift = noisy_replay(state, x, x_adv, teacher, noise_rng, config=config,
                                          spec=spec)
  else:  # the drift is still logged: it is what RGKD is meant to keep high
    x_train, switch = x_adv, jnp.zeros(y.shape, bool)
    drift = losses.cosine_similarity(_features(model, _student(state), x), teacher)
  mutable = list(state.model_state)

  def loss_fn(params):
    variables = {"params": params, **state.model_state}
    rngs = {"dropout": dropout_rng}
    logits, student, model_state = models.logits_and_features(
        model, variables, x_train, train=True, mutable=mutable, rngs=rngs)
    if a.rgkd_student_input == "clean":  # its BN statistics are not kept: one update a step
      _, student, _ = models.logits_and_features(model, variables, x, train=True,
                                                 mutable=mutable, rngs=rngs)
    ce = losses.cross_entropy(logits, y).mean()
    rgkd = distance(student, teacher, a.rgkd_distance).mean()
    return ce + a.rgkd_weight * rgkd, (logits, ce, rgkd, model_state)

  (loss, (logits, ce, rgkd, model_state)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  metrics = {"loss": loss, "ce": ce, "rgkd": rgkd, "accuracy": losses.correct(logits, y).mean(),
             "nr_fraction": switch.mean(dtype=jnp.float32), "drift_cosine": drift.mean(),
             "grad_norm": optax.tree.norm(grads)}
  return optim.apply_gradients(state, grads, config, model_state=model_state), metrics


def eval_step(state: TrainState, batch, key: jax.Array, *, config, spec: tasks.Spec):
  metrics = classification.eval_step(state, batch, key, config=config, spec=spec)
  model = models.build(config.model, spec.num_classes)
  x = batch["image"]
  metrics["feature_cosine"] = losses.cosine_similarity(
      _features(model, _student(state), x), _features(model, state.frozen["teacher"], x))
  return metrics
