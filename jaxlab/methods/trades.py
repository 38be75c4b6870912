"""`trades`: TRADES (Zhang et al. 2019, arXiv 1901.08573), as its official code does it.

Spec: shared/methods/robustness_tta_merging.md §3(b). Loss
  CE(f(x), y) + beta * sum_i KL(p(x_i) || p(x'_i)) / B,
x' maximising the KL inside the l-inf ball: start at x + 0.001 N(0, I), `adv.steps`
signed steps of `adv.step_size`, each clipped to the ball and to [0, 1], with the model in
eval mode; the outer loss is in train mode with gradients through both p(x) and p(x').
Evaluation is `erm`'s (robust accuracies from `adv.eval_attacks`).
"""

import jax
import jax.numpy as jnp
import optax

from jaxlab import models
from jaxlab.data import tasks
from jaxlab.eval import attacks
from jaxlab.methods import erm, pgd_at
from jaxlab.train import losses, optim
from jaxlab.train.state import TrainState

make_task = erm.make_task
init = erm.init
eval_step = erm.eval_step


def inner_maximisation(state: TrainState, x, rng, *, config, spec):
  a = config.adv
  f = pgd_at.logits_fn(state, config, spec)
  clean = jax.lax.stop_gradient(f(x))
  grad_kl = jax.grad(lambda z: losses.kl_divergence(clean, f(z)).sum())

  def body(_, x_adv):
    return attacks.project_linf(x_adv + a.step_size * jnp.sign(grad_kl(x_adv)), x, a.train_eps)

  start = x + 0.001 * jax.random.normal(rng, x.shape, x.dtype)
  return jax.lax.stop_gradient(jax.lax.fori_loop(0, a.steps, body, start))


def train_step(state: TrainState, batch, rng: jax.Array, *, config, spec: tasks.Spec):
  attack_rng, dropout_rng = jax.random.split(rng)
  x, y = batch["image"], batch["label"]
  x_adv = inner_maximisation(state, x, attack_rng, config=config, spec=spec)
  model = models.build(config.model, spec.num_classes)

  def loss_fn(params):
    # two train-mode passes, natural first, as the reference: separate BN batch statistics
    natural, model_state = model.apply(
        {"params": params, **state.model_state}, x, train=True,
        mutable=list(state.model_state), rngs={"dropout": dropout_rng})
    adversarial, model_state = model.apply(
        {"params": params, **model_state}, x_adv, train=True,
        mutable=list(state.model_state), rngs={"dropout": dropout_rng})
    ce = losses.cross_entropy(natural, y).mean()
    robust = losses.kl_divergence(natural, adversarial).sum() / x.shape[0]
    return ce + config.adv.beta * robust, (natural, ce, robust, dict(model_state))

  (loss, (logits, ce, robust, model_state)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  tx = optim.make_optimizer(config.optimizer, config.train.steps)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  metrics = {"loss": loss, "ce": ce, "kl": robust,
             "accuracy": losses.correct(logits, y).mean(), "grad_norm": optax.tree.norm(grads)}
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       model_state=model_state, opt_state=opt_state), metrics
