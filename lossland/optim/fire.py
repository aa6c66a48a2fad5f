"""FIRE, the fast inertial relaxation engine, as one pure update rule.

Bitzek, Koskinen, Gähler, Moseler & Gumbsch, PRL 97, 170201 (2006). Unit masses,
semi-implicit (symplectic) Euler, the parameter names and defaults of the paper:

  P = F·v                                   (F = -grad, the force)
  P > 0:  v ← (1 - α) v + α |v| F/|F|;  if more than N_min steps since P ≤ 0:
          Δt ← min(Δt f_inc, Δt_max),  α ← α f_α
  P ≤ 0:  v ← 0,  Δt ← Δt f_dec,  α ← α_start
  then    v ← v + Δt F,  x ← x + Δt v       (Δt the updated step)

:func:`fire_step` is this rule for one system: ``(x, state, grad) -> (x', state')``.
``x``, ``grad`` and ``state.v`` are any pytree of arrays (a flat vector, or a network's
params); norms and the power are taken over the whole tree. ``dt``, ``alpha`` and
``n_pos`` live in the state, so under ``jax.vmap`` every member of an ensemble has its
own step, mixing and counter. The constants are a frozen, hashable
:class:`FireConfig` (a static argument of ``jax.jit``).

Users: :func:`lossland.landscape.minimize.make_fire` (minima, DNEB bands) and the
trainer's ``fire`` optimizer (:func:`make`).
"""

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from lossland.optim import base

Array = Any
PyTree = Any


@dataclasses.dataclass(frozen=True)
class FireConfig:
  """FIRE constants (Bitzek et al. 2006, defaults of the paper).

  Attributes:
    dt_max: largest time step Δt_max.
    n_min: N_min, steps with P > 0 before Δt may grow.
    f_inc: f_inc, growth factor of Δt.
    f_dec: f_dec, shrink factor of Δt after an uphill step (P ≤ 0).
    alpha_start: α_start, the initial and reset mixing.
    f_alpha: f_α, decay factor of α.
    max_step: optional cap on the norm of one position update ``Δt v`` (over the
      whole tree); None for no cap (the paper has none; minimizers use one, as
      GMIN/OPTIM cap steps).
  """
  dt_max: float = 1.0
  n_min: int = 5
  f_inc: float = 1.1
  f_dec: float = 0.5
  alpha_start: float = 0.1
  f_alpha: float = 0.99
  max_step: Optional[float] = None


class FireState(NamedTuple):
  """Per-system FIRE state (arrays only; vmap adds a leading member axis).

  Attributes:
    v: velocity, same pytree structure as the coordinates.
    dt: current time step, scalar (the dtype of the coordinates).
    alpha: current mixing α, scalar.
    n_pos: steps since the last P ≤ 0, int32 scalar.
  """
  v: PyTree
  dt: Array
  alpha: Array
  n_pos: Array


def _tree_dot(a, b):
  leaves = jax.tree_util.tree_leaves(
      jax.tree_util.tree_map(lambda u, w: jnp.sum(u * w), a, b))
  return sum(leaves[1:], leaves[0])


def fire_init(x: PyTree, dt: float, config: FireConfig = FireConfig()) -> FireState:
  """Zero velocity, ``dt`` and ``alpha_start`` in the dtype of ``x``'s first leaf.

  Args:
    x: coordinates (pytree); only structure and dtype are used.
    dt: initial time step (a float, or an array for per-member steps under vmap).
    config: :class:`FireConfig`.

  Returns:
    :class:`FireState`.
  """
  dtype = jax.tree_util.tree_leaves(x)[0].dtype
  return FireState(v=jax.tree_util.tree_map(jnp.zeros_like, x),
                   dt=jnp.asarray(dt, dtype),
                   alpha=jnp.asarray(config.alpha_start, dtype),
                   n_pos=jnp.asarray(0, jnp.int32))


def fire_step(x: PyTree, state: FireState, grad: PyTree,
              config: FireConfig = FireConfig(), grad_norm=None) -> tuple:
  """One FIRE update (module docstring) at coordinates ``x`` with gradient ``grad``.

  Pure and jittable; ``jax.vmap`` over ``(x, state, grad)`` gives independent
  members (each with its own ``dt``, ``alpha``, ``n_pos``). Any "gradient" works
  (e.g. minus a nudged-elastic-band force): the energy is never used. The dtypes
  of ``x``, ``state.dt`` and ``state.alpha`` are kept.

  Args:
    x: coordinates, pytree.
    state: :class:`FireState` for ``x``.
    grad: gradient at ``x``, same structure as ``x``.
    config: :class:`FireConfig`.
    grad_norm: |grad| over the whole tree if the caller has it (the trainer
      computes it for its stop rule); None computes it here.

  Returns:
    ``(x_new, state_new)``.
  """
  c = config
  tm = jax.tree_util.tree_map
  force = tm(jnp.negative, grad)
  power = _tree_dot(force, state.v)
  fnorm = jnp.sqrt(_tree_dot(force, force)) if grad_norm is None else grad_norm
  vnorm = jnp.sqrt(_tree_dot(state.v, state.v))
  up = power > 0
  grow = up & (state.n_pos > c.n_min)
  # α|v| F/|F|; a zero force leaves v unchanged (F/|F| taken as 0).
  scale = state.alpha * vnorm
  fden = jnp.where(fnorm > 0, fnorm, 1)
  v = tm(lambda vi, fi: jnp.where(up, (1 - state.alpha) * vi + scale * (fi / fden),
                                  jnp.zeros_like(vi)), state.v, force)
  dt = jnp.where(grow, jnp.minimum(state.dt * c.f_inc, c.dt_max),
                 jnp.where(up, state.dt, state.dt * c.f_dec)).astype(state.dt.dtype)
  alpha = jnp.where(grow, state.alpha * c.f_alpha,
                    jnp.where(up, state.alpha, c.alpha_start)).astype(state.alpha.dtype)
  n_pos = jnp.where(up, state.n_pos + 1, 0).astype(state.n_pos.dtype)
  v = tm(lambda vi, fi: vi + dt * fi, v, force)
  dx = tm(lambda vi: dt * vi, v)
  if c.max_step is not None:
    norm = jnp.sqrt(_tree_dot(dx, dx))
    shrink = jnp.minimum(1.0, c.max_step / jnp.where(norm > 0, norm, 1))
    dx = tm(lambda d: d * shrink, dx)
  x_new = tm(lambda xi, d: (xi + d).astype(xi.dtype), x, dx)
  return x_new, FireState(v=v, dt=dt, alpha=alpha, n_pos=n_pos)


def make(config: FireConfig, objective) -> base.Minimizer:
  """FIRE as a trainer minimizer: the state's lr is FIRE's Δt.

  ``opt_state`` holds the velocity, α and the number of steps since the power
  was last ≤ 0 (a dict, the layout of checkpoints written before this module
  existed); the gradient comes from the trainer's provider.
  """
  del objective

  def init(params, params0, data):
    del params0
    return {"v": jax.tree_util.tree_map(jnp.zeros_like, params),
            "alpha": jnp.asarray(config.alpha_start, data.x_train.dtype),
            "n_pos": jnp.int32(0)}

  def update(params, params0, c, dt, g, gnorm2, t, data):
    del params0, t, data
    new, fs = fire_step(params, FireState(v=c["v"], dt=dt, alpha=c["alpha"],
                                          n_pos=c["n_pos"]), g, config,
                        grad_norm=jnp.sqrt(gnorm2))
    return new, {"v": fs.v, "alpha": fs.alpha, "n_pos": fs.n_pos}, fs.dt

  return base.Minimizer(init, base.evaluate_current, update, base.never_stuck)
