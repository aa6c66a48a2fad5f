r"""Is a trained network at a stationary point of its loss? Force balance on
the unsatisfied points, ReLU kinks, and the minimum-norm subgradient.

The loss L(w) = sum_mu ell(Delta_mu), Delta_mu = epsilon - y_mu f_mu(w), has
the gradient sum_mu ell'(Delta_mu) grad Delta_mu, a sum of "forces" of the
unsatisfied points (for the quadratic hinge ell'(Delta) = Delta for
Delta > 0, else 0). Its scale-free size

    r = |sum_mu ell'(Delta_mu) grad Delta_mu| / sum_mu |ell'(Delta_mu) grad Delta_mu|

is 0 at a stationary point and of order one far from it
(:func:`force_residual`). The loss's overall scale (1/P, alpha^-2) cancels.

A ReLU net is not differentiable where a pre-activation z of a unit on an
unsatisfied point is exactly 0 (a *kink pair*); there the ReLU's one-sided
derivatives are 0 and 1 and a minimum only needs 0 in the Clarke
subdifferential. :func:`kink_pairs` finds the pairs with |z| below ``rtol``
times the rms of their unit's pre-activations on the unsatisfied points (per
unit, so that the count does not change under the per-unit rescalings of a
ReLU net, w_in -> c w_in, w_out -> w_out / c, which leave the loss unchanged;
a per-layer scale counted every pair of a unit that such a drift had shrunk),
and :func:`subgradient_residual` gives

    r_sub = min over slopes s in [0, 1]^K of |g(s)| / sum_mu |ell'(Delta_mu) grad Delta_mu|,

where g(s) is the gradient with the ReLU derivative s_k at kink pair k
(:func:`lossland.nets.apply_with_kink_slopes`; the value of the net does not
depend on s). When every point has at most one kink pair, g is affine in s
and the minimum is a bounded least-squares problem solved exactly
(scipy's BVLS); when a point has kinks in several layers, g is multilinear in
that point's slopes and r_sub comes from successive linearizations, each an
exact bounded least-squares step, kept only while they lower |g| (an upper
bound of the true minimum; the result says which). r_sub <= r always: the
usual derivative is one of the admissible slopes. For smooth activations
there are no kinks and r_sub = r.

One direction needs no slopes: a net whose output is linear in its readout
layer (every :class:`lossland.nets.NetConfig` net: scaling the last layer's
weights and bias by c scales f by c, whatever the ReLU pattern) has
dL/dc = -sum_mu ell'(Delta_mu) y_mu f_mu at c = 1, so at any stationary
point (a Clarke one included)

    sum_mu ell'(Delta_mu) y_mu f_mu = 0,

for the quadratic hinge sum_mu Delta_mu (epsilon - Delta_mu) = 0 over the
unsatisfied points: their mean Delta^2 is epsilon times their mean Delta,
and a jammed minimum has points with Delta > epsilon, misclassified ones
(a virial identity). :func:`scale_residual` is its scale-free size, signed:
> 0 where larger outputs would lower the loss. Where the net classifies
every point, that descent ends at loss 0: :func:`sat_scale` is the scale
that satisfies every margin.

Everything here is for one network in float64 numpy/jax; the per-point
gradients are computed in chunks of ``chunk`` points (memory chunk x N).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from lossland import frozen_derivs, losses, nets


class Stationarity(NamedTuple):
  """The stationarity record of one network (see the module docstring).

  Attributes:
    force_residual: r_sub (equals r without kinks); nan without
      unsatisfied points.
    force_residual_smooth: r, with the usual ReLU derivative 1[z > 0].
    n_kink: kink pairs (unit, unsatisfied point) at tolerance ``kink_rtol``.
    n_unsat: unsatisfied points N_Delta.
    exact: whether r_sub is the exact minimum (at most one kink per point).
    kink_rtol: the tolerance used.
  """
  force_residual: float
  force_residual_smooth: float
  n_kink: int
  n_unsat: int
  exact: bool
  kink_rtol: float


def _point_forces(apply_fn, params, x, y, loss: losses.LossConfig, off=0.0):
  """Delta [P] and dL_mu/dDelta_mu [P] of every point (outputs minus ``off``)."""
  delta = losses.margins(apply_fn(params, x) - off, y, loss.epsilon)
  dell = jax.vmap(jax.grad(loss.fn))(delta)
  return delta, dell


def _force_norms(apply_fn, loss, chunk: int, params, x, y, off):
  """``(Delta [P], |grad L|, sum_mu |ell'(Delta_mu) grad Delta_mu|)`` in one
  program: the per-point gradients chunk by chunk (``lax.map`` over chunks of
  ``chunk`` points, the last one padded with zero-force rows), so memory is
  chunk x N whatever P."""
  delta, dell = _point_forces(apply_fn, params, x, y, loss, off)
  P, chunk = x.shape[0], min(chunk, x.shape[0])
  n = -(-P // chunk)
  xs = jnp.pad(x, ((0, n * chunk - P), (0, 0))).reshape(n, chunk, x.shape[1])
  ws = jnp.pad(jnp.abs(dell), (0, n * chunk - P)).reshape(n, chunk)
  grad_f = jax.vmap(lambda xi: ravel_pytree(jax.grad(
      lambda p: apply_fn(p, xi[None])[0])(params))[0])
  den = jnp.sum(jax.lax.map(lambda c: jnp.sum(c[1] * jnp.linalg.norm(grad_f(c[0]), axis=-1)),
                            (xs, ws)))
  return delta, jnp.linalg.norm(_loss_grad(apply_fn, params, x, y, loss, off)), den


# one compilation per (apply_fn, loss, chunk, shapes): a finish certifies
# hundreds of times with the same apply_fn (eager, each call re-traced the
# per-point gradients: most of a deep member's finish, docs/jamming.md)
_FORCE_NORMS = jax.jit(_force_norms, static_argnums=(0, 1, 2))


def force_norm_sum(apply_fn, params, x, y, loss: losses.LossConfig, chunk: int = 256,
                   off=0.0):
  """sum_mu |ell'(Delta_mu) grad_w Delta_mu|: the denominator of r."""
  return float(_FORCE_NORMS(apply_fn, loss, chunk, params, x, y, off)[2])


def _loss_grad(apply_fn, params, x, y, loss, off=0.0):
  """The flat gradient of sum_mu ell(Delta_mu) (no 1/P: r is scale-free)."""
  def total(p):
    return jnp.sum(loss.fn(losses.margins(apply_fn(p, x) - off, y, loss.epsilon)))
  return ravel_pytree(jax.grad(total)(params))[0]


def force_residual(apply_fn, params, x, y, loss: losses.LossConfig,
                   chunk: int = 256, off=0.0) -> float:
  """r = |grad L| / sum_mu |ell'(Delta_mu) grad Delta_mu| (nan if no point
  is unsatisfied, where both vanish); outputs minus ``off``."""
  _, g, den = _residual_parts(apply_fn, params, x, y, loss, chunk, off)
  return float("nan") if den == 0 else g / den


def scale_residual(apply_fn, params, x, y, loss: losses.LossConfig, off=0.0) -> float:
  """sum_mu ell'(Delta_mu) y_mu f_mu / sum_mu |ell'(Delta_mu) y_mu f_mu|
  (module docstring): -dL/d log c along the output scale f -> c f, relative;
  0 at a stationary point of a net whose output is linear in its readout
  layer, > 0 where growing outputs lower the loss; nan if no point is
  unsatisfied. ``f`` is the net's own output; the margins are those of
  f - ``off`` (a net trained as f(w) - f(w0): only f scales)."""
  f = apply_fn(params, x)
  dell = jax.vmap(jax.grad(loss.fn))(losses.margins(f - off, y, loss.epsilon))
  t = np.asarray(dell * y * f, np.float64)
  den = float(np.sum(np.abs(t)))
  return float("nan") if den == 0 else float(np.sum(t)) / den


def sat_scale(b, a) -> float:
  """The least c with c b_mu >= a_mu for every mu: the output scale at which
  a net with outputs f = c g - off satisfies every margin (b = y g, a =
  epsilon + y off: Delta_mu(c) = a_mu - c b_mu <= 0). It exists only where
  every b_mu > 0, the net's own output classifying every point (without
  ``off``, zero training error); then each Delta_mu(c) falls as c grows, so
  the loss falls monotonically from c = 1 to 0 at this c, the straight path
  to a sat state that a descent along the output scale takes
  (:func:`scale_residual` > 0 on it). nan where some b_mu <= 0 or a value is
  not finite; values below 1 mean every margin holds already."""
  b = np.asarray(b, np.float64)
  a = np.asarray(a, np.float64)
  if b.size == 0 or not (np.all(np.isfinite(b)) and np.all(np.isfinite(a))) or np.any(b <= 0):
    return float("nan")
  return float(np.max(a / b))


def _residual_parts(apply_fn, params, x, y, loss, chunk, off) -> tuple:
  """``(Delta [P] numpy, |grad L|, sum_mu |ell'(Delta_mu) grad Delta_mu|)``."""
  delta, g, den = _FORCE_NORMS(apply_fn, loss, chunk, params, x, y, off)
  return np.asarray(delta), float(g), float(den)


def unit_rms(zs, unsat) -> list:
  """Per hidden layer's pre-activations z [P, width]: the [width] rms of each
  unit's z over the unsatisfied points (the scale of the kink tolerance)."""
  unsat = jnp.asarray(unsat, bool)
  n = jnp.maximum(jnp.sum(unsat), 1)
  return [jnp.sqrt(jnp.sum(jnp.where(unsat[:, None], z * z, 0.0), axis=0) / n) for z in zs]


def kink_pairs(cfg: nets.NetConfig, params, x, unsat, rtol: float = 1e-7) -> list:
  """Per hidden layer, [P, width] bool: unsatisfied points whose pre-activation
  has |z| <= rtol * rms(z of the same unit over the unsatisfied points),
  except on points whose previous layer is all off (no biases): there z and
  its gradient vanish identically, so no slope matters."""
  unsat = jnp.asarray(unsat, bool)
  out = []
  zs = nets.preactivations(cfg, params, x)[:-1]
  for l, (z, rms) in enumerate(zip(zs, unit_rms(zs, unsat))):
    live = unsat
    if l > 0 and not cfg.bias:
      # A point whose previous layer is all off has z = 0 with grad z = 0 in
      # this layer (a dead point): no kink, whatever the slope.
      live = live & jnp.any(zs[l - 1] > 0, axis=-1)
    out.append(np.asarray((jnp.abs(z) <= rtol * rms[None, :]) & live[:, None]))
  return out


def _bucket(n: int) -> int:
  """Padded size of n kink pairs (few distinct shapes: few compilations)."""
  return 0 if n == 0 else max(8, 1 << (n - 1).bit_length())


class PaddedKinks(NamedTuple):
  """Kink pairs as padded index arrays, one jit shape per size bucket.

  Attributes:
    pts, units: per hidden layer [Kp] point and unit indices of its kink
      pairs, padded with the out-of-range point P (writes there are dropped).
    real: positions of the real pairs in the flat padded slope vector.
    pad: length of that vector (sum of the Kp).
  """
  pts: list
  units: list
  real: np.ndarray
  pad: int


def padded_kinks(idx, P: int) -> PaddedKinks:
  """:class:`PaddedKinks` of ``idx``: per hidden layer ``(points, units)``
  index arrays of the kink pairs (``np.nonzero`` of the masks)."""
  n_k = [len(i[0]) for i in idx]
  # one bucket for every layer: one shape per bucket, whatever the layers' shares
  pad = [_bucket(max(n_k, default=0))] * len(n_k)
  pts = [jnp.asarray(np.concatenate([i[0], np.full(kp - n, P)]).astype(np.int32))
         for i, n, kp in zip(idx, n_k, pad)]
  units = [jnp.asarray(np.concatenate([i[1], np.zeros(kp - n)]).astype(np.int32))
           for i, n, kp in zip(idx, n_k, pad)]
  starts = np.cumsum([0] + pad)
  real = np.concatenate([np.arange(starts[l], starts[l] + n) for l, n in enumerate(n_k)]
                        + [np.zeros(0, int)]).astype(int)
  return PaddedKinks(pts, units, real, int(sum(pad)))


def split_slopes(pts):
  """Splits a flat padded slope vector into the per-layer pieces of ``pts``."""
  starts = np.cumsum([0] + [p.shape[0] for p in pts])
  return lambda sf: [sf[starts[l]:starts[l + 1]] for l in range(len(pts))]


def _slope_grad(cfg, loss, w, s_pad, x, y, off, kinks, pts, units):
  """The flat loss gradient at flat params ``w`` with the ReLU derivative
  ``s_pad`` (padded, :class:`PaddedKinks`) at the kink pairs ``kinks``."""
  slopes = [jnp.zeros(k.shape, w.dtype).at[p, u].set(s, mode="drop")
            for k, p, u, s in zip(kinks, pts, units, split_slopes(pts)(s_pad))]
  apply_fn = lambda p, xx: nets.apply_with_kink_slopes(cfg, p, xx, kinks, slopes)
  return _loss_grad(apply_fn, nets.unravel_fn(cfg, w.dtype)(w), x, y, loss, off)


def _slope_jac(cfg, loss, w, s_pad, x, y, off, kinks, pts, units):
  """d(:func:`_slope_grad`)/d s_pad: [N, Kp]. A kink pair's slope moves only
  its own point's term of the gradient: one point's pass per column
  (:func:`lossland.frozen_derivs.slope_jacobian` on the straight-through
  net, where it applies: one output), not ``jax.jacfwd`` of
  :func:`_slope_grad` over all P points (P times the cost; ``python -m
  lossland.scripts.bench stationarity``). Padding pairs give zero columns."""
  if not frozen_derivs.applies(cfg):
    return jax.jacfwd(lambda s: _slope_grad(cfg, loss, w, s, x, y, off, kinks, pts, units))(
        s_pad)
  params = nets.unravel_fn(cfg, w.dtype)(w)
  zs = nets.preactivations(cfg, params, x)[:-1]
  slopes = [jnp.where(k, jnp.zeros(k.shape, w.dtype).at[p, u].set(s, mode="drop"),
                      (z > 0).astype(w.dtype))
            for k, z, p, u, s in zip(kinks, zs, pts, units, split_slopes(pts)(s_pad))]
  return frozen_derivs.slope_jacobian(cfg, params, x, y, off, slopes, loss, pts, units,
                                      straight_through=True)


# module level: one compilation per (net, loss, shapes, kink bucket), not per call
_SLOPE_GRAD = jax.jit(_slope_grad, static_argnums=(0, 1))
_SLOPE_JAC = jax.jit(_slope_jac, static_argnums=(0, 1))


def _slope_grad_fn(cfg, params, x, y, loss, kinks, off=0.0):
  """``(grad_at, jac_at, K)``: s [K] -> the flat gradient with ReLU slopes s
  at the kink pairs, and its [N, K] Jacobian in s."""
  pk = padded_kinks([np.nonzero(k) for k in kinks], x.shape[0])
  w = ravel_pytree(params)[0]
  masks = [jnp.asarray(k) for k in kinks]
  off = jnp.asarray(off, x.dtype)

  def padded(s):
    return jnp.zeros(pk.pad, x.dtype).at[pk.real].set(jnp.asarray(s, x.dtype))

  def grad_at(s):
    return _SLOPE_GRAD(cfg, loss, w, padded(s), x, y, off, masks, pk.pts, pk.units)

  def jac_at(s):
    return _SLOPE_JAC(cfg, loss, w, padded(s), x, y, off, masks, pk.pts, pk.units)[:, pk.real]
  return grad_at, jac_at, int(pk.real.size)


def _bvls(V, b):
  """argmin_{0 <= s <= 1} |V s + b| (exact: scipy's bounded-variable LSQ)."""
  from scipy.optimize import lsq_linear
  return lsq_linear(V, -b, bounds=(0.0, 1.0), method="bvls").x


def _min_norm_slopes(grad_at, jac, s0, exact: bool, max_iter: int = 20):
  """The slopes minimizing |g(s)| (one exact step when g is affine);
  ``jac(s)`` is dg/ds."""
  s = s0
  g = np.asarray(grad_at(s))
  for _ in range(1 if exact else max_iter):
    V = np.asarray(jac(s))
    s_new = _bvls(V, g - V @ np.asarray(s))
    g_new = np.asarray(grad_at(jnp.asarray(s_new)))
    if np.linalg.norm(g_new) >= np.linalg.norm(g) and not exact:
      break
    done = np.allclose(s_new, np.asarray(s), atol=1e-12)
    s, g = jnp.asarray(s_new), g_new
    if done:
      break
  return s, g


def stationarity(cfg, apply_fn, params, x, y, loss: losses.LossConfig,
                 kink_rtol: float = 1e-7, chunk: int = 256, f_offset=None,
                 weight_decay: float = 0.0) -> Stationarity:
  """The :class:`Stationarity` record of one network.

  With ``weight_decay`` mu > 0 the record is that of F = L + mu |w|^2 / 2
  (the finish's objective with ``kink_newton.finish(weight_decay=mu)``):
  the decay is one more force, -mu w, in the gradients and in the
  denominator, r = |grad L + mu w| / (sum_mu |ell'(Delta_mu) grad Delta_mu|
  + mu |w|), and r_sub minimizes |g(s) + mu w| over the slopes. The kink
  pairs and N_Delta are the loss's.

  Args:
    cfg: its NetConfig (ReLU nets get kinks and r_sub; other activations or
      architectures r_sub = r).
    apply_fn: ``apply_fn(params, x) -> [P]`` outputs.
    params: the network's params.
    x, y: the training set [P, d], [P].
    loss: the LossConfig (its margin and per-example loss).
    kink_rtol: tolerance of :func:`kink_pairs`.
    chunk: points per chunk of per-point gradients.
    f_offset: optional [P] constant subtracted from the outputs (a net trained
      as f(w) - f(w0): the offset f(w0) moves Delta, not the gradients).
    weight_decay: mu >= 0 (above).
  """
  if not weight_decay >= 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
  off = 0.0 if f_offset is None else jnp.asarray(f_offset)
  delta, g, den = _residual_parts(apply_fn, params, x, y, loss, chunk, off)
  if weight_decay:
    w = ravel_pytree(params)[0]
    g = float(jnp.linalg.norm(_loss_grad(apply_fn, params, x, y, loss, off) + weight_decay * w))
    den += weight_decay * float(jnp.linalg.norm(w))
  unsat = delta > 0
  n_unsat = int(unsat.sum())
  if n_unsat == 0 or den == 0:
    return Stationarity(float("nan"), float("nan"), 0, n_unsat, True, kink_rtol)
  r = g / den
  relu = isinstance(cfg, nets.NetConfig) and cfg.activation == "relu" and cfg.depth > 0
  if not relu:
    return Stationarity(r, r, 0, n_unsat, True, kink_rtol)
  kinks = kink_pairs(cfg, params, x, unsat, kink_rtol)
  n_kink = int(sum(k.sum() for k in kinks))
  if n_kink == 0:
    return Stationarity(r, r, 0, n_unsat, True, kink_rtol)
  per_point = sum(k.sum(-1) for k in kinks)
  exact = bool(per_point.max() <= 1)
  grad_at, jac_at, _ = _slope_grad_fn(cfg, params, x, y, loss, kinks, off)
  if weight_decay:
    grad_loss = grad_at
    grad_at = lambda s: grad_loss(s) + weight_decay * w
  zs = nets.preactivations(cfg, params, x)[:-1]
  s0 = jnp.concatenate([(z[np.nonzero(k)] > 0).astype(x.dtype) for z, k in zip(zs, kinks)])
  _, g = _min_norm_slopes(grad_at, jac_at, s0, exact)
  r_sub = min(float(np.linalg.norm(g)) / den, r)
  return Stationarity(r_sub, r, n_kink, n_unsat, exact, kink_rtol)
