"""Local minimizers for landscape exploration: GMIN/pele-style L-BFGS and FIRE.

Both minimizers are factories: ``make_lbfgs(value_and_grad_fn, ...)`` returns a
pure function ``minimize_fn(x0, *args) -> MinimizeResult`` whose iterations run in
one ``lax.while_loop``. It is written for one starting point; the caller applies
``jax.vmap`` over starting points and ``jax.jit`` at the edge, so one compilation
serves every batch of the same shape. :func:`vmap_chunked` is that vmap run a chunk
of members at a time, and :func:`vmap_chunk` picks the chunk per backend: on CPU a
vmapped batch of 128 quenches was slower than one quench at a time, chunks of 16
are ~2x faster than either; on an accelerator the whole batch runs at once.

``value_and_grad_fn(x, *args) -> (energy, gradient)`` is any jittable function of a
flat vector ``x`` of shape ``[D]``; extra ``args`` are passed through (HEF uses them to
project the gradient onto the tangent space of the current eigenvector).

References:
  Nocedal, Math. Comp. 35, 773 (1980): limited-memory BFGS two-loop recursion
  (:func:`lossland.optim.lbfgs.two_loop`, shared with the trainer).
  Wales group GMIN/OPTIM and pele (Stevenson et al.): L-BFGS without a line search,
  with the step capped by ``max_step`` and halved while the energy rises by more than
  ``max_erise``.
  Bitzek, Koskinen, Gähler, Moseler & Gumbsch, PRL 97, 170201 (2006): FIRE (the
  update rule is :func:`lossland.optim.fire.fire_step`, shared with the trainer).
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from lossland.optim import fire as fire_lib
from lossland.optim import lbfgs as lbfgs_lib

Array = Any


class MinimizeResult(NamedTuple):
  """Result of one local minimization.

  Attributes:
    x: final coordinates, shape ``[D]``.
    energy: final energy, scalar.
    grad_rms: root-mean-square gradient ``|g| / sqrt(D)`` at ``x``.
    n_iter: number of iterations (energy-gradient evaluations) used.
    converged: whether ``grad_rms <= gtol`` was reached within ``max_iter``.
  """
  x: Array
  energy: Array
  grad_rms: Array
  n_iter: Array
  converged: Array


class LBFGSState(NamedTuple):
  """State of one L-BFGS quench.

  The correction pairs are kept oldest first, the newest in the last row (a shift
  register, not a ring buffer): the two-loop recursion then reads every row at an
  index that is the same for all members, so under ``vmap`` it slices instead of
  gathering and scattering per member (1.4x faster on CPU, arithmetic unchanged).
  Rows not filled yet, or cleared by a memory reset, have ``rho = 0`` and add exact
  zeros to the recursion.
  """
  x: Array
  energy: Array
  grad: Array
  s_hist: Array  # [M, D] position differences, newest last
  y_hist: Array  # [M, D] gradient differences
  rho: Array  # [M]   1 / (y . s); 0 in rows that hold no pair
  h0: Array  # initial inverse-Hessian scale
  n_fail: Array  # consecutive rejected steps
  n_iter: Array


def rms(g: Array) -> Array:
  """Root-mean-square of a flat vector, ``|g| / sqrt(D)``."""
  return jnp.sqrt(jnp.mean(g * g))


def _lbfgs_step(s: LBFGSState, max_step: float) -> Array:
  """The trial step from ``s``: the L-BFGS direction ``-H g`` (reversed if it points
  uphill), scaled to norm at most ``max_step`` and halved once per consecutive
  rejection."""
  memory = s.rho.shape[0]
  # k = memory: every row is read, newest (last) first; empty rows have rho = 0.
  step = lbfgs_lib.two_loop(s.grad, s.s_hist, s.y_hist, s.rho, memory, s.h0)
  step = jnp.where(jnp.vdot(step, s.grad) > 0, -step, step)
  norm = jnp.linalg.norm(step)
  scale = jnp.minimum(1.0, max_step / jnp.maximum(norm, 1e-300))
  return step * scale * (0.5 ** s.n_fail)


def _push(hist: Array, row: Array) -> Array:
  """``hist`` with its oldest (first) row dropped and ``row`` appended last."""
  return jnp.concatenate([hist[1:], row[None]])


def _store_curvature(s: LBFGSState, sk: Array, yk: Array, accept: Array) -> tuple:
  """The memory after a step ``sk`` with gradient change ``yk``.

  An accepted step of positive curvature is stored as the newest correction pair
  (the oldest of the ``M`` drops out) and sets the inverse-Hessian scale ``h0``; an
  accepted step of negative curvature only sets ``h0`` to ``1/|λ|`` along the step;
  a rejected step changes nothing.

  Returns:
    ``(s_hist, y_hist, rho, h0)``.
  """
  ys = jnp.vdot(yk, sk)
  yy = jnp.vdot(yk, yk)
  update = accept & (ys > 1e-12 * jnp.sqrt(yy * jnp.vdot(sk, sk)))
  s_hist = jnp.where(update, _push(s.s_hist, sk), s.s_hist)
  y_hist = jnp.where(update, _push(s.y_hist, yk), s.y_hist)
  rho = jnp.where(update, _push(s.rho, 1.0 / jnp.where(update, ys, 1.0)), s.rho)
  # Along a step of negative curvature (near a saddle, e.g. a quench pushed off a
  # transition state) there is no curvature pair to store, and keeping the old
  # inverse-Hessian scale means steepest descent with steps h0·|g|, which leaves a
  # flat saddle region only after ~1/(h0|λ|) steps (~1e5 for network losses with
  # |λ| ~ 1e-3 and h0 = 0.1). Scaling by the modulus of the measured curvature,
  # h0 = |y·s|/(y·y) = 1/|λ| along the step, makes each step about as long as the
  # distance already travelled from the saddle: a geometric escape in a few
  # dozen steps, still bounded by max_step and max_erise.
  neg_curv = accept & (ys < -1e-12 * jnp.sqrt(yy * jnp.vdot(sk, sk)))
  h0 = jnp.where(update, ys / jnp.where(update, yy, 1.0),
                 jnp.where(neg_curv, -ys / jnp.where(neg_curv, yy, 1.0), s.h0))
  return s_hist, y_hist, rho, h0


def make_lbfgs(value_and_grad_fn: Callable[..., Any],
               *,
               gtol: float = 1e-8,
               max_iter: int = 10000,
               memory: int = 10,
               max_step: float = 0.2,
               max_erise: float = 1e-4,
               h0_init: float = 0.1,
               max_fail: int = 10) -> Callable[..., MinimizeResult]:
  """L-BFGS with a maximum step and an energy-rise guard (GMIN/pele style).

  No line search: the L-BFGS direction ``-H g`` is reversed if it points uphill,
  scaled so that its norm is at most ``max_step``, and halved while the energy
  rises by more than ``max_erise``. After ``max_fail`` consecutive rejections the
  memory is reset (the next step is a scaled steepest-descent step).

  Args:
    value_and_grad_fn: ``(x [D], *args) -> (energy [], gradient [D])``.
    gtol: convergence threshold on the RMS gradient ``|g|/sqrt(D)``.
    max_iter: maximum number of energy-gradient evaluations.
    memory: number of stored correction pairs M.
    max_step: maximum norm of one step.
    max_erise: largest accepted energy rise of one step.
    h0_init: initial inverse-Hessian scale before any update.
    max_fail: consecutive rejections after which the memory is reset.

  Returns:
    ``minimize_fn(x0 [D], *args) -> MinimizeResult``; pure, jittable, vmappable.
  """

  def minimize_fn(x0, *args):
    e0, g0 = value_and_grad_fn(x0, *args)
    d = x0.shape[0]
    dtype = x0.dtype
    state = LBFGSState(
        x=x0, energy=e0, grad=g0,
        s_hist=jnp.zeros((memory, d), dtype), y_hist=jnp.zeros((memory, d), dtype),
        rho=jnp.zeros((memory,), dtype), h0=jnp.asarray(h0_init, dtype),
        n_fail=jnp.asarray(0), n_iter=jnp.asarray(0))

    def cond(s):
      return (rms(s.grad) > gtol) & (s.n_iter < max_iter)

    def body(s):
      x_new = s.x + _lbfgs_step(s, max_step)
      e_new, g_new = value_and_grad_fn(x_new, *args)
      accept = (e_new - s.energy <= max_erise) & jnp.isfinite(e_new)
      s_hist, y_hist, rho, h0 = _store_curvature(s, x_new - s.x, g_new - s.grad, accept)

      n_fail = jnp.where(accept, 0, s.n_fail + 1)
      reset = n_fail > max_fail
      rho = jnp.where(reset, 0.0, rho)  # forget every pair
      h0 = jnp.where(reset, jnp.asarray(h0_init, dtype), h0)
      n_fail = jnp.where(reset, 0, n_fail)
      return LBFGSState(
          x=jnp.where(accept, x_new, s.x),
          energy=jnp.where(accept, e_new, s.energy),
          grad=jnp.where(accept, g_new, s.grad),
          s_hist=s_hist, y_hist=y_hist, rho=rho, h0=h0, n_fail=n_fail,
          n_iter=s.n_iter + 1)

    s = lax.while_loop(cond, body, state)
    g_rms = rms(s.grad)
    return MinimizeResult(x=s.x, energy=s.energy, grad_rms=g_rms, n_iter=s.n_iter,
                          converged=g_rms <= gtol)

  return minimize_fn


class _FireLoop(NamedTuple):
  x: Array
  energy: Array
  grad: Array
  fire: fire_lib.FireState
  n_iter: Array


def make_fire(value_and_grad_fn: Callable[..., Any],
              *,
              gtol: float = 1e-8,
              max_iter: int = 20000,
              dt: float = 0.02,
              dt_max: float = 0.2,
              max_step: float = 0.2,
              n_min: int = 5,
              f_inc: float = 1.1,
              f_dec: float = 0.5,
              alpha_start: float = 0.1,
              f_alpha: float = 0.99) -> Callable[..., MinimizeResult]:
  """FIRE: fast inertial relaxation engine (Bitzek et al., PRL 97, 170201, 2006).

  The update is :func:`lossland.optim.fire.fire_step` (unit masses, semi-implicit Euler,
  the position update capped at ``max_step``), iterated in one ``lax.while_loop``.
  ``value_and_grad_fn`` may return any "gradient" (the nudged-elastic-band driver
  passes minus the NEB force); the energy is only reported, never used for
  decisions, so non-conservative forces are fine.

  Args:
    value_and_grad_fn: ``(x [D], *args) -> (energy [], gradient [D])``.
    gtol: convergence threshold on the RMS gradient.
    max_iter: maximum number of iterations.
    dt, dt_max: initial and maximum time step.
    max_step: maximum norm of one position update.
    n_min, f_inc, f_dec, alpha_start, f_alpha: FIRE constants (paper defaults).

  Returns:
    ``minimize_fn(x0 [D], *args) -> MinimizeResult``; pure, jittable, vmappable.
  """
  config = fire_lib.FireConfig(dt_max=dt_max, n_min=n_min, f_inc=f_inc, f_dec=f_dec,
                               alpha_start=alpha_start, f_alpha=f_alpha,
                               max_step=max_step)

  def minimize_fn(x0, *args):
    e0, g0 = value_and_grad_fn(x0, *args)
    state = _FireLoop(x=x0, energy=e0, grad=g0, fire=fire_lib.fire_init(x0, dt, config),
                      n_iter=jnp.asarray(0))

    def cond(s):
      return (rms(s.grad) > gtol) & (s.n_iter < max_iter)

    def body(s):
      x, fs = fire_lib.fire_step(s.x, s.fire, s.grad, config)
      e, g = value_and_grad_fn(x, *args)
      return _FireLoop(x=x, energy=e, grad=g, fire=fs, n_iter=s.n_iter + 1)

    s = lax.while_loop(cond, body, state)
    g_rms = rms(s.grad)
    return MinimizeResult(x=s.x, energy=s.energy, grad_rms=g_rms, n_iter=s.n_iter,
                          converged=g_rms <= gtol)

  return minimize_fn


# ----------------------------------------------------------------------------
# A batch of quenches: the whole batch vmapped, or chunks of it in turn
# ----------------------------------------------------------------------------

# Members vmapped together on CPU. A vmapped while_loop runs every member until the
# slowest of its batch has converged, and each iteration of a large batch costs more
# per member: 128 network quenches (N = 59, 2 CPU cores) vmapped whole run 1.46
# member-iterations per useful one at 9.3 us each, in chunks of 16 1.21 at 6.0 us,
# one at a time none wasted but 12.0 us each (the per-operation overhead of tiny
# arrays, paid per member). Chunks of 8-16 were fastest for the network loss and
# for LJ13 alike (docs/landscape.md, "Batches of quenches on CPU").
CPU_VMAP_CHUNK = 16


def vmap_chunk(chunk: Optional[int] = None, backend: Optional[str] = None) -> int:
  """How many members :func:`vmap_chunked` runs together.

  Args:
    chunk: ``None`` chooses by backend; ``0`` the whole batch at once (plain
      ``vmap``); ``k > 0`` chunks of ``k``.
    backend: ``'cpu'``, ``'gpu'``, ``'tpu'``...; default ``jax.default_backend()``.

  Returns:
    ``chunk`` when given, else :data:`CPU_VMAP_CHUNK` on CPU and 0 elsewhere (an
    accelerator runs the members of a batch in parallel: one vmap over the whole
    batch of the landscape benchmark was 174x faster than one quench at a time on
    an H100).
  """
  if chunk is not None:
    if chunk < 0:
      raise ValueError(f'chunk must be >= 0 (0: the whole batch), got {chunk}')
    return int(chunk)
  backend = backend or jax.default_backend()
  return CPU_VMAP_CHUNK if backend == 'cpu' else 0


def vmap_chunked(fn: Callable[..., Any], chunk: int, in_axes=0) -> Callable[..., Any]:
  """``jax.vmap(fn, in_axes)``, run ``chunk`` members at a time.

  With ``chunk = 0``, or a batch of at most ``chunk`` members, this is
  ``jax.vmap``; otherwise ``lax.map`` over chunks of ``chunk`` vmapped members
  (a last, smaller chunk takes the remainder). Member ``i`` gets the same result
  either way up to rounding (a batched and an unbatched matrix product may round
  differently); the member's own arithmetic is unchanged.

  Args:
    fn: the per-member function.
    chunk: members per chunk, e.g. :func:`vmap_chunk`; 0 for the whole batch.
    in_axes: as for ``jax.vmap``, one entry per positional argument, each 0
      (batched along the leading axis) or None (shared); or 0 for all.

  Returns:
    The batched function (jit it at the edge).
  """
  if any(a not in (0, None) for a in (in_axes if isinstance(in_axes, (tuple, list))
                                       else (in_axes,))):
    raise ValueError(f'vmap_chunked: in_axes entries must be 0 or None, got {in_axes}')
  whole = jax.vmap(fn, in_axes=in_axes)
  if chunk == 0:
    return whole

  def batched(*args):
    axes = in_axes if isinstance(in_axes, (tuple, list)) else (in_axes,) * len(args)
    mapped = [a for a, ax in zip(args, axes) if ax == 0]
    n = jax.tree_util.tree_leaves(mapped)[0].shape[0]
    if n <= chunk:
      return whole(*args)

    def one_chunk(xs):
      it = iter(xs)
      return fn(*[next(it) if ax == 0 else a for a, ax in zip(args, axes)])

    return lax.map(one_chunk, mapped, batch_size=chunk)

  return batched
