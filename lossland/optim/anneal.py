r"""The annealed finish: the loss of a ReLU net minimized through a sequence of
smoothed nets whose activation sharpens back to the ReLU.

Why. On the non-smooth loss of a ReLU net, first-order optimizers (Adam, the
L-BFGS polish) stop at points that are far from minima: on the cpu preset's
nets (L = 2, h = 16, N = 336, P = 1.75 N and 2 N) the polished "jammed"
members keep Σ½Δ² of 30 to 60 where a continuation through smoothed nets
reaches 8 to 13, and two of the three non-sat members of the cell at
P = 1.75 N reach loss 0 exactly (docs/jamming.md, "the annealed finish").
A unit that is off on a point gives that point no gradient through it; the
smoothed activation gives every unit a slope on every point, so the descent
can move the boundaries of the ReLU regions that the ReLU loss freezes.

How (:func:`anneal`). Each hidden unit u's ReLU is replaced by

    phi_b(z) = s_u softplus(b z / s_u) / b,     0 <= phi_b(z) - relu(z) <= s_u log 2 / b,

with s_u the rms of the unit's pre-activations on the training set at entry
(so that the sharpness b is scale-free and the same for every unit; a unit
with s_u = 0 gets s_u = 1). For each b of ``levels`` in turn (increasing;
``inf`` is the ReLU itself) the loss of the smoothed net is minimized by
L-BFGS (scipy's L-BFGS-B, exact jax gradients, float64), each level from the
last one's result. The result is measured on the ReLU net; if the ReLU loss
at the end is above the entry's, the entry params are kept (the stage never
makes a member worse). The continuation is a heuristic global step, not a
certificate: the caller measures force balance
(:func:`lossland.stationarity.stationarity`) and classifies on it.

Everything is for one network on the host (as :mod:`lossland.optim.kink_newton`).
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from lossland import losses, nets

DEFAULT_LEVELS = (10.0, 100.0, 1e3, 1e4, 1e5, math.inf)


class AnnealResult(NamedTuple):
  """What :func:`anneal` returns.

  Attributes:
    params: the result (the entry params where the anneal did not lower the
      ReLU loss).
    loss_before, loss_after: the ReLU loss Σ_μ ℓ(Δ_μ) (no 1/P) at entry and
      of ``params``.
    n_iter: L-BFGS iterations over all levels.
    level_losses: the ReLU loss after each level run.
    reason: "sat" (every point satisfied), "levels" (every level run) or
      "kept" (the ReLU loss did not decrease: entry params kept).
  """
  params: object
  loss_before: float
  loss_after: float
  n_iter: int
  level_losses: list
  reason: str


def smoothed_relu(z, scale, b):
  """``scale * softplus(b z / scale) / b`` for a finite b (a float or a
  traced scalar); ``smoothed_relu(z, s, math.inf)`` is the ReLU itself."""
  if isinstance(b, (int, float)) and math.isinf(b):
    return jax.nn.relu(z)
  return scale * jax.nn.softplus(b * z / scale) / b


def parse_levels(text: str) -> tuple:
  """``"10,100,inf"`` -> (10.0, 100.0, inf); ValueError unless every level is
  positive and they increase."""
  try:
    levels = tuple(float(t) for t in text.split(","))
  except ValueError:
    raise ValueError(f"not a comma-separated list of numbers: {text!r}") from None
  if not levels or any(not b > 0 for b in levels):
    raise ValueError(f"levels must be positive (inf: the ReLU itself), got {text!r}")
  if any(b1 <= b0 for b0, b1 in zip(levels, levels[1:])):
    raise ValueError(f"levels must increase, got {text!r}")
  return levels


def unit_scales(cfg: nets.NetConfig, params, x) -> list:
  """Per hidden layer, [width]: each unit's rms pre-activation on ``x`` (1
  where it is 0)."""
  zs = nets.preactivations(cfg, params, x)[:-1]
  out = []
  for z in zs:
    s = jnp.sqrt(jnp.mean(z * z, axis=0))
    out.append(jnp.where(s > 0, s, 1.0))
  return out


def _loss_fns(cfg, unravel, x, y, loss, off, scales):
  """jitted ``value_and_grad`` of the smoothed loss (b a traced scalar; the
  ReLU net's own loss for b = inf is a separate function)."""
  def total(w, b):
    phi = lambda l, z: smoothed_relu(z, scales[l], b)
    zs = nets._forward(cfg, unravel(w), x, phi=phi)
    f = cfg.alpha * zs[-1]
    f = f[..., 0] if cfg.n_out == 1 else f
    return jnp.sum(loss.fn(losses.margins(f - off, y, loss.epsilon)))

  def relu_total(w):
    zs = nets._forward(cfg, unravel(w), x)
    f = cfg.alpha * zs[-1]
    f = f[..., 0] if cfg.n_out == 1 else f
    return jnp.sum(loss.fn(losses.margins(f - off, y, loss.epsilon)))
  return (jax.jit(jax.value_and_grad(total)), jax.jit(jax.value_and_grad(relu_total)),
          jax.jit(relu_total))


def anneal(cfg: nets.NetConfig, params, x, y, loss: losses.LossConfig, f_offset=None,
           levels=DEFAULT_LEVELS, iters: int = 4000, log_fn=None) -> AnnealResult:
  """Minimize the loss through smoothed nets of increasing sharpness (module
  docstring).

  Args:
    cfg: a NetConfig; for activations other than the ReLU only the level
      ``inf`` (the net itself) is run.
    params: the network's params.
    x, y: the training set [P, d], [P].
    loss: the LossConfig.
    f_offset: optional [P] constant subtracted from the outputs (f - f0).
    levels: increasing sharpnesses b (``inf``: the ReLU itself).
    iters: most L-BFGS iterations per level.
    log_fn: optional ``log_fn(str)``, one line per level.
  """
  from scipy.optimize import minimize
  w0, unravel = ravel_pytree(params)
  off = 0.0 if f_offset is None else jnp.asarray(f_offset)
  relu = cfg.activation == "relu"
  levels = tuple(levels) if relu else (math.inf,)
  scales = unit_scales(cfg, params, x) if relu else None
  smooth_vg, relu_vg, relu_loss = _loss_fns(cfg, unravel, x, y, loss, off, scales)
  loss0 = float(relu_loss(w0))
  w, n_iter, level_losses, reason = np.asarray(w0), 0, [], "levels"
  for b in levels:
    if math.isinf(b):
      fun = lambda v: tuple(np.asarray(t, np.float64) for t in relu_vg(jnp.asarray(v)))
    else:
      fun = lambda v, b=b: tuple(np.asarray(t, np.float64) for t in smooth_vg(jnp.asarray(v), b))
    res = minimize(fun, w, jac=True, method="L-BFGS-B",
                   options=dict(maxiter=iters, maxfun=2 * iters, gtol=0.0, ftol=0.0,
                                maxcor=30))
    w, n_iter = np.asarray(res.x, w0.dtype), n_iter + int(res.nit)
    level_losses.append(float(relu_loss(w)))
    if log_fn:
      log_fn(f"anneal b={b:g}: {res.nit} iterations, smoothed loss {float(res.fun):.6e}, "
             f"ReLU loss {level_losses[-1]:.6e}")
    if level_losses[-1] == 0.0:
      reason = "sat"
      break
  loss1 = level_losses[-1] if level_losses else loss0
  if not loss1 <= loss0:  # also nan
    return AnnealResult(params, loss0, loss0, n_iter, level_losses, "kept")
  return AnnealResult(unravel(jnp.asarray(w)), loss0, loss1, n_iter, level_losses, reason)
