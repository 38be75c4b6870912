"""Learning-trajectory transfer, GMT / FGMT (jaxlab.methods.learning_transfer; Chijiwa, ICLR
2024, arXiv 2305.14122; docs/specs/meta_learning_and_sparse.md §5(g)).

  python -m jaxlab.main --config=configs/learning_transfer.py:digits_source,seed=101 \\
      --workdir=runs/lt/source101
  python -m jaxlab.main --config=configs/learning_transfer.py:digits,mode=gmt,seed=102 \\
      --config.inputs.source=runs/lt/source101 --workdir=runs/lt/gmt_101_102
  python -m jaxlab.main --config=configs/learning_transfer.py:digits_ft,seed=102 \\
      --config.init_from=runs/lt/gmt_101_102/best.npz --workdir=runs/lt/ft_gmt_101_102

Presets (argument `activation`: none, the code's MNIST MLP, a deep linear network, or relu;
`seed`: the run's, which fixes theta^tau_0 for a transfer):
  digits_source  §5(d)/(g) source and target runs: MLP 64 -> 1024 -> 10, no bias, PyTorch's
                 default init, inputs standardised, SGD lr 0.01 (no momentum, no decay), batch 128, `epochs` (30:
                 the code's 10 MNIST epochs are 4,690 steps, 10 digits epochs only 100) on the
                 embedded digits less a 10% validation split (split seed 777, as the code);
                 every epoch's weights kept (train.keep_schedule).
  digits         a transfer into that MLP: `mode` gmt | fgmt | naive | oracle, T = 10 splits
                 of the init -> final segment (cosine), gm_iters 1, batch 128; validation
                 accuracy at every point, the best kept as best.npz. inputs.source (and for
                 the oracle inputs.target, the trained run of this seed) must be given.
  digits_ft      fine-tuning after transfer: an `erm` run of the same MLP, SGD lr 0.01,
                 `epochs` (3, as the code), evaluated every epoch; init_from = a transfer's
                 best.npz, or nothing for training from scratch.
  digits_cnn_source, digits_cnn   the optional CNN of §5(g) on digits (a CNN on 100
                 glyphs/color32 characters, 16 images each, stays at chance: 1% validation
                 accuracy): 3x3 convs 32-64-64, no BatchNorm, global average pool; sources with
                 the code's Conv8 recipe (SGD 0.05, momentum 0.9, cosine, wd 1e-4, 30
                 epochs); transfers with gm_iters 2 (its CIFAR-10 setting).
  tiny_source / tiny   a 32-unit MLP, a few steps; for tests.
"""

import ml_collections

from jaxlab.config import base_config, presets

TRAIN_IMAGES = 1295  # digits' training split less the 10% validation split of seed 777
# the code normalises MNIST by its mean and std; these are digits' (training split, [0, 1])
MEAN, STD = (0.3056,), (0.3764,)


def _mlp(c, activation: str, width: int = 1024):
  c.model = ml_collections.ConfigDict(dict(
      name="mlp", hidden=(width,), norm="none", use_bias=False, weight_init="torch",
      activation=activation, mean=MEAN, std=STD))
  c.data.update(dict(name="digits", val_fraction=0.1, split_seed=777,
                     eval_splits="validation,test"))
  return c


def _sgd(c, lr: float):
  c.optimizer.update(dict(name="sgd", learning_rate=lr, momentum=0.0, weight_decay=0.0,
                          schedule="constant"))
  return c


def digits_source(activation="none", seed=101, epochs=30):
  c = _sgd(_mlp(base_config(), activation), 0.01)
  c.seed = seed
  per_epoch = -(-TRAIN_IMAGES // 128)
  steps = epochs * per_epoch
  c.train.update(dict(steps=steps, batch_size=128, log_every=per_epoch, eval_every=per_epoch,
                      checkpoint_every=steps, keep_schedule=f"every:{per_epoch}"))
  return c


def digits(mode="gmt", activation="none", seed=102, num_splits=10):
  c = _mlp(base_config(), activation)
  c.method = f"transfer_{mode}"
  c.seed = seed
  c.inputs = ml_collections.ConfigDict(dict(source="", target=""))
  c.transfer = ml_collections.ConfigDict(dict(
      num_splits=num_splits, schedule="cosine", checkpoints="ends", gm_iters=1,
      bn_stats_iters=0, max_sweeps=100, warm_start=False, normalise=False))
  c.train.update(dict(steps=-1, batch_size=128, log_every=1, eval_every=1,
                      checkpoint_every=num_splits, select_by="max:validation/accuracy"))
  return c


def _cnn(c):
  """The §5(g) optional CNN, on digits: 3x3 convs 32-64-64 with ReLU and 2x2 pools, no
  BatchNorm, a global average pool before the head (Conv8's reason: a flatten would mix the
  last conv's channels with positions)."""
  c.model = ml_collections.ConfigDict(dict(
      name="cnn", channels=(32, 64, 64), norm="none", weight_init="torch", mean=MEAN, std=STD))
  c.data.update(dict(name="digits", val_fraction=0.1, split_seed=777,
                     eval_splits="validation,test"))
  return c


def digits_cnn_source(seed=101, epochs=30):
  c = _cnn(base_config())
  c.seed = seed
  # the code's CIFAR-10 Conv8 recipe: SGD 0.05, momentum 0.9, cosine, wd 1e-4
  c.optimizer.update(dict(name="sgd", learning_rate=0.05, momentum=0.9, weight_decay=1e-4,
                          schedule="cosine"))
  per_epoch = -(-TRAIN_IMAGES // 128)
  steps = epochs * per_epoch
  c.train.update(dict(steps=steps, batch_size=128, log_every=per_epoch, eval_every=5 * per_epoch,
                      checkpoint_every=steps, keep_schedule=f"every:{per_epoch}"))
  return c


def digits_cnn(mode="gmt", seed=102, num_splits=10, gm_iters=2):
  c = _cnn(digits(mode, "none", seed, num_splits))
  c.transfer.gm_iters = gm_iters  # the code's CIFAR-10 Conv8 setting
  return c


def digits_ft(activation="none", seed=102, epochs=3, lr=0.01):
  c = _sgd(_mlp(base_config(), activation), lr)
  c.seed = seed
  per_epoch = -(-TRAIN_IMAGES // 128)
  c.train.update(dict(steps=epochs * per_epoch, batch_size=128, log_every=per_epoch // 2,
                      eval_every=per_epoch // 2, checkpoint_every=epochs * per_epoch))
  return c


def tiny_source(activation="relu", seed=101):
  c = digits_source(activation, seed, epochs=1)
  c.model.hidden = (32,)
  c.train.update(dict(steps=12, log_every=4, eval_every=6, checkpoint_every=12,
                      keep_schedule="every:6"))
  return c


def tiny(mode="gmt", activation="relu", seed=102):
  c = digits(mode, activation, seed, num_splits=3)
  c.model.hidden = (32,)
  return c


DEFAULT = "digits"
ROWS = [
    ("digits_source", "the source / target runs of §5(g): a bias-free MLP 64-1024-10 (linear "
     "or ReLU) with SGD on embedded digits, every epoch's weights kept"),
    ("digits", "transfer a source trajectory to a new init: GMT, FGMT, naive or oracle "
     "permutations (mode=...)"),
    ("digits_ft", "fine-tuning from a transferred point (init_from=.../best.npz) or from "
     "scratch"),
    ("digits_cnn_source, digits_cnn", "the optional CNN of §5(g): a BatchNorm-free 32-64-64 "
     "CNN with a global pool on embedded digits, its source runs (Conv8 recipe) and "
     "transfers (gm_iters 2)"),
    ("tiny_source, tiny", "a 32-unit MLP, a few steps; for tests"),
]

PRESETS = {"digits_source": digits_source, "digits": digits, "digits_ft": digits_ft,
           "digits_cnn_source": digits_cnn_source, "digits_cnn": digits_cnn,
           "tiny_source": tiny_source, "tiny": tiny}


def get_config(arg=None):
  return presets(arg, PRESETS, DEFAULT, "configs/learning_transfer.py")
