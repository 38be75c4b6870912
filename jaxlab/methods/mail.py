"""`mail`: margin-aware instance reweighting (MAIL-AT, Wang et al., NeurIPS 2021, arXiv
2106.07904), as a weighted-CE arm of the SOVR comparison.

Spec: shared/methods/robustness_tta_merging.md §2(b) [K]. PM_i = p_y(x'_i) - max_{k != y}
p_k(x'_i), the probabilistic margin on the adversarial point;
w_i = sigmoid(-gamma (PM_i - beta)), normalised over the batch, gamma =
`importance.mail_gamma`, beta = `importance.mail_beta` (our defaults 10 and 0: [R], the
paper's values were not read). See `_importance_at`.
"""

import functools

import jax

from jaxlab.methods import _importance_at
from jaxlab.train import losses

make_task = _importance_at.make_task
init = _importance_at.init
eval_step = _importance_at.eval_step


def weights(logits, labels, correct_steps, config):
  del correct_steps
  margin = losses.logit_margin(jax.nn.softmax(logits), labels)
  return jax.nn.sigmoid(-config.importance.mail_gamma * (margin - config.importance.mail_beta))


train_step = functools.partial(_importance_at.train_step, weights_fn=weights)
