"""Learning-rate schedules of the first-order minimizers (lr lives in TrainState).

* ``constant``.
* ``step``: lr_t = max(lr_0 decay_factor^(t // decay_every), min_lr), the
  authors' "divide by 10 every 250k steps"; applied by the minimizer's update.
* ``plateau``: lr <- max(lr decay_factor, min_lr) when the best loss improved
  by less than a fraction ``plateau_rtol`` over ``plateau_patience`` steps;
  applied by the trainer, which holds the best loss (:func:`plateau_step`).
"""
import dataclasses

import jax.numpy as jnp

SCHEDULES = ("constant", "step", "plateau")


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A learning-rate schedule (hashable, jit-static); fields as TrainConfig's."""
  kind: str = "constant"
  lr: float = 1e-2
  decay_every: int = 250_000
  decay_factor: float = 0.1
  plateau_patience: int = 1000
  plateau_rtol: float = 1e-3
  min_lr: float = 1e-7


def step_lr(schedule: Schedule, t, dtype):
  """The step schedule's lr at step t."""
  return jnp.maximum(schedule.lr * schedule.decay_factor ** (t // schedule.decay_every),
                     schedule.min_lr).astype(dtype)


def plateau_step(schedule: Schedule, lr, best, plateau_ref, checked, t):
  """(lr, plateau_ref) after step t of the plateau schedule.

  At a checked step t > 0 that is a multiple of ``plateau_patience``, lr is
  multiplied by ``decay_factor`` (floored at ``min_lr``) if the best loss is
  above (1 - plateau_rtol) times the best at the previous boundary; the
  reference is reset to the best loss at every boundary and at t = 0.
  """
  boundary = checked & (t > 0) & (t % schedule.plateau_patience == 0)
  no_gain = best > (1.0 - schedule.plateau_rtol) * plateau_ref
  lr = jnp.where(boundary & no_gain,
                 jnp.maximum(lr * schedule.decay_factor, schedule.min_lr), lr)
  return lr, jnp.where(boundary | (t == 0), best, plateau_ref)
