"""`gairat`: geometry-aware instance-reweighted adversarial training (Zhang et al., ICLR
2021, arXiv 2010.01736), as a weighted-CE arm of the SOVR comparison.

Spec: shared/methods/robustness_tta_merging.md §2(b) [K]. kappa_i = the number of the K PGD
iterates still classified correctly (a point far from the boundary survives all K);
w_i = (1 + tanh(lambda + 5 (1 - 2 kappa_i / K))) / 2, normalised over the batch, with
lambda = `importance.gairat_lambda` (-1, the paper's fixed schedule). See `_importance_at`.
"""

import functools

import jax

from jaxlab.methods import _importance_at

make_task = _importance_at.make_task
init = _importance_at.init
eval_step = _importance_at.eval_step


def weights(logits, labels, correct_steps, config):
  del logits, labels
  k = config.adv.steps
  u = config.importance.gairat_lambda + 5.0 * (1.0 - 2.0 * correct_steps / k)
  return jax.nn.sigmoid(2.0 * u)  # = (1 + tanh(u)) / 2 without float32 cancellation


train_step = functools.partial(_importance_at.train_step, weights_fn=weights)
