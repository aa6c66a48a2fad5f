"""Gradient flow dw/dt = -grad L by adaptive Euler steps (the authors' ``gradientflow``).

A step w -> w - dt g is accepted when |g' - g|^2 / (|g| |g'|) < max_dgrad and
max_mu |f'_mu - f_mu| < max_dout; dt is multiplied by ``dt_grow`` when both
are below half their threshold, by ``dt_shrink`` (and the step retried) when
one is above. At a ReLU kink the gradient jumps whatever dt is: at dt <=
dt_min the step is taken without the tests (then dt grows back). The state
caches the gradient, outputs, loss and N_Delta at the accepted params, so a
step evaluates only its proposal.
"""
import dataclasses

import jax
import jax.numpy as jnp

from lossland.optim import base


@dataclasses.dataclass(frozen=True)
class GradientFlowConfig:
  """Attributes: lr (the initial dt); the acceptance tests and dt factors
  (TrainConfig's fields of the same names); dt_max 0 is no cap, dt_min 0 is
  1e-4 lr."""
  lr: float = 1e-2
  max_dgrad: float = 1e-4
  max_dout: float = 0.1
  dt_grow: float = 1.1
  dt_shrink: float = 0.1
  dt_max: float = 0.0
  dt_min: float = 0.0


def make(cfg: GradientFlowConfig, objective: base.Objective) -> base.Minimizer:
  evaluate = objective.evaluate
  dt_min = cfg.dt_min if cfg.dt_min > 0 else 1e-4 * cfg.lr

  def init(params, params0, data):
    loss, nd, f, g = evaluate(params, params0, data)
    return {"g": g, "f": f, "loss": loss, "n_delta": nd}

  def current(params, params0, c, evaluate_fn, t):
    del params, params0, evaluate_fn, t
    return c["g"], c["loss"], c["n_delta"], True

  def update(params, params0, c, dt, g, gnorm2, t, data):
    del t
    new = base.axpy(-dt, g, params)
    loss1, nd1, f1, g1 = evaluate(new, params0, data)
    g1n2 = base.tree_sum(jnp.square, g1)
    diff2 = base.tree_sum(lambda a, b: jnp.square(a - b), g1, g)
    norms = jnp.sqrt(gnorm2 * g1n2)
    dgrad = jnp.where(norms > 0, diff2 / jnp.where(norms > 0, norms, 1), 0.0)
    dout = jnp.max(jnp.abs(f1 - c["f"]), initial=0.0)
    ok = (((dgrad < cfg.max_dgrad) & (dout < cfg.max_dout)) |
          (dt <= dt_min)) & jnp.isfinite(loss1)
    calm = (dgrad < 0.5 * cfg.max_dgrad) & (dout < 0.5 * cfg.max_dout)
    dt_new = jnp.where(ok, jnp.where(calm, dt * cfg.dt_grow, dt),
                       dt * cfg.dt_shrink)
    if cfg.dt_max > 0:
      dt_new = jnp.minimum(dt_new, cfg.dt_max)
    pick = lambda a, b: jax.tree_util.tree_map(
        lambda u, v: jnp.where(ok, u, v), a, b)
    cache = pick({"g": g1, "f": f1, "loss": loss1, "n_delta": nd1}, c)
    return pick(new, params), cache, dt_new.astype(dt.dtype)

  return base.Minimizer(init, current, update, base.never_stuck)
