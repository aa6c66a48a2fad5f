r"""The finishing stage: a trust-region Newton method on the loss of a ReLU
net, restricted to the manifold of its kink contacts.

Why. A loss stall is not a minimum criterion on the non-smooth loss of a
ReLU net: L-BFGS stops at points where the force balance is off by 1e-4 to
1e-2 (:mod:`lossland.stationarity`; docs/jamming.md), and there some (unit,
point) pairs sit at a pre-activation z = 0, where the loss has a kink. A
minimum there is a point where 0 is a subgradient: for slopes s_k in [0, 1]
of the ReLU at the kink pairs k in K,

    g(w, s) = grad_w L~(w; s) = 0    and    z_k(w) = 0 for k in K,         (1)

where L~(w; s) is the loss of the *pattern-frozen* net: every ReLU replaced
by the linear map z -> d z with d = 1[z > 0] fixed, and d = s_k at the kink
pairs. L~ is smooth (a polynomial in w) and its value is the loss wherever
the pattern holds; the slopes act as Lagrange multipliers of the contacts
z_k = 0 (the force that holds a unit at its kink). A smooth activation has no
kinks and (1) is grad L = 0. A minimum also needs no descent of second
order on the manifold {z_K = 0}: :func:`min_curvature` gives the model's
lowest curvature there, and :func:`descent_probe` looks for a descent of the
true loss along the model's softest lines (the model's negative curvature
alone is not the loss's, docs/jamming.md).

How (:func:`finish`). A trust-region Newton method on L~ restricted to
{z_K = 0} (null-space steps, Nocedal & Wright ch. 4 and 18; the exact
subproblem of Moré & Sorensen 1983 on the dense Hessian from
``jax.hessian``, so negative curvature is followed out of saddle-like stall
points), steps accepted on the true ReLU loss, and an active set:

* a pair that crossed its kink back and forth joins K (a V-shaped valley);
* at a point stationary on the manifold, a pair of K leaves it when no
  subgradient balances the forces there (:func:`_release`); before that,
  a pair leaves when it holds no force or its slope is out of [0, 1] by a
  force larger than the manifold's reduced gradient
  (:func:`_release_early`: without it such pairs were held for thousands of
  iterations while the descent crawled, docs/jamming.md);
* the result is certified by the independent measurement of
  :func:`lossland.stationarity.stationarity` (r_sub by bounded least
  squares at the kinks it finds), which is what the caller should trust.

Measured (docs/jamming.md, "The finishing stage"): on the polished jammed
states of small nets the method lowers the loss (by percents) and r_sub by
one to three decades, and shows that those states had negative curvature;
it converges linearly, not quadratically, while points approach the margin
(Delta -> 0+, where the quadratic hinge's curvature jumps): it does not
reach r_sub <= 1e-10 in a few thousand iterations there.

The step model (``step_model``): "newton", the quadratic model of the
frozen loss; or "hinge" (:func:`_hinge_step`), the margins linearized
inside the hinge, so that points may cross Delta = 0 within a step: per
iteration it lowers the loss 1.3 to 4 times more on the unbalanced states of
N = 256 and 336, at 1.6 to 3 times the cost (docs/jamming.md, "the hinge
step model"); neither converges there.

Everything is for one network in float64 (numpy on the host, jax for the
derivatives; dense N x N Hessians: meant for the N of a CPU study and for
single members at paper scale). The frozen loss's Hessian and the margins'
Jacobian come layer by layer from :mod:`lossland.frozen_derivs`
(``layerwise``, the default; equal to ``jax.hessian``'s to rounding: for a
ReLU net 25 times faster at N = 369, P = 738; for a smooth net, whose
Hessian has the activation's phi'' term, 15 times there), the kink rows and
the slope columns one point per pair: ``python -m lossland.scripts.bench
finish``.
"""
import contextlib
import functools
import math
import threading
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from lossland import losses, nets, observables, stationarity
from lossland import frozen_derivs


# The finish's host linear algebra (SVD, eigh and least squares of N x N and
# K x N matrices) alternates with XLA programs. Up to this N one BLAS thread
# is faster: 2 x 200 Newton iterations at N = 336 took 13.7 s with one
# OpenBLAS thread and 19.6 s with two on the idle 2-core machine, 2 x 60 at
# N = 592 29.3 s against 38.3 s (the idle threads spin-wait against XLA's);
# the BLAS calls alone gain from a second thread from N ~ 1000 (an SVD, an
# eigh and a product: 0.98 at N = 600, 1.53 at N = 1200; BUILD_NOTES.md).
ONE_BLAS_THREAD_MAX_N = 1000


_BLAS_LOCK = threading.Lock()
_BLAS_HELD = {"depth": 0, "limits": None}


@contextlib.contextmanager
def host_blas(n: int):
  """A context with one BLAS thread in this process where ``n`` (the weights
  of the net) is at most :data:`ONE_BLAS_THREAD_MAX_N`, else no change; the
  previous limits come back when the last of the contexts open at once (in
  several threads: members finished side by side, ``finish_members``'s
  ``workers``) exits."""
  if n > ONE_BLAS_THREAD_MAX_N:
    yield
    return
  import importlib
  from threadpoolctl import threadpool_limits
  with _BLAS_LOCK:
    if not _BLAS_HELD["depth"]:
      importlib.import_module("scipy.optimize")  # the certificate's BLAS, loaded so the limit covers it
      _BLAS_HELD["limits"] = threadpool_limits(limits=1, user_api="blas")
    _BLAS_HELD["depth"] += 1
  try:
    yield
  finally:
    with _BLAS_LOCK:
      _BLAS_HELD["depth"] -= 1
      if not _BLAS_HELD["depth"]:
        _BLAS_HELD["limits"].restore_original_limits()
        _BLAS_HELD["limits"] = None


def _with_host_blas(fn):
  """``fn(cfg, params, ...)`` under :func:`host_blas` of the params' size."""
  @functools.wraps(fn)
  def wrapped(cfg, params, *args, **kwargs):
    with host_blas(int(ravel_pytree(params)[0].size)):
      return fn(cfg, params, *args, **kwargs)
  return wrapped


class FinishResult(NamedTuple):
  """What :func:`finish` returns.

  Attributes:
    params: the last iterate (the lowest loss; the input params if no step
      was accepted).
    record: the :class:`lossland.stationarity.Stationarity` of ``params``.
    n_changes: changes of the active set K.
    n_steps: accepted trust-region steps.
    n_iter: iterations (each one dense Hessian).
    converged: the record's r_sub <= ``tol``.
    reason: "converged", "max_iter", "stuck" (the trust region collapsed
      without an accepted step since the last restart, and the descent
      probe found no loss lower by more than ``observables.DESCENT_RTOL``
      there, where ``escape``), "no_unsat" (every
      point satisfied, at entry or after some steps), "no_force" (every
      unsatisfied point has zero force), "decay_stationary" (with
      ``weight_decay``: stationary for the regularized loss) or "separable"
      (with ``stop_separable``: the net classifies every point).
    residual_before: r_sub of the params it was given.
    n_restarts: times the search was restarted from its last iterate after
      its trust region collapsed (escapes included).
    n_escapes: restarts from the lower point the descent probe found where
      the trust region collapsed with no step accepted (``escape``).
    probe: the :class:`DescentProbe` the escape ran at ``params`` where the
      finish stopped "stuck" (it found no descent there), else None.
  """
  params: object
  record: stationarity.Stationarity
  n_changes: int
  n_steps: int
  n_iter: int
  converged: bool
  reason: str
  residual_before: float = float("nan")
  n_restarts: int = 0
  n_escapes: int = 0
  probe: object = None


def _frozen_forward(cfg: nets.NetConfig, params, x, pattern, pts, units, s):
  """Pre-activations of the pattern-frozen net (module docstring).

  ``pattern``: per hidden layer [P, width] slopes 0/1; ``pts``, ``units``:
  per hidden layer [Kp] indices of its kink pairs, padded with the
  out-of-range point P (dropped); ``s``: per hidden layer [Kp] slopes.
  """
  d = _slopes(pattern, pts, units, s, jax.tree_util.tree_leaves(params)[0].dtype)
  phi = lambda layer, z: d[layer] * z
  return nets._forward(cfg, params, x, phi=phi if cfg.activation == "relu" else None)


def _slopes(pattern, pts, units, s, dtype) -> list:
  """Per hidden layer the [P, width] ReLU slopes of the frozen net: the
  pattern's 0/1, and ``s`` at the kink pairs (``pts``, ``units``; padding
  dropped)."""
  return [p.astype(dtype).at[q, u].set(sl, mode="drop")
          for p, q, u, sl in zip(pattern, pts, units, s)]


def _parts_fn(cfg, loss, w, s_flat, x, y, off, pattern, pts, units, z_scale, decay,
              layerwise=True):
  """The frozen loss's gradient [N] and Hessian [N, N], the scaled kink
  pre-activations z_K [Kp], their Jacobian A [Kp, N] and dg/ds C [N, Kp];
  the loss plus ``decay`` |w|^2 / 2. ``layerwise``: by
  :mod:`lossland.frozen_derivs` where it applies (one point's pass per
  kink pair for A and C), else (and for the benchmark's reference) by
  ``jax.hessian`` and ``jax.jacfwd``."""
  unravel = nets.unravel_fn(cfg, w.dtype)
  split = stationarity.split_slopes(pts)

  def total(wf, sf):
    zs = _frozen_forward(cfg, unravel(wf), x, pattern, pts, units, split(sf))
    f = nets.readout(cfg, zs[-1])
    return jnp.sum(loss.fn(losses.margins(f - off, y, loss.epsilon))) + 0.5 * decay * wf @ wf

  def zk(wf):
    zs = _frozen_forward(cfg, unravel(wf), x, pattern, pts, units, split(s_flat))
    return jnp.concatenate(
        [zs[l].at[pts[l], units[l]].get(mode="fill", fill_value=0.0)
         / z_scale[l].at[units[l]].get(mode="fill", fill_value=1.0) for l in range(len(pts))]
        + [jnp.zeros(0, w.dtype)])
  grad = jax.grad(total)
  if layerwise and frozen_derivs.applies(cfg) and cfg.activation != "relu":
    # a smooth net has no kink pairs (only padding): its own activation
    value, g, H, _, _ = frozen_derivs.loss_derivatives(cfg, unravel(w), x, y, off, None,
                                                       loss, decay)
    n_pad = s_flat.shape[0]
    C, z_k, A = (jnp.zeros((w.size, n_pad), w.dtype), jnp.zeros(n_pad, w.dtype),
                 jnp.zeros((n_pad, w.size), w.dtype))
  elif layerwise and frozen_derivs.applies(cfg):  # 25 times faster at N = 369
    slopes = _slopes(pattern, pts, units, split(s_flat), w.dtype)
    value, g, H, _, _ = frozen_derivs.loss_derivatives(cfg, unravel(w), x, y, off, slopes,
                                                       loss, decay)
    C = frozen_derivs.slope_jacobian(cfg, unravel(w), x, y, off, slopes, loss, pts, units)
    z_k, A = frozen_derivs.kink_rows(cfg, unravel(w), x, slopes, pts, units, z_scale)
  else:
    value, g, H = total(w, s_flat), grad(w, s_flat), jax.hessian(total)(w, s_flat)
    C = jax.jacfwd(grad, argnums=1)(w, s_flat)
    z_k, A = zk(w), jax.jacfwd(zk)(w)
  return value, g, H, z_k, A, C


_PARTS = jax.jit(_parts_fn, static_argnums=(0, 1), static_argnames=("layerwise",))


def _margins_fn(cfg, loss, w, s_flat, x, y, off, pattern, pts, units, layerwise=True):
  """The margins Delta [P] of the frozen net and their Jacobian J [P, N]
  (every point, satisfied or not: the hinge step model's pieces); J from the
  per-point gradients of :mod:`lossland.frozen_derivs` where it
  applies and ``layerwise``, else by ``jax.jacfwd``."""
  unravel, split = nets.unravel_fn(cfg, w.dtype), stationarity.split_slopes(pts)
  if layerwise and frozen_derivs.applies(cfg):
    ins, G, f = frozen_derivs.features(  # a smooth net: its own activation
        cfg, unravel(w), x, _slopes(pattern, pts, units, split(s_flat), w.dtype)
        if cfg.activation == "relu" else None)
    return (losses.margins(f - off, y, loss.epsilon),
            -y[:, None] * frozen_derivs.jacobian(cfg, unravel(w), ins, G))

  def margins(wf):
    zs = _frozen_forward(cfg, unravel(wf), x, pattern, pts, units, split(s_flat))
    return losses.margins(nets.readout(cfg, zs[-1]) - off, y, loss.epsilon)
  return margins(w), jax.jacfwd(margins)(w)


_MARGINS = jax.jit(_margins_fn, static_argnums=(0, 1), static_argnames=("layerwise",))


def _true_loss_fn(cfg, loss, w, x, y, off, decay):
  f = nets.make_net(cfg, w.dtype)[1](nets.unravel_fn(cfg, w.dtype)(w), x)
  return jnp.sum(loss.fn(losses.margins(f - off, y, loss.epsilon))) + 0.5 * decay * w @ w


_TRUE_LOSS = jax.jit(_true_loss_fn, static_argnums=(0, 1))


class _Frozen(NamedTuple):
  """The pattern-frozen problem of one active set (padded index arrays)."""
  pattern: list
  pts: list
  units: list
  real: np.ndarray  # positions of the real slopes in the padded slope vector
  pad: int


def _frozen(pattern, idx, P: int) -> _Frozen:
  pk = stationarity.padded_kinks(idx, P)
  return _Frozen([jnp.asarray(p) for p in pattern], pk.pts, pk.units, pk.real, pk.pad)


def _tr_step(g, H, radius: float):
  """argmin g.p + p.H.p / 2 over |p| <= radius (H symmetric, eigenvalues):
  the Moré-Sorensen characterization, lambda by bisection; the hard case
  takes the step along the lowest eigenvector to the boundary."""
  lam_, Q = np.linalg.eigh(H)
  gq = Q.T @ g
  lo = max(0.0, -lam_[0])
  step = lambda mu: -gq / np.maximum(lam_ + mu, 1e-300)
  if lam_[0] > 0 and np.linalg.norm(step(0.0)) <= radius:
    return Q @ step(0.0)
  hi = lo + np.linalg.norm(g) / radius + 1.0
  if np.linalg.norm(step(lo + 1e-14 * max(1.0, abs(lo)))) <= radius:
    # hard case: interior solution of the shifted system plus the lowest mode
    p = np.where(lam_ + lo > 1e-14 * max(1.0, abs(lo)), step(lo), 0.0)
    t = math.sqrt(max(radius ** 2 - float(p @ p), 0.0))
    return Q @ p + t * Q[:, 0]
  for _ in range(100):
    mid = 0.5 * (lo + hi)
    if np.linalg.norm(step(mid)) > radius:
      lo = mid
    else:
      hi = mid
  return Q @ step(hi)


def _hinge_step(m: dict, radius: float, max_sets: int = 20):
  """The trust-region step of the hinge-exact model: ``(p, d, predicted decrease)``.

  The Newton model treats every unsatisfied point as a quadratic and every
  satisfied one as absent, so a step that moves points across the margin
  Delta = 0 (where the quadratic hinge's curvature jumps) is mispredicted and
  rejected. This model keeps the hinge:

      m(d) = sum_mu (Delta_mu + J_mu d)_+^2 / 2 + e.d + d.R.d / 2,

  J the margins' Jacobian of the frozen net (every point), R = H - J_U^T J_U
  the Hessian's part beyond Gauss-Newton (U the unsatisfied points; with the
  decay's identity) and e = g - J_U^T Delta_U (the decay's gradient and the
  slopes' update), so that m has the Newton model's value, gradient and
  Hessian at d = 0. m is piecewise quadratic and C^1, not convex where R is
  not. Over d = step_n + Z p with |p| <= radius: an active-set iteration,
  each set's quadratic solved exactly (:func:`_tr_step`, negative curvature
  followed), the set recomputed from the step, at most ``max_sets`` sets;
  the step with the lowest m is taken.
  """
  D, J, Z, d0, H = m["delta"], m["J"], m["Z"], m["step_n"], m["H"]
  U = D > 0
  JU = J[U]
  e = m["g"] - JU.T @ D[U]
  v0, JZ = D + J @ d0, J @ Z
  # R is never formed: R v = H v - J_U^T J_U v, and the quadratic of an
  # active set a on the manifold, Z^T (J_a^T J_a + R) Z, is Z^T H Z plus the
  # outer products of the points in a but not in U, minus those in U but not
  # in a (a few points, where forming R and J_a^T J_a costs P N^2 each)
  lin0 = Z.T @ (e + H @ d0 - JU.T @ (JU @ d0))
  HZZ = m["ZHZ"]

  def quad(active):
    add, rem = JZ[active & ~U], JZ[U & ~active]
    return HZZ + add.T @ add - rem.T @ rem

  def value(p):
    """m(d) - m(0), summed per point without cancellation (near a
    stationary point the change is 1e-15 of the loss)."""
    d = d0 + Z @ p
    t = J @ d
    v = D + t
    per = np.where(U, np.where(v > 0, t * (D + 0.5 * t), -0.5 * D * D),
                   np.where(v > 0, 0.5 * v * v, 0.0))
    tu = t[U]
    return float(np.sum(per)) + float(e @ d) + 0.5 * (float(d @ H @ d) - float(tu @ tu))

  if not Z.shape[1]:
    return np.zeros(0), d0, -value(np.zeros(0))
  best_p, best = np.zeros(Z.shape[1]), value(np.zeros(Z.shape[1]))
  active = v0 > 0
  for _ in range(max_sets):
    p = _tr_step(JZ[active].T @ v0[active] + lin0, quad(active), radius)
    val = value(p)
    if val < best:
      best_p, best = p, val
    new = (v0 + JZ @ p) > 0
    if np.array_equal(new, active):
      break
    active = new
  return best_p, d0 + Z @ best_p, -best


# A pair out of [0, 1] leaves K early when its unbalanced force exceeds this
# multiple of the reduced gradient on the manifold (:func:`_release_early`).
_EARLY_RELEASE = 10.0


def _release_early(s, b, c_norm, floor: float, no_force: float, n_released,
                   max_release: int):
  """Pairs of K that leave it before the manifold's stationary point, and on
  which side (True: on; None: the side it was on).

  A pair leaves when its slope does not move the gradient (``c_norm`` =
  |dg/ds| <= ``no_force``: its contact holds no force, the constraint only
  takes a direction away) or when its slope is out of [0, 1] and the force
  left unbalanced by the nearest admissible slope, |dg/ds| dist(s, [0, 1]),
  exceeds ``floor`` (a multiple of the reduced gradient): holding such a
  pair costs more descent than the manifold still offers. Measured on the
  small jammed nets of the tests: the manifold's own descent slows to
  1e-4..1e-5 of the force scale, and pairs held with slopes 1.06, -0.7 or
  without force were never released at the stationary-point test alone.
  """
  out, side = [], []
  for j, (sj, bj, cj) in enumerate(zip(s, b, c_norm)):
    if n_released.get(j, 0) >= max_release:
      continue
    if cj <= no_force:
      out.append(j), side.append(None)
    elif cj * max(-sj, sj - 1.0, 0.0) > floor:
      out.append(j), side.append(bool((1 - sj) * bj < 0))
  return out, side


def _kink_idx(masks) -> list:
  return [tuple(np.nonzero(m)) for m in masks]


def _unit_rms(cfg, params, x, unsat) -> list:
  """Per hidden layer, the [width] rms of each unit's z on the unsatisfied
  points (:func:`lossland.stationarity.unit_rms`, the kink tolerance's
  scale), 1 for a unit whose z all vanish."""
  zs = nets.preactivations(cfg, params, x)[:-1]
  return [np.where(sc > 0, sc, 1.0) for sc in map(np.asarray, stationarity.unit_rms(zs, unsat))]


def _release(s, b, slope_tol: float, n_released, max_release: int):
  """Which pairs of K leave it, and on which side (True: on).

  At a kink with slope s and b = (dg/ds) . grad z (the sign of dL/da, the
  loss's derivative in the unit's activation), the on-side steepest descent
  moves z by -(1 - s) b |grad z|^2 and the off-side one by s b |grad z|^2: a
  side is a descent side when that move keeps the pair on it. A pair stays
  in K when neither side descends (s in [0, 1] and b >= 0: a convex kink);
  with s in [0, 1] and b < 0 (a concave kink) both sides descend and the pair
  leaves towards the side with the larger slope of descent.
  """
  out, side = [], []
  for j, (sj, bj) in enumerate(zip(s, b)):
    if n_released.get(j, 0) >= max_release:
      continue
    if sj < -slope_tol or sj > 1 + slope_tol:
      out.append(j), side.append(bool((1 - sj) * bj < 0))
    elif bj < 0:
      out.append(j), side.append(bool(sj < 0.5))
  return out, side


def _active_parts(cfg, loss, w, fr: _Frozen, s_real, x, y, off, z_scale, decay=0.0,
                  layerwise=True):
  """Numpy (g, H, z_K, A, C) of the frozen problem at w with slopes s_real."""
  s_pad = np.zeros(fr.pad)
  s_pad[fr.real] = s_real
  _, g, H, zk, A, C = _PARTS(cfg, loss, w, jnp.asarray(s_pad, w.dtype), x, y, off,
                             fr.pattern, fr.pts, fr.units,
                             [jnp.asarray(z, w.dtype) for z in z_scale], decay,
                             layerwise=layerwise)
  g, H = np.asarray(g), np.asarray(H)
  return (g, 0.5 * (H + H.T), np.asarray(zk)[fr.real], np.asarray(A)[fr.real],
          np.asarray(C)[:, fr.real])


def _null_space(A, n: int):
  """(Z [n, n - r], A^+ [n, K]): a basis of null(A) and the pseudo-inverse."""
  if A.shape[0] == 0:
    return np.eye(n), np.zeros((n, 0))
  U, S, Vt = np.linalg.svd(A, full_matrices=True)
  r = int(np.sum(S > 1e-10 * S[0])) if S.size and S[0] > 0 else 0
  pinv = Vt[:r].T @ np.diag(1.0 / S[:r]) @ U[:, :r].T
  return Vt[r:].T, pinv


class _Search:
  """The host-side state of one :func:`finish` (numpy; jax for derivatives)."""

  def __init__(self, cfg, params, x, y, loss, f_offset, kink_rtol, slope_tol, max_release,
               decay=0.0, step_model="newton", layerwise=True, correction=False):
    # for restarted()
    self.settings = (f_offset, kink_rtol, slope_tol, max_release, decay, step_model, layerwise,
                     correction)
    self.decay, self.step_model, self.layerwise = float(decay), step_model, layerwise
    self.correction = correction
    self.cfg, self.x, self.y, self.loss = cfg, x, y, loss
    self.slope_tol, self.max_release = slope_tol, max_release
    self.off = 0.0 if f_offset is None else jnp.asarray(f_offset)
    self.apply_fn = nets.cached_apply_fn(cfg, x.dtype)
    self.relu = cfg.activation == "relu" and cfg.depth > 0
    w, self.unravel = ravel_pytree(params)
    self.w = np.asarray(w, np.float64)
    self.unsat = self.unsat_of(self.w)
    self.g_scale = stationarity.force_norm_sum(self.apply_fn, params, x, y, loss, off=self.off)
    zs = [np.asarray(z) for z in nets.preactivations(cfg, params, x)[:-1]]
    self.kinks = ([np.array(m) for m in
                   stationarity.kink_pairs(cfg, params, x, self.unsat, kink_rtol)]
                  if self.relu else [np.zeros(z.shape, bool) for z in zs])
    self.pattern = [z > 0 for z in zs]
    self.slopes, self.released, self.n_cross = {}, {}, {}
    self.L = self.true_loss(self.w)
    self.radius = 1e-3 * max(np.linalg.norm(self.w), 1.0)
    self.n_changes = self.n_acc = self.n_restarts = self.acc_at_start = self.n_escapes = 0
    self.stop_probe = None

  def restarted(self, log_fn=None, it: int = 0, params=None) -> "_Search":
    """A new search from the last iterate (or from ``params``: the descent
    probe's lower point), the kink pairs measured there, the initial radius,
    carrying the counters. For a trust region that
    collapsed after progress: the contacts K it gathered (pairs that crossed
    back and forth) and its radius no longer fit the landscape there, and
    restarts keep lowering the loss (docs/jamming.md)."""
    new = _Search(self.cfg, self.params() if params is None else params, self.x, self.y,
                  self.loss, *self.settings)
    new.n_changes, new.n_acc, new.n_restarts = self.n_changes, self.n_acc, self.n_restarts + 1
    new.n_escapes = self.n_escapes + (params is not None)
    new.acc_at_start = self.n_acc
    if log_fn:
      log_fn(f"iter {it}: trust region collapsed; restart {new.n_restarts} at L {new.L:.10e}"
             + (" (the descent probe's point)" if params is not None else ""))
    return new

  def params(self, w=None):
    return self.unravel(jnp.asarray(self.w if w is None else w, self.x.dtype))

  def true_loss(self, w) -> float:
    return float(_TRUE_LOSS(self.cfg, self.loss, jnp.asarray(w, self.x.dtype), self.x, self.y,
                            self.off, self.decay))

  def unsat_of(self, w):
    f = self.apply_fn(self.params(w), self.x)
    return np.asarray(losses.margins(f - self.off, self.y, self.loss.epsilon) > 0)

  def model(self) -> dict:
    """The quadratic model on the kink manifold at w: multipliers (slopes),
    the restoration step, the reduced gradient and its size."""
    idx = _kink_idx(self.kinks)
    flat = [(l, int(p), int(u)) for l, (ps, us) in enumerate(idx) for p, u in zip(ps, us)]
    fr = _frozen(self.pattern, idx, self.x.shape[0])
    z_scale = _unit_rms(self.cfg, self.params(), self.x, self.unsat)
    s_real = np.array([self.slopes.get(k, 0.5) for k in flat])
    w = jnp.asarray(self.w, self.x.dtype)
    g, H, zk, A, C = _active_parts(self.cfg, self.loss, w, fr, s_real, self.x, self.y,
                                   self.off, z_scale, self.decay, self.layerwise)
    hinge = {}
    if self.step_model == "hinge":  # the margins' Jacobian at the slopes H was taken at
      s_pad = np.zeros(fr.pad)
      s_pad[fr.real] = s_real
      D, J = _MARGINS(self.cfg, self.loss, w, jnp.asarray(s_pad, w.dtype), self.x, self.y,
                      self.off, fr.pattern, fr.pts, fr.units, layerwise=self.layerwise)
      hinge = dict(delta=np.asarray(D), J=np.asarray(J))
    if flat:
      # least-squares multipliers: g is affine in the slopes, g(s + ds) = g + C ds
      # (a pair whose slope does not move the gradient keeps its slope)
      ds = np.linalg.lstsq(C, -g, rcond=1e-10)[0]
      s_real, g = s_real + ds, g + C @ ds
    Z, A_pinv = _null_space(A, self.w.size)
    step_n = -A_pinv @ zk
    nn = float(np.linalg.norm(step_n))
    if nn > 0.8 * self.radius:  # the restoration step stays in the region (Byrd-Omojokun)
      step_n *= 0.8 * self.radius / nn
    gZ = Z.T @ (g + H @ step_n)
    # the reduced Hessian; with no kink pairs Z is the identity (a smooth net)
    ZHZ = Z.T @ H @ Z if A.shape[0] else H
    gres = float(np.linalg.norm(gZ)) / self.g_scale
    self.slopes = {k: float(v) for k, v in zip(flat, s_real)}
    return dict(flat=flat, g=g, H=H, zk=zk, Z=Z, ZHZ=ZHZ, step_n=step_n, gZ=gZ, gres=gres,
                fr=fr, z_scale=z_scale, A_pinv=A_pinv, z_target=zk + A @ step_n,
                s=s_real, b=np.einsum("ij,ji->i", A, C) if flat else np.zeros(0),
                c_norm=np.linalg.norm(C, axis=0) if flat else np.zeros(0),
                near=gres <= 1e-7 and float(np.linalg.norm(zk)) <= 1e-10, **hinge)

  def decay_stationary(self, m: dict, tol: float) -> bool:
    """With weight decay: stationary for the loss + decay |w|^2 / 2 on the
    manifold (reduced gradient <= tol, contacts held) with no negative
    curvature there: at a saddle the search goes on, its trust-region step
    along the lowest mode (a deep N = 336 member stopped at r_F 7.5e-11
    with lambda_min -0.35 before; docs/jamming.md, nineteenth session)."""
    if not (self.decay and m["gres"] <= tol and float(np.linalg.norm(m["zk"])) <= 1e-10):
      return False
    ev = np.linalg.eigvalsh(m["ZHZ"]) if m["ZHZ"].size else np.zeros(1)
    return bool(ev[0] >= -1e-12 * max(abs(ev[-1]), 1e-300))

  def release(self, m: dict, log_fn=None, it: int = 0) -> int:
    """Pairs of K that leave it; returns how many left.

    At a point stationary on the manifold, the pairs that no slope balances
    (:func:`_release`). Elsewhere (:func:`_release_early`), the pairs whose
    contact no longer holds anything: a slope that does not move the
    gradient (the pair carries no force), or a slope out of [0, 1] whose
    unbalanced force outweighs the reduced gradient on the manifold."""
    flat = m["flat"]
    if not flat:
      return 0
    counts = {j: self.released.get(k, 0) for j, k in enumerate(flat)}
    if m["near"]:
      out, side = _release(m["s"], m["b"], self.slope_tol, counts, self.max_release)
    else:
      out, side = _release_early(m["s"], m["b"], m["c_norm"],
                                 _EARLY_RELEASE * m["gres"] * self.g_scale,
                                 1e-9 * self.g_scale, counts, self.max_release)
      side = [self.pattern[flat[j][0]][flat[j][1:]] if on is None else on
              for j, on in zip(out, side)]
    for j, on in zip(out, side):
      l, p, u = flat[j]
      self.kinks[l][p, u] = False
      self.pattern[l][p, u] = on
      self.released[flat[j]] = self.released.get(flat[j], 0) + 1
    self.n_changes += bool(out)
    if log_fn and out:
      log_fn(f"iter {it}: {len(out)} pairs leave K")
    return len(out)

  def step(self, m: dict, log_fn=None, it: int = 0):
    """One trust-region step: (ratio, crossed pairs or None if rejected);
    logged every 20 iterations and when pairs crossed."""
    ratio, n_crossed = self._step(m)
    if log_fn and (it % 20 == 0 or n_crossed):
      log_fn(f"iter {it}: L {self.L:.10e} |g_Z|/F {m['gres']:.2e} |K| {len(m['flat'])} "
             f"radius {self.radius:.1e} ratio {ratio:.2f} crossed {n_crossed}")
    return ratio, n_crossed

  def _step(self, m: dict):
    if self.step_model == "hinge":
      p, d, pred = _hinge_step(m, self.radius)
    else:
      p = _tr_step(m["gZ"], m["ZHZ"], self.radius) if m["Z"].shape[1] \
          else np.zeros(0)
      d = m["step_n"] + m["Z"] @ p
      pred = -(float(m["g"] @ d) + 0.5 * float(d @ m["H"] @ d))
    w_try = self.w + d
    if self.correction and m["flat"]:
      w_try = self.corrected(m, w_try)
    L_try = self.true_loss(w_try)
    ratio = (self.L - L_try) / pred if pred > 0 else (1.0 if L_try < self.L else -1.0)
    if not (ratio > 0.1 and L_try <= self.L + 1e-15 * abs(self.L)):
      self.radius *= 0.25
      return ratio, None
    n = self.accept(w_try, L_try)
    if ratio > 0.75 and np.linalg.norm(p) >= 0.99 * self.radius:
      self.radius *= 2.0
    return ratio, n

  def corrected(self, m: dict, w_try):
    """The trial point moved back onto the kink manifold: the second-order
    correction of SQP methods (Nocedal & Wright 18.3), chord steps
    -A^+ (z_K(w) - z_lin) with the Jacobian A of the model, z_lin the
    contacts the model's step predicts (0 once the restoration is done);
    none below 1e-13, rounding. A step in null(A) leaves
    the curved manifold at second order, and there the V-shaped valley of
    each contact costs its force times |z_k|: a second-order error that the
    quadratic model does not have, which held a deep N = 336 finish at a
    fixed radius and a ratio of 0.2 for hundreds of iterations
    (docs/jamming.md, nineteenth session). Kept only where it brings the
    contacts closer to 0."""
    fr = m["fr"]
    zsc = [jnp.asarray(z, self.x.dtype) for z in m["z_scale"]]
    kz = lambda v: np.asarray(_KINK_Z(self.cfg, jnp.asarray(v, self.x.dtype), self.x,
                                      fr.pts, fr.units, zsc))[fr.real] - m["z_target"]
    z = kz(w_try)
    best, best_w = float(np.max(np.abs(z))), w_try
    if best <= 1e-13:  # rounding (contacts linear in w: a first hidden layer's)
      return w_try
    v = w_try
    for _ in range(3):
      v = v - m["A_pinv"] @ z
      z = kz(v)
      zmax = float(np.max(np.abs(z)))
      if not zmax < 0.5 * best:
        break
      best, best_w = zmax, v
    return best_w

  def accept(self, w_try, L_try) -> int:
    """Moves to w_try; pairs that crossed their kink back and forth join K
    (a V-shaped valley: the restoration step brings them to z = 0), a pair
    that crossed once just changed side. Returns the number that crossed."""
    zs_new = [np.asarray(z) for z in nets.preactivations(self.cfg, self.params(w_try),
                                                           self.x)[:-1]]
    unsat_new = self.unsat_of(w_try)
    live = (self.unsat | unsat_new)[:, None]
    crossed = [((z > 0) != pat) & ~k & live
               for z, pat, k in zip(zs_new, self.pattern, self.kinks)]
    back = [np.zeros_like(c) for c in crossed]
    for l, c in enumerate(crossed):  # only the crossed pairs (a loop over all P h
      for p_, u_ in zip(*np.nonzero(c)):  # was 18 % of a smooth N = 641 finish)
        key = (l, p_, u_)
        self.n_cross[key] = self.n_cross.get(key, 0) + 1
        back[l][p_, u_] = self.n_cross[key] >= 2
    if self.relu and any(c.any() for c in back):
      self.kinks = [k | c for k, c in zip(self.kinks, back)]
      self.n_changes += 1
    self.w, self.L, self.unsat = w_try, L_try, unsat_new
    self.pattern = [np.where(k, pat, z > 0)
                    for z, pat, k in zip(zs_new, self.pattern, self.kinks)]
    self.kinks = [k & self.unsat[:, None] for k in self.kinks]
    self.n_acc += 1
    return int(sum(c.sum() for c in crossed))


STEP_MODELS = ("newton", "hinge")


def _done(rec: stationarity.Stationarity, tol: float) -> str | None:
  """Why a state needs no (more) finishing, or None: "no_unsat" (every point
  satisfied), "converged" (r_sub <= tol) or "no_force" (every unsatisfied
  point has zero force: dead points, r_sub undefined)."""
  if rec.n_unsat == 0:
    return "no_unsat"
  if rec.force_residual <= tol:
    return "converged"
  return None if math.isfinite(rec.force_residual) else "no_force"


def _escape(st: _Search, log_fn, it: int):
  """Where the trust region collapsed with no step accepted: the descent
  probe at the iterate (a collapse is not a minimum: on a deep N = 592
  member the probe's Newton line went 7e-10 lower, relative, and the finish
  converged from there in 29 iterations; docs/jamming.md, fourteenth
  session); with weight decay the probe of the loss + decay."""
  pr = descent_probe(st.cfg, st.params(), st.x, st.y, st.loss, f_offset=st.settings[0],
                     kink_rtol=st.settings[1], weight_decay=st.decay)
  if pr.descends() and log_fn:
    log_fn(f"iter {it}: the descent probe found the loss lower by {-pr.gain:.1e} "
           f"(relative) along its {pr.line} line")
  return pr


def _iterate(st: _Search, certify, rec, tol: float, max_iter: int, log_fn,
             certify_every: int = 10, escape: bool = True, snapshot_fn=None,
             separable=None):
  """The finish's iterations: ``(search, last record, reason, last iteration)``;
  reason "" where the record decides (converged, every point satisfied);
  ``separable(params) -> bool``: stop "separable" after an accepted step
  where it holds (:func:`finish`'s ``stop_separable``)."""
  reason, certified = "", -certify_every
  for it in range(max_iter):
    if snapshot_fn is not None and it:
      snapshot_fn(st.params, it, st.n_restarts)
    m = st.model()
    if st.release(m, log_fn, it):
      continue
    if st.decay_stationary(m, tol):  # after the release: the slopes in [0, 1]
      return st, rec, "decay_stationary", it
    if (m["near"] and it - certified >= certify_every) or m["gres"] <= 0.01 * tol:
      rec, certified = certify(st.params()), it
      if _done(rec, tol):
        return st, rec, reason, it
    n_acc = st.n_acc
    st.step(m, log_fn, it)
    if separable is not None and st.n_acc > n_acc and separable(st.params()):
      return st, rec, "separable", it
    if st.radius < 1e-15 * max(np.linalg.norm(st.w), 1.0):
      if st.n_acc == st.acc_at_start:
        probe = _escape(st, log_fn, it) if escape else None
        if probe is None or not probe.descends():
          st.stop_probe = probe  # the probe at the params the finish returns
          return st, rec, "stuck", it
        st = st.restarted(log_fn, it, params=probe.params)
        continue
      rec = certify(st.params())
      if _done(rec, tol):  # e.g. every point satisfied by the last steps
        return st, rec, reason, it
      st = st.restarted(log_fn, it)  # collapsed after progress
  return st, rec, "max_iter", max_iter - 1


@_with_host_blas
def finish(cfg: nets.NetConfig, params, x, y, loss: losses.LossConfig,
           f_offset=None, tol: float = 1e-10, max_iter: int = 400,
           kink_rtol: float = 1e-7, slope_tol: float = 1e-9, max_release: int = 3,
           log_fn=None, weight_decay: float = 0.0, step_model: str = "newton",
           layerwise: bool = True, certify_every: int = 10,
           escape: bool = True, snapshot_fn=None,
           correction: bool | None = None, stop_separable: bool = False) -> FinishResult:
  """Drive one network to a minimum of its loss where (1) holds, then certify it.

  A trust-region Newton method on the loss restricted to the kink manifold
  {z_K = 0} (Moré & Sorensen 1983 for the subproblem; Nocedal & Wright ch. 4
  and 18 for the null-space step): with the pattern frozen, each step is a
  restoration step -A^+ z_K onto the manifold plus the trust-region
  minimizer of the quadratic model in null(A) (the Hessian of the frozen
  loss, exact, dense: negative curvature is followed, so the method leaves
  the saddle-like stall points L-BFGS stops at; docs/jamming.md). A step is
  accepted when the true (ReLU) loss decreases as the model predicts
  (ratio > 0.1). The slopes are the least-squares multipliers of the kink
  contacts; the active set changes as in the module docstring.

  Args:
    cfg: a NetConfig (ReLU: kinks and slopes; other activations: no kinks).
    params: the network's params (float64 for thresholds near 1e-10).
    x, y: the training set [P, d], [P].
    loss: the LossConfig.
    f_offset: optional [P] constant subtracted from the outputs (f - f0).
    tol: the target r_sub (the caller's ``jam_max_residual``).
    max_iter: most trust-region iterations (each one dense Hessian).
    kink_rtol: pairs with |z| <= kink_rtol * rms(z of the unit) start in K
      and are what the certificate counts
      (:func:`lossland.stationarity.kink_pairs`).
    slope_tol: slopes in [-slope_tol, 1 + slope_tol] count as in [0, 1].
    max_release: a pair leaves K at most this many times (against cycling).
    log_fn: optional ``log_fn(str)`` every 20 iterations and at active-set
      changes.
    weight_decay: mu > 0 minimizes the loss + mu |w|^2 / 2 instead (a finite
      minimum exists) and stops "decay_stationary" where its reduced
      gradient is <= ``tol``; ``record`` certifies the loss alone. A probe
      (docs/jamming.md, "where the descent goes"), not a classification.
    step_model: "newton" (the quadratic model of the frozen loss) or "hinge"
      (:func:`_hinge_step`: the margins exact in the model, so that points
      may cross Delta = 0 within a step; one [P, N] Jacobian more per
      iteration).
    layerwise: the frozen loss's gradient, Hessian and margin Jacobian layer
      by layer (:mod:`lossland.frozen_derivs`: nets with one output,
      ReLU or smooth); False: by ``jax.hessian`` and ``jax.jacfwd`` (the reference
      of ``python -m lossland.scripts.bench finish``). Equal to rounding.
    certify_every: near a stationary point (the model's reduced gradient
      <= 1e-7) the certificate runs at most every this many iterations (and
      whenever the reduced gradient is below tol / 100). It costs more than
      an iteration, and where the search converges it converges linearly
      (r_sub falls by about 0.1 % per iteration on the deep members of
      docs/jamming.md), so testing each iteration only costs time; 1 tests
      each one. The path of the search does not depend on it, only the
      iteration it stops at.
    escape: where the trust region collapses with no step accepted, run
      :func:`descent_probe` and, if it finds the loss lower by more than
      ``observables.DESCENT_RTOL``, restart from its lower point instead of
      stopping "stuck" (with ``weight_decay``, the loss + decay's probe).
    correction: each trial point moved back onto the kink manifold before
      its loss is measured (:meth:`_Search.corrected`, the second-order
      correction), or not (the trial point w + d itself); None (default):
      with ``weight_decay`` only. Measured on deep N = 336 states
      (docs/jamming.md, nineteenth session): with the decay it reached the
      stationary point in 500 and 1184 iterations where the plain steps
      crept at a ratio of 0.2 for 2500 (and stopped higher); on the loss
      alone, where those states keep descending, it did not help (one
      member 10 % higher after 1500 iterations, one even).
    snapshot_fn: optional ``snapshot_fn(params_fn, it, n_restarts,
      residual_before)`` before every iteration after the first:
      ``params_fn()`` gives the iterate after ``it`` iterations (a
      checkpoint, :mod:`lossland.train.finish`).
    stop_separable: stop "separable" at entry or at the first accepted step
      where the net's own output classifies every point (y g > 0; g without
      ``f_offset``): from there the loss falls to 0 along the output scale
      (:func:`lossland.train.finish.scale_to_sat` takes that step), so the
      finish need not go on, and going on could trade that state for one
      with a lower loss and a misclassified point.

  Returns:
    A :class:`FinishResult`; its params are the last iterate, whose true loss
    is the lowest seen (steps are accepted only when the loss decreases);
    ``record`` is measured there by :func:`lossland.stationarity.stationarity`.
  """
  if step_model not in STEP_MODELS:
    raise ValueError(f"step_model must be one of {STEP_MODELS}, got {step_model!r}")
  if certify_every < 1:
    raise ValueError(f"certify_every must be >= 1, got {certify_every}")
  apply_fn = nets.cached_apply_fn(cfg, x.dtype)
  certify = lambda p: stationarity.stationarity(cfg, apply_fn, p, x, y, loss,
                                                kink_rtol=kink_rtol, f_offset=f_offset)
  rec = certify(params)
  r0, reason = rec.force_residual, _done(rec, tol)
  separable = None
  if stop_separable:
    y_np = np.asarray(y, np.float64)
    separable = lambda p: bool(np.all(y_np * np.asarray(apply_fn(p, x), np.float64) > 0))
    reason = reason or ("separable" if separable(params) else None)
  if reason:
    return FinishResult(params, rec, 0, 0, 0, reason == "converged", reason, r0)
  if correction is None:
    correction = bool(weight_decay)
  st = _Search(cfg, params, x, y, loss, f_offset, kink_rtol, slope_tol, max_release,
               weight_decay, step_model, layerwise, correction)
  snap = None if snapshot_fn is None else (
      lambda params_fn, it, n_restarts: snapshot_fn(params_fn, it, n_restarts, r0))
  st, rec, reason, it = _iterate(st, certify, rec, tol, max_iter, log_fn, certify_every,
                                 escape, snap, separable)
  params = st.params()
  if reason in ("max_iter", "stuck", "decay_stationary", "separable"):
    rec = certify(params)
  reason = _done(rec, tol) or reason
  return FinishResult(params, rec, st.n_changes, st.n_acc, it + 1,
                      bool(rec.force_residual <= tol), reason, r0, st.n_restarts,
                      st.n_escapes, st.stop_probe)


def _manifold_model(cfg: nets.NetConfig, params, x, y, loss: losses.LossConfig,
                    f_offset=None, kink_rtol: float = 1e-7,
                    weight_decay: float = 0.0) -> dict | None:
  """The quadratic model of the pattern-frozen loss on the kink manifold at
  ``params`` (module docstring): the kink pairs of
  :func:`lossland.stationarity.kink_pairs`, their least-squares slopes, the
  gradient g and Hessian H at those slopes, the contacts' Jacobian A and a
  basis Z of its null space; with ``weight_decay`` mu those of the loss +
  mu |w|^2 / 2 (g + mu w, H + mu I, the slopes balancing g + mu w). None
  without unsatisfied points."""
  off = 0.0 if f_offset is None else jnp.asarray(f_offset)
  apply_fn = nets.cached_apply_fn(cfg, x.dtype)
  unsat = np.asarray(losses.margins(apply_fn(params, x) - off, y, loss.epsilon) > 0)
  if not unsat.any():
    return None
  zs = [np.asarray(z) for z in nets.preactivations(cfg, params, x)[:-1]]
  relu = cfg.activation == "relu" and cfg.depth > 0
  kinks = ([np.array(m) for m in stationarity.kink_pairs(cfg, params, x, unsat, kink_rtol)]
           if relu else [np.zeros(z.shape, bool) for z in zs])
  idx = _kink_idx(kinks)
  fr = _frozen([z > 0 for z in zs], idx, x.shape[0])
  z_scale = _unit_rms(cfg, params, x, unsat)
  w = ravel_pytree(params)[0]
  s_real = np.full(fr.real.size, 0.5)
  g, H, _, A, C = _active_parts(cfg, loss, w, fr, s_real, x, y, off, z_scale, weight_decay)
  if fr.real.size:
    s_real = s_real + np.linalg.lstsq(C, -g, rcond=None)[0]
    g, H, _, A, _ = _active_parts(cfg, loss, w, fr, s_real, x, y, off, z_scale, weight_decay)
  Z, A_pinv = _null_space(A, w.size)
  return dict(w=np.asarray(w, np.float64), g=g, H=H, A=A, Z=Z, A_pinv=A_pinv, fr=fr,
              z_scale=z_scale, off=off, relu=relu, s=s_real)


def manifold_curvature(cfg: nets.NetConfig, params, x, y, loss: losses.LossConfig,
                       f_offset=None, kink_rtol: float = 1e-7, weight_decay: float = 0.0,
                       margin=None) -> dict:
  """The extreme eigenvalues of the model's Hessian on the kink manifold.

  The Hessian of the pattern-frozen loss L~ (module docstring; with
  ``weight_decay`` mu, of L~ + mu |w|^2 / 2) at the least-squares slopes of
  the kink pairs (those of :func:`lossland.stationarity.kink_pairs`),
  projected on null(grad z_K). ``margin``: optional [P] bool, points whose
  Gauss-Newton term grad Delta grad Delta^T is left out (points at the
  margin, Delta > 0 but tiny: the quadratic hinge's curvature jumps at
  Delta = 0, and the lowest element of its generalized Hessian has none of
  theirs).

  Returns a dict: ``lam_min``, ``lam_max`` (absolute; nan without
  unsatisfied points or where the contacts fix every direction), ``n_kink``
  (pairs held at z = 0), ``slopes`` (their least-squares slopes, [n_kink];
  a minimum needs them in [0, 1]).
  """
  m = _manifold_model(cfg, params, x, y, loss, f_offset, kink_rtol, weight_decay)
  nan = dict(lam_min=float("nan"), lam_max=float("nan"), n_kink=0, slopes=np.zeros(0))
  if m is None:
    return nan
  H = m["H"]
  if margin is not None and np.any(margin):
    fr = m["fr"]
    s_pad = np.zeros(fr.pad)
    s_pad[fr.real] = m["s"]
    w = jnp.asarray(m["w"], x.dtype)
    _, J = _MARGINS(cfg, loss, w, jnp.asarray(s_pad, x.dtype), x, y, m["off"], fr.pattern,
                    fr.pts, fr.units)
    Jm = np.asarray(J)[np.asarray(margin, bool)]
    H = H - Jm.T @ Jm
  ev = np.linalg.eigvalsh(m["Z"].T @ H @ m["Z"])
  if not ev.size:
    return dict(nan, n_kink=int(m["fr"].real.size), slopes=m["s"])
  return dict(lam_min=float(ev[0]), lam_max=float(ev[-1]), n_kink=int(m["fr"].real.size),
              slopes=np.asarray(m["s"]))


def min_curvature(cfg: nets.NetConfig, params, x, y, loss: losses.LossConfig,
                  f_offset=None, kink_rtol: float = 1e-7) -> float:
  """lambda_min / lambda_max of the Hessian of the loss's model on the kink manifold.

  The Hessian of the pattern-frozen loss L~ (module docstring) at the
  least-squares slopes of the kink pairs (those of
  :func:`lossland.stationarity.kink_pairs`), projected on null(grad z_K)
  (:func:`manifold_curvature`).
  The per-unit rescalings of a ReLU net give exact zeros. A negative value
  is a property of the model, not yet of the loss: on a deep N = 592 member
  the model's most negative direction (-5.6e-7 of lambda_max) was one along
  which the true loss rises (docs/jamming.md, thirteenth session); the
  slopes are ill-determined where many pairs sit at their kinks.
  :func:`descent_probe` tests the true loss. Nan without unsatisfied points
  or where the contacts fix every direction.
  """
  c = manifold_curvature(cfg, params, x, y, loss, f_offset, kink_rtol)
  return c["lam_min"] / max(abs(c["lam_max"]), 1e-300)


# The probe's steps along each line, in units of |w|.
PROBE_STEPS = tuple(float(t) for t in np.logspace(-8, -1, 15))


class DescentProbe(NamedTuple):
  """What :func:`descent_probe` returns.

  Attributes:
    gain: the lowest (L(w') - L0) / L0 over the probe's trial points w',
      each line taken up to the first point where the loss rose above L0
      by more than ``tol`` (a barrier: a lower region behind it is another
      basin, not a descent from the state); <= 0. L0 is the loss of the
      state moved onto its kink manifold (``restore_gain``).
    step: |w' - w0| / |w0| at the lowest point (|w' - w0| where w0 = 0;
      0: no point lower than L0).
    line: which line found it: "gradient", "newton", "mode j" (j-th softest
      direction of the model's reduced Hessian, rescalings of ReLU units
      left out) with its sign, or "" if none.
    n_trials: trial points whose loss was evaluated.
    min_curvature: lambda_min / lambda_max of the model on the manifold
      (:func:`min_curvature`, rescalings included).
    restore_gain: (L0 - L) / L, the change of moving the state itself onto
      the manifold (its kink pairs to z = 0 exactly).
    params: the lowest point found (the input params where none is lower).
  """
  gain: float
  step: float
  line: str
  n_trials: int
  min_curvature: float
  restore_gain: float
  params: object = None

  def descends(self, rtol: float = observables.DESCENT_RTOL) -> bool:
    """Whether the probe found the loss lower by more than ``rtol``."""
    return bool(np.isfinite(self.gain) and self.gain < -rtol)


def _kink_z_fn(cfg, w, x, pts, units, z_scale):
  """The true net's pre-activations at the kink pairs, scaled by their
  units' rms (the contacts z_K of :func:`_parts_fn`, without the frozen
  pattern)."""
  zs = nets.preactivations(cfg, nets.unravel_fn(cfg, w.dtype)(w), x)[:-1]
  return jnp.concatenate(
      [zs[l].at[pts[l], units[l]].get(mode="fill", fill_value=0.0)
       / z_scale[l].at[units[l]].get(mode="fill", fill_value=1.0) for l in range(len(pts))]
      + [jnp.zeros(0, w.dtype)])


_KINK_Z = jax.jit(_kink_z_fn, static_argnums=(0,))


def rescaling_generators(cfg: nets.NetConfig, params) -> np.ndarray:
  """[N, n_hidden_units] the tangents of the per-unit rescalings of a
  NetConfig net: unit u of hidden layer l, its incoming weights (and bias)
  scaled by c, its outgoing weights by 1 / c, at c = 1. For a ReLU net
  (positively homogeneous) these leave the function unchanged: exact flat
  directions of every loss. Columns in ``ravel_pytree(params)`` order."""
  cols = []
  for l in range(cfg.depth):
    for u in range(params[l]["w"].shape[1]):
      t = [{k: np.zeros(np.shape(v)) for k, v in layer.items()} for layer in params]
      t[l]["w"][:, u] = np.asarray(params[l]["w"])[:, u]
      if "b" in t[l]:
        t[l]["b"][u] = np.asarray(params[l]["b"])[u]
      t[l + 1]["w"][u, :] = -np.asarray(params[l + 1]["w"])[u, :]
      cols.append(np.asarray(ravel_pytree(t)[0]))
  n = ravel_pytree(params)[0].size
  return np.array(cols).T if cols else np.zeros((n, 0))


@_with_host_blas
def descent_probe(cfg: nets.NetConfig, params, x, y, loss: losses.LossConfig,
                  f_offset=None, kink_rtol: float = 1e-7, n_modes: int = 8,
                  steps=PROBE_STEPS, tol: float = 1e-13,
                  weight_decay: float = 0.0) -> DescentProbe:
  """Looks for a descent of the true loss near ``params`` along a few lines.

  A first-order certificate (r_sub) does not bound the loss a state can
  still lose along its soft directions (a residual gradient g along a
  direction of curvature lambda leaves g^2 / 2 lambda), and the model's
  curvature on the kink manifold (:func:`min_curvature`) is not the loss's.
  This probe evaluates the true (ReLU) loss at points w0 + t d moved back
  onto the kink manifold (each contact z_k = 0, by chord Gauss-Newton steps
  with the Jacobian at w0), for t in ``steps`` |w0| along: the reduced
  gradient's descent direction, the model's Newton step on its positive
  curvature, and both signs of the ``n_modes`` softest directions of the
  model's reduced Hessian (for ReLU nets with the per-unit rescalings,
  exact flat directions, projected out). Each line is followed from the
  smallest step up to the first point where the loss rises above L0 by more
  than ``tol`` relative, or where the contacts cannot be restored.

  A gain below -``lossland.observables.DESCENT_RTOL`` shows that the state
  is not a minimum (:func:`lossland.observables.still_descending`). No
  gain shows only that none of these lines descends: a necessary check,
  not a proof of minimality.

  Args:
    cfg: a NetConfig net (float64 params).
    params: one network's params.
    x, y: the training data.
    loss: the LossConfig.
    f_offset: [P] outputs subtracted (subtract_init), or None.
    kink_rtol: the kink pairs' tolerance (:func:`lossland.stationarity.kink_pairs`).
    n_modes: soft directions probed (each both ways).
    steps: step lengths in units of |w0| (of 1 where w0 = 0), increasing.
    tol: the rise (relative to L0) that ends a line.
    weight_decay: mu > 0 probes the loss + mu |w|^2 / 2 instead (its model,
      and the rescalings, no longer flat, kept among the soft directions).

  Returns:
    a :class:`DescentProbe`; gain nan without unsatisfied points, 0 (no
    line probed) where the contacts fix every direction.
  """
  if n_modes < 0:
    raise ValueError(f"n_modes must be >= 0, got {n_modes}")
  steps = np.asarray(steps, np.float64)
  if steps.size == 0 or np.any(steps <= 0) or np.any(np.diff(steps) <= 0):
    raise ValueError("steps must be positive and increasing")
  m = _manifold_model(cfg, params, x, y, loss, f_offset, kink_rtol, weight_decay)
  if m is None:
    return DescentProbe(float("nan"), 0.0, "", 0, float("nan"), float("nan"), params)
  w, g, H, Z, A_pinv, fr = m["w"], m["g"], m["H"], m["Z"], m["A_pinv"], m["fr"]
  Hr = Z.T @ H @ Z
  ev_all = np.linalg.eigvalsh(Hr)
  if ev_all.size == 0:  # the contacts fix every direction: no line to probe
    return DescentProbe(0.0, 0.0, "", 0, float("nan"), float("nan"), params)
  lam_max = max(abs(ev_all[-1]), 1e-300)
  B = np.eye(Z.shape[1])
  if m["relu"] and not weight_decay:  # the rescalings (flat) out of the reduced space
    Gz = Z.T @ rescaling_generators(cfg, params)
    if Gz.shape[1]:
      U, S, _ = np.linalg.svd(Gz, full_matrices=True)
      r = int(np.sum(S > 1e-8 * S[0])) if S.size and S[0] > 0 else 0
      B = U[:, r:]
  ev, V = np.linalg.eigh(B.T @ Hr @ B)
  gc = B.T @ (Z.T @ g)
  dirs = []
  if np.linalg.norm(gc) > 0:
    dirs.append(("gradient", -(Z @ (B @ gc))))
  pos = ev > 1e-12 * lam_max
  if pos.any():
    dirs.append(("newton", -(Z @ (B @ (V[:, pos] @ ((V[:, pos].T @ gc) / ev[pos]))))))
  for j in range(min(n_modes, ev.size)):
    d = Z @ (B @ V[:, j])
    dirs += [(f"mode {j} +", d), (f"mode {j} -", -d)]
  pts, units = fr.pts, fr.units
  zsc = [jnp.asarray(z, x.dtype) for z in m["z_scale"]]
  kz = lambda v: np.asarray(_KINK_Z(cfg, jnp.asarray(v, x.dtype), x, pts, units, zsc))[fr.real]
  off = m["off"]
  true_loss = lambda v: float(_TRUE_LOSS(cfg, loss, jnp.asarray(v, x.dtype), x, y, off,
                                         weight_decay))

  def restore(v):
    z = kz(v)
    for _ in range(12):
      if z.size == 0 or np.max(np.abs(z)) <= 1e-13:
        return v
      v = v - A_pinv @ z
      z_new = kz(v)
      if np.max(np.abs(z_new)) > 0.5 * np.max(np.abs(z)):
        break
      z = z_new
    return v if z.size == 0 or np.max(np.abs(kz(v))) <= 1e-12 else None

  L = true_loss(w)
  w0 = restore(w)
  if w0 is None:
    w0 = w
  L0 = true_loss(w0)
  scale = float(np.linalg.norm(w0)) or 1.0
  best, best_t, best_line, n_trials, best_w = 0.0, 0.0, "", 0, None
  for name, d in dirs:
    nd = float(np.linalg.norm(d))
    if nd == 0:
      continue
    d = d / nd
    for t in steps * scale:
      v = restore(w0 + t * d)
      if v is None:
        break
      gain = (true_loss(v) - L0) / abs(L0)
      n_trials += 1
      if gain > tol:
        break
      if gain < best:
        best, best_t, best_line = gain, float(np.linalg.norm(v - w0)) / scale, name
        best_w = v
  unravel = ravel_pytree(params)[1]
  return DescentProbe(float(best), best_t, best_line, n_trials,
                      float(ev_all[0] / lam_max), float((L0 - L) / abs(L)),
                      params if best_w is None else unravel(jnp.asarray(best_w, x.dtype)))
