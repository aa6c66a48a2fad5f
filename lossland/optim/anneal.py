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
``inf`` is the ReLU itself) the loss of the smoothed net is minimized by the
project's L-BFGS (:mod:`lossland.optim.lbfgs`: weak-Wolfe line search, one
loss evaluation per trial, 30 pairs), each level from the last one's result,
for every entrant at once (one vmapped program per level; a member leaves a
level when its line search is stuck or its loss is 0). The result is measured on the ReLU net; if the ReLU loss
at the end is above the entry's, the entry params are kept (the stage never
makes a member worse). The continuation is a heuristic global step, not a
certificate: the caller measures force balance
(:func:`lossland.stationarity.stationarity`) and classifies on it.

The members run on the default device in the dtype of their params (float64
for the certificates that follow).
"""
import math
import types
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lossland import losses, nets

DEFAULT_LEVELS = (10.0, 100.0, 1e3, 1e4, 1e5, math.inf)


class AnnealResult(NamedTuple):
  """What :func:`anneal` returns.

  Attributes:
    params: the result (the entry params where the anneal did not lower the
      ReLU loss).
    loss_before, loss_after: the ReLU loss Σ_μ ℓ(Δ_μ) (no 1/P) at entry and
      of ``params``.
    n_iter: L-BFGS line-search trials (loss evaluations) over all levels.
    level_losses: the ReLU loss after each level run (of every round it
      ran).
    reason: "sat" (every point satisfied), "levels" (every level run) or
      "kept" (the ReLU loss did not decrease: entry params kept).
    n_rounds: rounds run (:func:`anneal_members`).
  """
  params: object
  loss_before: float
  loss_after: float
  n_iter: int
  level_losses: list
  reason: str
  n_rounds: int = 1


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


def _smoothed_outputs(cfg, params, x, scales, b):
  """Outputs [P] of the net with each unit's ReLU smoothed (b traced), or of
  the ReLU net itself (``scales`` None)."""
  phi = None if scales is None else (lambda l, z: smoothed_relu(z, scales[l], b))
  return nets.readout(cfg, nets._forward(cfg, params, x, phi=phi)[-1])


def _objective(cfg, loss, x, y, smooth: bool):
  """``evaluate(params, aux, b)`` -> (sum of ell(Delta), N_Delta, f, grad) of
  one member; ``aux`` = (unit scales, output offset [P])."""
  def total(params, aux, b):
    scales, off = aux
    f = _smoothed_outputs(cfg, params, x, scales if smooth else None, b)
    delta = losses.margins(f - off, y, loss.epsilon)
    return jnp.sum(loss.fn(delta)), (losses.n_unsatisfied(delta), f)

  def evaluate(params, aux, b):
    (value, (nd, f)), g = jax.value_and_grad(total, has_aux=True)(params, aux, b)
    return value, nd, f, g
  return evaluate


def _level_program(cfg, loss, x, y, smooth: bool, memory: int):
  """A jitted ``run(params, opt, a, active, aux, b, n) -> (params, opt, a,
  active, evaluations)``: ``n`` line-search trials of the project's L-BFGS
  (:mod:`lossland.optim.lbfgs`, weak-Wolfe, one evaluation per trial) on every
  member at once (vmapped), members leaving ``active`` once stuck or at
  loss 0; and ``init(params, aux, b) -> opt``."""
  from lossland.optim import base
  from lossland.optim import lbfgs
  evaluate = _objective(cfg, loss, x, y, smooth)

  def make(aux, b):
    obj = base.Objective(lambda p, p0, data: evaluate(p, aux, b))
    return lbfgs.make(lbfgs.LBFGSConfig(lr=1e-2, memory=memory), obj)

  data = types.SimpleNamespace(x_train=x)  # the minimizer reads its dtype

  def init_one(params, aux, b):
    return make(aux, b).init(params, None, data)

  def run_one(params, opt, a, active, aux, b, n):
    mz = make(aux, b)

    def body(_, carry):
      params, opt, a, active, evals = carry
      p1, o1, a1 = mz.update(params, None, opt, a, None, None, 0, data)
      keep = lambda new, old: jax.tree_util.tree_map(
          lambda u, v: jnp.where(active, u, v), new, old)
      params, opt, a = keep(p1, params), keep(o1, opt), jnp.where(active, a1, a)
      evals = evals + active.astype(jnp.int32)
      active = active & ~mz.stuck(opt) & (opt["loss"] > 0)
      return params, opt, a, active, evals
    return jax.lax.fori_loop(0, n, body, (params, opt, a, active, jnp.int32(0)))

  init = jax.jit(jax.vmap(init_one, in_axes=(0, 0, None)))
  run = jax.jit(jax.vmap(run_one, in_axes=(0, 0, 0, 0, 0, None, None)), static_argnums=(6,))
  return init, run


def _relu_losses(cfg, loss, x, y):
  """jitted ``(params [K], off [K, P]) -> [K]`` ReLU loss sums."""
  def one(params, off):
    f = _smoothed_outputs(cfg, params, x, None, None)
    return jnp.sum(loss.fn(losses.margins(f - off, y, loss.epsilon)))
  return jax.jit(jax.vmap(one))


# A round of the anneal (every level once) is repeated for a member, from its
# last result and with its unit scales measured again, while a round lowers
# its ReLU loss by more than this fraction of it (anneal_members' ``rounds``).
# 0: while it lowers it at all. The gains are erratic: a member of the N = 256
# cell of docs/jamming.md ("rounds of the anneal") gained 0.6 % in its third
# round and 9.5 to 82 % in each of the next five.
ROUND_MIN_GAIN = 0.0
# Rounds after the first start at the second level: from an annealed state a
# round that starts at the smoothest level (b = 10 by default) ended above its
# entry for 6 of the 7 members of that cell, where rounds from b = 100 kept
# lowering the loss (docs/jamming.md, "rounds of the anneal").
LATER_ROUNDS_SKIP = 1


def anneal_members(cfg: nets.NetConfig, params, x, y, loss: losses.LossConfig,
                   f_offset=None, levels=DEFAULT_LEVELS, iters: int = 4000,
                   memory: int = 30, chunk: int = 500, log_fn=None, rounds: int = 1,
                   min_gain: float = ROUND_MIN_GAIN) -> list:
  """:func:`anneal` of K members at once (one vmapped program per level).

  Args:
    cfg, x, y, loss, levels, iters, log_fn: as :func:`anneal` (``iters``:
      line-search trials, i.e. loss evaluations, per level).
    params: the members' params, leading axis K.
    f_offset: optional [K, P] offsets (f - f0), or None.
    memory: L-BFGS pairs kept.
    chunk: trials per call of the compiled program (between calls, a level
      ends early once no member is active).
    rounds: most rounds (every level once in the first round, every level
      but the first in the later ones, :data:`LATER_ROUNDS_SKIP`). Each
      round starts from the last one's result with the unit scales measured
      there; a member
      runs another round only if its last one lowered its ReLU loss by more
      than ``min_gain`` of itself (and left it above 0); a round that does
      not lower a member's ReLU loss is undone for that member. One round
      reaches a state that the next round moves much further
      (docs/jamming.md, "rounds of the anneal").
    min_gain: see ``rounds``.

  Returns:
    K :class:`AnnealResult`.
  """
  if rounds < 1:
    raise ValueError(f"rounds must be at least 1, got {rounds}")
  K = jax.tree_util.tree_leaves(params)[0].shape[0]
  off = (jnp.zeros((K, x.shape[0]), x.dtype) if f_offset is None
         else jnp.asarray(f_offset, x.dtype))
  relu = cfg.activation == "relu"
  levels = tuple(levels) if relu else (math.inf,)
  relu_losses = _relu_losses(cfg, loss, x, y)
  loss0 = np.asarray(relu_losses(params, off))
  # one compiled program for every finite b (b is traced), one for the ReLU
  programs = {smooth: _level_program(cfg, loss, x, y, smooth, memory)
              for smooth in {not math.isinf(b) for b in levels}}
  p, cur = params, loss0.copy()
  n_evals, n_rounds, level_losses = np.zeros(K, np.int64), np.zeros(K, np.int64), []
  going, moved = loss0 > 0, np.zeros(K, bool)
  for r in range(rounds if relu else 1):
    if not going.any():
      break
    scales = (jax.vmap(lambda q: unit_scales(cfg, q, x))(p) if relu
              else [jnp.ones((K, 1), x.dtype)])
    # later rounds leave out the smoothest level (module constant LATER_ROUNDS_SKIP)
    lv_r = levels if r == 0 or len(levels) <= 2 else levels[LATER_ROUNDS_SKIP:]
    p_new, ev, lv = _round(programs, p, (scales, off), lv_r, going, iters, chunk,
                           relu_losses, x.dtype, log_fn)
    n_evals += ev
    n_rounds += going
    level_losses += [(going, v) for v in lv]
    end = lv[-1] if lv else cur
    better = going & (end <= cur)  # nan: not better
    p = jax.tree_util.tree_map(
        lambda a, b: jnp.where(better.reshape((K,) + (1,) * (a.ndim - 1)), a, b), p_new, p)
    going = better & (end > 0) & (cur - end > min_gain * cur)
    cur, moved = np.where(better, end, cur), moved | better
  out = []
  for k in range(K):
    member = jax.tree_util.tree_map(lambda t: t[k], p)
    mine = [float(v[k]) for ran, v in level_losses if ran[k]]
    reason = "sat" if cur[k] == 0 else "levels" if moved[k] else "kept"
    out.append(AnnealResult(member, float(loss0[k]), float(cur[k]), int(n_evals[k]), mine,
                            reason, int(n_rounds[k])))
  return out


def _round(programs, p, aux, levels, going, iters: int, chunk: int, relu_losses, dtype,
           log_fn):
  """One round of :func:`anneal_members`: ``(params, evaluations [K], ReLU
  loss [K] after each level)`` for the members in ``going`` (the others keep
  their params)."""
  K = going.shape[0]
  n_evals, level_losses = np.zeros(K, np.int64), []
  done = ~going
  for b in levels:
    smooth = not math.isinf(b)
    init, run = programs[smooth]
    bb = jnp.asarray(1.0 if not smooth else b, dtype)
    opt = init(p, aux, bb)
    a = jnp.full((K,), 1e-2, dtype)
    active = jnp.asarray(~done)
    for start in range(0, iters, chunk):
      if not bool(jnp.any(active)):
        break
      p, opt, a, active, ev = run(p, opt, a, active, aux, bb, min(chunk, iters - start))
      n_evals += np.asarray(ev)
    level_losses.append(np.asarray(relu_losses(p, aux[1])))
    done = done | (level_losses[-1] == 0)
    if log_fn:
      log_fn(f"anneal b={b:g}: ReLU loss " + " ".join(f"{v:.4e}" for v in level_losses[-1]))
    if done.all():
      break
  return p, n_evals, level_losses


def anneal(cfg: nets.NetConfig, params, x, y, loss: losses.LossConfig, f_offset=None,
           levels=DEFAULT_LEVELS, iters: int = 4000, log_fn=None,
           rounds: int = 1, min_gain: float = ROUND_MIN_GAIN) -> AnnealResult:
  """Minimize the loss through smoothed nets of increasing sharpness (module
  docstring): one member (:func:`anneal_members` with K = 1).

  Args:
    cfg: a NetConfig; for activations other than the ReLU only the level
      ``inf`` (the net itself) is run.
    params: the network's params.
    x, y: the training set [P, d], [P].
    loss: the LossConfig.
    f_offset: optional [P] constant subtracted from the outputs (f - f0).
    levels: increasing sharpnesses b (``inf``: the ReLU itself).
    iters: most L-BFGS line-search trials (loss evaluations) per level.
    log_fn: optional ``log_fn(str)``, one line per level.
    rounds, min_gain: most rounds of every level, and the gain that earns
      another (:func:`anneal_members`).
  """
  batched = jax.tree_util.tree_map(lambda t: jnp.asarray(t)[None], params)
  off = None if f_offset is None else jnp.asarray(f_offset)[None]
  return anneal_members(cfg, batched, x, y, loss, off, levels, iters, log_fn=log_fn,
                        rounds=rounds, min_gain=min_gain)[0]
