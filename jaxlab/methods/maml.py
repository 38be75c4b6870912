"""The MAML family: gradient-based meta-learning through differentiable inner loops.

Papers:
  `maml`    MAML, Finn, Abbeel, Levine, ICML 2017 (arXiv 1703.03400): second-order
            meta-gradient through the inner SGD steps; every parameter adapts;
  `fomaml`  first-order MAML (ibid. §5.2): the inner gradients are constants, so the
            meta-gradient is the query gradient at the adapted parameters;
  `anil`    ANIL, Raghu, Raghu, Bengio, Vinyals, ICLR 2020 (arXiv 1909.09157): the inner loop
            adapts only the head; the body is learned by the outer loop alone;
  `boil`    BOIL, Oh, Yoo, Kim, Yun, ICLR 2021 (arXiv 2008.08882): the inner loop adapts
            everything but the head; the head is learned by the outer loop alone.
Bound options: `first_order` (False for all but fomaml) and `adapt` ("all" | "head" | "body").
Spec: docs/specs/meta_learning_and_sparse.md §1.

One outer step (§1(c)): for every task of the meta-batch, adapt the meta-parameters theta on
the support set (`meta.train_steps` steps of `jaxlab.meta.adapt`), evaluate the adapted
parameters on the query set, and update theta with the outer optimizer on the mean query
loss, differentiated through the inner steps (second order unless first-order). Leaves frozen
in the inner loop are still meta-learned (as in Meta-ticket's code base, §1(h)4). The
episodic machinery (task parallelism, adapt-then-evaluate, which leaves adapt, BatchNorm
conventions) is `jaxlab.meta.episodic`.

Meta-SGD (`meta.learn_inner_lr`, Li et al. 2017, arXiv 1707.09835): per-parameter inner
learning rates, initialised to `meta.inner_lr` and meta-learned with theta.

Config fields (`config.meta`): inner_lr, train_steps, test_steps, learn_inner_lr,
inner_frozen, task_parallel (`auto`, `vmap`, `groups`, `map`, `unroll`), task_groups,
scan_inner.
"""

from typing import Dict

import jax
import jax.numpy as jnp
import optax

from jaxlab import models
from jaxlab.data import episodes, tasks
from jaxlab.errors import UserError
from jaxlab.meta import episodic
from jaxlab.train import optim
from jaxlab.train.protocol import Variant
from jaxlab.train.state import TrainState

BLOCKS = ("meta", "episodes")
VARIANTS = {
    "maml": Variant(first_order=False, adapt="all", blocks=BLOCKS),
    "fomaml": Variant(first_order=True, adapt="all", blocks=BLOCKS),
    "anil": Variant(first_order=False, adapt="head", blocks=BLOCKS),
    "boil": Variant(first_order=False, adapt="body", blocks=BLOCKS),
}

make_task = episodes.make_task


def init(config, rng: jax.Array, spec: tasks.Spec) -> TrainState:
  model = models.build(config.model, spec.num_classes)
  variables = model.init(rng, jnp.zeros((2,) + tuple(spec.input_shape)), train=True)
  if set(variables) != {"params"}:
    raise UserError(f"model.norm={config.model.get('norm')!r} keeps running statistics, which "
                    "episodic meta-learning does not use; set model.norm to 'batch_stats' or 'none'")
  params = {"model": variables["params"], "inner_lr": {}}
  if config.meta.learn_inner_lr:
    params["inner_lr"] = jax.tree.map(lambda p: jnp.full_like(p, config.meta.inner_lr),
                                      variables["params"])
  tx = optim.make_optimizer(config.optimizer, config.train.steps)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state={},
                    opt_state=tx.init(params))


def _inner_lr(params, config):
  return params["inner_lr"] if config.meta.learn_inner_lr else config.meta.inner_lr


def train_step(state: TrainState, batch, rng: jax.Array, *, config, spec: tasks.Spec,
               first_order: bool, adapt: str):
  del rng  # the episodes carry all the randomness
  def meta_loss(params):
    per_task = lambda task: episodic.adapt_and_evaluate(
        params["model"], task, config=config, spec=spec, steps=config.meta.train_steps,
        first_order=first_order, adapt=adapt, inner_lr=_inner_lr(params, config))
    loss, metrics, inner_losses = episodic.over_tasks(
        per_task, batch, episodic.task_parallel(config), config.meta.task_groups)
    aux = {k: v.mean() for k, v in metrics.items()}
    if inner_losses.shape[-1]:
      aux["inner/loss_before"] = inner_losses[:, 0].mean()
    return loss.mean(), aux
  (loss, aux), grads = jax.value_and_grad(meta_loss, has_aux=True)(state.params)
  metrics = {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads)}
  return optim.apply_gradients(state, grads, config), metrics


def eval_step(state: TrainState, batch, key: jax.Array, *, config, spec: tasks.Spec,
              adapt: str) -> Dict:
  return episodic.evaluate_episodes(state.params["model"], batch, config=config, spec=spec,
                                    adapt=adapt, inner_lr=_inner_lr(state.params, config))
