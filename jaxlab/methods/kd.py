"""`kd`: knowledge distillation from a source classifier whose classes the target lacks.

The KD baseline of PP + P-SSL (Yamaguchi et al., arXiv 2204.12833; spec:
shared/methods/generative_and_finetuning.md §4(e), the [R] default variant; which variant the
paper used is not retrieved). The target and source label spaces are disjoint, so the target
network f = h o g gets an auxiliary |Y_s|-way linear head a (params["kd_head"], on the
penultimate features g) that distils the frozen source classifier C_s (`kd.source_classifier`,
a jaxlab classifier run on the `kd.source_classes` source classes) on the target training
images:

  L = CE(h(g(x)), y) + kd.weight * T^2 * KL(softmax(C_s(x) / T) || softmax(a(g(x)) / T)),

T = `kd.temperature` (4; the T^2 keeps the gradient scale of Hinton et al. 2015). The head a is
discarded at evaluation; only h is scored. C_s is never trained (it sits in the state outside
the optimised parameters).
"""

from typing import Any

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxlab import models
from jaxlab.data import tasks
from jaxlab.errors import UserError
from jaxlab.methods import erm, pssl
from jaxlab.train import losses, optim
from jaxlab.train.state import TrainState

eval_step = erm.eval_step  # the model ignores params["kd_head"]


@flax.struct.dataclass
class KdState(TrainState):
  source_classifier: Any   # frozen variables of C_s


class KdTask(tasks.SupervisedTask):
  """The supervised task plus C_s's weights (`frozen_variables`, placed by the loop)."""

  def __init__(self, config, num_devices: int = 1):
    self._config = config
    super().__init__(config, num_devices)

  def frozen_variables(self):
    return {"source_classifier": pssl.load_source_classifier(self._config, self.spec, "kd")}


def make_task(config, num_devices: int = 1) -> KdTask:
  k = config.kd
  pssl.check_frozen_runs(config, "kd", "the source classes", "configs/pp_pssl.py",
                         fields=("source_classifier",))
  if not k.temperature > 0:
    raise UserError(f"kd.temperature={k.temperature} must be > 0")
  return KdTask(config, num_devices)


def init(config, rng: jax.Array, spec: tasks.Spec) -> KdState:
  """erm's state with the distilling head added to the parameters (and the optimiser)."""
  state = erm.init(config, rng, spec)
  model = models.build(config.model, spec.num_classes)
  x = jnp.zeros((2,) + tuple(spec.input_shape))
  _, features, _ = jax.eval_shape(lambda: models.logits_and_features(
      model, {"params": state.params, **state.model_state}, x, train=False))
  params = {**state.params, "kd_head": nn.Dense(config.kd.source_classes).init(
      jax.random.fold_in(rng, 1), jnp.zeros((1, features.shape[-1])))["params"]}
  source = pssl.source_model(config, "kd").init(jax.random.fold_in(rng, 2), x)
  tx = optim.make_optimizer(config.optimizer, config.train.steps)
  return KdState(step=state.step, params=params, model_state=state.model_state,
                 opt_state=tx.init(params), source_classifier=source)


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array,
                      temperature: float) -> jax.Array:
  """T^2 * mean KL(softmax(teacher / T) || softmax(student / T)); the teacher is a constant."""
  teacher = jax.lax.stop_gradient(teacher_logits)
  return temperature ** 2 * losses.kl_divergence(teacher / temperature,
                                                 student_logits / temperature).mean()


def train_step(state: KdState, batch, rng: jax.Array, *, config, spec: tasks.Spec):
  k = config.kd
  model = models.build(config.model, spec.num_classes)
  teacher_logits = pssl.source_model(config, "kd").apply(state.source_classifier,
                                                         batch["image"], train=False)
  chex.assert_shape(teacher_logits, (batch["image"].shape[0], k.source_classes))

  def loss_fn(params):
    logits, features, model_state = models.logits_and_features(
        model, {"params": params, **state.model_state}, batch["image"], train=True,
        mutable=list(state.model_state), rngs={"dropout": rng})
    student_logits = nn.Dense(k.source_classes).apply({"params": params["kd_head"]}, features)
    ce = losses.cross_entropy(logits, batch["label"], config.train.label_smoothing).mean()
    kd = distillation_loss(student_logits, teacher_logits, k.temperature)
    return ce + k.weight * kd, (ce, kd, logits, model_state)

  (loss, (ce, kd, logits, model_state)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  tx = optim.make_optimizer(config.optimizer, config.train.steps)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  metrics = {"loss": loss, "ce": ce, "kd": kd,
             "accuracy": losses.correct(logits, batch["label"]).mean(),
             "grad_norm": optax.tree.norm(grads)}
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       model_state=model_state, opt_state=opt_state), metrics
