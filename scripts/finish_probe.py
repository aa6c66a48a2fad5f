"""Continues the finishing stage (trust-region Newton) from a run's final params.

    python scripts/finish_probe.py RUN_DIR MEMBER ITERATIONS [SEGMENT]

RUN_DIR is an ensemble run directory (config.json, arrays.npz; a run of the
quadratic hinge without subtract_init); MEMBER is the member's index. Prints
one JSON line: the finish's reason, iterations, r_sub before and after, the
loss (sum of 1/2 Delta^2) before and after, lambda_min / lambda_max of the
Hessian on the kink manifold at the end, the per-layer weight norms at
initialization, at the run's end and after the probe, and the seconds. Used
for docs/jamming.md, "the softplus control" (the weights' drift to infinity).
With SEGMENT, the finish runs ITERATIONS / SEGMENT times for SEGMENT
iterations, each from the last one's output, and prints one line per
segment (loss, N_Delta, r_sub, n_kink, the weight norm and, for ReLU nets,
the norm at the least-norm point of the rescaling orbit, nets.balanced):
docs/jamming.md, "how far from a minimum the polished states are".
Writes nothing.
"""
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

jax.config.update("jax_enable_x64", True)

from lossland import losses, nets  # noqa: E402
from lossland.optim import kink_newton  # noqa: E402


def main(argv):
  if len(argv) not in (4, 5):
    print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
    return 2
  run, k, iters = argv[1], int(argv[2]), int(argv[3])
  segment = int(argv[4]) if len(argv) == 5 else 0
  with open(os.path.join(run, "config.json")) as fh:
    cfg_json = json.load(fh)
  if cfg_json["loss"]["name"] != "quadratic_hinge":
    print(f"finish_probe: the finish is for the quadratic hinge, got {cfg_json['loss']['name']}",
          file=sys.stderr)
    return 2
  cfg = nets.NetConfig(**cfg_json["net"])
  a = np.load(os.path.join(run, "arrays.npz"))
  unravel = nets.unravel_fn(cfg, jnp.float64)
  params = unravel(jnp.asarray(a["params_final"][k]))
  x, y = jnp.asarray(a["x_train"]), jnp.asarray(a["y_train"])
  loss = losses.LossConfig()
  _, apply_fn = nets.make_net(cfg)
  hinge = lambda p: float(0.5 * np.sum(np.maximum(loss.epsilon - np.asarray(y * apply_fn(p, x)),
                                                  0) ** 2))
  norms = lambda p: [round(float(np.linalg.norm(np.asarray(layer["w"]))), 3) for layer in p]
  t = time.time()
  if segment:
    return _segments(cfg, params, x, y, loss, iters, segment, hinge, apply_fn, t)
  out = kink_newton.finish(cfg, params, x, y, loss, tol=1e-10, max_iter=iters)
  print(json.dumps(dict(
      member=k, reason=out.reason, n_iter=out.n_iter,
      r_before=float(out.residual_before), r_after=float(out.record.force_residual),
      loss_before=hinge(params), loss_after=hinge(out.params),
      min_curvature=float(kink_newton.min_curvature(cfg, out.params, x, y, loss)),
      norms_init=norms(unravel(jnp.asarray(a["params_init"][k]))), norms_run=norms(params),
      norms_after=norms(out.params), seconds=round(time.time() - t, 1))))
  return 0


def _segments(cfg, params, x, y, loss, iters, segment, hinge, apply_fn, t):
  """One JSON line per segment of SEGMENT iterations (the docstring)."""
  def line(p, **kw):
    n_delta = int(np.sum(np.asarray(losses.margins(apply_fn(p, x), y, loss.epsilon)) > 0))
    norm = float(np.linalg.norm(np.asarray(ravel_pytree(p)[0])))
    bal = (float(np.linalg.norm(np.asarray(ravel_pytree(nets.balanced(cfg, p))[0])))
           if cfg.activation == "relu" else None)
    print(json.dumps(dict(kw, loss=hinge(p), n_delta=n_delta, norm=round(norm, 3),
                          norm_balanced=None if bal is None else round(bal, 3),
                          seconds=round(time.time() - t, 1))), flush=True)
  line(params, iterations=0)
  for s in range(1, iters // segment + 1):
    out = kink_newton.finish(cfg, params, x, y, loss, tol=1e-10, max_iter=segment)
    params = out.params
    line(params, iterations=s * segment, reason=out.reason, r_sub=float(out.record.force_residual),
         n_kink=int(out.record.n_kink))
    if out.converged:
      break
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
