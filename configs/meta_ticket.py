"""Meta-ticket presets, with MAML on the same networks for comparison
(docs/specs/meta_learning_and_sparse.md §2).

  python -m jaxlab.main --config=configs/meta_ticket.py:glyphs_5w1s,factor=4 --workdir=runs/mt
  python -m jaxlab.main --config=configs/meta_ticket.py:glyphs_5w1s,factor=4,method=maml ...

Preset arguments: method (meta_ticket | maml | anil | boil), factor (MLP width factor),
rerand_rate (Meta-ticket re-randomisation every 1000 steps; 0 = off).
  glyphs_5w1s / glyphs_5w5s   MT's Omniglot MLP [256, 128, 64, 64] x factor (Linear + BN with
                              batch statistics, eps 1e-3), kaiming_normal weights, 5-way,
                              queries = shots, 4 tasks/batch, inner lr 0.4, 1 train / 3 test
                              steps. Meta-ticket: SGD lr 10 (momentum 0.9), warm-up 1000 +
                              cosine, init_sparsity 0, random head never meta-learned.
                              MAML: AdamW 1e-3 (wd 0).
  omniglot_5w1s / omniglot_5w5s  the same on TFDS omniglot (28x28 grayscale).
  mini_imagenet_5w1s / _5w5s  ResNet-12 (64-128-256-512), inner lr 0.3, 1 step, lr 10 (MT) /
                              AdamW 6e-4 (MAML).
  sinusoid_hybrid             §2(g) exp. 2: only the 40x40 layer masked; the outer layers and
                              biases meta-learned with AdamW 1e-3 (aux); scores AdamW 1e-3;
                              inner lr 0.01, 5 steps, 5 support + 5 query points;
                              re-randomisation rate 1.0 every 1000 steps.
Iterations: 30,000 (MT's configs); on a 2-core CPU see docs/supermask.md.
"""

import ml_collections

from jaxlab.config import meta_learning_config, presets


def _method(c, method, rerand_rate, score_lr=10.0, warmup=1000, maml_lr=1e-3):
  c.method = method
  c.meta_ticket = ml_collections.ConfigDict(dict(aux="", first_order=False))
  c.supermask = ml_collections.ConfigDict(dict(
      policy="fixed_threshold", sparsity=0.0, include="kernel", exclude="head",
      rerand_period=1000, rerand_rate=rerand_rate, score_init=""))
  c.aux_optimizer = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=1e-3, schedule="constant", warmup_steps=0, weight_decay=0.0))
  if method == "meta_ticket":
    # MT's warm-up: lr (t + 1) / (W + 1) for t < W, then cosine over the remaining steps
    c.optimizer.update(dict(name="sgd", learning_rate=score_lr, momentum=0.9,
                            schedule="cosine", warmup_steps=warmup, warmup_offset=1))
  else:
    c.optimizer.update(dict(name="adamw", learning_rate=maml_lr, weight_decay=0.0))
  return c


def _mlp(c, factor):
  c.model = ml_collections.ConfigDict(dict(
      name="mlp", hidden=tuple(int(h * factor) for h in (256, 128, 64, 64)), norm="batch_stats",
      norm_epsilon=1e-3, weight_init="kaiming_normal"))
  return c


def _glyphs_like(name, shots, method, factor, rerand_rate):
  c = _mlp(meta_learning_config(), factor)
  c.data.name = name
  c.episodes.update(dict(ways=5, shots=shots, queries=shots, meta_batch=4))
  c.meta.update(dict(inner_lr=0.4, train_steps=1, test_steps=3))
  c.train.update(dict(steps=30000, log_every=250, eval_every=1000))
  return _method(c, method, rerand_rate)


def glyphs_5w1s(method="meta_ticket", factor=1, rerand_rate=0.0):
  return _glyphs_like("glyphs", 1, method, factor, rerand_rate)


def glyphs_5w5s(method="meta_ticket", factor=1, rerand_rate=0.0):
  return _glyphs_like("glyphs", 5, method, factor, rerand_rate)


def _omniglot(shots, method, factor, rerand_rate):
  c = _glyphs_like("omniglot", shots, method, factor, rerand_rate)
  c.data.update(dict(image_size=28, grayscale=True, eval_splits="test"))
  return c


def omniglot_5w1s(method="meta_ticket", factor=1, rerand_rate=0.0):
  return _omniglot(1, method, factor, rerand_rate)


def omniglot_5w5s(method="meta_ticket", factor=1, rerand_rate=0.0):
  return _omniglot(5, method, factor, rerand_rate)


def _mini_imagenet(shots, method, rerand_rate):
  c = meta_learning_config()
  c.data.name = "mini_imagenet"
  c.model = ml_collections.ConfigDict(dict(name="resnet12", width=64, norm="batch_stats",
                                           weight_init="kaiming_normal"))
  c.episodes.update(dict(ways=5, shots=shots, queries=shots, meta_batch=4, rotations="none",
                         eval_meta_batch=10))
  c.meta.update(dict(inner_lr=0.3, train_steps=1, test_steps=1))
  c.train.update(dict(steps=30000, eval_every=1000))
  c = _method(c, method, rerand_rate, maml_lr=6e-4)
  if method != "meta_ticket":
    c.model.weight_init = "kaiming_normal_fan_out"  # MT's baselines keep ResNet-12's init
  return c


def mini_imagenet_5w1s(method="meta_ticket", rerand_rate=0.0):
  return _mini_imagenet(1, method, rerand_rate)


def mini_imagenet_5w5s(method="meta_ticket", rerand_rate=0.0):
  return _mini_imagenet(5, method, rerand_rate)


def sinusoid_hybrid(method="meta_ticket", rerand_rate=1.0):
  c = meta_learning_config()
  c.data.name = "sinusoid"
  c.data.eval_splits = "test"
  c.model = ml_collections.ConfigDict(dict(name="mlp", hidden=(40, 40), norm="none",
                                           weight_init="torch"))
  c.episodes.update(dict(shots=5, queries=5, meta_batch=4, eval_points=100))
  c.meta.update(dict(inner_lr=0.01, train_steps=5, test_steps=5))
  c.train.update(dict(steps=30000, log_every=1000, checkpoint_every=10000))
  c = _method(c, method, rerand_rate)
  c.supermask.include = "Dense_1/kernel"     # only the 40x40 hidden layer is masked
  c.meta_ticket.aux = "Dense_0,head,bias"   # outer layers and biases are meta-learned
  if method == "meta_ticket":
    c.optimizer.update(dict(name="adamw", learning_rate=1e-3, schedule="constant",
                            warmup_steps=0, weight_decay=0.0))
  return c


DEFAULT = 'glyphs_5w1s'
# the presets in rows of `jaxlab presets` and the README's table (jaxlab.catalog; a test checks
# that every preset is in one row and that the README shows these rows)
ROWS = [
    ('glyphs_5w1s, glyphs_5w5s', "Meta-ticket (or MAML) on MT's MLP x `factor`"),
    ('omniglot_5w1s, omniglot_5w5s, mini_imagenet_5w1s, mini_imagenet_5w5s',
     'TFDS omniglot; miniImageNet with ResNet-12'),
    ('sinusoid_hybrid', '§2(g): only the 40x40 layer masked'),
]

PRESETS = {"glyphs_5w1s": glyphs_5w1s, "glyphs_5w5s": glyphs_5w5s,
           "omniglot_5w1s": omniglot_5w1s, "omniglot_5w5s": omniglot_5w5s,
           "mini_imagenet_5w1s": mini_imagenet_5w1s, "mini_imagenet_5w5s": mini_imagenet_5w5s,
           "sinusoid_hybrid": sinusoid_hybrid}


def get_config(arg=None):
  return presets(arg, PRESETS, DEFAULT, "configs/meta_ticket.py")
