"""Supervised training (`erm`) presets.

  python -m jaxlab.main --config=configs/erm.py:digits --workdir=/tmp/runs/digits

Presets (`:name`):
  digits          MLP 256-256 on the embedded 8x8 digits; ~30 s on 2 CPU cores,
                  test accuracy ~0.98.
  glyphs_color32  CIFAR-style ResNet-18 on glyphs/color32 (2,359 classes,
                  16 train images each), crop+flip augmentation.
  mnist           MLP on TFDS mnist (prepare it first: `tfds build mnist`).
  cifar10         ResNet-18 on TFDS cifar10, SGD + cosine, crop+flip.
  imagenet        ResNet-50 on TFDS imagenet2012 (prepared by the user: `tfds build
                  imagenet2012` with the archives in the manual directory), the torchvision
                  reference recipe: RandomResizedCrop(224) + flip, Resize(256) +
                  CenterCrop(224) for validation, ImageNet mean/std, SGD 0.1 x batch/256,
                  momentum 0.9, weight decay 1e-4, x0.1 every 30 of 90 epochs; streamed.
                  Argument `batch` (default 256, the global batch).
  folder          ResNet-18 (ImageNet stem) on your own images: `folder,path=/data/pets`
                  reads <path>/<class>/<image> (or <path>/{train,test}/<class>/<image>),
                  224x224 with the same transforms; `steps` (default 5000).
  tiny            a few steps on digits; for tests and smoke runs.
"""

import ml_collections

from jaxlab.config import base_config, presets
from jaxlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD


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


def _imagenet_input(c, arch):
  c.model = ml_collections.ConfigDict(dict(
      name=arch, width=64, stem="imagenet", norm="batch_norm",
      weight_init="kaiming_normal_fan_out", mean=IMAGENET_MEAN, std=IMAGENET_STD))
  c.data.train_pp = "random_resized_crop(224)|flip_lr"
  c.data.eval_pp = "resize_small(256)|central_crop(224)"
  return c


def imagenet(batch=256):
  c = _imagenet_input(base_config(), "resnet50")
  c.data.name = "imagenet2012"
  c.data.eval_splits = "validation"
  epoch = 1_281_167 // batch
  c.optimizer.update(dict(name="sgd", learning_rate=0.1 * batch / 256, momentum=0.9,
                          nesterov=False, weight_decay=1e-4, schedule="step", step_factor=0.1,
                          step_boundaries=(30 * epoch, 60 * epoch)))
  c.train.update(dict(steps=90 * epoch, batch_size=batch, eval_batch_size=250,
                      eval_every=5 * epoch, checkpoint_every=epoch, log_every=100))
  return c


def folder(path="", steps=5000):
  c = _imagenet_input(base_config(), "resnet18")
  c.data.name = "folder:" + path
  c.data.eval_splits = "test"
  c.optimizer.update(dict(name="sgd", learning_rate=0.01, momentum=0.9, nesterov=True,
                          weight_decay=1e-4, schedule="cosine"))
  c.train.update(dict(steps=steps, batch_size=64, eval_batch_size=100, eval_every=steps // 5,
                      checkpoint_every=steps // 5, log_every=50))
  return c


DEFAULT = 'digits'
# the presets in rows of `jaxlab presets` and the README's table (jaxlab.catalog; a test checks
# that every preset is in one row and that the README shows these rows)
ROWS = [
    ('digits', 'MLP on embedded 8x8 digits'),
    ('tiny', '40 steps on digits, for smoke tests'),
    ('glyphs_color32', 'CIFAR-style ResNet-18 on embedded `glyphs/color32`'),
    ('mnist', 'MLP on TFDS `mnist` (prepare first, see below)'),
    ('cifar10', 'ResNet-18 on TFDS `cifar10`, SGD + cosine, crop + flip'),
    ('imagenet', 'ResNet-50 on TFDS `imagenet2012`, the torchvision recipe, streamed; `batch`'),
    ('folder', 'ResNet-18 on your images: `folder,path=/data/images`'),
]

PRESETS = {"digits": digits, "tiny": tiny, "glyphs_color32": glyphs_color32, "mnist": mnist,
           "cifar10": cifar10, "imagenet": imagenet, "folder": folder}


def get_config(arg=None):
  return presets(arg, PRESETS, DEFAULT, "configs/erm.py")
