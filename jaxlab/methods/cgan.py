"""`cgan`: trains the class-conditional GAN that MGR, GDA, PCR, P-SSL and meta-gen-SSL use as a
frozen generator.

Variants: `cgan`.
Spec: docs/specs/generative_and_finetuning.md §0.4 (conditional generator interface) and
§2(g) (a tiny conditional GAN trained on the full digits training split). Model: conditional-
BatchNorm generator and projection discriminator with spectral normalisation
(`jaxlab.models.gan`). Loss: the hinge loss (Lim & Ye 2017, arXiv 1705.02894; as SNGAN and
BigGAN),
    L_D = E relu(1 - D(x, y)) + E relu(1 + D(G(z, c), c)),   L_G = -E D(G(z, c), c),
z ~ N(0, I), c one-hot of a uniform class; `gan.disc_steps` discriminator steps (fresh z, the
same real batch) then one generator step per train step. The generator's optimizer is
`config.optimizer`, the discriminator's `config.gan.disc_optimizer`.

State: `params`/`model_state` are the generator's ({"batch_stats"}), so another run loads it
with `load_pretrained(workdir, like=generator variables)`; the discriminator rides along.
Evaluation: mean discriminator scores of the real split and of class-matched samples. At the
end (`report`): `samples.png` (a grid of samples, one row per class, up to 10 classes) and,
with `inputs.score_classifier` set, the quality score of `jaxlab.eval.generative` on the
`gan.score_split` split: `quality/frechet_distance`, `quality/sample_accuracy`,
`quality/real_accuracy`. The score classifier is the optional frozen input `score_classifier`
(`inputs.score_classifier`, a classifier run on the same data, e.g. configs/erm.py:digits),
read and checked before training like every input.
"""

import os
from typing import Any, Dict

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlab import streams
from jaxlab.data import augment, tasks
from jaxlab.eval import generative
from jaxlab.models import gan
from jaxlab.train import inputs, optim
from jaxlab.train.protocol import Variant
from jaxlab.train.state import TrainState

SCORE_CLASSIFIER = inputs.classifier(
    "score_classifier", "a classifier run on the same data (e.g. configs/erm.py:digits)",
    classes=lambda config, spec: spec.num_classes, required=False)
VARIANTS = {"cgan": Variant(inputs=(SCORE_CLASSIFIER,), blocks=("generator", "gan"))}

make_task = tasks.SupervisedTask


@flax.struct.dataclass
class GANState(TrainState):
  disc_params: Any
  disc_state: Any          # {"spectral": power-iteration vectors}
  disc_opt_state: Any


def _networks(config, spec: tasks.Spec):
  return (gan.build_generator(config.generator, spec.num_classes, spec.input_shape),
          gan.build_discriminator(config.generator, spec.num_classes))


def _disc_optimizer(config) -> optax.GradientTransformation:
  """`gan.disc_optimizer`, its schedule on generator steps (`gan.disc_steps` updates each)."""
  return optim.make_optimizer(config.gan.disc_optimizer, config.train.steps,
                              updates_per_step=config.gan.disc_steps)


def init(config, rng: jax.Array, spec: tasks.Spec) -> GANState:
  generator, discriminator = _networks(config, spec)
  g_key, d_key = jax.random.split(rng)
  g_vars = gan.init_generator(generator, g_key)
  g_params = g_vars.pop("params")
  d_vars = dict(discriminator.init(d_key, jnp.zeros((2,) + tuple(spec.input_shape)),
                                   jnp.zeros((2, spec.num_classes))))
  d_params = d_vars.pop("params")
  total = config.train.steps
  return GANState(
      step=jnp.zeros((), jnp.int32), params=g_params, model_state=g_vars,
      opt_state=optim.make_optimizer(config.optimizer, total).init(g_params),
      disc_params=d_params, disc_state=d_vars,
      disc_opt_state=_disc_optimizer(config).init(d_params))


def train_step(state: GANState, batch, rng: jax.Array, *, config, spec: tasks.Spec):
  generator, discriminator = _networks(config, spec)
  total = config.train.steps
  real, real_c = batch["image"], jax.nn.one_hot(batch["label"], spec.num_classes)
  n = real.shape[0]
  g_vars = {"params": state.params, **state.model_state}
  d_params, d_state, d_opt_state = state.disc_params, state.disc_state, state.disc_opt_state
  d_tx = _disc_optimizer(config)

  for i in range(config.gan.disc_steps):
    z, _, c = gan.sample_conditions(jax.random.fold_in(rng, i), n, spec.num_classes,
                                generator.latent_dim)
    fake, _ = generator.apply(g_vars, z, c, train=True, mutable=["batch_stats"])
    fake = jax.lax.stop_gradient(fake)

    def disc_loss(params):
      scores, new_state = discriminator.apply(
          {"params": params, **d_state}, jnp.concatenate([real, fake]),
          jnp.concatenate([real_c, c]), update_stats=True, mutable=["spectral"])
      on_real, on_fake = scores[:n], scores[n:]
      loss = jax.nn.relu(1.0 - on_real).mean() + jax.nn.relu(1.0 + on_fake).mean()
      return loss, (dict(new_state), on_real.mean(), on_fake.mean())

    (d_loss, (d_state, d_real, d_fake)), grads = jax.value_and_grad(
        disc_loss, has_aux=True)(d_params)
    updates, d_opt_state = d_tx.update(grads, d_opt_state, d_params)
    d_params = optax.apply_updates(d_params, updates)

  z, _, c = gan.sample_conditions(jax.random.fold_in(rng, config.gan.disc_steps), n, spec.num_classes,
                              generator.latent_dim)

  def gen_loss(params):
    fake, new_state = generator.apply({"params": params, **state.model_state}, z, c,
                                      train=True, mutable=["batch_stats"])
    scores = discriminator.apply({"params": d_params, **d_state}, fake, c, update_stats=False)
    return -scores.mean(), dict(new_state)

  (g_loss, g_state), grads = jax.value_and_grad(gen_loss, has_aux=True)(state.params)
  g_tx = optim.make_optimizer(config.optimizer, total)
  updates, g_opt_state = g_tx.update(grads, state.opt_state, state.params)
  metrics = {"disc_loss": d_loss, "gen_loss": g_loss, "disc_real": d_real, "disc_fake": d_fake}
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       model_state=g_state, opt_state=g_opt_state, disc_params=d_params,
                       disc_state=d_state, disc_opt_state=d_opt_state), metrics


def generate(config, state: TrainState, spec: tasks.Spec, z: jax.Array,
             c: jax.Array) -> jax.Array:
  """Eval-mode samples G(z, c) of the generator in `state`."""
  generator = gan.build_generator(config.generator, spec.num_classes, spec.input_shape)
  return generator.apply({"params": state.params, **state.model_state}, z, c, train=False)


def eval_step(state: GANState, batch, key: jax.Array, *, config, spec: tasks.Spec):
  _, discriminator = _networks(config, spec)
  c = jax.nn.one_hot(batch["label"], spec.num_classes)
  z = jax.random.normal(streams.fold(key, "eval_batch", "latents"),
                        (c.shape[0], config.generator.latent_dim))
  d_vars = {"params": state.disc_params, **state.disc_state}
  fake = generate(config, state, spec, z, c)
  return {"disc_real": discriminator.apply(d_vars, batch["image"], c),
          "disc_fake": discriminator.apply(d_vars, fake, c)}


def report(state: GANState, task, workdir: str, *, config, spec: tasks.Spec,
           write_files: bool = True) -> Dict[str, float]:
  """The sample grid (`samples.png`) and, with `inputs.score_classifier`, the quality score."""
  latent_dim, k = config.generator.latent_dim, spec.num_classes
  sample = jax.jit(lambda z, c: generate(config, state, spec, z, c))
  key = streams.run_stream(config.seed, "report")
  if write_files:
    shown = min(k, 10)
    labels = np.repeat(np.arange(shown), 10)
    z = jax.random.normal(jax.random.fold_in(key, 0), (len(labels), latent_dim))
    images = np.asarray(sample(z, jax.nn.one_hot(labels, k)))
    generative.save_image_grid(os.path.join(workdir, "samples.png"), images, columns=10)
  if "score_classifier" not in state.frozen:
    return {}
  real = task.split_arrays(config.gan.score_split)
  labels = real["label"]
  z = jax.random.normal(jax.random.fold_in(key, 1), (len(labels), latent_dim))
  fakes = generative.in_chunks(lambda zs, ys: sample(zs, jax.nn.one_hot(ys, k)), z, labels)
  model = inputs.classifier_model(config, "score_classifier", k)
  variables = jax.device_get(state.frozen["score_classifier"])
  scores = generative.quality(model, variables, np.asarray(augment.to_float(real["image"])),
                              labels, fakes, labels)
  return {f"quality/{name}": value for name, value in scores.items()}
