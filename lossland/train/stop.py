"""The stop rule: every member's stop reason, decided by one pure function.

:func:`stop_code` over a member's scalars, in the priority order of the
package docstring (:mod:`lossland.train`): diverged, sat, max_steps, jammed.
:class:`StopRule` holds the fields it reads (``TrainConfig.stop_rule()``; a
TrainConfig, which has the same fields, is accepted too).
"""
import dataclasses

import jax.numpy as jnp

STOP_REASONS = ("running", "sat", "jammed", "max_steps", "diverged")
RUNNING, SAT, JAMMED, MAX_STEPS, DIVERGED = range(5)


@dataclasses.dataclass(frozen=True)
class StopRule:
  """When a member stops (TrainConfig's fields of the same names).

  Attributes:
    max_steps: updates before ``max_steps``.
    stop_at_sat: stop as ``sat`` as soon as N_Delta = 0.
    jam_window, jam_rtol: ``jammed`` when the best loss decreased by less
      than a fraction jam_rtol over the last jam_window steps.
    divergence_factor: loss blow-up factor that counts as divergence.
    schedule, decay_every, min_lr, jam_after_decays: the learning-rate
      schedule, for the gate :func:`final_lr_level`.
  """
  max_steps: int = 10_000
  stop_at_sat: bool = True
  jam_window: int = 2000
  jam_rtol: float = 1e-3
  divergence_factor: float = 1e6
  schedule: str = "constant"
  decay_every: int = 250_000
  min_lr: float = 1e-7
  jam_after_decays: bool = False


def stop_code(t, running, loss, loss0, finite_grad, nd, checked, best, jam_ref,
              lr, cfg, stuck=False):
  """The stop rule (pure, per member): the code of a member after evaluating step t.

  Args:
    t: the step (unbatched int).
    running: whether the member was running before step t.
    loss, nd: loss and N_Delta at params_t (the last full-set check).
    loss0: the loss at step 0 (divergence reference).
    finite_grad: whether the gradient at params_t is finite.
    checked: whether loss/nd were evaluated on the full set at step t.
    best: best loss so far (including step t); jam_ref: best loss at the start
      of the current jam window.
    lr: current learning rate (the plateau schedule's floor).
    cfg: a :class:`StopRule` (or a TrainConfig).
    stuck: the optimizer found no descent direction (lbfgs: the line search
      failed along the quasi-Newton direction and along -g): with N_Delta > 0
      the member is jammed at once, at any step.

  Returns:
    int32 code: DIVERGED, SAT, MAX_STEPS, JAMMED (in this priority) or RUNNING;
    a member that was not running keeps RUNNING here (the caller keeps its code).
  """
  running, finite_grad, checked = (jnp.asarray(a, bool) for a in
                                   (running, finite_grad, checked))
  diverged = (~jnp.isfinite(loss) | ~finite_grad |
              (loss > cfg.divergence_factor * jnp.maximum(loss0, 1.0)))
  sat = (nd == 0) & checked & cfg.stop_at_sat
  window = checked & (t > 0) & (t % cfg.jam_window == 0)
  lr_floor = final_lr_level(t, lr, cfg)
  stalled = ((window & lr_floor & (best > (1.0 - cfg.jam_rtol) * jam_ref)) |
             (jnp.asarray(stuck, bool) & checked)) & (nd > 0)
  at_max = t >= cfg.max_steps
  code = jnp.select([diverged, sat, at_max, stalled],
                    [DIVERGED, SAT, MAX_STEPS, JAMMED], RUNNING)
  return jnp.where(running, code, RUNNING).astype(jnp.int32)


def final_lr_level(t, lr, cfg):
  """Whether the learning rate has reached its last level (the jam rule's gate).

  A loss that stalls at a large learning rate is the optimizer's noise floor
  (Adam rattling), not a minimum: a member may stop as jammed only once no
  decay is left. "plateau": lr at ``min_lr``; "step" with
  ``jam_after_decays``: lr at ``min_lr`` or past the last decay before
  ``max_steps``; otherwise always. ``min_lr`` is matched up to a relative
  1e-6 (lr0 * 0.1**k rounds to just above it).
  """
  at_min = lr <= cfg.min_lr * (1.0 + 1e-6)
  if cfg.schedule == "plateau":
    return at_min
  if cfg.schedule == "step" and cfg.jam_after_decays:
    last_decay = ((cfg.max_steps - 1) // cfg.decay_every) * cfg.decay_every
    return at_min | (t >= last_decay)
  return jnp.asarray(True)


