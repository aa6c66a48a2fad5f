"""Moved to :mod:`lossland.experiments.job`; this name stays for one release.

``lossland.job`` is the same module object as ``lossland.experiments.job``
(so attribute reads and test patches reach the real module).
"""
import sys

from lossland.experiments import job as _job

sys.modules[__name__] = _job
