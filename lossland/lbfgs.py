"""The L-BFGS two-loop recursion, shared by the trainer and the landscape minimizer.

One implementation of ``-H g`` for the limited-memory BFGS inverse-Hessian
estimate H, used by ``train`` (optimizer="lbfgs", with a weak-Wolfe line search,
H_0 = gamma I from :func:`scaling`) and by
:func:`lossland.landscape.minimize.make_lbfgs` (GMIN/pele style, H_0 = h0 I kept
in its state).

Ring-buffer convention (both callers): the correction pairs are rows of
``S, Y`` of shape ``[m, n]`` with ``rho`` of shape ``[m]``; pair j (j = 0, 1, ...,
counted from the first pair ever stored, oldest first) lives in row ``j % m``,
and ``k`` is the number of pairs stored so far (unbounded). Only the newest
``min(k, m)`` pairs, j = k - min(k, m) .. k - 1, are used; rows that hold no
used pair are never read into the result, whatever they contain, as long as
they are finite.

References:
  Nocedal, Math. Comp. 35, 773 (1980): the limited-memory BFGS update.
  Nocedal & Wright, Numerical Optimization, 2nd ed. (2006), Alg. 7.4 (the
  two-loop recursion) and Eq. 7.20 (the scaling gamma).
"""

from typing import Any

import jax.numpy as jnp
from jax import lax

Array = Any


def two_loop(g: Array, S: Array, Y: Array, rho: Array, k: Array, h0: Array) -> Array:
  """-H g by the two-loop recursion (Nocedal & Wright, Alg. 7.4).

  H is the inverse-BFGS matrix built from H_0 = h0 I by the updates
  H <- (I - rho_j s_j y_j') H (I - rho_j y_j s_j') + rho_j s_j s_j' over the
  newest min(k, m) pairs, oldest first (Nocedal & Wright, Eq. 7.19). Pair j is
  row ``j % m`` (see the module docstring); with k = 0 the result is -h0 g.
  Both loops run over all m rows (a fixed trip count, so it traces once and
  vmaps over members with different k); the rows beyond min(k, m) contribute
  exact zeros.

  Args:
    g: [n] gradient.
    S: [m, n] steps s_j = w_{j+1} - w_j, ring buffer.
    Y: [m, n] gradient changes y_j = g_{j+1} - g_j, same rows as S.
    rho: [m] 1 / (y_j . s_j).
    k: int scalar, the number of pairs stored so far (may exceed m).
    h0: scalar, the initial inverse-Hessian scale (H_0 = h0 I), e.g.
      :func:`scaling`.

  Returns:
    [n] the direction -H g, in the dtype of g (a descent direction when
    h0 > 0 and every used rho > 0).
  """
  m = S.shape[0]
  n_used = jnp.minimum(k, m)

  def newest_first(j, carry):
    q, al = carry
    i = (k - 1 - j) % m
    a = jnp.where(j < n_used, rho[i] * jnp.dot(S[i], q), 0.0)
    return q - a * Y[i], al.at[i].set(a)

  al0 = jnp.zeros(rho.shape, jnp.result_type(g, S, rho))
  q, al = lax.fori_loop(0, m, newest_first, (g, al0))

  def oldest_first(j, r):
    i = (k - n_used + j) % m
    b = rho[i] * jnp.dot(Y[i], r)
    return r + jnp.where(j < n_used, al[i] - b, 0.0) * S[i]

  return -lax.fori_loop(0, m, oldest_first, h0 * q)


def scaling(S: Array, Y: Array, rho: Array, k: Array, default: Any = 1.0) -> Array:
  """gamma = s.y / y.y of the newest pair, the H_0 = gamma I of Nocedal & Wright Eq. 7.20.

  Computed as 1 / (rho y.y) from the stored rho = 1 / (y.s).

  Args:
    S: [m, n] steps, ring buffer (see the module docstring).
    Y: [m, n] gradient changes.
    rho: [m] 1 / (y_j . s_j).
    k: int scalar, the number of pairs stored so far; the newest pair is row
      (k - 1) % m.
    default: the value returned with no pair (k = 0) or y.y = 0.

  Returns:
    Scalar gamma, in the dtype of rho and Y.
  """
  m = S.shape[0]
  last = (k - 1) % m
  yy = jnp.dot(Y[last], Y[last])
  return jnp.where((k > 0) & (yy > 0),
                   1.0 / (rho[last] * jnp.where(yy > 0, yy, 1.0)), default)
