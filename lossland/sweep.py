"""Moved to :mod:`lossland.experiments.sweep`; this name stays for one release.

``lossland.sweep`` is the same module object as ``lossland.experiments.sweep``
(so attribute reads and test patches reach the real module).
"""
import sys

from lossland.experiments import sweep as _sweep

sys.modules[__name__] = _sweep
