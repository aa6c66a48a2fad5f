"""The one place that selects matplotlib's backend for lossland's figures."""
import functools
import os
import sys


@functools.cache
def pyplot():
  """``matplotlib.pyplot``, on the Agg backend unless one is already chosen.

  Agg draws PNG files without a display (clusters, CI). A backend the user
  already chose is kept: ``pyplot`` imported before lossland draws (a
  notebook's inline backend, an interactive session) or ``$MPLBACKEND``
  set (Jupyter kernels set it), since switching the backend there would close
  the user's open figures. matplotlib is imported only when a figure is
  drawn, so importing :mod:`lossland.plots` costs nothing.
  """
  import matplotlib
  if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt
