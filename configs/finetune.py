"""Fine-tuning presets: pretraining, then FT / L2-SP / RandReg / AdaRand on a target task
(docs/specs/generative_and_finetuning.md §1, §0.4).

  python -m jaxlab.main --config=configs/finetune.py:digits_pretrain --workdir=runs/source
  python -m jaxlab.main --config=configs/finetune.py:digits,method=adarand,n=10 \
      --config.init_from=runs/source --workdir=runs/adarand_n10

Preset arguments: method (finetune | l2sp | randreg | adarand), prior (RandReg's: uniform |
normal | pretrained), and per preset n (target images per class) or fraction (of the target
training set).
  digits_pretrain   §1(g) source task: MLP 64-128-64 (ReLU features, d = 64) trained with
                    CE on the embedded digits 0-4, Adam 1e-3, 2,000 steps of 128.
  digits            §1(g) target task: digits 5-9 (relabelled 0-4) with n in {5, 10, 20, 50}
                    images per class, 10% of them (at least 1 per class) held out as
                    validation with split seed 42; head re-initialised N(0, 0.01^2);
                    SGD-Nesterov lr 0.01, x0.1 at 30/60/80% of 2,000 steps, batch
                    min(64, train size); lambda 1, alpha 0.5, prior Adam 1e-2; validation
                    and test every 50 steps, test reported at the lowest validation loss
                    (`selected/test/accuracy`).
  glyphs_pretrain, glyphs
                    the CPU-scale second setting: Conv-4 (32 filters, pool; d = 128) pretrained
                    on the 1,440 characters of the 7 training scripts of the embedded glyphs
                    (Adam 1e-3, 1,500 steps of 128), fine-tuned on the 340 of Greek, Georgian
                    and Coptic with n images per class (default 5; 10% at least 1 for
                    validation), tested on the other 20 - n of each; 500 steps, batch 64.
  glyphs_color32_pretrain, glyphs_color32
                    CIFAR-style ResNet-18 (d = 512) on glyphs/color32: source = the 1,440
                    characters of the 7 training scripts, target = the 340 of Greek,
                    Georgian and Coptic, n images per class (of 16).
`finetune.randreg_unweighted_last_steps` k (default 0): RandReg trains its last k steps with
lambda = 0. AdaRand's rand_reg.py applies lambda only while epoch < stop_epoch = 200, so its
last epoch is unregularised (spec §1(h)4); set k to one epoch of steps, ceil(N / batch), to
replicate it.
  <tfds>_pretrain is not offered: the real-data presets start from ImageNet weights the user
  converts to an .npz (`init_from=weights.npz`, arrays named like "params/Conv_0/kernel").
  caltech_birds2011, cars196, oxford_iiit_pet, oxford_flowers102, folder (path=<your images>,
  train_size=<their number>)
                    arch=resnet50 (default) or resnet18 (ImageNet stem, 224x224, mean = std
                    = 0.5 as the code) on the TFDS set, `fraction` in {0.1, 0.3, 0.5, 1.0} of
                    the training split, the official recipe: RandomResizedCrop(224) + flip
                    for training, Resize(256) + CenterCrop(224) for evaluation (streamed,
                    jaxlab.data.stream), batch 64, SGD-Nesterov 0.01,
                    x0.1 at epochs 60/120/160 of 200, no weight decay. Weights: a converted
                    torchvision checkpoint as .npz (jaxlab's ResNet-18/50 have torchvision's
                    parameter counts; converting is the user's step).
"""

import functools

import ml_collections

from jaxlab.config import base_config, presets
from jaxlab.errors import unknown

TFDS_SETS = {"caltech_birds2011": 5994, "cars196": 8144, "oxford_iiit_pet": 3680,
             "oxford_flowers102": 1020}


def _finetune(c, method, prior, steps, batch_size, eval_every):
  c.method = method
  c.finetune = ml_collections.ConfigDict(dict(
      prior=prior, weight=1.0, running_momentum=0.5, prior_lr=1e-2, l2sp_alpha=0.1,
      l2sp_beta=0.01, randreg_unweighted_last_steps=0))
  c.init_skip = "params/head"
  c.data.val_fraction = 0.1
  c.data.split_seed = 42
  c.data.eval_splits = "validation,test"
  c.optimizer.update(dict(name="sgd", learning_rate=0.01, momentum=0.9, nesterov=True,
                          weight_decay=0.0, schedule="step", step_factor=0.1,
                          step_boundaries=(int(0.3 * steps), int(0.6 * steps), int(0.8 * steps))))
  c.train.update(dict(steps=steps, batch_size=batch_size, eval_every=eval_every,
                      checkpoint_every=steps, log_every=eval_every, select_by="validation/loss"))
  return c


def _digits_model(c):
  c.data.name = "digits"
  c.model.hidden = (64, 128, 64)
  return c


def digits_pretrain():
  c = _digits_model(base_config())
  c.data.classes = "range:0-4"
  c.train.update(dict(steps=2000, batch_size=128, checkpoint_every=2000, log_every=500))
  return c


def digits(method="finetune", prior="pretrained", n=10):
  c = _digits_model(base_config())
  c.data.classes = "range:5-9"
  c.data.per_class = n
  train_size = 5 * (n - max(1, round(0.1 * n)))
  return _finetune(c, method, prior, steps=2000, batch_size=min(64, train_size), eval_every=50)


def _resnet(c, stem, std, crop_padding, name="resnet18"):
  c.model = ml_collections.ConfigDict(dict(
      name=name, width=64, stem=stem, norm="batch_norm",
      weight_init="kaiming_normal_fan_out", mean=(0.5, 0.5, 0.5), std=(std,) * 3))
  c.aug.crop_padding = crop_padding
  return c


def _glyphs_conv4(c):
  c.data.name = "glyphs"
  c.model = ml_collections.ConfigDict(dict(name="conv4", filters=32, variant="pool",
                                           norm="batch_norm"))
  return c


def glyphs_pretrain():
  c = _glyphs_conv4(base_config())
  c.data.classes = "range:0-1439"  # the 7 training scripts (the train split)
  c.data.eval_splits = ""
  c.train.update(dict(steps=1500, batch_size=128, checkpoint_every=1500, log_every=250))
  return c


def glyphs(method="finetune", prior="pretrained", n=5):
  c = _glyphs_conv4(base_config())
  c.data.train_split = "validation"  # Greek, Georgian, Coptic: 340 characters x 20
  c.data.classes = "range:1440-1779"
  c.data.per_class = n
  c.data.rest_as_test = True
  return _finetune(c, method, prior, steps=500, batch_size=64, eval_every=50)


def _glyphs_model(c):
  c.data.name = "glyphs/color32"
  return _resnet(c, "cifar", 0.25, crop_padding=4)


def glyphs_color32_pretrain():
  c = _glyphs_model(base_config())
  c.data.classes = "range:0-1439"
  c.optimizer.update(dict(name="sgd", learning_rate=0.1, momentum=0.9, nesterov=True,
                          weight_decay=5e-4, schedule="cosine"))
  c.train.update(dict(steps=3000, batch_size=128, checkpoint_every=1000, log_every=50))
  return c


def glyphs_color32(method="finetune", prior="pretrained", n=16):
  c = _glyphs_model(base_config())
  c.data.classes = "range:1440-1779"
  c.data.per_class = n
  return _finetune(c, method, prior, steps=2000, batch_size=64, eval_every=200)


def _official_recipe(name, method, prior, fraction, arch, train_size):
  c = base_config()
  c.data.name = name
  c.data.train_fraction = fraction
  # the official code's torchvision transforms, per example on the host (data.pipeline=auto
  # streams these sets: their images differ in size)
  c.data.train_pp = "random_resized_crop(224)|flip_lr"
  c.data.eval_pp = "resize_small(256)|central_crop(224)"
  if arch not in ("resnet18", "resnet50"):
    raise unknown("arch", arch, ("resnet18", "resnet50"), "configs/finetune.py")
  c = _resnet(c, "imagenet", 0.5, crop_padding=0, name=arch)
  per_epoch = max(1, int(0.9 * fraction * train_size) // 64)
  c = _finetune(c, method, prior, steps=200 * per_epoch, batch_size=64, eval_every=per_epoch)
  c.optimizer.step_boundaries = (60 * per_epoch, 120 * per_epoch, 160 * per_epoch)
  c.train.eval_batch_size = 250
  return c


def _tfds(name, method="finetune", prior="pretrained", fraction=1.0, arch="resnet50"):
  return _official_recipe(name, method, prior, fraction, arch, TFDS_SETS[name])


def folder(path="", method="finetune", prior="pretrained", fraction=1.0, arch="resnet50",
           train_size=1000):
  """Your own images (jaxlab.data.sources: <path>/<class>/<image>, or with train/validation/
  test subfolders) with the official recipe; `train_size` (the images in the training
  folder) sets the 200 epochs' steps and schedule."""
  c = _official_recipe("folder:" + path, method, prior, fraction, arch, train_size)
  c.data.eval_splits = "validation"  # carved from train (10%, split seed 42), as the TFDS sets
  return c


DEFAULT = 'digits'
# the presets in rows of `jaxlab presets` and the README's table (jaxlab.catalog; a test checks
# that every preset is in one row and that the README shows these rows)
ROWS = [
    ('digits_pretrain, digits',
     'MLP pretrained on digits 0-4, fine-tuned (FT / L2-SP / RandReg / AdaRand) on 5-9 '
     'with `n` per class'),
    ('glyphs_pretrain, glyphs',
     'Conv-4 on embedded `glyphs`: 7 scripts -> 3 other scripts, `n` per class (CPU scale)'),
    ('glyphs_color32_pretrain, glyphs_color32',
     'ResNet-18, source and target from disjoint scripts'),
    ('caltech_birds2011, cars196, oxford_iiit_pet, oxford_flowers102, folder',
     "ResNet-50 (`arch=resnet18` too) from a user's `.npz`, the official recipe "
     '(RandomResizedCrop(224) + flip; Resize(256) + CenterCrop(224)), `fraction` of the '
     'training split'),
]

PRESETS = {"digits_pretrain": digits_pretrain, "digits": digits,
           "glyphs_pretrain": glyphs_pretrain, "glyphs": glyphs,
           "glyphs_color32_pretrain": glyphs_color32_pretrain, "glyphs_color32": glyphs_color32,
           "folder": folder, **{name: functools.partial(_tfds, name) for name in TFDS_SETS}}


def get_config(arg=None):
  return presets(arg, PRESETS, DEFAULT, "configs/finetune.py")
