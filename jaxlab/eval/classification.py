"""Per-example evaluation of a classifier state: accuracy and cross-entropy, plus robust
accuracies (`config.adv.eval_attacks`) and adversarial margin histograms (`adv.margin_bins`)
when the config has an `adv` block (`jaxlab.eval.robust`). Every family whose product is a
classifier (erm, adversarial training, fine-tuning, generative regularisers, SSL) evaluates
with it, so their numbers are comparable.
"""

import jax

from jaxlab import models, streams
from jaxlab.data import tasks
from jaxlab.eval import robust
from jaxlab.train import losses


def eval_step(state, batch, key: jax.Array, *, config, spec: tasks.Spec):
  model = models.build(config.model, spec.num_classes)
  logits_fn = models.logits_fn(model, {"params": state.params, **state.model_state})
  x, y = batch["image"], batch["label"]
  logits = logits_fn(x)
  metrics = {"accuracy": losses.correct(logits, y), "loss": losses.cross_entropy(logits, y)}
  if "adv" in config and config.adv.eval_attacks:  # robustness presets (configs/robust.py)
    # the attacks may see the logits times adv.logit_scale (> 0: same predictions), the
    # gradient-masking check of §3(g)
    scale = config.adv.get("logit_scale", 1.0)
    metrics.update(robust.robust_accuracy(lambda z: scale * logits_fn(z), x, y, config.adv,
                                          streams.fold(key, "eval_batch", "attacks")))
  if "adv" in config and config.adv.get("margin_bins"):
    metrics.update(robust.adversarial_margin_histogram(
        logits_fn, x, y, config.adv, streams.fold(key, "eval_batch", "margins")))
  return metrics
