"""Errors a user can make, reported as one line by `jaxlab.main`.

Anything raised as `UserError` is printed as `jaxlab: error: <message>` with a
non-zero exit code and no traceback; the message says what was wrong and what
the valid choices are. Bugs in jaxlab itself keep their tracebacks.
"""

from typing import Iterable


class UserError(Exception):
  """Bad input: an unknown name, an unprepared dataset, a shape that does not fit."""

  exit_code = 2


class TrainingDiverged(UserError):
  """A NaN or Inf appeared in the training metrics; nothing after it was saved."""

  exit_code = 3


def unknown(kind: str, name: str, choices: Iterable[str], hint: str = "") -> UserError:
  """Builds the standard 'unknown X' error listing the valid choices."""
  choices = sorted(choices)
  message = f"unknown {kind} {name!r}; valid choices: {', '.join(choices)}"
  if hint:
    message += f" ({hint})"
  return UserError(message)


class Interrupted(Exception):
  """SIGINT / SIGTERM during training: the run stopped at a step boundary after saving."""

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code
