"""The finishing stage: members that stopped jammed, driven to force balance.

After the first stage (and the polish, if any) a member that stopped jammed
has only *stalled*: its force-balance residual r_sub is 1e-4 to 1e-2 after
L-BFGS on the non-smooth loss of a ReLU net (docs/jamming.md). This stage runs
:func:`lossland.optim.kink_newton.finish` on each such member, on the host,
one after another (members enter it at different times, as they do any
stage; each iteration is a dense N x N Hessian and its eigenvectors), and
replaces its params, outputs and final measurements by the finished ones.
A member whose solve does not reach the target keeps the last iterate (its
loss is lower than at entry; its r_sub is measured, not assumed): the caller
reads the measured r_sub, not this stage's verdict.
"""
import time
from typing import Callable, NamedTuple

import jax
import numpy as np

from lossland import nets, observables
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
      ("" where not entered).
    residual_before, residual_after: r_sub at entry and at exit (nan where
      not entered).
    loss_before: the member's final loss measurement at entry (nan where not
      entered).
    n_iter: trust-region iterations (0 where not entered).
    min_curvature: :func:`lossland.optim.kink_newton.min_curvature` at exit
      (nan where not entered).
    seconds: host time of each member's finish.
    n_restarts: restarts after a collapsed trust region (0 where not
      entered).
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


def finish_members(res: EnsembleResult, data, net: nets.NetConfig, loss, cfg: TrainConfig,
                   tol: float, max_iter: int = 400, entry=("jammed", "max_steps"),
                   log_fn: Callable | None = None) -> tuple:
  """Runs the finishing stage on the members of ``res`` that stopped in ``entry``.

  Args:
    res: the ensemble after its last stage.
    data: its Dataset.
    net: a NetConfig (other architectures are returned unchanged).
    loss: the LossConfig.
    cfg: the last stage's TrainConfig (its ``subtract_init`` and measures).
    tol: the target r_sub.
    max_iter: trust-region iterations per member at most.
    entry: stop reasons that enter (members with an unsatisfied dead point
      never do).
    log_fn: optional ``log_fn(str)``, one line per member.

  Returns:
    ``(res, info)``: the merged EnsembleResult (params, f_train, f_test and
    final measurements replaced for the entered members; stop reasons kept)
    and a :class:`FinishInfo`.
  """
  K = len(res.seeds)
  info = FinishInfo([False] * K, [False] * K, [""] * K, [float("nan")] * K,
                    [float("nan")] * K, [float("nan")] * K, [0] * K,
                    [float("nan")] * K, [0.0] * K, [0] * K)
  if not isinstance(net, nets.NetConfig):
    return res, info
  codes = [STOP_REASONS.index(r) for r in entry]
  # Members with an unsatisfied dead point stay as they are: no step moves
  # such a point (observables.member_classes: class dead_points).
  dead = observables.unsatisfied_dead_points(
      np.asarray(res.f_train), np.asarray(data.y_train), loss.epsilon,
      np.asarray(jax.vmap(lambda p: nets.dead_points(net, p, data.x_train))(res.params))
      if net.activation == "relu" else None)
  idx = [k for k in range(K) if int(res.stop_code[k]) in codes and dead[k] == 0
         and np.isfinite(res.final["n_delta"][k]) and res.final["n_delta"][k] > 0]
  if not idx:
    return res, info
  trainer = make_trainer(net, loss, cfg)
  _, apply_fn = nets.make_net(net, data.x_train.dtype)
  measure = jax.jit(trainer.measure_fn)
  outputs = jax.jit(trainer.outputs_fn)
  params = jax.tree_util.tree_map(np.array, res.params)
  final = {m: np.array(v, copy=True) for m, v in res.final.items()}
  f_train, f_test = np.array(res.f_train, copy=True), np.array(res.f_test, copy=True)
  for k in idx:
    t0 = time.time()
    p = jax.tree_util.tree_map(lambda a: a[k], params)
    p0 = jax.tree_util.tree_map(lambda a: np.asarray(a)[k], res.params0)
    off = apply_fn(p0, data.x_train) if cfg.subtract_init else None
    out = kink_newton.finish(net, p, data.x_train, data.y_train, loss, f_offset=off,
                             tol=tol, max_iter=max_iter)
    state = trainer.init_fn(jax.random.key(0), data, start=(out.params, p0))
    meas = measure(state, data)
    for m in final:
      if m != "lr":
        final[m][k] = np.asarray(meas[m])
    ftr, fte = outputs(out.params, p0, data)
    f_train[k], f_test[k] = np.asarray(ftr), np.asarray(fte)
    for leaf, new in zip(jax.tree_util.tree_leaves(params),
                         jax.tree_util.tree_leaves(out.params)):
      leaf[k] = np.asarray(new)
    info.entered[k], info.converged[k], info.reason[k] = True, out.converged, out.reason
    info.residual_after[k] = float(out.record.force_residual)
    info.residual_before[k] = float(out.residual_before)
    info.loss_before[k] = float(res.final["loss"][k])
    info.min_curvature[k] = kink_newton.min_curvature(net, out.params, data.x_train,
                                                       data.y_train, loss, f_offset=off)
    info.n_iter[k], info.seconds[k] = out.n_iter, time.time() - t0
    info.n_restarts[k] = out.n_restarts
    if log_fn:
      log_fn(f"finish seed {int(res.seeds[k])}: r_sub {out.residual_before:.2e} -> "
             f"{out.record.force_residual:.2e} ({out.reason}, {out.n_iter} iterations, "
             f"{out.n_restarts} restarts, "
             f"{info.seconds[k]:.1f} s)")
  merged = res._replace(params=jax.tree_util.tree_map(np.asarray, params), final=final,
                        f_train=f_train, f_test=f_test)
  return merged, info
