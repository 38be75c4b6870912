"""What jaxlab offers, read from where each thing is defined.

  config files   `configs/*.py`; each has `DEFAULT` (its default preset), `PRESETS` (name ->
                 builder) and `ROWS` (the presets in rows of "names", "what they run");
  methods        the registry (`jaxlab.methods`), each family module's docstring naming its
                 paper.

`jaxlab presets [FILE]`, `jaxlab methods` and `jaxlab --help` print from here, and the
README's preset table is `readme_presets_table()` (a test fails when they drift):
`python -m jaxlab.catalog` prints it.
"""

import glob
import os
from typing import List, Tuple

from jaxlab import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_files() -> List[str]:
  """The config files of the checkout, as `configs/<name>.py`."""
  return sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "*.py")))


def _first_line(doc: str) -> str:
  return (doc or "").strip().splitlines()[0].rstrip(".") if doc and doc.strip() else ""


def describe(path: str) -> str:
  """The first line of a config file's docstring."""
  return _first_line(config_lib._import(config_lib.resolve_path(path)).__doc__)  # pylint: disable=protected-access


def preset_rows(path: str) -> List[Tuple[str, str]]:
  """[(names, what)] of a config file, the default marked."""
  module = config_lib._import(config_lib.resolve_path(path))  # pylint: disable=protected-access
  rows = getattr(module, "ROWS", None)
  if rows is None:
    return [(name, "") for name in sorted(getattr(module, "PRESETS", {}))]
  default = getattr(module, "DEFAULT", "")
  mark = lambda names: ", ".join(f"`{n}` (default)" if n == default else f"`{n}`"
                                 for n in (x.strip() for x in names.split(",")))
  return [(mark(names), what) for names, what in rows]


def presets_text(path: str = "") -> str:
  """`jaxlab presets [FILE]`: every config file's presets, or one file's."""
  paths = [path] if path else config_files()  # (resolve_path names the valid ones)
  out = []
  for p in paths:
    out.append(f"{p}: {describe(p)}")
    for names, what in preset_rows(p):
      out.append(f"  {names.replace('`', '')}\n      {what.replace('`', '')}")
  out.append("Run one: jaxlab --config=configs/<file>.py:<preset>[,arg=value] --workdir=DIR")
  return "\n".join(out)


def methods_text() -> str:
  """`jaxlab methods`: each family, the paper its module implements, its variants."""
  import importlib  # pylint: disable=g-import-not-at-top
  from jaxlab import methods  # pylint: disable=g-import-not-at-top
  out = []
  for family in methods.FAMILIES:
    module = importlib.import_module(f"jaxlab.methods.{family}")
    variants = ", ".join(module.VARIANTS)
    out.append(f"{family:15s} {variants}\n      {_first_line(module.__doc__)}")
  out.append("Choose one with --config.method=<variant> on a preset of its family.")
  return "\n".join(out)


def readme_presets_table() -> str:
  """The README's preset table, row for row from the config files."""
  lines = ["| config | preset | what |", "|---|---|---|"]
  for path in config_files():
    for i, (names, what) in enumerate(preset_rows(path)):
      lines.append(f"| `{path}` | {names} | {what} |" if i == 0 else f"| | {names} | {what} |")
  return "\n".join(lines)


if __name__ == "__main__":
  print(readme_presets_table())
