"""The random streams of a run: each is derived from the run's one key by a named fold.

In this JAX (threefry keys), `split(k, n)[i] == fold_in(k, i)`, so streams that different code
derives by `split` and by `fold_in` can coincide, and `key(seed + 1)` is the run key of the
next seed. The rule here: a run has one key, `run_key(seed)`; every stream is
`fold(parent, name)` = `fold_in(parent, TAGS[parent kind][name])`, tags distinct per parent;
a stream that varies per step or per evaluation batch folds in the step or the batch index
last. The only other key built from a number is the evaluation episodes' root, which is
shared by every run (the same test episodes for every method and seed) and sits under a tag
no run stream uses.

  run key = key(config.seed)
    init         0   the initial state                       (= split(run, 3)[0], as before)
    data         1   training batches                        (= split(run, 3)[1])
    step         2   fold_in(step, t): the train step t      (= split(run, 3)[2])
    start        3   a method's start_from (meta_gen_ssl's latent pool)
    eval         4   evaluation: fold(eval, split name), then fold_in(., batch index)
    report       5   a method's report (cgan's sample grid and quality score)
  data key (per task; the step is folded in by the sampler)
    indices      0   the batch's rows, epoch by epoch         (= split(data, 2)[0])
    augment      1   fold_in(augment, t): augmentation        (= split(data, 2)[1])
    latent_rows  2   meta_gen_ssl's rows of the latent pool
    extra        3   a second batch of the step (unlabeled / validation rows)
    host_augment 4   the streaming input's host transforms (random_resized_crop, flip_lr):
                     numpy Generator([seed, 4, step, position in the global batch])
  evaluation batch key
    attacks      0   robust accuracies (one fold per attack inside)
    margins      1   the adversarial margin histogram
    latents      2   cgan's z for the evaluation batch
    noise        3   ddpm's steps and noise of the evaluation batch's denoising loss
  episodes: fold_in(key(episodes.eval_seed), 1000) is the root of the evaluation episodes.
  reconstructions: fold_in(key(data.reconstruct.seed), 1001) is the root of a reconstructed
    dataset D^(t) (jaxlab.data.reconstruction): fold_in(., t), then fold_in(., example index),
    so that every run that reads D^(t) with that seed reads the same images.

Split names fold in by a CRC-32 of the name, so `validation` and `test` batches differ.
"""

import zlib

import jax

TAGS = {
    "run": {"init": 0, "data": 1, "step": 2, "start": 3, "eval": 4, "report": 5},
    "data": {"indices": 0, "augment": 1, "latent_rows": 2, "extra": 3, "host_augment": 4},
    "eval_batch": {"attacks": 0, "margins": 1, "latents": 2, "noise": 3},
}
EVAL_EPISODES_TAG = 1000
RECONSTRUCTION_TAG = 1001


def run_key(seed: int) -> jax.Array:
  """The one key of a run with `config.seed = seed`."""
  return jax.random.key(seed)


def fold(parent: jax.Array, kind: str, name: str) -> jax.Array:
  """The stream `name` of a `kind` key (a key of TAGS)."""
  return jax.random.fold_in(parent, TAGS[kind][name])


def run_stream(seed: int, name: str) -> jax.Array:
  return fold(run_key(seed), "run", name)


def eval_batch_key(seed: int, split: str, index) -> jax.Array:
  """The key of evaluation batch `index` of `split` (the same at every evaluation of a run,
  so checkpoints are compared on the same draws)."""
  per_split = jax.random.fold_in(run_stream(seed, "eval"), zlib.crc32(split.encode()))
  return jax.random.fold_in(per_split, index)


def eval_episodes_root(eval_seed: int) -> jax.Array:
  """The root of the evaluation episodes, shared by every run with this `eval_seed`."""
  return jax.random.fold_in(jax.random.key(eval_seed), EVAL_EPISODES_TAG)
