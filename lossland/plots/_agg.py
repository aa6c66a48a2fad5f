"""The one place that selects matplotlib's backend for lossland's figures."""
import functools


@functools.cache
def pyplot():
  """``matplotlib.pyplot`` on the Agg backend, selected once, at first use.

  Agg draws PNG files without a display (clusters, CI); matplotlib is imported
  only when a figure is drawn, so importing :mod:`lossland.plots` costs nothing.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt
