"""A one-line progress bar on stderr, for long library calls and the scripts.

:func:`lossland.job.run_ensemble_job` draws one over training; the scripts
draw theirs through :mod:`lossland.scripts._cli`, which re-exports it.
"""
import sys
import time


class Progress:
  """A one-line progress bar on stderr (a new line every 10% when not a tty).

  ``note(text)`` prints a line at once (e.g. "compiling..." before the first
  bar); ``enabled=False`` silences everything. ``echo(text)``, if given,
  receives every note and the bar's text at each tenth of the way, enabled
  or not (a sweep shows there what the cell it runs is doing).
  """

  def __init__(self, label: str, width: int = 30, stream=None, enabled: bool = True,
               echo=None):
    self.label, self.width, self.enabled, self.echo = label, width, enabled, echo
    self.stream = stream or sys.stderr
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.t0 = time.time()
    self._last_decile = -1
    self._echo_decile = -1
    self._open = False

  def note(self, text: str):
    if self.echo:
      self.echo(text)
    if not self.enabled:
      return
    if self._open:
      self.stream.write("\n")
      self._open = False
    self.stream.write(f"{self.label}: {text} ({time.time() - self.t0:.0f}s)\n")
    self.stream.flush()

  def __call__(self, done: float, total: float, extra: str = ""):
    frac = 0.0 if total <= 0 else min(max(done / total, 0.0), 1.0)
    if self.echo and int(frac * 10) > self._echo_decile:
      self._echo_decile = int(frac * 10)
      self.echo(f"{self.label} {100 * frac:.0f}% {extra}".rstrip())
    if not self.enabled:
      return
    n = int(round(frac * self.width))
    line = (f"{self.label} [{'#' * n}{'.' * (self.width - n)}] "
            f"{100 * frac:5.1f}% {extra} ({time.time() - self.t0:.0f}s)")
    if self.tty:
      self.stream.write("\r" + line)
      self.stream.flush()
      self._open = True
    elif int(frac * 10) > self._last_decile:
      self._last_decile = int(frac * 10)
      self.stream.write(line + "\n")
      self.stream.flush()

  def close(self):
    if self.tty and self._open and self.enabled:
      self.stream.write("\n")
      self.stream.flush()
      self._open = False
