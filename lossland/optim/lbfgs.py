"""The L-BFGS two-loop recursion, shared by the trainer and the landscape minimizer.

One implementation of ``-H g`` for the limited-memory BFGS inverse-Hessian
estimate H, used by the trainer's minimizer :func:`make` (optimizer="lbfgs",
with a weak-Wolfe line search, H_0 = gamma I from :func:`scaling`) and by
:func:`lossland.landscape.minimize.make_lbfgs` (GMIN/pele style, H_0 = h0 I kept
in its state).

Ring-buffer convention: the correction pairs are rows of ``S, Y`` of shape
``[m, n]`` with ``rho`` of shape ``[m]``; pair j (j = 0, 1, ..., counted from
the first pair ever stored, oldest first) lives in row ``j % m``, and ``k`` is
the number of pairs stored so far (unbounded). Only the newest ``min(k, m)``
pairs, j = k - min(k, m) .. k - 1, are used; rows that hold no used pair are
never read into the result, whatever they contain, as long as they are
finite. The trainer keeps its pairs this way; the landscape minimizer keeps
the newest pair in the last row (rows shifted up on each update, no
per-member gathers under vmap) and calls :func:`two_loop` with k = m, a
special case of the convention (empty or reset rows hold rho = 0 and add
exact zeros).

References:
  Nocedal, Math. Comp. 35, 773 (1980): the limited-memory BFGS update.
  Nocedal & Wright, Numerical Optimization, 2nd ed. (2006), Alg. 7.4 (the
  two-loop recursion) and Eq. 7.20 (the scaling gamma).
"""

import dataclasses
from typing import Any

import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from lossland.optim import base

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


def direction(g, S, Y, rho, k):
  """-H g, the L-BFGS direction with H_0 = gamma I (Nocedal & Wright, Alg. 7.4, Eq. 7.20).

  :func:`two_loop` with h0 = :func:`scaling` (gamma = s.y / y.y of the newest
  pair; with no pair, H = I). The pairs live in a ring buffer: pair j (j = 0
  .. k-1, oldest first) is row j % m; only the last min(k, m) pairs are used.

  Args:
    g: [n] gradient.
    S, Y: [m, n] steps s_j = w_{j+1} - w_j and gradient changes y_j.
    rho: [m] 1 / (y_j . s_j).
    k: int32 number of pairs stored so far.

  Returns:
    [n] the direction -H g (a descent direction when every rho > 0).
  """
  return two_loop(g, S, Y, rho, k, scaling(S, Y, rho, k))


@dataclasses.dataclass(frozen=True)
class LBFGSConfig:
  """The trainer's L-BFGS (TrainConfig's lr, lbfgs_memory, ls_c1, ls_c2, ls_min_step).

  Attributes:
    lr: the first trial step length along -g, before any pair is stored.
    memory: curvature pairs kept.
    c1, c2: Armijo and weak-Wolfe constants (0 < c1 < c2 < 1).
    min_step: the bracket's collapse length, relative to max(|w|, 1).
  """
  lr: float = 1e-2
  memory: int = 10
  c1: float = 1e-4
  c2: float = 0.9
  min_step: float = 1e-12


def make(cfg: LBFGSConfig, objective) -> base.Minimizer:
  """L-BFGS with the weak-Wolfe bracketing line search, one trial per step.

  The line search of Lewis & Overton (Math. Program. 141, 135 (2013),
  nonsmooth BFGS): a trial w + a d (a = the state's lr) is accepted when it
  satisfies Armijo, L(w + a d) <= L(w) + c1 a g.d, and weak Wolfe,
  g(w + a d).d >= c2 g.d. Armijo fails: hi = a; Wolfe fails: lo = a (its loss
  and gradient kept); next a = (lo + hi) / 2, or 2 a while hi is unset.
  Steps that cross a ReLU kink are accepted, so the pairs (s, y) see the jump
  of the gradient. Once |(hi - lo) d| < min_step max(|w|, 1) the search takes
  lo if lo > 0 (Armijo holds there); else it restarts along -g (pairs
  dropped) or, if already along -g, marks the member stuck: no step
  satisfies Armijo at this precision. Accepted: the pair is stored if
  s.y > 0; next direction -H g' (:func:`direction`) with a = 1.

  The state is a dict (the layout of checkpoints written before this module
  existed) caching the flat gradient, loss and N_Delta at the accepted point.
  """
  evaluate = objective.evaluate

  def init(params, params0, data):
    loss, nd, _, g = evaluate(params, params0, data)
    gf = ravel_pytree(g)[0]
    dtype = data.x_train.dtype
    m, n = cfg.memory, gf.shape[0]
    return {"g": gf, "loss": loss, "n_delta": nd, "d": -gf,
            "S": jnp.zeros((m, n), dtype), "Y": jnp.zeros((m, n), dtype),
            "rho": jnp.zeros((m,), dtype), "k": jnp.int32(0),
            "sd": jnp.asarray(True), "stuck": jnp.asarray(False),
            "lo": jnp.zeros((), dtype), "hi": jnp.full((), jnp.inf, dtype),
            "lo_g": gf, "lo_loss": loss, "lo_n_delta": nd}

  def current(params, params0, c, evaluate_fn, t):
    del params0, evaluate_fn, t
    return ravel_pytree(params)[1](c["g"]), c["loss"], c["n_delta"], True

  def update(params, params0, c, a, g_tree, gnorm2, t, data):
    del g_tree, gnorm2, t
    return _update(cfg, evaluate, params, params0, c, a, data)

  def stuck(c):
    return c["stuck"]

  return base.Minimizer(init, current, update, stuck)


def _update(cfg: LBFGSConfig, evaluate, params, params0, c, a, data):
  """One trial of the line search from the accepted point params (see :func:`make`)."""
  w, unravel = ravel_pytree(params)
  g, d = c["g"], c["d"]
  loss1, nd1, _, g1 = evaluate(unravel(w + a * d), params0, data)
  g1 = ravel_pytree(g1)[0]
  gd = jnp.dot(g, d)
  finite = jnp.isfinite(loss1) & jnp.all(jnp.isfinite(g1))
  armijo = finite & (loss1 <= c["loss"] + cfg.c1 * a * gd) & (gd < 0)
  wolfe = jnp.dot(g1, d) >= cfg.c2 * gd
  lo, hi = c["lo"], c["hi"]
  ok = armijo & wolfe
  hi = jnp.where(~armijo, a, hi)
  raise_lo = armijo & ~wolfe
  lo_c = {k: jnp.where(raise_lo, v1, c["lo_" + k]) for k, v1 in
          (("g", g1), ("loss", loss1), ("n_delta", nd1))}
  lo = jnp.where(raise_lo, a, lo)
  a_next = jnp.where(jnp.isfinite(hi), 0.5 * (lo + hi), 2.0 * a)
  dn = jnp.linalg.norm(d)
  collapsed = (jnp.isfinite(hi) &
               ((hi - lo) * dn < cfg.min_step * jnp.maximum(jnp.linalg.norm(w), 1.0)))
  take_lo = ~ok & collapsed & (lo > 0)
  fail = ~ok & collapsed & (lo <= 0)
  # the accepted point: the trial, or lo when the bracket collapsed
  acc = ok | take_lo
  a_acc = jnp.where(ok, a, lo)
  g_new = jnp.where(ok, g1, lo_c["g"])
  loss_new = jnp.where(ok, loss1, lo_c["loss"])
  nd_new = jnp.where(ok, nd1, lo_c["n_delta"])
  sv, yv = a_acc * d, g_new - g
  sy = jnp.dot(sv, yv)
  store = acc & (sy > 1e-12 * jnp.linalg.norm(sv) * jnp.linalg.norm(yv)) & (sy > 0)
  i = c["k"] % cfg.memory
  S = jnp.where(store, c["S"].at[i].set(sv), c["S"])
  Y = jnp.where(store, c["Y"].at[i].set(yv), c["Y"])
  rho = jnp.where(store, c["rho"].at[i].set(1.0 / jnp.where(store, sy, 1.0)), c["rho"])
  k = c["k"] + store.astype(jnp.int32)
  d_acc = direction(g_new, S, Y, rho, k)
  descent = jnp.dot(g_new, d_acc) < 0
  d_acc = jnp.where(descent, d_acc, -g_new)
  k_acc = jnp.where(descent, k, 0)
  # after a quasi-Newton step a = 1; along -g (no pair) the accepted a
  a0_acc = jnp.where(k_acc > 0, 1.0, a_acc)
  # a failed search: restart along -g with the last gamma (else lr), or stuck
  gamma = scaling(c["S"], c["Y"], c["rho"], c["k"], default=cfg.lr)
  restart = fail & ~c["sd"]
  stuck = c["stuck"] | (fail & c["sd"])
  reset = acc | restart            # a new line search starts
  inf = jnp.full_like(hi, jnp.inf)
  new_c = {
      "g": jnp.where(acc, g_new, g),
      "loss": jnp.where(acc, loss_new, c["loss"]),
      "n_delta": jnp.where(acc, nd_new, c["n_delta"]),
      "d": jnp.where(acc, d_acc, jnp.where(restart, -g, d)),
      "S": S, "Y": Y, "rho": rho,
      "k": jnp.where(acc, k_acc, jnp.where(restart, 0, c["k"])).astype(jnp.int32),
      "sd": jnp.where(acc, k_acc == 0, c["sd"] | restart),
      "stuck": jnp.where(acc, False, stuck),
      "lo": jnp.where(reset, 0.0, lo).astype(lo.dtype),
      "hi": jnp.where(reset, inf, hi),
      "lo_g": lo_c["g"], "lo_loss": lo_c["loss"], "lo_n_delta": lo_c["n_delta"],
  }
  a_new = jnp.where(acc, a0_acc, jnp.where(restart, gamma,
                                           jnp.where(stuck, a, a_next)))
  new_w = jnp.where(acc, w + a_acc * d, w)
  return unravel(new_w), new_c, a_new.astype(a.dtype)
