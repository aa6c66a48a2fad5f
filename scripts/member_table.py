"""One row per member with loss > 0 of every ensemble run below some directories.

    python scripts/member_table.py DIR [DIR ...]

DIR is a phase study's or sweep's --out_dir, or an ensemble run directory:
every ``ensemble/*/summary.json`` below it (and DIR itself if it is a run)
is read with its params. Prints one JSON line per member whose N_Delta > 0
and that is healthy (not diverged, dead or dead_points): the run, depth,
P/N, seed, class, loss, N_Delta, misclassified points (y f <= 0; f minus
f(w0) for a net trained as that), output rms, |w|, r_sub, the output scale's residual
(:func:`lossland.stationarity.scale_residual`: 0 at a stationary point, > 0
where larger outputs would lower the loss; recomputed from the params for
runs written before summary.json had it), and the exact minimum of the
quadratic hinge loss along that scale (the last layer times c, f -> c f):
``scale_c``, the best c, and ``scale_gain``, the loss's relative decrease
there (1: every margin satisfied, a sat state one exact step away); and,
from summary.json, the finish's reason and iterations and the descent
probe's gain at its end (``finish_reason``, ``finish_iterations``,
``descent_gain``; null for members no finish entered). Used for
docs/jamming.md, the twenty-first to twenty-third sessions. Writes nothing;
exits 2 on a directory with no run.
"""
import glob
import json
import os
import sys

import numpy as np


def run_dirs(root: str) -> list:
  """The ensemble run directories below ``root`` (``root`` itself if it is one)."""
  found = glob.glob(os.path.join(root, "**", "ensemble", "*", "summary.json"), recursive=True)
  if os.path.exists(os.path.join(root, "summary.json")) and os.path.exists(
      os.path.join(root, "arrays.npz")):
    found.append(os.path.join(root, "summary.json"))
  return sorted({os.path.dirname(os.path.abspath(f)) for f in found})


def best_scale(b, a, iters: int = 200) -> tuple:
  """argmin over c >= 0 of sum_mu (a_mu - c b_mu)_+^2 (convex, piecewise
  quadratic: its derivative -2 sum b (a - c b)_+ is nondecreasing, found by
  bisection) and the value there; b = y f, a = epsilon + y off."""
  value = lambda c: float(np.sum(np.maximum(a - c * b, 0.0) ** 2))
  slope = lambda c: -float(np.sum(b * np.maximum(a - c * b, 0.0)))
  lo, hi = 0.0, 1.0
  while slope(hi) < 0 and hi < 1e12:
    lo, hi = hi, 2 * hi
  for _ in range(iters):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
  return hi, value(hi)


def rows(run: str) -> list:
  """The rows of one run (docstring)."""
  import jax
  jax.config.update("jax_enable_x64", True)
  from jax.flatten_util import ravel_pytree
  from lossland import experiment, losses, nets, observables, stationarity
  with open(os.path.join(run, "summary.json")) as fh:
    s = json.load(fh)
  members = [(k, m) for k, m in enumerate(s["members"])
             if m["n_delta"] > 0 and m["class"] not in observables.UNHEALTHY]
  if not members:
    return []
  ens = experiment.load_ensemble(run)
  x, y = ens.data.x_train, np.asarray(ens.data.y_train)
  apply_fn = nets.cached_apply_fn(ens.net, x.dtype)
  out = []
  for k, m in members:
    params, params0 = ens.member(k)
    f = np.asarray(apply_fn(params, x))
    off = np.asarray(apply_fn(params0, x)) if ens.subtract_init else 0.0
    scale = m.get("scale_residual")
    if scale is None:
      scale = stationarity.scale_residual(apply_fn, params, x, y, ens.loss, off)
    delta = np.asarray(losses.margins(f - off, y, ens.loss.epsilon))
    c, at_c = best_scale(y * f, ens.loss.epsilon + y * off)
    at_1 = float(np.sum(np.maximum(delta, 0.0) ** 2))
    out.append(dict(run=run, depth=ens.net.depth, p_over_n=round(s["P"] / s["n_weights"], 4),
                    seed=m["seed"], **{"class": m["class"]}, loss=m["loss"],
                    n_delta=int(np.sum(delta > 0)),
                    misclassified=int(np.sum(y * (f - off) <= 0)),
                    output_rms=float(np.sqrt(np.mean(f ** 2))),
                    w_norm=float(np.linalg.norm(ravel_pytree(params)[0])),
                    r_sub=m.get("force_residual"), scale_residual=float(scale),
                    scale_c=c, scale_gain=1.0 - at_c / at_1 if at_1 > 0 else 0.0,
                    finish_reason=m.get("finish_reason"),
                    finish_iterations=m.get("finish_iterations"),
                    descent_gain=m.get("descent_gain")))
  return out


def main(argv) -> int:
  if len(argv) < 2:
    print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
    return 2
  runs = []
  for root in argv[1:]:
    found = run_dirs(root)
    if not found:
      print(f"error: no ensemble run below {root}", file=sys.stderr)
      return 2
    runs += found
  for run in runs:
    for row in rows(run):
      print(json.dumps(row))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
