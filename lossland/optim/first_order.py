"""Adam, SGD and momentum: optax's lr-free directions, the lr from TrainState.

The learning rate lives in the member's state (per member, schedulable,
bitwise resumable), so the optax transformation is the direction alone
(``scale_by_adam``, ``trace``, ``identity``) and the step is
``w - lr * direction``.
"""
import dataclasses

import optax

from lossland.optim import base, schedules

NAMES = ("adam", "sgd", "momentum")


@dataclasses.dataclass(frozen=True)
class FirstOrderConfig:
  """Attributes:
    name: "adam", "sgd" or "momentum".
    schedule: the learning-rate schedule (its ``lr`` is the initial lr).
    momentum: the momentum coefficient (name="momentum").
  """
  name: str = "adam"
  schedule: schedules.Schedule = schedules.Schedule()
  momentum: float = 0.9


def direction(cfg: FirstOrderConfig) -> optax.GradientTransformation:
  if cfg.name == "adam":
    return optax.scale_by_adam()
  if cfg.name == "momentum":
    return optax.trace(decay=cfg.momentum)
  return optax.identity()


def make(cfg: FirstOrderConfig, objective: base.Objective) -> base.Minimizer:
  del objective  # evaluates through the trainer's gradient provider
  tx = direction(cfg)
  sched = cfg.schedule

  def init(params, params0, data):
    del params0, data
    return tx.init(params)

  def update(params, params0, opt_state, lr, g, gnorm2, t, data):
    del params0, gnorm2, data
    if sched.kind == "step":
      lr = schedules.step_lr(sched, t, lr.dtype)
    d, opt_state = tx.update(g, opt_state, params)
    return base.axpy(-lr, d, params), opt_state, lr

  return base.Minimizer(init, base.evaluate_current, update, base.never_stuck)
