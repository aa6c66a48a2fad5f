"""Deprecated: moved to :mod:`lossland.plots.curvature`; this name goes in the next release.

A re-export only, so that ``from lossland import curvature_plots`` keeps working
for one release. New code: ``from lossland.plots import curvature``.
"""
from lossland.plots.curvature import (ZERO_TEXT, broadened, log_abs_histogram, plot_all,
                                      plot_density, plot_hp_rescaled, quadratures)

__all__ = ["ZERO_TEXT", "broadened", "log_abs_histogram", "plot_all", "plot_density",
           "plot_hp_rescaled", "quadratures"]
