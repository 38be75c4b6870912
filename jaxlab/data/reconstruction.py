"""Reconstructed training sets D^(t) of a trained diffusion model (arXiv 2311.13090; spec
docs/specs/generative_and_finetuning.md §5(b)-(c)).

    D^(t) = {(R_t(x_i, y_i), y_i)}: each training image forward-noised to step t and taken
    back to 0 by the model's reverse process, class-conditional on its own label, the label
    kept.

Any supervised preset trains on D^(t) through the data option `data.reconstruct` (a block,
present in configs/diffusion_gap.py's presets):
  run       the `ddpm` run's workdir ("" = the real data)
  t         the start step as a fraction of the run's T, in [0, 1] (rounded to a step)
  sampler   ddpm (ancestral over every remaining step, the default) | ddim
  steps     the number of reverse steps (0: every one)
  eta       DDIM's eta
  guidance  the classifier-free guidance scale s (1: the conditional model, no guidance)
  seed      the dataset's seed: example i's noise comes from fold_in(fold_in(root, t), i)
            (jaxlab.streams), so D^(t) does not depend on the batch it is made in, and every
            run (classifiers, the `diffusion_gap` analysis) given the same seed reads the
            same images.
Only the training split is reconstructed (validation carved from it, and the test split,
stay real). Reconstructions are rounded to uint8, as a saved synthetic dataset would be.
The model's weights are its EMA weights.
"""

from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab import streams
from jaxlab.errors import UserError
from jaxlab.models import diffusion

Arrays = Dict[str, np.ndarray]
FIELD = "data.reconstruct.run"


def step_of(model: diffusion.Diffusion, fraction: float) -> int:
  if not 0.0 <= fraction <= 1.0:
    raise UserError(f"data.reconstruct.t={fraction!r} must be a fraction of T in [0, 1]")
  return int(round(fraction * model.schedule.steps))


def example_keys(seed: int, t: int, indices: np.ndarray) -> jax.Array:
  root = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), streams.RECONSTRUCTION_TAG), t)
  return jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.asarray(indices))


def reconstruct_images(model: diffusion.Diffusion, variables, images: np.ndarray,
                       labels: np.ndarray, t: int, rc, chunk: int = 512) -> np.ndarray:
  """R_t of uint8 images [N, H, W, C] with their labels, as uint8 (`rc`: the sampler fields
  of `data.reconstruct`)."""
  if t == 0:
    return images
  weights = {"params": variables["ema"]}

  @jax.jit
  def run(x, y, keys):
    c = jax.nn.one_hot(y, model.num_classes)
    return model.reconstruct(weights, x, c, t, keys, guidance=rc.guidance, sampler=rc.sampler,
                             steps=rc.steps, eta=rc.eta)

  out = []
  for start in range(0, len(images), chunk):
    rows = np.arange(start, min(start + chunk, len(images)))
    x = jnp.asarray(images[rows], jnp.float32) / 255.0
    out.append(np.asarray(run(x, jnp.asarray(labels[rows]),
                              example_keys(rc.seed, t, rows))))
  return np.round(np.concatenate(out) * 255.0).astype(np.uint8)


def reconstructed(arrays: Arrays, rc, num_classes: int) -> Arrays:
  """The training arrays with their images replaced by R_t (as `data.reconstruct` says)."""
  # jaxlab.train reads other runs; imported here because it imports this package
  from jaxlab.train import checkpoint, inputs  # pylint: disable=g-import-not-at-top
  image_shape = arrays["image"].shape[1:]
  model = inputs.diffusion_model(rc.run, FIELD, num_classes, image_shape)
  like = jax.eval_shape(lambda: diffusion.DiffusionGenerator(model).init(jax.random.key(0)))
  variables = checkpoint.load_pretrained(rc.run, like, field=FIELD)
  t = step_of(model, rc.t)
  return {**arrays, "image": reconstruct_images(model, variables, arrays["image"],
                                                arrays["label"], t, rc)}
