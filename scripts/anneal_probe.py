"""Runs the annealed finish (and optionally the Newton finish after it) on one
member of a finished ensemble run.

    python scripts/anneal_probe.py RUN_DIR MEMBER [NEWTON_ITERS]

RUN_DIR is an ensemble run directory (config.json, arrays.npz; a run of the
quadratic hinge without subtract_init); MEMBER is the member's index. Prints
one JSON line per anneal level (the ReLU loss sum of 1/2 Delta^2 after it),
then one line for the anneal's result (loss before and after, N_Delta, r_sub,
n_kink) and, with NEWTON_ITERS > 0, one for the Newton finish from there
(reason, iterations, loss, N_Delta, r_sub, lambda_min / lambda_max on the
kink manifold). Used for docs/jamming.md, "the annealed finish". Writes
nothing.
"""
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from lossland import losses, nets, stationarity  # noqa: E402
from lossland.optim import anneal, kink_newton  # noqa: E402


def main(argv):
  if len(argv) not in (3, 4):
    print(__doc__.strip().splitlines()[3].strip(), file=sys.stderr)
    return 2
  run, k = argv[1], int(argv[2])
  newton_iters = int(argv[3]) if len(argv) == 4 else 0
  with open(os.path.join(run, "config.json")) as fh:
    cfg_json = json.load(fh)
  if cfg_json["loss"]["name"] != "quadratic_hinge" or cfg_json["train"].get("subtract_init"):
    print("anneal_probe: needs a quadratic-hinge run without subtract_init", file=sys.stderr)
    return 2
  cfg = nets.NetConfig(**cfg_json["net"])
  with np.load(os.path.join(run, "arrays.npz")) as a:
    params = nets.unravel_fn(cfg, jnp.float64)(jnp.asarray(a["params_final"][k]))
    x, y = jnp.asarray(a["x_train"]), jnp.asarray(a["y_train"])
  loss = losses.LossConfig()
  apply_fn = nets.make_net(cfg)[1]
  t = time.time()

  def record(p):
    st = stationarity.stationarity(cfg, apply_fn, p, x, y, loss)
    return dict(n_delta=st.n_unsat, r_sub=st.force_residual, r=st.force_residual_smooth,
                n_kink=st.n_kink, seconds=round(time.time() - t, 1))
  log = lambda line: print(json.dumps(dict(member=k, level=line)), flush=True)
  out = anneal.anneal(cfg, params, x, y, loss, log_fn=log)
  print(json.dumps(dict(member=k, stage="anneal", reason=out.reason, n_iter=out.n_iter,
                        loss_before=out.loss_before, loss_after=out.loss_after,
                        **record(out.params))), flush=True)
  if newton_iters > 0:
    fin = kink_newton.finish(cfg, out.params, x, y, loss, tol=1e-10, max_iter=newton_iters)
    hinge = float(jnp.sum(loss.fn(loss.epsilon - y * apply_fn(fin.params, x))))
    print(json.dumps(dict(member=k, stage="newton", reason=fin.reason, n_iter=fin.n_iter,
                          loss_after=hinge,
                          min_curvature=float(kink_newton.min_curvature(cfg, fin.params, x, y,
                                                                        loss)),
                          **record(fin.params))), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
