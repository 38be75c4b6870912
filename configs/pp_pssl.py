"""PP + P-SSL presets: transfer through a source generator and classifier.

docs/specs/generative_and_finetuning.md §4(g): transfer from
digits 0-4 (source, seen only through a generator and a classifier) to digits 5-9 (target,
`n` labeled images per class) with a different architecture.

  python -m jaxlab.main --config=configs/finetune.py:digits_pretrain --workdir=runs/c_s
  python -m jaxlab.main --config=configs/cgan.py:digits_source --workdir=runs/g_s
  python -m jaxlab.main --config=configs/pp_pssl.py:pp --config.inputs.generator=runs/g_s \
      --workdir=runs/pp
  python -m jaxlab.main --config=configs/pp_pssl.py:digits,method=pssl,n=10 \
      --config.inputs.generator=runs/g_s --config.inputs.source_classifier=runs/c_s \
      --config.init_from=runs/pp --workdir=runs/pp_pssl_n10

C_s is the MLP of configs/finetune.py:digits_pretrain; G_s the cgan of
configs/cgan.py:digits_source; the target network is the 2-conv CNN (32, 64), so no source
weight fits it. Arms (§4(g)): scratch = `digits,method=erm`; PP = `digits,method=erm` with
`init_from` a `pp` run; P-SSL = `digits,method=pssl`; PP + P-SSL = `pssl` with `init_from`
(the head is re-initialised: `init_skip=params/head`); the uniform-conditioning control =
`pssl` with `conditioning=uniform`.

Presets:
  pp        pseudo pre-training: the CNN trained on G_s's samples alone (uniform source
            classes, fresh samples every step: `gda` with `generative.real_weight=0`), 2,000
            steps; its test split is digits 0-4's, a diagnostic only.
  digits    the target: digits 5-9, `n` (default 10) per class of the training split, 10% of
            them (at least 1) as validation, split seed 42; SGD-Nesterov 0.01 with x0.1 steps
            at 50/75%, 2,000 steps, batch 64 labeled; P-SSL adds 7 x 64 generated images per
            step, conditioned on C_s's softmax of target training images (`pssl.temperature`
            1) and FixMatch's loss (configs/ssl.py's settings); test accuracy at the lowest
            validation loss.
"""

import ml_collections

from jaxlab.config import load_config, presets, generator_config


def pp(steps=2000):
  c = load_config(f"configs/mgr.py:digits,method=gda,fraction=1.0,steps={steps}", lock=False)
  c.data.classes = "range:0-4"
  c.data.val_fraction = 0.0
  c.data.eval_splits = "test"
  c.train.select_by = ""
  c.generative.real_weight = 0.0
  return c


def digits(method="pssl", n=10, conditioning="target", steps=2000):
  c = load_config(f"configs/ssl.py:digits,method=fixmatch,labels={n},steps={steps}",
                  lock=False)
  c.method = method
  c.data.classes = "range:5-9"
  c.data.val_fraction = 0.1
  c.data.eval_splits = "validation,test"
  c.init_skip = "params/head"
  c.optimizer.update(dict(schedule="step", learning_rate=0.01, weight_decay=0.0,
                          step_factor=0.1, step_boundaries=(steps // 2, 3 * steps // 4)))
  c.train.update(dict(eval_every=100, log_every=100, select_by="validation/loss"))
  c.generator = generator_config(latent_dim=8, width=64)
  # G_s (pssl) and C_s (pssl, kd), on the 5 source classes
  c.inputs = ml_collections.ConfigDict(dict(generator="", source_classifier=""))
  c.pssl = ml_collections.ConfigDict(dict(source_classes=5, conditioning=conditioning,
                                          temperature=1.0))
  c.kd = ml_collections.ConfigDict(dict(source_classes=5, temperature=4.0, weight=1.0))
  return c


DEFAULT = 'digits'
# the presets in rows of `jaxlab presets` and the README's table (jaxlab.catalog; a test checks
# that every preset is in one row and that the README shows these rows)
ROWS = [
    ('pp, digits',
     "PP (a CNN trained on a digits 0-4 generator's samples) and P-SSL on digits 5-9 with "
     '`n` per class (`method=pssl`, `erm` or `kd`, `conditioning=target` or `uniform`)'),
]

PRESETS = {"pp": pp, "digits": digits}


def get_config(arg=None):
  return presets(arg, PRESETS, DEFAULT, "configs/pp_pssl.py")
