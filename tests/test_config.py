"""Configs: every preset loads; notebooks and the CLI see the same config; bad keys are named."""

import glob
import os
import sys

import pytest
from absl import flags
from ml_collections import config_flags

import jaxlab
from jaxlab import config as config_lib
from jaxlab import methods, models
from jaxlab.models import unet
from jaxlab.errors import UserError

from conftest import REPO

CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))


ALL_PRESETS = [(os.path.relpath(p, REPO), name) for p in CONFIG_FILES
               for name in config_lib.list_presets(p)]


def test_there_are_presets():
  assert ("configs/erm.py", "digits") in ALL_PRESETS


@pytest.mark.parametrize("path,preset", ALL_PRESETS)
def test_every_preset_loads_and_names_real_things(path, preset):
  config = jaxlab.load_config(f"{path}:{preset}")
  assert config.method in methods.available()
  if "diffusion" in config:  # a noise predictor (jaxlab.models.unet)
    unet.build_net(config.model, num_classes=5, image_shape=(8, 8, 1))
  elif config.method != "diffusion_gap":  # (an analysis of other runs: no model of its own)
    assert config.model.name in models.MODELS
    models.build(config.model, num_classes=5)  # every model field is one the model takes
  # a test-time adaptation preset runs its stream's length (train.steps = -1); weight and
  # activation matching solve their permutations before evaluation, with no step (0)
  # a transfer runs its source trajectory's length (-1)
  assert config.train.steps > 0 or (config.train.steps == -1 and (
      "tta" in config or "transfer" in config)) or (
      config.train.steps == 0 and config.method in ("merge_wm", "merge_am", "merge_many",
                                                    "diffusion_gap"))


def test_load_config_matches_config_flags():
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True)
  fv([sys.argv[0], f"--config={REPO}/configs/erm.py:glyphs_color32"])
  mine = jaxlab.load_config(f"{REPO}/configs/erm.py:glyphs_color32")
  assert mine.to_dict() == fv.config.to_dict()


def test_overrides_apply_like_flags():
  mine = jaxlab.load_config("configs/erm.py:digits", {"train.steps": 7, "model.hidden": (3,)})
  assert (mine.train.steps, tuple(mine.model.hidden)) == (7, (3,))


def test_relative_path_resolves_outside_the_repo(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert jaxlab.load_config("configs/erm.py:digits").data.name == "digits"


def test_unknown_preset_lists_choices():
  with pytest.raises(UserError, match=r"unknown preset 'nope'; valid choices: .*digits"):
    jaxlab.load_config("configs/erm.py:nope")


def test_unknown_key_lists_valid_keys():
  config = jaxlab.load_config("configs/erm.py:digits")
  with pytest.raises(UserError, match=r"config key 'config.train.nope'.*steps"):
    config_lib.check_key(config, "train.nope")


def test_missing_config_file():
  with pytest.raises(UserError, match="not found; configs in .*erm.py"):
    jaxlab.load_config("configs/nope.py:x")
