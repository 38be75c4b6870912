"""Semi-supervised presets: FixMatch, meta-generated unlabeled data, supervised baseline.

`fixmatch` with real unlabeled data, `meta_gen_ssl` with
meta-optimised generated ones, and their supervised-only baseline (`method=erm` on the same
labeled subset); docs/specs/generative_and_finetuning.md §3 (and its real-unlabeled
oracle, §3(g)) and §4 (the SSL algorithm of P-SSL).

  python -m jaxlab.main --config=configs/ssl.py:digits,labels=2 --workdir=runs/fixmatch_k2
  python -m jaxlab.main --config=configs/ssl.py:digits,method=erm,labels=2 --workdir=runs/sup_k2

  python -m jaxlab.main --config=configs/ssl.py:digits,method=meta_gen_ssl,labels=2 \
      --config.inputs.generator=runs/cgan --config.inputs.source_classifier=runs/c_s \
      --workdir=runs/meta_gen_ssl_k2

`meta_gen_ssl` (§3, no real unlabeled image) needs a `cgan` run on the generator's classes
(configs/cgan.py:digits) and a classifier on them for the latents' pseudo-conditional
initialisation (configs/erm.py:digits); pool of 10 latents per label, 64 synthetic images per
step, the §3(d) [R] defaults (jaxlab/methods/meta_gen_ssl.py). Its non-meta arms:
`--config.meta_gen_ssl.meta=False` (pseudo-conditional synthetic) and additionally
`--config.meta_gen_ssl.latent_init=random` (random synthetic + the same consistency loss).

Presets (`:name[,method=fixmatch|erm|meta_gen_ssl][,labels=N]`, N labeled images per class, drawn with
split seed 42, the same subset for every seed):
  digits          §3(g): the embedded digits (1,438 training images), `labels` in {1, 2, 4, 10}
                  per class, the rest of the training split unlabeled (FixMatch uses the whole
                  split, labels dropped); the 2-conv CNN (32, 64), SGD-Nesterov 0.03 with
                  cosine decay and weight decay 5e-4, batch 64 labeled + 7 x 64 unlabeled,
                  tau = 0.95, lambda_u = 1; weak = 1-pixel shift, strong = shift + rotation
                  in +-30 degrees + pixel noise (std 0.1) ("FixMatch-lite"); `steps` default
                  3,000; test accuracy at the final step.
  glyphs_color32  glyphs/color32 (2,359 classes, 16 training images each), `labels` of them
                  labeled, ResNet-18, shift 4 + flip weak, + rotation, cutout 16, noise strong.
  cifar10         TFDS cifar10 (prepare it first), `labels` per class (4 / 25 / 400 = the
                  40 / 250 / 4,000-label settings), WRN-28-2, SGD-Nesterov 0.03 cosine, weight
                  decay 5e-4, 2^20 steps in the paper (`steps` default 2^20), strong as above.
  cifar100        the same on TFDS cifar100 with WRN-28-8, `labels` 4 / 25 / 100 (400 / 2,500 /
                  10,000 labels).
With `method=meta_gen_ssl` these presets expect a user-supplied generator run (a jaxlab
`cgan` workdir: configs/cgan.py:cifar10 / cifar100 / glyphs_color32, or one trained on
another "foundation" dataset with `meta_gen_ssl.source_classes` set to its classes) and a
classifier run on the generator's classes for the latents' initialisation.
"""

import ml_collections

from jaxlab.config import base_config, presets, generator_config


def _ssl(c, method, labels, steps, eval_every, lr=0.03):
  c.method = method
  c.data.per_class = labels
  c.ssl = ml_collections.ConfigDict(dict(
      threshold=0.95, unlabeled_ratio=7, weight=1.0, unlabeled="all",
      strong_rotation=30.0, strong_cutout=0, strong_noise=0.1))
  c.optimizer.update(dict(name="sgd", learning_rate=lr, momentum=0.9, nesterov=True,
                          weight_decay=5e-4, schedule="cosine"))
  c.train.update(dict(steps=steps, batch_size=64, eval_every=eval_every, log_every=eval_every,
                      checkpoint_every=max(eval_every, steps // 4)))
  return c


def digits(method="fixmatch", labels=4, steps=3000):
  c = base_config()
  c.data.name = "digits"
  c.model = ml_collections.ConfigDict(dict(name="cnn", channels=(32, 64), norm="none",
                                           weight_init="flax"))
  c.aug.crop_padding = 1
  c = _ssl(c, method, labels, steps, eval_every=500)
  if method == "meta_gen_ssl":
    _meta_gen_ssl(c, pool_size=10 * labels * 10, num_classes=10)
  return c


def _meta_gen_ssl(c, pool_size, num_classes, latent_dim=8, width=64):
  """The generator (the matching configs/cgan.py preset's architecture; a generator on other
  classes needs `meta_gen_ssl.source_classes`) and the §3(d) [R] defaults."""
  c.generator = generator_config(latent_dim, width)
  # the frozen generator and C_s, on the generator's classes
  c.inputs = ml_collections.ConfigDict(dict(generator="", source_classifier=""))
  c.meta_gen_ssl = ml_collections.ConfigDict(dict(
      source_classes=num_classes, pool_size=pool_size,
      synthetic_batch=64, latent_init="pseudo_conditional", meta=True, weight=1.0, beta=1.0,
      meta_weight=1.0, lr_u=1e-3, lr_a=1e-2, renormalise=True, target_view="weak",
      unsup_stop_gradient=True, resemblance_encoder="classifier", meta_val="train",
      hvp_mode="exact", fd_epsilon=0.01, lookahead_lr=0.0))


def _cifar_like(name, method, labels, steps, model, num_classes, latent_dim):
  c = base_config()
  c.data.name = name
  c.model = ml_collections.ConfigDict(dict(norm="batch_norm",
                                           weight_init="kaiming_normal_fan_out",
                                           mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                                           **model))
  c.aug.crop_padding = 4
  c.aug.flip = True
  c = _ssl(c, method, labels, steps, eval_every=max(1, steps // 20))
  c.ssl.strong_cutout = 16
  if method == "meta_gen_ssl":
    _meta_gen_ssl(c, pool_size=10 * labels * num_classes, num_classes=num_classes,
                  latent_dim=latent_dim, width=128)
  return c


DEFAULT = 'digits'
# the presets in rows of `jaxlab presets` and the README's table (jaxlab.catalog; a test checks
# that every preset is in one row and that the README shows these rows)
ROWS = [
    ('digits',
     'FixMatch (or `method=erm`, supervised only; `method=meta_gen_ssl`, generated '
     'unlabeled data only) with `labels` per class, the rest of the split unlabeled'),
    ('glyphs_color32, cifar10, cifar100',
     'ResNet-18; WRN-28-2 at 4 / 25 / 400 labels per class; WRN-28-8 on CIFAR-100; '
     '`method=meta_gen_ssl` with a user-supplied `cgan` run as the generator'),
]

PRESETS = {
    "digits": digits,
    "glyphs_color32": lambda method="fixmatch", labels=4, steps=20000: _cifar_like(
        "glyphs/color32", method, labels, steps, dict(name="resnet18", width=64, stem="cifar"),
        num_classes=2359, latent_dim=64),
    "cifar10": lambda method="fixmatch", labels=25, steps=2 ** 20: _cifar_like(
        "cifar10", method, labels, steps, dict(name="wide_resnet", depth=28, widen=2),
        num_classes=10, latent_dim=128),
    "cifar100": lambda method="fixmatch", labels=25, steps=2 ** 20: _cifar_like(
        "cifar100", method, labels, steps, dict(name="wide_resnet", depth=28, widen=8),
        num_classes=100, latent_dim=128),
}


def get_config(arg=None):
  return presets(arg, PRESETS, DEFAULT, "configs/ssl.py")
