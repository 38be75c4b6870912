"""Command line: `python -m jaxlab.main --config=configs/<file>.py:<preset> --workdir=DIR`.

Overrides use `ml_collections.config_flags`: `--config.train.steps=200`. This
file is kept thin: the work is in `jaxlab.train.train_and_evaluate`, which
notebooks call too. User errors end the run with one line on stderr and a
non-zero exit code, never a traceback.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxlab import config as config_lib
from jaxlab.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and preset: configs/<file>.py:<preset>.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")


def _fail(message: str, code: int = 2) -> None:
  print(f"jaxlab: error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _parse_flags(argv):
  """Validates the config file, preset and override keys first, for one-line errors."""
  specs = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")]
  if not specs:
    _fail("--config is required, e.g. --config=configs/erm.py:digits")
  try:
    config = config_lib.load_config(specs[-1])
    config_lib.check_overrides(config, argv[1:])
  except UserError as e:
    _fail(str(e), e.exit_code)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).splitlines()[0])


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _WORKDIR.value:
    _fail("--workdir is required: the directory for checkpoints, metrics and results")
  if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
    logging.set_verbosity(logging.WARNING)  # TFDS and Orbax are chatty at INFO
  from jaxlab.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  try:
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except UserError as e:
    _fail(str(e), e.exit_code)


def run():
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
