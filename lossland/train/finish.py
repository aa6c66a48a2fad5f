"""The finishing stage: members that stopped jammed, driven further down.

After the first stage (and the polish, if any) a member that stopped jammed
has only *stalled*: its force-balance residual r_sub is 1e-4 to 1e-2 after
L-BFGS on the non-smooth loss of a ReLU net (docs/jamming.md). This stage runs
one of four methods on the members that enter it and replaces their params,
outputs and final measurements by the finished ones:

* ``newton``: :func:`lossland.optim.kink_newton.finish`, a trust-region
  Newton method on the kink manifold (each iteration a dense N x N Hessian
  and its eigenvectors), which aims at force balance; on the host, one
  member after another, or several side by side in threads (``workers``);
* ``anneal``: :func:`lossland.optim.anneal.anneal_members`, L-BFGS through
  smoothed nets that sharpen back to the ReLU, every entrant in one vmapped
  program per level, which aims at a lower loss (it brings some stalled
  members to loss 0). Members with an unsatisfied dead point enter it too:
  the smoothed net moves them.
* ``anneal_newton``: the anneal, then the Newton finish from its result.
* ``decay_newton``: the Newton finish on F = loss + mu |w|^2 / 2 for each mu
  of ``decays`` in turn (a ReLU net from its balanced params,
  :func:`lossland.nets.balanced`, where the decay is lowest on the rescaling
  orbit), then on the loss alone from its result. The decay makes the
  objective coercive: the loss-alone finish keeps descending for thousands
  of iterations at N ~ 300 while its weights grow, the finish on F reaches
  its minima in hundreds, and near such a minimum the loss-alone finish
  ends at a minimum of the loss within tens to hundreds (docs/jamming.md,
  "the decay route"). Only the last stage decides: the member's r_sub,
  reason and descent probe are those of the loss.

Each entrant's r_sub before and after and its curvature are then measured on
the host.

A member whose solve does not reach the target keeps the last iterate (its
loss is lower than at entry; its r_sub is measured, not assumed): the caller
reads the measured r_sub, not this stage's verdict.
"""
import concurrent.futures
import hashlib
import os
import threading
import time
import warnings
from typing import Callable, NamedTuple

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from lossland import checkpoint, losses, nets, observables
from lossland.optim import kink_newton
from lossland.train.ensemble import EnsembleResult
from lossland.train.stop import STOP_REASONS
from lossland.train.trainer import TrainConfig, make_trainer


class FinishInfo(NamedTuple):
  """Per member [K] (``entered`` False: the member did not enter the stage).

  Attributes:
    entered: bool, the member stopped jammed and entered.
    converged: bool, r_sub <= tol after the stage.
    reason: str, :class:`lossland.optim.kink_newton.FinishResult` reason
      (newton, anneal_newton, decay_newton: the last stage's) or
      :class:`lossland.optim.anneal.AnnealResult` reason (anneal; "sat"
      where it left no point unsatisfied); "" where not entered.
    residual_before, residual_after: r_sub at entry and at exit (nan where
      not entered).
    loss_before: the member's final loss measurement at entry (nan where not
      entered).
    n_iter: trust-region plus L-BFGS iterations (0 where not entered).
    min_curvature: lambda_min / lambda_max of the model's Hessian on the
      kink manifold at exit (:func:`lossland.optim.kink_newton.min_curvature`;
      nan where not entered).
    descent_gain: the relative loss change that
      :func:`lossland.optim.kink_newton.descent_probe` found at exit (<= 0;
      below -``observables.DESCENT_RTOL``: not a minimum; nan where not
      entered or no point is unsatisfied).
    descent_step: |w' - w| / |w| of that point (nan where not entered).
    seconds: wall time of each member's finish (beside the others' where
      members run side by side; the anneal, which runs all
      entrants in one program, shared equally among them).
    n_restarts: restarts after a collapsed trust region, the descent
      probe's escapes included (kink_newton.finish, ``escape``; 0 where not
      entered).
    n_rounds: rounds of the anneal run (0 where not entered or no anneal).
  """
  entered: list
  converged: list
  reason: list
  residual_before: list
  residual_after: list
  loss_before: list
  n_iter: list
  min_curvature: list
  seconds: list
  n_restarts: list
  n_rounds: list
  descent_gain: list
  descent_step: list

  @classmethod
  def none(cls, K: int) -> "FinishInfo":
    """K members none of which entered."""
    nan = [float("nan")] * K
    return cls([False] * K, [False] * K, [""] * K, nan[:], nan[:], nan[:], [0] * K, nan[:],
               [0.0] * K, [0] * K, [0] * K, nan[:], nan[:])


METHODS = ("newton", "anneal", "anneal_newton", "decay_newton")


def check_decays(decays) -> tuple:
  """decay_newton's weight decays as a tuple of floats; ValueError unless
  each is positive and finite."""
  decays = tuple(float(mu) for mu in decays)
  if not all(np.isfinite(mu) and mu > 0 for mu in decays):
    raise ValueError(f"decays must be positive and finite, got {decays}")
  return decays


def _finish_one(method, net, p, x, y, loss, off, tol, max_iter, annealed, step_model="newton",
                start=None, snapshot_fn=None, decays=(), stop_separable=False):
  """One member: ``(params, record, reason, r_before, n_iter, n_restarts,
  probe)``, ``probe`` the descent probe the Newton finish already ran at
  ``params`` (stopped "stuck") or None; ``annealed``: its
  :class:`lossland.optim.anneal.AnnealResult` (anneal methods) or None;
  ``decays``: the weight decays of decay_newton's stages, in turn (a ReLU
  net enters them from its balanced params).

  ``start``: the member's Newton finish resumed at ``p``, its last snapshot
  (:class:`_Progress`), which :func:`_newton_stages` reads.
  ``snapshot_fn(params_fn, newton_iters, n_restarts, r_before, n_iter,
  stage)``: called before the Newton finish's iterations. ``stop_separable``:
  each Newton stage stops where the net classifies every point (the later
  stages are then skipped; :func:`lossland.optim.kink_newton.finish`)."""
  from lossland import stationarity
  r0, n_iter = None, 0
  if start is None and (annealed is not None or method == "decay_newton"):
    apply_fn = nets.cached_apply_fn(net, x.dtype)
    r0 = stationarity.stationarity(net, apply_fn, p, x, y, loss,
                                   f_offset=off).force_residual
    if annealed is not None:
      p, n_iter, reason = annealed.params, annealed.n_iter, annealed.reason
      if method == "anneal":
        rec = stationarity.stationarity(net, apply_fn, p, x, y, loss, f_offset=off)
        reason = "sat" if rec.n_unsat == 0 else reason
        return p, rec, reason, r0, n_iter, 0, None
    elif net.activation == "relu":  # the same function, the least decay on its orbit
      p = nets.balanced(net, p)
  return _newton_stages(net, p, x, y, loss, off, tol, max_iter, step_model,
                        decays if method == "decay_newton" else (), r0, n_iter, start,
                        snapshot_fn, stop_separable)


def _newton_stages(net, p, x, y, loss, off, tol, max_iter, step_model, decays, r0, n_iter,
                   start, snapshot_fn, stop_separable=False):
  """The Newton finish on loss + mu |w|^2 / 2 for each mu of ``decays``,
  then on the loss alone (no decays: that stage only), each stage at most
  ``max_iter`` iterations from the last one's result: :func:`_finish_one`'s
  result. ``r0``: r_sub at entry (None: the first stage's), ``n_iter``:
  iterations before (the anneal's). A resumed member (``start``: the
  iterations, restarts, loss evaluations ``n_iter``, r_sub at entry and
  stage of its snapshot) goes on in its stage for the iterations left."""
  stage, it0, restarts = 0, 0, 0
  if start is not None:
    stage, it0, n_iter = start.get("stage", 0), start["it"], start["n_iter"]
    r0, restarts = start["r0"], start["restarts"]
  for j in range(stage, len(decays) + 1):
    snap = None
    if snapshot_fn is not None:
      snap = (lambda params_fn, it, n_restarts, r_entry, j=j, it0=it0, n0=n_iter, k0=restarts,
              r0=r0: snapshot_fn(params_fn, it0 + it, k0 + n_restarts,
                                 r_entry if r0 is None else r0, n0 + it, j))
    out = kink_newton.finish(net, p, x, y, loss, f_offset=off, tol=tol,
                             max_iter=max(max_iter - it0, 1), step_model=step_model,
                             snapshot_fn=snap,
                             weight_decay=decays[j] if j < len(decays) else 0.0,
                             stop_separable=stop_separable)
    r0 = out.residual_before if r0 is None else r0
    p, n_iter, restarts, it0 = out.params, n_iter + out.n_iter, restarts + out.n_restarts, 0
    if out.reason == "separable":  # one exact step from sat: no later stage
      break
  return p, out.record, out.reason, r0, n_iter, restarts, out.probe


class _Progress:
  """The finishing stage's progress in a checkpoint file (the job's
  ``--resume``): the anneal's result, each member finished so far and each
  member in progress at its last snapshot (every ``every`` seconds of its
  Newton finish; several at once where members run side by side). A stage
  run again on the same entrants (same params, method and members: a
  digest) skips what is recorded and resumes each member in progress from
  its last iterate, with its trust region afresh, as ``--finish_from`` does
  (the numbers differ from an uninterrupted stage's by that restart only).
  Another stage's file, or one written before members could run side by side,
  is ignored. Thread-safe: workers snapshot, the caller records."""

  VERSION = "running-v2"

  def __init__(self, path, every: float, flat_entry: np.ndarray, key: str):
    self.path, self.every, self.t_last = path, every, {}
    self.lock = threading.Lock()
    self.digest = hashlib.sha1(flat_entry.tobytes() + key.encode()
                               + self.VERSION.encode()).hexdigest()
    self.flat = {"anneal": np.zeros_like(flat_entry), "done": np.zeros_like(flat_entry),
                 "running": np.zeros_like(flat_entry)}
    self.meta = {"digest": self.digest, "anneal": None, "done": {}, "running": {}}
    if path is None or not os.path.exists(path):
      return
    try:
      flat, meta = checkpoint.restore(path, self.flat)
    except ValueError as e:
      warnings.warn(f"ignoring the finish's checkpoint: {e}")
      return
    if meta.get("digest") == self.digest:
      self.flat, self.meta = dict(flat), meta

  @property
  def resumed(self) -> bool:
    return bool(self.meta["anneal"] is not None or self.meta["done"] or self.meta["running"])

  def save(self):
    if self.path is not None:
      checkpoint.save(self.path, self.flat, self.meta)

  def annealed(self, unravel) -> list | None:
    """The recorded anneal's results (AnnealResult per entrant) or None."""
    from lossland.optim import anneal
    if self.meta["anneal"] is None:
      return None
    return [anneal.AnnealResult(unravel(self.flat["anneal"][i]), **a)
            for i, a in enumerate(self.meta["anneal"])]

  def anneal_done(self, results, ravel):
    self.meta["anneal"] = [dict(loss_before=float(a.loss_before),
                                loss_after=float(a.loss_after), n_iter=int(a.n_iter),
                                level_losses=[float(v) for v in a.level_losses],
                                reason=a.reason, n_rounds=int(a.n_rounds)) for a in results]
    for i, a in enumerate(results):
      self.flat["anneal"][i] = ravel(a.params)
    with self.lock:
      self.save()

  def done(self, i: int):
    """Member ``i`` (of the entrants)'s recorded fields, or None."""
    return self.meta["done"].get(str(i))

  def member_done(self, i: int, flat_params, fields: dict):
    with self.lock:
      self.flat["done"][i] = flat_params
      self.meta["done"][str(i)] = fields
      self.meta["running"].pop(str(i), None)
      self.save()

  def current(self, i: int):
    """Entrant ``i``'s last snapshot, ``(fields, flat params)``, or None."""
    cur = self.meta["running"].get(str(i))
    return None if cur is None else (cur, self.flat["running"][i])

  def snapshot(self, i, params_fn, ravel, seconds, it, restarts, r0, n_iter, stage=0):
    now = time.time()
    if self.path is None or now - self.t_last.setdefault(i, now) < self.every:
      return
    flat = ravel(params_fn())
    with self.lock:
      self.flat["running"][i] = flat
      self.meta["running"][str(i)] = {"it": int(it), "restarts": int(restarts),
                                      "r0": float(r0), "n_iter": int(n_iter),
                                      "seconds": float(seconds), "stage": int(stage)}
      self.save()
      self.t_last[i] = time.time()


class _Stopped(Exception):
  """A member's finish stopped because another one failed (``workers``)."""


class _Merge:
  """The ensemble's arrays, copied, with finished members written in: params,
  outputs and the final measurements of the trainer at the new params."""

  def __init__(self, res: EnsembleResult, data, trainer):
    self.res, self.data, self.trainer = res, data, trainer
    self.measure = jax.jit(trainer.measure_fn)
    self.outputs = jax.jit(trainer.outputs_fn)
    self.params = jax.tree_util.tree_map(np.array, res.params)
    self.final = {m: np.array(v, copy=True) for m, v in res.final.items()}
    self.f_train = np.array(res.f_train, copy=True)
    self.f_test = np.array(res.f_test, copy=True)

  def put(self, k: int, p_new, p0):
    state = self.trainer.init_fn(jax.random.key(0), self.data, start=(p_new, p0))
    meas = self.measure(state, self.data)
    for m in self.final:
      if m != "lr":
        self.final[m][k] = np.asarray(meas[m])
    ftr, fte = self.outputs(p_new, p0, self.data)
    self.f_train[k], self.f_test[k] = np.asarray(ftr), np.asarray(fte)
    for leaf, new in zip(jax.tree_util.tree_leaves(self.params),
                         jax.tree_util.tree_leaves(p_new)):
      leaf[k] = np.asarray(new)

  def result(self) -> EnsembleResult:
    return self.res._replace(params=jax.tree_util.tree_map(np.asarray, self.params),
                             final=self.final, f_train=self.f_train, f_test=self.f_test)


def scale_to_sat(res: EnsembleResult, data, net: nets.NetConfig, loss, cfg: TrainConfig) -> tuple:
  """Members that classify every training point, scaled to sat.

  A :class:`lossland.nets.NetConfig` net's output is linear in its last
  layer: multiplying that layer's weights and bias by c multiplies f by c,
  whatever the hidden layers do. A member with N_Delta > 0 whose net
  classifies every training point (y_mu f_mu > 0 for all mu; for a net
  trained as f(w) - f(w0), its own f) therefore reaches loss 0 along c, the
  loss falling monotonically on the way
  (:func:`lossland.stationarity.sat_scale`): it is not at a minimum, and
  the sat state is one exact step away, which a descent along the output
  scale only approaches. This step takes it: the least c that leaves no
  unsatisfied point in the trainer's own measurement (c from the margins,
  raised by a few ulps where rounding leaves a point at Delta > 0).

  Members with a point misclassified (or f = 0 on it: a dead point), with
  N_Delta = 0 or non-finite outputs, and nets of other architectures or
  with several outputs are left as they are, and so is every member where
  the loss is not a hinge (:data:`lossland.losses.HINGES`: a loss that is 0
  wherever every margin holds; the others have no sat state to scale to).

  Args:
    res: the ensemble after its last stage.
    data: its Dataset.
    net: its net (a NetConfig; others are returned unchanged).
    loss: the LossConfig (epsilon).
    cfg: the last stage's TrainConfig (``subtract_init``, the measurements).

  Returns:
    ``(res, scales)``: the EnsembleResult with the scaled members' params,
    outputs and final measurements replaced (stop reasons kept), and [K]
    floats, the factor c of each scaled member (nan where not scaled).
  """
  from lossland import stationarity
  K = len(res.seeds)
  scales = [float("nan")] * K
  if not isinstance(net, nets.NetConfig) or net.n_out != 1 or loss.name not in losses.HINGES:
    return res, scales
  nd = np.asarray(res.final["n_delta"], np.float64)
  idx = [k for k in range(K) if np.isfinite(nd[k]) and nd[k] > 0]
  if not idx:
    return res, scales
  apply_fn = nets.cached_apply_fn(net, data.x_train.dtype)
  y = np.asarray(data.y_train, np.float64)
  take = lambda tree, k: jax.tree_util.tree_map(lambda a: np.asarray(a)[k], tree)
  merge = None
  ulp = float(np.finfo(np.asarray(data.x_train).dtype).eps)
  for k in idx:
    p, p0 = take(res.params, k), take(res.params0, k)
    g = np.asarray(apply_fn(p, data.x_train), np.float64)
    off = (np.asarray(apply_fn(p0, data.x_train), np.float64) if cfg.subtract_init
           else np.zeros_like(g))
    c = stationarity.sat_scale(y * g, loss.epsilon + y * off)
    if not (np.isfinite(c) and c > 1):
      continue
    if merge is None:
      merge = _Merge(res, data, make_trainer(net, loss, cfg))
    saved = ({m: v[k].copy() for m, v in merge.final.items()},
             merge.f_train[k].copy(), merge.f_test[k].copy())
    for attempt in range(8):
      c_try = c * (1.0 + 4.0 * ulp * (4 ** attempt - 1))
      p_new = p[:-1] + [{name: c_try * v for name, v in p[-1].items()}]
      merge.put(k, p_new, p0)
      if merge.final["n_delta"][k] == 0:
        scales[k] = c_try
        break
    else:  # rounding kept a point unsatisfied: the member stays as it was
      merge.put(k, p, p0)
      for m, v in saved[0].items():
        merge.final[m][k] = v
      merge.f_train[k], merge.f_test[k] = saved[1], saved[2]
  return (res if merge is None else merge.result()), scales


def _entrants(res: EnsembleResult, data, net, loss, entry, dead_enter: bool) -> list:
  """Indices of the members that stopped in ``entry`` with N_Delta > 0;
  members with an unsatisfied dead point only if ``dead_enter``: no step of
  the ReLU net moves such a point (observables.member_classes: class
  dead_points), the smoothed nets of the anneal do."""
  codes = [STOP_REASONS.index(r) for r in entry]
  dead = np.zeros(len(res.seeds), np.int64)
  if not dead_enter:
    dead = observables.unsatisfied_dead_points(
        np.asarray(res.f_train), np.asarray(data.y_train), loss.epsilon,
        np.asarray(jax.vmap(lambda p: nets.dead_points(net, p, data.x_train))(res.params))
        if net.activation == "relu" else None)
  return [k for k in range(len(res.seeds)) if int(res.stop_code[k]) in codes and dead[k] == 0
          and np.isfinite(res.final["n_delta"][k]) and res.final["n_delta"][k] > 0]


def finish_members(res: EnsembleResult, data, net: nets.NetConfig, loss, cfg: TrainConfig,
                   tol: float, max_iter: int = 400, entry=("jammed", "max_steps"),
                   log_fn: Callable | None = None, method: str = "newton",
                   levels=None, anneal_iters: int = 4000, step_model: str = "newton",
                   anneal_rounds: int = 1, members=None, checkpoint_path: str | None = None,
                   checkpoint_every: float = 60.0, workers: int = 1,
                   decays=(1e-4,), stop_separable: bool = False) -> tuple:
  """Runs the finishing stage on the members of ``res`` that stopped in ``entry``.

  Args:
    res: the ensemble after its last stage.
    data: its Dataset.
    net: a NetConfig (other architectures are returned unchanged).
    loss: the LossConfig.
    cfg: the last stage's TrainConfig (its ``subtract_init`` and measures).
    tol: the target r_sub.
    max_iter: trust-region iterations per member at most (newton; per stage
      with decay_newton).
    entry: stop reasons that enter (members with an unsatisfied dead point
      enter only the methods with the anneal).
    log_fn: optional ``log_fn(str)``, one line per member.
    method: one of :data:`METHODS` (module docstring).
    levels: the anneal's sharpnesses (default
      :data:`lossland.optim.anneal.DEFAULT_LEVELS`).
    anneal_iters: L-BFGS line-search trials per level of the anneal at most.
    step_model: the Newton finish's step model
      (:data:`lossland.optim.kink_newton.STEP_MODELS`).
    anneal_rounds: most rounds of the anneal
      (:func:`lossland.optim.anneal.anneal_members`).
    members: indices; only these may enter (default: every member).
    checkpoint_path: optional file of the stage's progress (:class:`_Progress`):
      written after the anneal, after each member and every
      ``checkpoint_every`` seconds of a member's Newton finish; a stage run
      again on the same entrants resumes from it. The caller removes it.
    workers: members finished side by side, in threads (the Newton finish
      and the descent probe; the anneal runs every entrant in one program
      anyway); each member's numbers are those of ``workers=1``.
    decays: decay_newton's weight decays, one stage each, in turn (positive).
    stop_separable: the Newton finish stops "separable" where the net
      classifies every point (for a caller that then scales such members to
      sat, :func:`scale_to_sat`).

  Returns:
    ``(res, info)``: the merged EnsembleResult (params, f_train, f_test and
    final measurements replaced for the entered members; stop reasons kept)
    and a :class:`FinishInfo`.
  """
  from lossland.optim import anneal
  if method not in METHODS:
    raise ValueError(f"finish method must be one of {METHODS}, got {method!r}")
  if method == "decay_newton":
    decays = check_decays(decays)
  levels = anneal.DEFAULT_LEVELS if levels is None else tuple(levels)
  info = FinishInfo.none(len(res.seeds))
  if not isinstance(net, nets.NetConfig):
    return res, info
  idx = _entrants(res, data, net, loss, entry, dead_enter="anneal" in method)
  if members is not None:
    idx = [k for k in idx if k in set(members)]
  if not idx:
    return res, info
  merge = _Merge(res, data, make_trainer(net, loss, cfg))
  _, apply_fn = nets.make_net(net, data.x_train.dtype)
  offs = [np.asarray(apply_fn(jax.tree_util.tree_map(lambda a: np.asarray(a)[k], res.params0),
                              data.x_train)) if cfg.subtract_init else None for k in idx]
  take = lambda k: jax.tree_util.tree_map(lambda a: a[k], merge.params)
  unravel = ravel_pytree(take(idx[0]))[1]
  ravel = lambda tree: np.asarray(ravel_pytree(tree)[0])
  key = repr((idx, method, max_iter, tol, step_model, tuple(levels), anneal_iters,
              anneal_rounds) + ((decays,) if method == "decay_newton" else ())
             + (("separable",) if stop_separable else ()))
  prog = _Progress(checkpoint_path, checkpoint_every,
                   np.stack([ravel(take(k)) for k in idx]), key)
  if prog.resumed and log_fn:
    log_fn(f"finish: resuming from {checkpoint_path}")
  annealed, t_anneal = [None] * len(idx), 0.0
  if "anneal" in method:  # every entrant at once, one program per level
    annealed = prog.annealed(unravel)
    if annealed is None:
      t0 = time.time()
      if log_fn:
        log_fn(f"finish: annealing {len(idx)} members at once (at most {anneal_rounds} "
               f"round{'s' * (anneal_rounds != 1)} of {len(levels)} levels)")
      annealed = anneal.anneal_members(
          net, jax.tree_util.tree_map(lambda a: np.asarray(a)[np.array(idx)], merge.params),
          data.x_train, data.y_train, loss, None if not cfg.subtract_init else np.stack(offs),
          levels=levels, iters=anneal_iters, rounds=anneal_rounds, log_fn=log_fn)
      prog.meta["anneal_seconds"] = time.time() - t0
      prog.anneal_done(annealed, ravel)
    t_anneal = prog.meta["anneal_seconds"] / len(idx)
  p0_of = lambda k: jax.tree_util.tree_map(lambda a: np.asarray(a)[k], res.params0)
  for i, k in enumerate(idx):  # finished before an interruption
    done = prog.done(i)
    if done is not None:
      merge.put(k, unravel(prog.flat["done"][i]), p0_of(k))
      for field, value in done.items():
        getattr(info, field)[k] = value
  pending = [i for i in range(len(idx)) if prog.done(i) is None]

  def run_member(i, stop=None):
    """Entrant i's finish and descent probe (no shared state but ``prog``)."""
    k, t0 = idx[i], time.time()
    cur = prog.current(i)
    t_before = 0.0 if cur is None else cur[0]["seconds"]
    if log_fn and method != "anneal":
      log_fn(f"finish ({method}): member {i + 1} of {len(idx)} (seed {int(res.seeds[k])}), "
             f"at most {max_iter} iterations"
             + ("" if cur is None else f", resumed at iteration {cur[0]['it']}"))

    def snap(params_fn, it, restarts, r0, n_iter, stage):
      if stop is not None and stop.is_set():
        raise _Stopped
      prog.snapshot(i, params_fn, ravel, t_before + time.time() - t0, it, restarts, r0,
                    n_iter, stage)
    out = _finish_one(method, net, take(k) if cur is None else unravel(cur[1]),
                      data.x_train, data.y_train, loss, offs[i], tol, max_iter, annealed[i],
                      step_model, start=None if cur is None else cur[0], snapshot_fn=snap,
                      decays=decays, stop_separable=stop_separable)
    probe = out[-1]
    if probe is None:  # not already run at the result by the finish's escape
      probe = kink_newton.descent_probe(net, out[0], data.x_train, data.y_train, loss,
                                        f_offset=offs[i])
    return out[:-1], probe, t_before + time.time() - t0

  def record(i, result):
    """Entrant i's result into the ensemble, the info and the progress file."""
    (p_new, rec, reason, r0, n_iter, n_restarts), probe, seconds = result
    k = idx[i]
    merge.put(k, p_new, p0_of(k))
    fields = {"entered": True, "reason": reason,
              "converged": bool(rec.force_residual <= tol),
              "residual_after": float(rec.force_residual), "residual_before": float(r0),
              "loss_before": float(res.final["loss"][k]),
              "min_curvature": float(probe.min_curvature), "n_iter": int(n_iter),
              "descent_gain": float(probe.gain), "descent_step": float(probe.step),
              "seconds": seconds + t_anneal, "n_restarts": int(n_restarts),
              "n_rounds": 0 if annealed[i] is None else int(annealed[i].n_rounds)}
    for field, value in fields.items():
      getattr(info, field)[k] = value
    prog.member_done(i, ravel(p_new), fields)
    if log_fn:
      log_fn(f"finish ({method}) seed {int(res.seeds[k])}: r_sub {r0:.2e} -> "
             f"{rec.force_residual:.2e}, N_Delta {rec.n_unsat} ({reason}, {n_iter} "
             f"iterations, {n_restarts} restarts, {info.n_rounds[k]} anneal rounds, "
             f"descent probe {probe.gain:.1e}, {info.seconds[k]:.1f} s)")

  if workers <= 1 or len(pending) <= 1:
    for i in pending:
      record(i, run_member(i))
    return merge.result(), info
  # members side by side in threads: the finish's host linear algebra and its
  # XLA programs release the GIL; results are recorded here, in the caller's
  # thread, as they come (each member's numbers do not depend on the others')
  stop = threading.Event()
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(workers, len(pending)))
  try:
    futures = {pool.submit(run_member, i, stop): i for i in pending}
    for f in concurrent.futures.as_completed(futures):
      record(futures[f], f.result())
  except BaseException:
    stop.set()  # the others stop at their next iteration
    raise
  finally:
    pool.shutdown(wait=True, cancel_futures=True)
  return merge.result(), info
