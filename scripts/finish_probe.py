"""Continues the finishing stage (trust-region Newton) from a run's final params.

    python scripts/finish_probe.py RUN_DIR MEMBER ITERATIONS [SEGMENT [DECAY [MODEL]]]

RUN_DIR is an ensemble run directory (``experiment.load_ensemble``; a run of
the quadratic hinge without subtract_init); MEMBER is the member's index.
Prints one JSON line: the finish's reason, iterations, r_sub before and
after, the loss (sum of 1/2 Delta^2) before and after, lambda_min /
lambda_max of the Hessian on the kink manifold at the end, the per-layer
weight norms at initialization, at the run's end and after the probe, and
the seconds. Used for docs/jamming.md, "the softplus control" (the weights'
drift to infinity).

With SEGMENT, the finish runs ITERATIONS / SEGMENT times for SEGMENT
iterations, each from the last one's output, and prints one line per
segment: loss, N_Delta, r_sub, n_kink, the last logged reduced gradient
over the force scale (``gres``), lambda_min / lambda_max of the Hessian on
the kink manifold (``min_curvature``), the weight norm and, for ReLU nets, the
norm at the least-norm point of the rescaling orbit (``nets.balanced``,
where every hidden unit has |in| = |out|), the hidden units' part of it and
the five largest units there as (layer, unit, norm, points on which the
unit is on, unsatisfied points on which it is on). A last line (ReLU nets)
names the units whose balanced norm grew most, with those counts, the share
of the growth of the squared norm they carry, and the mean |f| on the
satisfied points and the largest |f|, first and last. With DECAY mu > 0 the
finish minimizes the loss + mu |w|^2 / 2 instead
(``kink_newton.finish(weight_decay=mu)``), from the member's balanced
params. MODEL is the finish's step model, newton (default) or hinge
(``kink_newton.STEP_MODELS``; DECAY 0 for none). docs/jamming.md, "how far
from a minimum the polished states are", "where the descent goes" and "the
hinge step model". Writes nothing.
"""
import json
import sys
import time

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

jax.config.update("jax_enable_x64", True)

from lossland import experiment, io, losses, nets  # noqa: E402
from lossland.optim import kink_newton  # noqa: E402


def unit_table(cfg, params, x, unsat):
  """[(layer, unit, norm at balance, n_on, n_on_unsat)] for every hidden unit."""
  bal = nets.balanced(cfg, params)
  zs = [np.asarray(z) for z in nets.preactivations(cfg, bal, x)[:-1]]
  rows = []
  for l, z in enumerate(zs):
    w_in = np.sqrt(np.sum(np.asarray(bal[l]["w"]) ** 2, axis=0)
                   + (np.asarray(bal[l]["b"]) ** 2 if "b" in bal[l] else 0.0))
    on = z > 0
    for j in range(z.shape[1]):
      rows.append((l, j, float(w_in[j]), int(on[:, j].sum()), int((on[:, j] & unsat).sum())))
  return rows


def main(argv):
  if len(argv) not in (4, 5, 6, 7):
    print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
    return 2
  try:
    run, k, iters = argv[1], int(argv[2]), int(argv[3])
    segment = int(argv[4]) if len(argv) >= 5 else 0
    decay = float(argv[5]) if len(argv) >= 6 else 0.0
    model = argv[6] if len(argv) == 7 else "newton"
    if model not in kink_newton.STEP_MODELS:
      raise ValueError(f"MODEL must be one of {kink_newton.STEP_MODELS}, got {model!r}")
    ens = experiment.load_ensemble(run)
  except (ValueError, io.RunError) as e:
    print(f"finish_probe: {e}", file=sys.stderr)
    return 2
  if ens.loss.name != "quadratic_hinge" or ens.subtract_init or not 0 <= k < len(ens.seeds):
    print("finish_probe: needs a member of a quadratic-hinge run without subtract_init",
          file=sys.stderr)
    return 2
  cfg, loss, x, y = ens.net, ens.loss, ens.data.x_train, ens.data.y_train
  member = lambda tree: jax.tree_util.tree_map(lambda a: a[k], tree)
  params = member(ens.params)
  _, apply_fn = nets.make_net(cfg)
  hinge = lambda p: float(0.5 * np.sum(np.maximum(np.asarray(
      losses.margins(apply_fn(p, x), y, loss.epsilon)), 0) ** 2))
  norms = lambda p: [round(float(np.linalg.norm(np.asarray(layer["w"]))), 3) for layer in p]
  t = time.time()
  if segment:
    return _segments(cfg, params, x, y, loss, iters, segment, decay, apply_fn, t, model)
  out = kink_newton.finish(cfg, params, x, y, loss, tol=1e-10, max_iter=iters, step_model=model)
  print(json.dumps(dict(
      member=k, reason=out.reason, n_iter=out.n_iter,
      r_before=float(out.residual_before), r_after=float(out.record.force_residual),
      loss_before=hinge(params), loss_after=hinge(out.params),
      min_curvature=float(kink_newton.min_curvature(cfg, out.params, x, y, loss)),
      norms_init=norms(member(ens.params0)), norms_run=norms(params),
      norms_after=norms(out.params), seconds=round(time.time() - t, 1))))
  return 0


def _segments(cfg, params, x, y, loss, iters, segment, decay, apply_fn, t, model="newton"):
  """One JSON line per segment of SEGMENT iterations, then the growth line
  (the docstring)."""
  relu = cfg.activation == "relu"
  if decay and relu:
    params = nets.balanced(cfg, params)  # the decay's minimum is balanced

  def state(p):
    f = np.asarray(apply_fn(p, x))
    unsat = np.asarray(losses.margins(f, y, loss.epsilon)) > 0
    return dict(f=f, unsat=unsat, units=unit_table(cfg, p, x, unsat) if relu else None)

  def line(p, s, **kw):
    norm = float(np.linalg.norm(np.asarray(ravel_pytree(p)[0])))
    extra = {}
    if relu:
      units = sorted(s["units"], key=lambda r: -r[2])
      extra = dict(
          norm_balanced=round(float(np.linalg.norm(ravel_pytree(nets.balanced(cfg, p))[0])), 3),
          units_norm_balanced=round(float(np.sqrt(sum(r[2] ** 2 for r in units))), 3),
          top=[(r[0], r[1], round(r[2], 3), r[3], r[4]) for r in units[:5]])
    loss_ = float(0.5 * np.sum(np.maximum(np.asarray(
        losses.margins(s["f"], y, loss.epsilon)), 0) ** 2))
    print(json.dumps(dict(kw, loss=loss_, n_delta=int(s["unsat"].sum()), norm=round(norm, 3),
                          **extra, seconds=round(time.time() - t, 1))), flush=True)

  first = s = state(params)
  line(params, s, iterations=0)
  for i in range(1, iters // segment + 1):
    logged = []
    out = kink_newton.finish(cfg, params, x, y, loss, tol=1e-10, max_iter=segment,
                             step_model=model, weight_decay=decay, log_fn=logged.append)
    params, s = out.params, state(out.params)
    gres = [float(m.split("|g_Z|/F ")[1].split()[0]) for m in logged if "|g_Z|/F" in m]
    line(params, s, iterations=i * segment, reason=out.reason,
         r_sub=float(out.record.force_residual), n_kink=int(out.record.n_kink),
         gres=gres[-1] if gres else None,
         min_curvature=float(kink_newton.min_curvature(cfg, params, x, y, loss)))
    if out.converged or out.reason in ("no_unsat", "stuck", "decay_stationary"):
      break
  if relu:
    _growth(first, s)
  return 0


def _growth(first, last):
  """The last line: which units' balanced norms grew, and the outputs."""
  growth = [(r1[0], r1[1], r1[2] ** 2 - r0[2] ** 2, r1[2], r1[3], r1[4])
            for r0, r1 in zip(first["units"], last["units"])]
  total = sum(g[2] for g in growth)
  top = sorted(growth, key=lambda g: -g[2])[:5]
  sat = ~last["unsat"]
  print(json.dumps(dict(
      grew_most=[(g[0], g[1], round(g[2], 3), round(g[3], 3), g[4], g[5]) for g in top],
      share_of_top5=round(sum(g[2] for g in top) / total, 3) if total > 0 else None,
      norm2_growth=round(total, 3),
      mean_abs_f_sat=[round(float(np.mean(np.abs(first["f"][sat]))), 4),
                      round(float(np.mean(np.abs(last["f"][sat]))), 4)],
      max_abs_f=[round(float(np.max(np.abs(first["f"]))), 4),
                 round(float(np.max(np.abs(last["f"]))), 4)],
      P=int(last["f"].shape[0]))), flush=True)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
