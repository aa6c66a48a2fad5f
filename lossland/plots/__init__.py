"""Every matplotlib figure of lossland (the landscape's own figures aside).

The figures read run directories or the dicts of the analysis modules; the
analysis modules compute numbers only and never import this package.

* :mod:`lossland.plots.ensemble`: an ensemble run's directory -> training
  curves, test errors, the Delta distribution.
* :mod:`lossland.plots.curvature`: Hessian spectra (H, H0, Hp densities).
* :mod:`lossland.plots.phase`: :func:`lossland.phase.analyze` and
  :func:`lossland.phase.finite_size` results.
* :mod:`lossland.plots.generalization`: :func:`lossland.generalization.summarize`.
* :mod:`lossland.plots.sweep`: :func:`lossland.sweep.report_series`.

The backend (Agg) is chosen in one place, :func:`lossland.plots._agg.pyplot`.
The disconnectivity figures stay with the landscape explorer
(:mod:`lossland.landscape.report`).

Until this was a package, ``lossland.plots`` was today's
:mod:`lossland.plots.ensemble`; its public names are re-exported here for one
release. New code imports the submodule.
"""
from lossland.plots.ensemble import (plot_delta_distribution, plot_run, plot_test_errors,
                                     plot_training)

__all__ = ["plot_delta_distribution", "plot_run", "plot_test_errors", "plot_training"]
