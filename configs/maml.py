"""MAML / FOMAML / ANIL / BOIL presets: few-shot classification and sinusoid regression.

Hyperparameters of Finn et al. 2017 (see
docs/specs/meta_learning_and_sparse.md §1(d)); pick the variant with
`--config.method=maml|fomaml|anil|boil`.

  python -m jaxlab.main --config=configs/maml.py:glyphs_5w1s --workdir=runs/maml_glyphs_5w1s

Presets (`:name`):
  sinusoid          MLP 1-40-40-1, K=10, alpha 0.01, 1 step (test up to 10), 25 tasks/batch.
  glyphs_5w1s       Conv-4 (64 filters, strided, batch-statistics BN) on embedded glyphs,
  glyphs_5w5s       5-way 1/5-shot, alpha 0.4, 1 train / 3 test steps, 32 tasks/batch.
  glyphs_20w1s      20-way 1-shot, alpha 0.1, 5 steps, 16 tasks/batch.
  omniglot_5w1s     the same on TFDS omniglot (28x28 grayscale; background alphabets for
  omniglot_20w1s    meta-training, evaluation alphabets for meta-test).
  mini_imagenet_5w1s  Conv-4 (32 filters, max-pool) on miniImageNet (manual download, see
  mini_imagenet_5w5s  jaxlab/data/mini_imagenet.py), alpha 0.01, 5 train / 10 test steps,
                    15 queries, 4 / 2 tasks per batch, meta-gradients clipped to [-10, 10].
  tiny              a few steps on glyphs; for tests.
The omniglot and mini_imagenet presets take `bn`: "torchmeta" (default; the torchmeta/BOIL
Conv-4's BatchNorm: batch statistics, scale and offset, eps 1e-5, adapted in the inner loop)
or "maml_tf" (MAML's TF code: tf.contrib batch_norm with an offset and no scale, eps 1e-3,
batch statistics, the offsets learned by the outer loop only; spec §1, Conv-4 variants 1-2).
All run 60,000 outer steps as in the paper (70,000 for sinusoid); on a 2-core CPU use
fewer (`--config.train.steps=...`), see docs/maml.md for the commands we ran.
"""

from jaxlab.config import ConfigDict, meta_learning_config, presets
from jaxlab.errors import unknown

BATCH_NORMS = ("torchmeta", "maml_tf")


def _batch_norm(c, bn):
  if bn not in BATCH_NORMS:
    raise unknown("bn (preset argument)", bn, BATCH_NORMS, "configs/maml.py")
  if bn == "maml_tf":
    c.model.update(dict(norm="batch_stats_offset", norm_epsilon=1e-3))
    c.meta.inner_frozen = "BatchStatNorm"  # the offsets are outer-loop variables only
  return c


def sinusoid():
  c = meta_learning_config()
  c.data.name = "sinusoid"
  c.data.eval_splits = "test"
  c.episodes.update(dict(shots=10, queries=10, meta_batch=25, eval_points=100))
  c.meta.update(dict(inner_lr=0.01, train_steps=1, test_steps=10))
  c.model = ConfigDict(dict(name="mlp", hidden=(40, 40), norm="none", weight_init="torch"))
  c.train.steps = 70000
  c.train.log_every = 1000
  c.train.checkpoint_every = 10000
  return c


def _omniglot_like(name, ways, shots):
  c = meta_learning_config()
  c.data.name = name
  c.episodes.update(dict(ways=ways, shots=shots, queries=shots))
  c.model = ConfigDict(dict(name="conv4", filters=64, variant="strided", norm="batch_stats",
                            weight_init="flax"))
  if ways == 5:
    c.episodes.meta_batch = 32
    c.meta.update(dict(inner_lr=0.4, train_steps=1, test_steps=3))
  else:
    c.episodes.meta_batch = 16
    c.meta.update(dict(inner_lr=0.1, train_steps=5, test_steps=5))
  c.train.steps = 60000
  return c


def _omniglot(ways, shots, bn="torchmeta"):
  c = _omniglot_like("omniglot", ways, shots)
  c.data.update(dict(image_size=28, grayscale=True, eval_splits="test"))
  return _batch_norm(c, bn)


def _mini_imagenet(shots, bn="torchmeta"):
  c = meta_learning_config()
  c.data.name = "mini_imagenet"
  c.episodes.update(dict(ways=5, shots=shots, queries=15, meta_batch=4 if shots == 1 else 2,
                         rotations="none", eval_meta_batch=10))
  c.model = ConfigDict(dict(name="conv4", filters=32, variant="pool", norm="batch_stats",
                            weight_init="flax"))
  c.meta.update(dict(inner_lr=0.01, train_steps=5, test_steps=10))
  c.optimizer.grad_clip_value = 10.0
  c.train.steps = 60000
  return _batch_norm(c, bn)


def tiny():
  c = _omniglot_like("glyphs", 5, 1)
  c.model.filters = 8
  c.episodes.update(dict(meta_batch=4, eval_episodes=20, eval_meta_batch=10))
  c.meta.task_parallel = "vmap"  # compiles fastest
  c.train.update(dict(steps=10, log_every=5, checkpoint_every=5))
  return c


DEFAULT = 'glyphs_5w1s'
# the presets in rows of `jaxlab presets` and the README's table (jaxlab.catalog; a test checks
# that every preset is in one row and that the README shows these rows)
ROWS = [
    ('glyphs_5w1s, glyphs_5w5s, glyphs_20w1s', 'Conv-4, embedded `glyphs` (Omniglot stand-in)'),
    ('sinusoid', "MAML paper's sinusoid regression, MLP 1-40-40-1"),
    ('omniglot_5w1s, omniglot_20w1s', 'Conv-4, TFDS `omniglot`, rotations as new classes'),
    ('mini_imagenet_5w1s, mini_imagenet_5w5s',
     'Conv-4 (32 filters), miniImageNet from `data.manual_dir`'),
    ('tiny', 'a few steps on glyphs, for smoke tests'),
]

PRESETS = {
    "sinusoid": sinusoid,
    "glyphs_5w1s": lambda: _omniglot_like("glyphs", 5, 1),
    "glyphs_5w5s": lambda: _omniglot_like("glyphs", 5, 5),
    "glyphs_20w1s": lambda: _omniglot_like("glyphs", 20, 1),
    "omniglot_5w1s": lambda bn="torchmeta": _omniglot(5, 1, bn),
    "omniglot_20w1s": lambda bn="torchmeta": _omniglot(20, 1, bn),
    "mini_imagenet_5w1s": lambda bn="torchmeta": _mini_imagenet(1, bn),
    "mini_imagenet_5w5s": lambda bn="torchmeta": _mini_imagenet(5, bn),
    "tiny": tiny,
}


def get_config(arg=None):
  return presets(arg, PRESETS, DEFAULT, "configs/maml.py")
