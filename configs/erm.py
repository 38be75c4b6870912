"""Supervised training (`erm`) presets.

  python -m jaxlab.main --config=configs/erm.py:digits --workdir=/tmp/runs/digits

Presets (`:name`):
  digits          MLP 256-256 on the embedded 8x8 digits; ~30 s on 2 CPU cores,
                  test accuracy ~0.98.
  glyphs_color32  CIFAR-style ResNet-18 on glyphs/color32 (2,359 classes,
                  16 train images each), crop+flip augmentation.
  mnist           MLP on TFDS mnist (prepare it first: `tfds build mnist`).
  cifar10         ResNet-18 on TFDS cifar10, SGD + cosine, crop+flip.
  tiny            a few steps on digits; for tests and smoke runs.
"""

from jaxlab.config import base_config, presets


def digits():
  c = base_config()
  c.data.name = "digits"
  c.model.hidden = (256, 256)
  c.optimizer.learning_rate = 1e-3
  c.train.steps = 2000
  c.train.batch_size = 128
  c.train.eval_every = 500
  c.train.checkpoint_every = 1000
  c.train.log_every = 250
  return c


def tiny():
  c = digits()
  c.model.hidden = (32,)
  c.train.steps = 40
  c.train.batch_size = 32
  c.train.log_every = 10
  c.train.eval_every = 20
  c.train.checkpoint_every = 20
  return c


def _resnet18(c, mean, std, num_steps):
  c.model = c.model.__class__(dict(name="resnet18", width=64, stem="cifar", norm="batch_norm",
                                   weight_init="kaiming_normal_fan_out", mean=mean, std=std))
  c.aug.crop_padding = 4
  c.aug.flip = True
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 5e-4
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = num_steps // 20
  c.train.steps = num_steps
  c.train.batch_size = 128
  c.train.eval_every = num_steps // 4
  c.train.checkpoint_every = num_steps // 4
  c.train.log_every = 50
  return c


def glyphs_color32():
  c = _resnet18(base_config(), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), num_steps=3000)
  c.data.name = "glyphs/color32"
  c.aug.flip = False  # mirrored characters are other characters
  return c


def mnist():
  c = digits()
  c.data.name = "mnist"
  c.train.steps = 5000
  c.train.eval_batch_size = 1000
  return c


def cifar10():
  c = _resnet18(base_config(), mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
                num_steps=40000)
  c.data.name = "cifar10"
  c.train.eval_batch_size = 1000
  return c


PRESETS = {"digits": digits, "tiny": tiny, "glyphs_color32": glyphs_color32, "mnist": mnist,
           "cifar10": cifar10}


def get_config(arg=None):
  return presets(arg, PRESETS, "digits", "configs/erm.py")
