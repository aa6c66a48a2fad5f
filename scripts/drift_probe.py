"""Where does a slowly descending finish go? Per-unit norms along the finish.

    python scripts/drift_probe.py RUN_DIR MEMBER ITERATIONS SEGMENT [DECAY]

RUN_DIR is an ensemble run directory of a ReLU net (config.json, arrays.npz;
the quadratic hinge without subtract_init); MEMBER is the member's index.
Continues the finishing stage (``kink_newton.finish``) from the member's
final params for ITERATIONS iterations in segments of SEGMENT, each from the
last one's output, and prints one JSON line per segment: the loss (sum of
1/2 Delta^2), N_Delta, r_sub, the norm at balance (``nets.balanced``: every
hidden unit with |in| = |out|, so that a unit's norm measures its share of
the function, not the gauge) and, for the five largest units at balance,
(layer, unit, norm, points on which the unit is on, unsatisfied points on
which it is on). The last line compares the first and last states: the
units whose balanced norm grew most, with those counts, the share of the
growth of the squared balanced norm they carry, and the outputs' growth on
satisfied and unsatisfied points. With DECAY mu > 0 the finish minimizes the
loss + mu |w|^2 / 2 instead (``kink_newton.finish(weight_decay=mu)``, from
the member's balanced params), and each line also gives the last logged
reduced gradient of that objective over the force scale (``gres``). Used
for docs/jamming.md, "Where the descent goes". Writes nothing.
"""
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from lossland import losses, nets  # noqa: E402
from lossland.optim import kink_newton  # noqa: E402


def unit_table(cfg, params, x, unsat):
  """[(layer, unit, balanced norm, n_on, n_on_unsat)] for every hidden unit."""
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
  if len(argv) not in (5, 6):
    print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
    return 2
  run, k, iters, segment = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
  decay = float(argv[5]) if len(argv) == 6 else 0.0
  with open(os.path.join(run, "config.json")) as fh:
    cfg_json = json.load(fh)
  cfg = nets.NetConfig(**cfg_json["net"])
  if cfg.activation != "relu" or cfg_json["loss"]["name"] != "quadratic_hinge":
    print("drift_probe: needs a ReLU net and the quadratic hinge", file=sys.stderr)
    return 2
  a = np.load(os.path.join(run, "arrays.npz"))
  params = nets.unravel_fn(cfg, jnp.float64)(jnp.asarray(a["params_final"][k]))
  if decay:
    params = nets.balanced(cfg, params)  # the decay's minimum is balanced
  x, y = jnp.asarray(a["x_train"]), jnp.asarray(a["y_train"])
  loss = losses.LossConfig()
  apply_fn = nets.make_net(cfg)[1]
  t = time.time()

  def state(p):
    f = np.asarray(apply_fn(p, x))
    delta = loss.epsilon - np.asarray(y) * f
    unsat = delta > 0
    return dict(f=f, unsat=unsat, loss=float(0.5 * np.sum(delta[unsat] ** 2)),
                units=unit_table(cfg, p, x, unsat))

  def line(s, **kw):
    units = sorted(s["units"], key=lambda r: -r[2])
    print(json.dumps(dict(kw, loss=s["loss"], n_delta=int(s["unsat"].sum()),
                          norm_balanced=round(float(np.sqrt(sum(r[2] ** 2 for r in units))), 3),
                          top=[(r[0], r[1], round(r[2], 3), r[3], r[4]) for r in units[:5]],
                          seconds=round(time.time() - t, 1))), flush=True)

  first = state(params)
  line(first, iterations=0)
  s = first
  for i in range(1, iters // segment + 1):
    logged = []
    out = kink_newton.finish(cfg, params, x, y, loss, tol=1e-10, max_iter=segment,
                             weight_decay=decay, log_fn=logged.append)
    params, s = out.params, state(out.params)
    gres = [float(m.split("|g_Z|/F ")[1].split()[0]) for m in logged if "|g_Z|/F" in m]
    line(s, iterations=i * segment, reason=out.reason, r_sub=float(out.record.force_residual),
         n_kink=int(out.record.n_kink), gres=gres[-1] if gres else None)
    if out.converged or out.reason in ("no_unsat", "stuck", "decay_stationary"):
      break
  growth = [(r1[0], r1[1], r1[2] ** 2 - r0[2] ** 2, r1[2], r1[3], r1[4])
            for r0, r1 in zip(first["units"], s["units"])]
  total = sum(g[2] for g in growth)
  top = sorted(growth, key=lambda g: -g[2])[:5]
  sat = ~s["unsat"]
  print(json.dumps(dict(
      grew_most=[(g[0], g[1], round(g[2], 3), round(g[3], 3), g[4], g[5]) for g in top],
      share_of_top5=round(sum(g[2] for g in top) / total, 3) if total > 0 else None,
      norm2_growth=round(total, 3),
      mean_abs_f_sat=[round(float(np.mean(np.abs(first["f"][sat]))), 4),
                      round(float(np.mean(np.abs(s["f"][sat]))), 4)],
      max_abs_f=[round(float(np.max(np.abs(first["f"]))), 4),
                 round(float(np.max(np.abs(s["f"]))), 4)],
      P=int(x.shape[0]))), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
