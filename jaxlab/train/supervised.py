"""The supervised classifier that most method families train or build on.

`init` is a classifier's state (the model of `config.model`, its optimizer state);
`classification_step` is one softmax cross-entropy step (optional label smoothing, BatchNorm
running statistics updated in `model_state`): `erm`'s step, and PGD-AT's on adversarial
inputs. The evaluation of a classifier is `jaxlab.eval.classification.eval_step`.
"""

import jax
import jax.numpy as jnp
import optax

from jaxlab import models
from jaxlab.data import tasks
from jaxlab.train import losses, optim
from jaxlab.train.state import TrainState


def init(config, rng: jax.Array, spec: tasks.Spec) -> TrainState:
  model = models.build(config.model, spec.num_classes)
  variables = model.init(rng, jnp.zeros((2,) + tuple(spec.input_shape)), train=False)
  params = variables.pop("params")
  tx = optim.make_optimizer(config.optimizer, config.train.steps)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=dict(variables),
                    opt_state=tx.init(params))


def train_forward(model, state: TrainState, params, x: jax.Array, rng: jax.Array):
  """(logits, updated model_state): a train-mode pass of `params` with `state`'s statistics."""
  logits, model_state = model.apply({"params": params, **state.model_state}, x, train=True,
                                    mutable=list(state.model_state), rngs={"dropout": rng})
  return logits, dict(model_state)


def classification_step(state: TrainState, batch, rng: jax.Array, *, config, spec: tasks.Spec):
  """One cross-entropy step on `batch` ({"image", "label"})."""
  model = models.build(config.model, spec.num_classes)

  def loss_fn(params):
    logits, model_state = train_forward(model, state, params, batch["image"], rng)
    loss = losses.cross_entropy(logits, batch["label"], config.train.label_smoothing).mean()
    return loss, (logits, model_state)

  (loss, (logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  metrics = {"loss": loss, "accuracy": losses.correct(logits, batch["label"]).mean(),
             "grad_norm": optax.tree.norm(grads)}
  return optim.apply_gradients(state, grads, config, model_state=model_state), metrics
