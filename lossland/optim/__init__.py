"""Minimizers of the trainer: one (init, current, update, stuck) family of pure
functions per optimizer (:class:`Minimizer`), built from a frozen config.

    minimizer = optim.make(config, objective)

``config`` is a :class:`FirstOrderConfig` (adam, sgd, momentum, with a
:class:`Schedule`), :class:`GradientFlowConfig`, :class:`FireConfig` or
:class:`LBFGSConfig`; ``objective`` the trainer's :class:`Objective`.
"""
from lossland.optim import first_order, gradient_flow, fire, lbfgs, schedules
from lossland.optim.base import Minimizer, Objective
from lossland.optim.fire import FireConfig
from lossland.optim.first_order import FirstOrderConfig
from lossland.optim.gradient_flow import GradientFlowConfig
from lossland.optim.lbfgs import LBFGSConfig
from lossland.optim.schedules import SCHEDULES, Schedule

_FACTORIES = {
    FirstOrderConfig: first_order.make,
    GradientFlowConfig: gradient_flow.make,
    FireConfig: fire.make,
    LBFGSConfig: lbfgs.make,
}


def make(config, objective: Objective) -> Minimizer:
  """The :class:`Minimizer` of ``config`` on ``objective``."""
  try:
    factory = _FACTORIES[type(config)]
  except KeyError:
    raise TypeError(f"no minimizer for a {type(config).__name__}; use one of "
                    f"{', '.join(t.__name__ for t in _FACTORIES)}") from None
  return factory(config, objective)
