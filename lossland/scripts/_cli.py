"""Shared plumbing of the absl entry points: flag errors, exit codes, progress.

Bad input must give a one-line message and exit status 2 (absl's default for a
flag error is a multi-line message and status 1).
"""
import sys
import time

from absl import app
from absl import logging
from absl import flags


class UsageError(Exception):
  """Invalid input detected by a script after flag parsing (exit status 2)."""


def fail(message: str):
  """Prints ``error: message`` on one line to stderr and exits with status 2."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(2)


def _parse(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(e)


def run(main):
  """``absl.app.run(main)`` with one-line flag errors and exit status 2.

  ``UsageError`` and ``ValueError`` raised by ``main`` (bad configs, data
  sizes, files) are reported the same way.
  """
  def wrapped(argv):
    logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except (UsageError, ValueError) as e:
      fail(e)
  app.run(wrapped, flags_parser=_parse)


class Progress:
  """A one-line progress bar on stderr (a new line every 10% when not a tty)."""

  def __init__(self, label: str, width: int = 30, stream=None):
    self.label, self.width = label, width
    self.stream = stream or sys.stderr
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.t0 = time.time()
    self._last_decile = -1

  def __call__(self, done: float, total: float, extra: str = ""):
    frac = 0.0 if total <= 0 else min(max(done / total, 0.0), 1.0)
    n = int(round(frac * self.width))
    line = (f"{self.label} [{'#' * n}{'.' * (self.width - n)}] "
            f"{100 * frac:5.1f}% {extra} ({time.time() - self.t0:.0f}s)")
    if self.tty:
      self.stream.write("\r" + line)
      self.stream.flush()
    elif int(frac * 10) > self._last_decile:
      self._last_decile = int(frac * 10)
      self.stream.write(line + "\n")
      self.stream.flush()

  def close(self):
    if self.tty:
      self.stream.write("\n")
      self.stream.flush()
