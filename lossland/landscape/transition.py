"""Transition states: doubly-nudged elastic band, Lanczos lowest eigenpair from
Hessian-vector products, hybrid eigenvector-following, and push-off.

All functions here are pure and written for one band / one candidate; callers vmap
over candidates and jit at the edge.

References:
  Henkelman & Jónsson, JCP 113, 9978 (2000): improved tangent.
  Trygubenko & Wales, JCP 120, 2082 (2004): doubly-nudged elastic band (DNEB).
  Munro & Wales, PRB 59, 3969 (1999); Kumeda, Wales & Munro, CPL 341, 185 (2001):
  hybrid eigenvector-following (HEF).
  Wales, *Energy Landscapes* (CUP 2003), §6.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from lossland import lanczos as lanczos_lib
from lossland.landscape.minimize import make_fire, make_lbfgs, rms

Array = Any


def hvp_fn_from(energy_fn: Callable[[Array], Array]) -> Callable[[Array, Array], Array]:
  """Hessian-vector product ``(x, v) -> H(x) v`` by forward-over-reverse."""
  grad_fn = jax.grad(energy_fn)

  def hvp(x, v):
    return jax.jvp(grad_fn, (x,), (v,))[1]

  return hvp


# ----------------------------------------------------------------------------
# DNEB
# ----------------------------------------------------------------------------

def make_dneb(energy_fn: Callable[[Array], Array], n_images: int, *,
              k_spring: float = 10.0, gtol: float = 1e-3, max_iter: int = 2000,
              dt: float = 0.01, dt_max: float = 0.1, max_step: float = 0.1):
  """Doubly-nudged elastic band between two fixed end points.

  The force on interior image i is ``-g_perp + F_spring_par + F_dneb`` where
  ``F_dneb`` is the part of the perpendicular spring force orthogonal to
  ``g_perp`` (Trygubenko & Wales 2004, eq. 9); the tangent is the improved tangent
  of Henkelman & Jónsson. The band is relaxed by FIRE on the interior images.

  Args:
    energy_fn: ``x [D] -> []``.
    n_images: number of interior images.
    k_spring: spring constant.
    gtol: RMS of the NEB force (over all interior coordinates) that stops FIRE.
    max_iter, dt, dt_max, max_step: FIRE settings.

  Returns:
    ``dneb_fn(x_a [D], x_b [D]) -> (images [n_images + 2, D], energies [n_images + 2],
    MinimizeResult)``, starting from linear interpolation.
  """
  vg = jax.vmap(jax.value_and_grad(energy_fn))

  def neb_grad(flat, x_a, x_b):
    inner = flat.reshape(n_images, -1)
    e_in, g_in = vg(inner)
    e_a, e_b = energy_fn(x_a), energy_fn(x_b)
    xs = jnp.concatenate([x_a[None], inner, x_b[None]])
    es = jnp.concatenate([e_a[None], e_in, e_b[None]])
    tp = xs[2:] - xs[1:-1]
    tm = xs[1:-1] - xs[:-2]
    ep, e0, em = es[2:], es[1:-1], es[:-2]
    dvmax = jnp.maximum(jnp.abs(ep - e0), jnp.abs(em - e0))[:, None]
    dvmin = jnp.minimum(jnp.abs(ep - e0), jnp.abs(em - e0))[:, None]
    mixed = jnp.where((ep > em)[:, None], tp * dvmax + tm * dvmin, tp * dvmin + tm * dvmax)
    up = ((ep > e0) & (e0 > em))[:, None]
    down = ((ep < e0) & (e0 < em))[:, None]
    tau = jnp.where(up, tp, jnp.where(down, tm, mixed))
    tau = tau / jnp.maximum(jnp.linalg.norm(tau, axis=-1, keepdims=True), 1e-300)

    def dot(a, b):
      return jnp.sum(a * b, axis=-1, keepdims=True)

    g_perp = g_in - dot(g_in, tau) * tau
    f_spring = k_spring * (tp - tm)
    f_par = k_spring * (jnp.linalg.norm(tp, axis=-1, keepdims=True)
                        - jnp.linalg.norm(tm, axis=-1, keepdims=True)) * tau
    f_sperp = f_spring - dot(f_spring, tau) * tau
    g_hat = g_perp / jnp.maximum(jnp.linalg.norm(g_perp, axis=-1, keepdims=True), 1e-300)
    f_dneb = f_sperp - dot(f_sperp, g_hat) * g_hat
    force = -g_perp + f_par + f_dneb
    return jnp.sum(e_in), -force.reshape(-1)

  fire = make_fire(neb_grad, gtol=gtol, max_iter=max_iter, dt=dt, dt_max=dt_max,
                   max_step=max_step)

  def dneb_fn(x_a, x_b):
    t = jnp.linspace(0.0, 1.0, n_images + 2, dtype=x_a.dtype)[1:-1, None]
    inner = (1 - t) * x_a[None] + t * x_b[None]
    res = fire(inner.reshape(-1), x_a, x_b)
    xs = jnp.concatenate([x_a[None], res.x.reshape(n_images, -1), x_b[None]])
    return xs, jax.vmap(energy_fn)(xs), res

  return dneb_fn


# ----------------------------------------------------------------------------
# Lowest eigenpair by Lanczos
# ----------------------------------------------------------------------------

def _project(v, modes):
  if modes is None:
    return v
  return v - modes.T @ (modes @ v)


def lowest_eigenpair(hvp_fn: Callable[[Array, Array], Array], x: Array, v0: Array,
                     n_iter: int, modes: Optional[Array] = None) -> tuple:
  """Lowest Hessian eigenpair from ``n_iter`` Lanczos steps with full
  reorthogonalisation, started from ``v0`` (:func:`lossland.lanczos.eigsh`).

  With ``n_iter >= D`` (after removing ``modes``) the result is exact up to rounding.
  Warm-starting from the previous eigenvector (as HEF does) converges in few steps.

  Args:
    hvp_fn: ``(x, v) -> H(x) v``.
    x: ``[D]`` point.
    v0: ``[D]`` start vector (need not be normalised).
    n_iter: Krylov dimension (static).
    modes: optional ``[m, D]`` orthonormal rows to project out (zero modes),
      passed to Lanczos as deflated directions.

  Returns:
    ``(eigenvalue [], eigenvector [D])``, the Ritz pair of the smallest Ritz value.
  """
  vals, vecs, _ = lanczos_lib.eigsh(lambda v: hvp_fn(x, v), v0, n_iter, k=1,
                                    which="SA", deflate=modes)
  v = vecs[:, 0]
  return vals[0], v / jnp.linalg.norm(v)


# ----------------------------------------------------------------------------
# Hybrid eigenvector-following
# ----------------------------------------------------------------------------

class HEFResult(NamedTuple):
  """Result of one HEF search.

  Attributes:
    x: ``[D]`` final point.
    energy: its energy.
    eigenvalue: lowest Hessian eigenvalue (Lanczos) at ``x``.
    eigenvector: ``[D]`` its eigenvector.
    grad_rms: RMS gradient at ``x``.
    n_iter: HEF cycles used.
    converged: ``grad_rms <= gtol`` and ``eigenvalue < 0``.
  """
  x: Array
  energy: Array
  eigenvalue: Array
  eigenvector: Array
  grad_rms: Array
  n_iter: Array
  converged: Array


def make_hef(energy_fn: Callable[[Array], Array], *, gtol: float = 1e-8,
             max_iter: int = 300, n_lanczos: int = 30, n_tangent: int = 10,
             max_uphill: float = 0.1, tangent_max_step: float = 0.05,
             modes_fn: Optional[Callable[[Array], Array]] = None):
  """Hybrid eigenvector-following transition-state search.

  Each cycle: (1) lowest Hessian eigenpair (λ, v) by Lanczos on Hessian-vector
  products, warm-started from the last v; (2) an eigenvector-following step uphill
  along v, ``h = 2 g_v / (|λ| (1 + sqrt(1 + 4 g_v² / λ²)))`` capped at
  ``max_uphill`` (a fixed uphill step of ``max_uphill`` while λ ≥ 0); (3) up to
  ``n_tangent`` L-BFGS steps on the gradient projected orthogonal to v. Converged
  when the full RMS gradient is below ``gtol`` with λ < 0.

  Args:
    energy_fn: ``x [D] -> []``.
    gtol: RMS-gradient tolerance.
    max_iter: maximum HEF cycles.
    n_lanczos: Lanczos steps per eigenpair (static; min(n_lanczos, D) used).
    n_tangent: L-BFGS steps in the tangent space per cycle.
    max_uphill: trust radius of the uphill step.
    tangent_max_step: maximum L-BFGS step in the tangent space.
    modes_fn: optional ``x -> [m, D]`` orthonormal zero modes to project out
      (rigid-body motions of clusters).

  Returns:
    ``hef_fn(x0 [D], v0 [D]) -> HEFResult``.
  """
  vg = jax.value_and_grad(energy_fn)
  hvp = hvp_fn_from(energy_fn)

  def tangent_vg(x, v, modes):
    e, g = vg(x)
    g = g - jnp.vdot(g, v) * v
    return e, _project(g, modes)

  tangent_min = make_lbfgs(tangent_vg, gtol=gtol, max_iter=n_tangent,
                           max_step=tangent_max_step, max_erise=1e-4)

  def hef_fn(x0, v0):
    d = x0.shape[0]
    k = min(n_lanczos, d)

    def modes_at(x):
      return None if modes_fn is None else modes_fn(x)

    def cycle(carry):
      x, v, _, it = carry
      modes = modes_at(x)
      lam, v = lowest_eigenpair(hvp, x, v, k, modes)
      e, g = vg(x)
      gv = jnp.vdot(g, v)
      h_ef = 2.0 * gv / (jnp.abs(lam) * (1.0 + jnp.sqrt(1.0 + 4.0 * gv ** 2 / lam ** 2)))
      h_fix = jnp.where(gv >= 0, max_uphill, -max_uphill)
      h = jnp.where(lam < 0, h_ef, h_fix)
      h = jnp.clip(h, -max_uphill, max_uphill)
      x = x + h * v
      res = tangent_min(x, v, modes)
      return res.x, v, lam, it + 1

    def not_done(carry):
      x, v, lam, it = carry
      _, g = vg(x)
      return ((rms(g) > gtol) | (lam >= 0)) & (it < max_iter)

    init = (x0, v0 / jnp.linalg.norm(v0), jnp.asarray(1.0, x0.dtype), jnp.asarray(0))
    x, v, lam, it = lax.while_loop(not_done, cycle, init)
    lam, v = lowest_eigenpair(hvp, x, v, k, modes_at(x))
    e, g = vg(x)
    return HEFResult(x=x, energy=e, eigenvalue=lam, eigenvector=v, grad_rms=rms(g),
                     n_iter=it, converged=(rms(g) <= gtol) & (lam < 0))

  return hef_fn


def hessian_eigenvalues_fn(energy_fn: Callable[[Array], Array]):
  """Dense Hessian spectrum ``x [D] -> eigenvalues [D]`` (ascending), the ground
  truth for index checks (number of negative eigenvalues)."""
  hess = jax.hessian(energy_fn)

  def eigs(x):
    return jnp.linalg.eigvalsh(hess(x))

  return eigs
