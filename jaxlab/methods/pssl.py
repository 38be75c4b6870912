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
from jaxlab.train import losses
from jaxlab.train.state import TrainState

CONDITIONINGS = ("target", "uniform")

eval_step = erm.eval_step


@flax.struct.dataclass
class PsslState(TrainState):
  generator: Any           # frozen {"params", "batch_stats"} of G_s
  source_classifier: Any   # frozen variables of C_s


# The frozen pair (G_s, C_s) is read from a config block (`pssl` here, `meta_gen_ssl` in §3's
# method; `kd` has C_s only) with the fields generator, source_classifier and source_classes;
# these helpers serve all three methods.

def generator_model(config, spec: tasks.Spec, block: str = "pssl") -> gan.ConditionalGenerator:
  return gan.build_generator(config.generator, config[block].source_classes, spec.input_shape)


def source_model(config, block: str = "pssl"):
  b = config[block]
  return generative.classifier_model(b.source_classifier, b.source_classes,
                                     f"{block}.source_classifier")


def check_frozen_runs(config, block: str, classes: str, presets: str,
                      fields: tuple[str, ...] = ("generator", "source_classifier")) -> None:
  """One-line errors when config.<block> lacks one of the runs named by `fields`."""
  for field in fields:
    if not config[block][field]:
      raise UserError(f"{block} needs {block}.{field}: the workdir of a "
                      + ("cgan run" if field == "generator" else "classifier run")
                      + f" on {classes} (see {presets})")


def frozen_placeholders(config, rng: jax.Array, spec: tasks.Spec, block: str = "pssl"):
  """{"generator", "source_classifier"}: freshly initialised variables of the frozen pair's
  shapes, replaced by the trained ones (`load_frozen`) when the run starts."""
  generator = gan.init_generator(generator_model(config, spec, block),
                                 jax.random.fold_in(rng, 1))
  source = source_model(config, block).init(jax.random.fold_in(rng, 2),
                                            jnp.zeros((1,) + tuple(spec.input_shape)))
  return {"generator": generator, "source_classifier": source}


def load_source_classifier(config, spec: tasks.Spec, block: str = "pssl"):
  """The trained variables of C_s, config.<block>.source_classifier's run."""
  b = config[block]
  _, source = generative.load_classifier(b.source_classifier, tuple(spec.input_shape),
                                         b.source_classes, field=f"{block}.source_classifier")
  return source


def load_frozen(config, spec: tasks.Spec, block: str = "pssl"):
  """{"generator", "source_classifier"}: the trained variables of config.<block>'s runs."""
  generator = generative.load_generator(generator_model(config, spec, block),
                                        config[block].generator, f"{block}.generator")
  return {"generator": generator,
          "source_classifier": load_source_classifier(config, spec, block)}


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
    return load_frozen(self._config, self.spec)  # placed by the loop


def make_task(config, num_devices: int = 1) -> PsslTask:
  p = config.pssl
  if p.conditioning not in CONDITIONINGS:
    raise unknown("pssl.conditioning", p.conditioning, CONDITIONINGS)
  check_frozen_runs(config, "pssl", "the source classes", "configs/pp_pssl.py")
  if not p.temperature > 0:
    raise UserError(f"pssl.temperature={p.temperature} must be > 0")
  fixmatch.check_ssl(config)
  return PsslTask(config, num_devices)


def init(config, rng: jax.Array, spec: tasks.Spec) -> PsslState:
  state = erm.init(config, rng, spec)
  return PsslState(step=state.step, params=state.params, model_state=state.model_state,
                   opt_state=state.opt_state, **frozen_placeholders(config, rng, spec))


def source_conditions(config, state: PsslState, target_images: jax.Array,
                      rng: jax.Array) -> jax.Array:
  """c [N, source classes]: C_s's tempered posterior of each target image, or uniform
  one-hots (`pssl.conditioning`)."""
  p = config.pssl
  if p.conditioning == "uniform":
    labels = jax.random.randint(rng, (target_images.shape[0],), 0, p.source_classes)
    return jax.nn.one_hot(labels, p.source_classes)
  logits = source_model(config).apply(state.source_classifier, target_images, train=False)
  return jax.nn.softmax(logits / p.temperature)


def pseudo_samples(config, spec: tasks.Spec, state: PsslState, target_images: jax.Array,
                   rng: jax.Array):
  """(x_p, c): generated images conditioned on the target images, constants of the loss."""
  cond_key, z_key = jax.random.split(rng)
  c = source_conditions(config, state, target_images, cond_key)
  z = jax.random.normal(z_key, (target_images.shape[0], config.generator.latent_dim))
  images = generator_model(config, spec).apply(state.generator, z, c, train=False)
  return jax.lax.stop_gradient(images), c


def train_step(state: PsslState, batch, rng: jax.Array, *, config, spec: tasks.Spec):
  sample_key, step_key = jax.random.split(rng)
  images, c = pseudo_samples(config, spec, state, batch["target_image"], sample_key)
  state, metrics = fixmatch.ssl_step(state, batch, images, step_key, config=config, spec=spec)
  return state, {**metrics, "condition_entropy": losses.entropy(c).mean()}
