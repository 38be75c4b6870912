"""Command line: `jaxlab --config=configs/<file>.py:<preset> --workdir=DIR [--config.a.b=v ...]`
(or `python -m jaxlab.main ...`, which Python resolves from the current directory first: do
not run it beside a folder named `jaxlab`; the `jaxlab` command has no such catch).

Overrides use `ml_collections.config_flags`: `--config.train.steps=200`. A config path is
read relative to the current directory, else relative to the jaxlab checkout
(`configs/erm.py`), else as a file of its `configs/` (`erm.py:digits`), the rule
`jaxlab.load_config` follows too. This file is kept thin: the work is in
`jaxlab.train.train_and_evaluate`, which notebooks call too. Every user error ends the run
with one line on stderr and exit code 2 (3: training diverged), never a traceback; Ctrl-C or
SIGTERM stops at the next step with one line, the last checkpoint intact (exit 130 / 143).
"""

import sys
from typing import List, Sequence, Tuple

from absl import flags, logging
from ml_collections import config_flags

from jaxlab import config as config_lib
from jaxlab import validation
from jaxlab.errors import Interrupted, UserError


def _fail(message: str, code: int = 2) -> int:
  print(f"jaxlab: error: {message}", file=sys.stderr, flush=True)
  return code


def parse(argv: Sequence[str]) -> Tuple[config_lib.ConfigDict, str, str]:
  """(config with overrides, workdir, verbosity) from a command line; UserError on anything
  wrong."""
  argv = list(argv)
  specs = [i for i, a in enumerate(argv) if a.startswith("--config=")]
  if not specs:
    raise UserError("--config is required, e.g. --config=configs/erm.py:digits")
  path, sep, preset = argv[specs[-1]].split("=", 1)[1].partition(":")
  path = config_lib.resolve_path(path)
  argv[specs[-1]] = f"--config={path}{sep}{preset}"  # absl reads the file itself
  spec = argv[specs[-1]].split("=", 1)[1]
  reference = config_lib.load_config(spec)
  config_lib.check_overrides(reference, argv[1:])
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "Config file and preset.",
                                  flag_values=flag_values, lock_config=True, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.",
                      flag_values=flag_values)
  flags.DEFINE_string("verbosity", None, "absl logging verbosity (default: warning).",
                      short_name="v", flag_values=flag_values)
  try:
    extra = flag_values(argv)[1:]
  except flags.Error as e:
    raise UserError(str(e).splitlines()[0]) from None
  if extra:
    raise UserError(f"unexpected arguments: {' '.join(extra)}")
  if not flag_values.workdir:
    raise UserError("--workdir is required: the directory for checkpoints, metrics and results")
  config = flag_values["config"].value
  validation.check_types(config, reference)
  return config, flag_values.workdir, flag_values.verbosity


COMMANDS = """Other commands:
  jaxlab presets [FILE]          the presets of every config file (or of FILE), with what they run
  jaxlab methods                 the method families, their papers and variants
  jaxlab plot WORKDIR... [--out=FILE.png] [--metrics=train/loss,test/accuracy]
                                 curves from the runs' metrics.jsonl (seeds of one config as a band)
"""


def _help() -> str:
  from jaxlab import catalog  # pylint: disable=g-import-not-at-top
  files = "\n".join(f"  {p:24s} {catalog.describe(p)}" for p in catalog.config_files())
  return f"{__doc__}\nConfig files:\n{files}\n\n{COMMANDS}"


def _command(name: str, args: List[str]) -> int:
  """`jaxlab presets|methods|plot ...`."""
  from jaxlab import catalog, plots  # pylint: disable=g-import-not-at-top
  try:
    if name == "presets":
      if len(args) > 1:
        raise UserError("jaxlab presets takes at most one config file")
      print(catalog.presets_text(args[0] if args else ""))
    elif name == "methods":
      print(catalog.methods_text())
    else:
      print(plots.main(args))
  except UserError as e:
    return _fail(str(e), e.exit_code)
  return 0


def cli(argv: List[str]) -> int:
  """Runs one command line; returns the exit code (what `jaxlab` exits with)."""
  if len(argv) > 1 and argv[1] in ("presets", "methods", "plot"):
    return _command(argv[1], argv[2:])
  if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]) or len(argv) == 1:
    print(_help())
    return 0
  try:
    config, workdir, verbosity = parse(argv)
  except UserError as e:
    return _fail(str(e), e.exit_code)
  logging.set_verbosity(verbosity or logging.WARNING)  # TFDS and Orbax are chatty at INFO
  from jaxlab.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  try:
    train_and_evaluate(config, workdir)
  except Interrupted as e:
    print(f"jaxlab: {e}", file=sys.stderr, flush=True)
    return e.exit_code
  except UserError as e:
    return _fail(str(e), e.exit_code)
  except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
    print("jaxlab: interrupted; the last checkpoint (if any) is intact; resume with the same "
          "command", file=sys.stderr, flush=True)
    return 130
  return 0


def run():
  sys.exit(cli(sys.argv))


if __name__ == "__main__":
  run()
