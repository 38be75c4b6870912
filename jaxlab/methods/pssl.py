"""`pssl`: pseudo semi-supervised learning, the second stage of PP + P-SSL.

Yamaguchi et al., "Transfer Learning with Pre-trained Conditional Generative Models"
(arXiv 2204.12833); spec: shared/methods/generative_and_finetuning.md §4. The target task's
few labeled images D_t are the labeled set; the unlabeled set is generated: each step draws
mu * B target images x_t from D_t and makes

  x_p = sg(G_s(z, c)),  z ~ N(0, I),  c = softmax(C_s(x_t) / T)     ("pseudo conditional
                                                                     sampling", [R] form)

with a frozen source-class conditional generator G_s (`pssl.generator`, a `cgan` run on the
source classes) and a frozen source classifier C_s (`pssl.source_classifier`, any jaxlab
classifier run on the source classes; its architecture may differ from the target's).
`pssl.conditioning="uniform"` replaces c by the one-hot of a uniform source class, the
control of §4(g). The SSL step is FixMatch's (`jaxlab.methods.fixmatch.ssl_step`, flags in
`config.ssl`). Neither G_s nor C_s is trained: they sit in the state outside the optimised
parameters and x_p is a constant of the classifier's loss.

Pseudo pre-training (PP, the first stage) is `gda` with `generative.real_weight = 0` and the
source generator (configs/pp_pssl.py:pp); PP + P-SSL starts this method from a PP run with
`init_from` (its head skipped).
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp

from jaxlab.data import tasks
from jaxlab.errors import UserError, unknown
from jaxlab.eval import generative
from jaxlab.methods import erm, fixmatch
from jaxlab.models import gan
from jaxlab.train.state import TrainState

CONDITIONINGS = ("target", "uniform")

eval_step = erm.eval_step


@flax.struct.dataclass
class PsslState(TrainState):
  generator: Any           # frozen {"params", "batch_stats"} of G_s
  source_classifier: Any   # frozen variables of C_s


def _generator(config, spec: tasks.Spec) -> gan.ConditionalGenerator:
  return gan.build_generator(config.generator, config.pssl.source_classes, spec.input_shape)


def _source_model(config):
  return generative.classifier_model(config.pssl.source_classifier,
                                     config.pssl.source_classes, "pssl.source_classifier")


class PsslTask(tasks.SupervisedTask):
  """The labeled target task; each batch adds mu * B more of its training images
  (`target_image`, unaugmented) for the source classifier to condition the generator on."""

  def __init__(self, config, num_devices: int = 1):
    self._config = config
    super().__init__(config, num_devices)

  def train_batch(self, data, key: jax.Array, step: jax.Array):
    batch = super().train_batch(data, key, step)
    images, _ = self.extra_batch(data, key, step,
                                 self._config.ssl.unlabeled_ratio * self.batch_size, "image")
    return {**batch, "target_image": images}

  def frozen_variables(self):
    config, spec = self._config, self.spec
    generator = generative.load_generator(_generator(config, spec), config.pssl.generator,
                                          "pssl.generator")
    _, source = generative.load_classifier(config.pssl.source_classifier,
                                           tuple(spec.input_shape), config.pssl.source_classes,
                                           field="pssl.source_classifier")
    return {"generator": generator, "source_classifier": source}  # placed by the loop


def make_task(config, num_devices: int = 1) -> PsslTask:
  p = config.pssl
  if p.conditioning not in CONDITIONINGS:
    raise unknown("pssl.conditioning", p.conditioning, CONDITIONINGS)
  for field in ("generator", "source_classifier"):
    if not p[field]:
      raise UserError(f"pssl needs pssl.{field}: the workdir of a "
                      + ("cgan run" if field == "generator" else "classifier run")
                      + " on the source classes (see configs/pp_pssl.py)")
  if not p.temperature > 0:
    raise UserError(f"pssl.temperature={p.temperature} must be > 0")
  fixmatch.check_ssl(config)
  return PsslTask(config, num_devices)


def init(config, rng: jax.Array, spec: tasks.Spec) -> PsslState:
  state = erm.init(config, rng, spec)
  generator = gan.init_generator(_generator(config, spec), jax.random.fold_in(rng, 1))
  source = _source_model(config).init(jax.random.fold_in(rng, 2),
                                      jnp.zeros((1,) + tuple(spec.input_shape)))
  return PsslState(step=state.step, params=state.params, model_state=state.model_state,
                   opt_state=state.opt_state, generator=generator, source_classifier=source)


def source_conditions(config, state: PsslState, target_images: jax.Array,
                      rng: jax.Array) -> jax.Array:
  """c [N, source classes]: C_s's tempered posterior of each target image, or uniform
  one-hots (`pssl.conditioning`)."""
  p = config.pssl
  if p.conditioning == "uniform":
    labels = jax.random.randint(rng, (target_images.shape[0],), 0, p.source_classes)
    return jax.nn.one_hot(labels, p.source_classes)
  logits = _source_model(config).apply(state.source_classifier, target_images, train=False)
  return jax.nn.softmax(logits / p.temperature)


def pseudo_samples(config, spec: tasks.Spec, state: PsslState, target_images: jax.Array,
                   rng: jax.Array):
  """(x_p, c): generated images conditioned on the target images, constants of the loss."""
  cond_key, z_key = jax.random.split(rng)
  c = source_conditions(config, state, target_images, cond_key)
  z = jax.random.normal(z_key, (target_images.shape[0], config.generator.latent_dim))
  images = _generator(config, spec).apply(state.generator, z, c, train=False)
  return jax.lax.stop_gradient(images), c


def train_step(state: PsslState, batch, rng: jax.Array, *, config, spec: tasks.Spec):
  sample_key, step_key = jax.random.split(rng)
  images, c = pseudo_samples(config, spec, state, batch["target_image"], sample_key)
  state, metrics = fixmatch.ssl_step(state, batch, images, step_key, config=config, spec=spec)
  entropy = -(c * jnp.log(jnp.clip(c, 1e-12))).sum(-1).mean()
  return state, {**metrics, "condition_entropy": entropy}
