"""Diffusion models for synthetic training data: a class-conditional DDPM, and the
reconstruction-gap study of Yamaguchi & Fukuda, "On the Limitation of Diffusion Models for
Synthesizing Training Datasets" (arXiv 2311.13090; spec
docs/specs/generative_and_finetuning.md §5).

Variants:
  `ddpm`           trains a class-conditional DDPM (epsilon prediction, the simple loss, t
                   uniform in 1..T; jaxlab.models.diffusion): `model` names the noise
                   predictor (`eps_mlp` for 8x8, `unet` for 16-32 px; jaxlab.models.unet),
                   `diffusion` the schedule (linear or cosine, T), classifier-free guidance's
                   label dropout (`p_uncond`: the label is replaced by the null class), the
                   EMA of the weights (`ema_decay`, warmed up as min(decay, (1+n)/(10+n)))
                   and the sampler of the report (ddpm ancestral | ddim, steps, eta,
                   guidance). Evaluation: the denoising loss of the EMA weights on each
                   split (t and noise fixed per batch). Report: `samples.png` (a row per
                   class, up to 10) and, with `inputs.score_classifier`, the quality score of
                   the cgan family (jaxlab.eval.generative: Frechet distance in that
                   classifier's features, sample accuracy), so the two generators compare.
                   The EMA weights are `model_state["ema"]`: the run is a frozen generator of
                   GDA / PCR / MGR, P-SSL and meta-gen-SSL with `generator.kind=ddpm`
                   (jaxlab.train.inputs.generator_model).
  `diffusion_gap`  the §5(c) analysis (a zero-step run, `train.steps=0`): for every t/T in
                   `gap.t_grid`, the reconstructed training set D^(t) (jaxlab.data
                   .reconstruction, the same images a classifier run with the same
                   `data.reconstruct` settings trains on) measured in the features of a
                   reference classifier trained on real data (`inputs.reference`): the mean
                   distance to the real class centroids and the classes' spread, the
                   reference's confidence in the kept label, its loss and accuracy,
                   precision / recall / density / coverage against the real training set
                   (k-NN, `gap.k`), the pixel RMS distance ||R_t(x) - x||, and the Frechet
                   distance. Written as `gap/t<t>/<metric>` in results.json, `gap.json`,
                   `gap_curves.png` and `reconstructions.png` (a row per t).
The classifiers trained on D^(t) are any supervised run with `data.reconstruct` set
(configs/diffusion_gap.py).
"""

import json
import os
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlab import streams
from jaxlab.data import reconstruction, tasks
from jaxlab.errors import UserError, unknown
from jaxlab.eval import generative
from jaxlab.models import diffusion
from jaxlab.train import inputs, losses, optim
from jaxlab.train.protocol import Variant
from jaxlab.train.state import TrainState

SCORE_CLASSIFIER = inputs.classifier(
    "score_classifier", "a classifier run on the same data (e.g. configs/erm.py:digits)",
    classes=lambda config, spec: spec.num_classes, required=False)
GAP_INPUTS = (inputs.diffusion_run("diffusion", "a ddpm run on the same data (configs/ddpm.py)"),
              inputs.classifier("reference", "a classifier trained on the real data",
                                classes=lambda config, spec: spec.num_classes))


def _gap_task(config, num_devices: int = 1) -> tasks.SupervisedTask:
  if config.train.steps != 0:
    raise UserError(f"diffusion_gap is an analysis: run it with train.steps=0, not "
                    f"{config.train.steps}")
  if config.data.reconstruct.run:
    raise UserError("diffusion_gap reconstructs the real training set itself (from "
                    "inputs.diffusion): leave data.reconstruct.run empty")
  return tasks.supervised(config, num_devices)


def _gap_init(config, rng: jax.Array, spec: tasks.Spec) -> TrainState:
  del config, rng, spec  # nothing is trained
  return TrainState(step=jnp.zeros((), jnp.int32), params={}, model_state={}, opt_state=())


def _gap_step(state: TrainState, batch, rng: jax.Array, *, config, spec: tasks.Spec):
  del batch, rng, config, spec  # never taken (train.steps=0, checked by the task)
  return state.replace(step=state.step + 1), {}


def _gap_eval(state: TrainState, batch, key: jax.Array, *, config, spec: tasks.Spec):
  """The reference classifier on the real split (its accuracy: a check of the reference)."""
  model = inputs.classifier_model(config, "reference", spec.num_classes)
  logits = model.apply(state.frozen["reference"], batch["image"], train=False)
  return {"reference_accuracy": losses.correct(logits, batch["label"])}


make_task = tasks.supervised


def _model(config, spec: tasks.Spec) -> diffusion.Diffusion:
  return diffusion.build(config.model, config.diffusion, spec.num_classes, spec.input_shape)


def _check(d) -> None:
  for field, value, choices in (("sampler", d.sampler, diffusion.SAMPLERS),
                                ("variance", d.variance, diffusion.VARIANCES),
                                ("schedule", d.schedule, diffusion.SCHEDULES)):
    if value not in choices:
      raise unknown(f"diffusion.{field}", value, choices)


def init(config, rng: jax.Array, spec: tasks.Spec) -> TrainState:
  _check(config.diffusion)
  params = _model(config, spec).init(rng)["params"]
  tx = optim.make_optimizer(config.optimizer, config.train.steps)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state={"ema": params},
                    opt_state=tx.init(params))


def train_step(state: TrainState, batch, rng: jax.Array, *, config, spec: tasks.Spec):
  model, d = _model(config, spec), config.diffusion
  loss_fn = lambda p: model.loss(p, batch["image"], batch["label"], rng, d.p_uncond).mean()
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  new = optim.apply_gradients(state, grads, config)
  n = state.step.astype(jnp.float32)
  decay = jnp.minimum(d.ema_decay, (1.0 + n) / (10.0 + n))
  ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.model_state["ema"],
                     new.params)
  return new.replace(model_state={"ema": ema}), {"loss": loss,
                                                  "grad_norm": optax.tree.norm(grads)}


def eval_step(state: TrainState, batch, key: jax.Array, *, config, spec: tasks.Spec):
  """The denoising loss of the EMA weights (conditional), t and noise from the batch key."""
  loss = _model(config, spec).loss(state.model_state["ema"], batch["image"], batch["label"],
                                   streams.fold(key, "eval_batch", "noise"))
  return {"loss": loss}


def sampler_settings(d) -> Dict:
  """The reverse-process keywords of `config.diffusion` (the report's sampler)."""
  return dict(sampler=d.sampler, steps=d.sample_steps, eta=d.eta, clip=d.clip,
              variance=d.variance)


def sample_fn(config, spec: tasks.Spec, state: TrainState):
  """Jitted (z [B, H, W, C], labels [B], keys [B]) -> images in [0, 1] from the EMA weights
  with the report's sampler and guidance."""
  model, d = _model(config, spec), config.diffusion
  weights = {"params": state.model_state["ema"]}
  return jax.jit(lambda z, y, keys: model.sample(
      weights, z, jax.nn.one_hot(y, spec.num_classes), keys, guidance=d.guidance,
      **sampler_settings(d)))


def _draw(sample, key: jax.Array, labels: np.ndarray, image_shape) -> np.ndarray:
  """Samples for `labels`: sample i's x_T and step noises from folds of `key` by i."""
  z_key, noise_key = jax.random.split(key)
  index = jnp.arange(len(labels))
  z = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(z_key, i), tuple(image_shape)))(index)
  keys = jax.vmap(lambda i: jax.random.fold_in(noise_key, i))(index)
  return generative.in_chunks(sample, z, jnp.asarray(labels), keys)


def report(state: TrainState, task, workdir: str, *, config, spec: tasks.Spec,
           write_files: bool = True) -> Dict[str, float]:
  """`samples.png` and, with `inputs.score_classifier`, the quality score."""
  sample = sample_fn(config, spec, state)
  key = streams.run_stream(config.seed, "report")
  if write_files:
    shown = min(spec.num_classes, 10)
    images = _draw(sample, jax.random.fold_in(key, 0), np.repeat(np.arange(shown), 10),
                   spec.input_shape)
    generative.save_image_grid(os.path.join(workdir, "samples.png"), images, columns=10)
  if "score_classifier" not in state.frozen:
    return {}
  real = task.split_arrays(config.diffusion.score_split)
  fakes = _draw(sample, jax.random.fold_in(key, 1), real["label"], spec.input_shape)
  model = inputs.classifier_model(config, "score_classifier", spec.num_classes)
  scores = generative.quality(model, jax.device_get(state.frozen["score_classifier"]),
                              real["image"].astype(np.float32) / 255.0, real["label"], fakes,
                              real["label"])
  return {f"quality/{name}": value for name, value in scores.items()}


# -- the reconstruction gap (§5) ----------------------------------------------------------

GAP_METRICS = ("reference_accuracy", "confidence", "loss", "centroid_distance", "spread",
               "precision", "recall", "density", "coverage", "pixel_distance",
               "frechet_distance")


def gap_metrics(ref_model, ref_variables, real: np.ndarray, labels: np.ndarray,
                reconstructed: np.ndarray, num_classes: int, k: int,
                manifold_rows: np.ndarray) -> Dict[str, float]:
  """The §5(b) measures of a reconstructed set (uint8 images, the real set's labels)."""
  real_f, recon_f = (x.astype(np.float32) / 255.0 for x in (real, reconstructed))
  _, real_features = generative.logits_and_features(ref_model, ref_variables, real_f)
  logits, features = generative.logits_and_features(ref_model, ref_variables, recon_f)
  log_probs = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32))
  kept = np.asarray(jnp.take_along_axis(log_probs, jnp.asarray(labels)[:, None], 1)[:, 0])
  out = {"reference_accuracy": float(np.mean(logits.argmax(-1) == labels)),
         "confidence": float(np.mean(np.exp(kept))), "loss": float(-np.mean(kept)),
         **generative.class_geometry(features, labels, generative.class_centroids(
             real_features, labels, num_classes)),
         **generative.manifold_metrics(real_features[manifold_rows], features[manifold_rows], k),
         "pixel_distance": float(np.mean(np.sqrt(np.mean(
             (recon_f - real_f).reshape(len(real_f), -1) ** 2, axis=1)))),
         "frechet_distance": generative.frechet_distance(real_features, features)}
  return out


def gap_report(state: TrainState, task, workdir: str, *, config, spec: tasks.Spec,
               write_files: bool = True) -> Dict[str, float]:
  rc, g = config.data.reconstruct, config.gap
  model = inputs.diffusion_model(config.inputs.diffusion, "inputs.diffusion", spec.num_classes,
                                 spec.input_shape)
  variables = jax.device_get(state.frozen["diffusion"])
  ref_model = inputs.classifier_model(config, "reference", spec.num_classes)
  ref_variables = jax.device_get(state.frozen["reference"])
  train = task.train_arrays()
  n = len(train["label"])
  rows = np.sort(np.random.default_rng(g.manifold_seed).permutation(n)[:g.manifold_examples]
                 if g.manifold_examples and g.manifold_examples < n else np.arange(n))
  table, shown = {}, [train["image"][:g.shown]]
  for fraction in g.t_grid:
    t = reconstruction.step_of(model, fraction)
    images = reconstruction.reconstruct_images(model, variables, train["image"],
                                               train["label"], t, rc)
    table[f"{fraction:g}"] = {"t": t, **gap_metrics(
        ref_model, ref_variables, train["image"], train["label"], images, spec.num_classes,
        g.k, rows)}
    shown.append(images[:g.shown])
    print(f"diffusion_gap: t/T={fraction:g} (t={t}) " + " ".join(
        f"{name} {table[f'{fraction:g}'][name]:.4g}" for name in GAP_METRICS), flush=True)
  if write_files:
    with open(os.path.join(workdir, "gap.json"), "w") as f:
      json.dump(table, f, indent=1)
    generative.save_image_grid(os.path.join(workdir, "reconstructions.png"),
                               np.concatenate(shown).astype(np.float32) / 255.0,
                               columns=g.shown)
    _plot_gap(table, os.path.join(workdir, "gap_curves.png"))
  return {f"gap/t{fraction}/{name}": value for fraction, row in table.items()
          for name, value in row.items() if name != "t"}


def _plot_gap(table, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fractions = [float(f) for f in table]
  fig, axes = plt.subplots(2, 4, figsize=(13, 5.5))
  panels = (("reference_accuracy", "confidence"), ("loss",), ("centroid_distance", "spread"),
            ("precision", "recall", "density", "coverage"), ("pixel_distance",),
            ("frechet_distance",))
  for ax, names in zip(axes.flat, panels):
    for name in names:
      ax.plot(fractions, [row[name] for row in table.values()], marker="o", label=name)
    ax.set_xlabel("t / T")
    ax.legend(fontsize=7)
  for ax in axes.flat[len(panels):]:
    ax.axis("off")
  fig.suptitle("reconstructed training sets D^(t) in the reference classifier's features")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


VARIANTS = {
    "ddpm": Variant(inputs=(SCORE_CLASSIFIER,), blocks=("diffusion",)),
    "diffusion_gap": Variant(inputs=GAP_INPUTS, blocks=("gap",), functions=dict(
        make_task=_gap_task, init=_gap_init, train_step=_gap_step, eval_step=_gap_eval,
        report=gap_report)),
}
