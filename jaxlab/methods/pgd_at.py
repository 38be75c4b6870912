"""`pgd_at`: PGD adversarial training (Madry et al. 2018, arXiv 1706.06083).

Spec: shared/methods/robustness_tta_merging.md §3. Each step replaces the batch by its
PGD-CE adversarial examples (l-inf ball of `adv.train_eps`, random start, `adv.steps`
steps of `adv.step_size`) and takes the `erm` step on them. The attack runs with the model
in eval mode (BatchNorm running statistics), the choice of this codebase;
`adv.attack_train_mode=True` attacks with batch statistics as much Madry-style code does
(§3(h)1). With `adv.train_eps=0` the step is exactly `erm`'s (the standard-training arm).
Evaluation is `erm`'s, which adds robust accuracies when `config.adv` names attacks.
"""

from typing import Dict

import jax

from jaxlab import models
from jaxlab.data import tasks
from jaxlab.eval import attacks
from jaxlab.methods import erm
from jaxlab.train.state import TrainState

make_task = erm.make_task
init = erm.init
eval_step = erm.eval_step


def logits_fn(state: TrainState, config, spec: tasks.Spec, train: bool = False):
  """The model as a function of its input only; attacks never update BN statistics."""
  model = models.build(config.model, spec.num_classes)
  variables = {"params": state.params, **state.model_state}
  if not train:
    return lambda x: model.apply(variables, x, train=False)
  return lambda x: model.apply(variables, x, train=True, mutable=list(state.model_state))[0]


def adversarial_batch(state: TrainState, batch, rng: jax.Array, *, config, spec) -> Dict:
  a = config.adv
  x_adv = attacks.pgd(logits_fn(state, config, spec, a.attack_train_mode), batch["image"],
                      batch["label"], rng, eps=a.train_eps, step_size=a.step_size,
                      steps=a.steps)
  return {**batch, "image": jax.lax.stop_gradient(x_adv)}


def train_step(state: TrainState, batch, rng: jax.Array, *, config, spec: tasks.Spec):
  attack_rng, step_rng = jax.random.split(rng)
  adversarial = adversarial_batch(state, batch, attack_rng, config=config, spec=spec)
  return erm.train_step(state, adversarial, step_rng, config=config, spec=spec)
