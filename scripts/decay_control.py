"""Controls of issue 20, item 4 (d): theta and gamma at certified minima of a
net's loss with weight decay, for a smooth net (no kinks) and for the ReLU
net itself.

    python scripts/decay_control.py OUT.json MU ITERS WORKERS RUN_DIR [RUN_DIR ...] [--members=0,1,...] [--correction=off]
    python scripts/decay_control.py --fits OUT.json [OUT.json ...]

Why. A softplus net has no kinks and no dead points, but its jammed "minima"
lie at infinite weights: the descent sharpens the activation by growing the
pre-activations (docs/jamming.md, "the softplus control"). The ReLU net's
finish on the loss alone keeps descending for thousands of iterations while
its weights grow (docs/jamming.md, "where the descent goes"). With weight
decay mu > 0 the objective

    F(w) = sum_mu 1/2 Delta_mu^2 theta(Delta_mu) + mu |w|^2 / 2

is coercive, so it has minima at finite weights. Decay for both nets makes
the pair a control of the kinks alone: same objective, same mu, same N and P.

What. RUN_DIR, ...: ensemble runs of a smooth activation (tanh or softplus)
or of ReLU with the quadratic hinge, in float64. Every member that ended
with unsatisfied points (and not of class ``dead_points``: issue 20, item
3, keeps those out of the exponents) is driven to a stationary point of F by the finish
(``kink_newton.finish(weight_decay=MU)``, ReLU nets from their balanced
params, ``nets.balanced``, where the decay is lowest on the rescaling orbit;
at most ITERS iterations, WORKERS members at a time in threads; with
``--members`` only those members of each run; ``--correction=off``: ReLU
nets without the finish's second-order correction of its trial points,
``kink_newton.finish(correction=False)``, for comparison), then certified
independently of the finish:

* ``r_F``: the force balance of F with the decay as one more force,
  |grad F| / (sum_mu |Delta_mu grad Delta_mu| + MU |w|); for ReLU nets the
  minimum over the ReLU slopes in [0, 1] at the kink pairs
  (``stationarity.stationarity(weight_decay=MU)``, r_sub of F);
* ``lam_min``: the lowest eigenvalue of the Hessian of F with the points at
  the margin (0 < Delta <= ``phase.GAP_FLOOR`` sqrt(loss)) left out of the
  Gauss-Newton part (``kink_newton.manifold_curvature``). For a smooth net
  this is the dense Hessian, the lowest element of F's generalized Hessian
  (a point at Delta = 0 adds (grad Delta . d)_+^2 >= 0 along d); for a ReLU
  net the same on the manifold of the kink contacts (z_k = 0), at the
  contacts' slopes, where a step off a contact rises at first order when
  its slope is inside (0, 1);
* ``probe_gain``: the descent probe on F
  (``kink_newton.descent_probe(weight_decay=MU)``: the true F along the
  gradient, Newton and softest lines, the contacts restored); for ReLU nets
  also the slopes (``slope_min``, ``slope_max``, ``n_slopes_at_bound``
  within 1e-6 of 0 or 1 or outside, where the first-order rise of a step
  off the contact vanishes and the manifold's curvature alone does not
  decide);
* ``minimum``: r_F <= ``CERT_TOL``, lam_min > 0 and the probe finds F no
  lower.

The Delta of the certified minima give theta (Delta > 0 divided by
sqrt(loss), loss = mean 1/2 Delta_+^2, as the authors) and gamma (-Delta of the
satisfied points), fitted as the phase summary fits them
(``phase.fit_exponent``: density MLE and empirical CDF on the small half,
samples at or below ``phase.GAP_FLOOR`` left out and counted, a bootstrap
over members), per run and over all runs, with N_Delta/N of each minimum (N
the papers' count of weights, biases left out); and, for comparison, per
run, of every member's entry state (the run's, not a minimum). Each row
also has ``r_loss``, the force balance of the loss alone at the state
(r_sub for ReLU nets; not 0 at a minimum of F: the decay's force is
missing). One JSON line per member and one per fit on stdout; OUT.json gets
``{"members": [...], "fits": [...]}``, each member with its Delta before
and after and its flat params after (in ``ravel_pytree`` order), written
once, at the end, through a temporary file; and OUT.png (beside it) the
empirical CDFs of the Delta > 0 and of the gaps, per run, at the minima and
at the entry states. ``--fits OUT.json ...`` prints the two fits (minima,
entry states) of the members of several such outputs pooled, one mu.
Exit status 2 on a bad argument or run.
docs/jamming.md, "a kink-free control with weight decay" (seventeenth
session) and "the ReLU net with weight decay" (nineteenth).
"""
import concurrent.futures
import json
import math
import os
import sys
import time

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

jax.config.update("jax_enable_x64", True)

from lossland import experiment, io, losses, nets, phase, stationarity  # noqa: E402
from lossland.optim import kink_newton  # noqa: E402

CERT_TOL = 1e-8  # r_F of a minimum (the finish itself stops at 1e-10 of its own scale)
SMOOTH = ("tanh", "softplus")


def certify(cfg, loss, x, y, mu, params) -> dict:
  """r_F, lam_min (and lam_max) of F at params, the module docstring's way,
  with ``r_loss``, the loss's own force balance there. One path for both
  kinds of net: :func:`lossland.stationarity.stationarity` (r_sub of F; r
  without kinks), :func:`kink_newton.manifold_curvature` (without kinks the
  manifold is R^N and this is the dense Hessian of F, layer by layer) and
  the descent probe of F; a smooth net has no contacts, so no slopes."""
  apply_fn = nets.cached_apply_fn(cfg, x.dtype)
  flat = np.asarray(ravel_pytree(params)[0])
  d = np.asarray(losses.margins(apply_fn(params, x), y, loss.epsilon))
  mean_loss = float(np.mean(0.5 * np.maximum(d, 0.0) ** 2))
  at_margin = (d > 0) & (d <= phase.GAP_FLOOR * math.sqrt(mean_loss))
  rec = stationarity.stationarity(cfg, apply_fn, params, x, y, loss, weight_decay=mu)
  rec_loss = stationarity.stationarity(cfg, apply_fn, params, x, y, loss)
  c = kink_newton.manifold_curvature(cfg, params, x, y, loss, weight_decay=mu,
                                     margin=at_margin)
  probe = kink_newton.descent_probe(cfg, params, x, y, loss, weight_decay=mu)
  s = np.asarray(c["slopes"])
  r_f = float(rec.force_residual)
  minimum = bool(r_f <= CERT_TOL and c["lam_min"] > 0 and not probe.descends())
  return dict(r_F=r_f, lam_min=c["lam_min"], lam_max=c["lam_max"], minimum=minimum,
              loss=mean_loss, n_delta=int(np.sum(d > 0)), n_at_margin=int(at_margin.sum()),
              decay_term=0.5 * mu * float(flat @ flat),
              r_loss=float(rec_loss.force_residual), n_kink=int(rec.n_kink),
              kink_exact=bool(rec.exact), probe_gain=float(probe.gain),
              slope_min=float(s.min()) if s.size else None,
              slope_max=float(s.max()) if s.size else None,
              n_slopes_at_bound=int(np.sum((s < 1e-6) | (s > 1 - 1e-6))),
              delta=d)


def run_member(ens, k: int, mu: float, iters: int, correction: bool = True) -> dict:
  """The finish on F for member k of ens, then its certificate (the row
  keeps the member's Delta and params, which main does not print)."""
  cfg, loss, x, y = ens.net, ens.loss, ens.data.x_train, ens.data.y_train
  params = jax.tree_util.tree_map(lambda a: a[k], ens.params)
  if cfg.activation == "relu":
    params = nets.balanced(cfg, params)  # the same net, the least decay on its orbit
  t = time.time()
  out = kink_newton.finish(cfg, params, x, y, loss, tol=1e-10, max_iter=iters,
                           weight_decay=mu, correction=correction)
  cert = certify(cfg, loss, x, y, mu, out.params)
  before = certify(cfg, loss, x, y, mu, params)
  delta = cert.pop("delta")
  delta_before = before.pop("delta")
  return dict(run=ens.path, member=k, seed=int(ens.seeds[k]), activation=cfg.activation,
              correction=correction,
              N=nets.n_weights(cfg.d, cfg.width, cfg.depth), n_params=nets.n_params(cfg),
              P=int(x.shape[0]), mu=mu, reason=out.reason, iterations=int(out.n_iter),
              seconds=round(time.time() - t, 1), r_F_before=before["r_F"],
              loss_before=before["loss"], n_delta_before=before["n_delta"], **cert,
              delta=delta, delta_before=delta_before, params=out.params)


def samples(row: dict, entry: bool = False):
  """(Delta/sqrt(loss) > 0, -Delta > 0) of a row's state: the one the finish
  reached, or with ``entry`` the one it started from."""
  tag = "_before" if entry else ""
  d = np.asarray(row["delta" + tag])
  return d[d > 0] / math.sqrt(row["loss" + tag]), -d[d < 0]


def fits(rows: list, label: str, entry: bool = False) -> dict:
  """theta and gamma of the states of rows: those the finish reached, or
  with ``entry`` those it started from (the run's, not minima)."""
  pos, neg, gp, gn = [], [], [], []
  tag = "_before" if entry else ""
  for i, r in enumerate(rows):
    p, n = samples(r, entry)
    pos.append(p), neg.append(n)
    gp.append(np.full(p.size, i)), gn.append(np.full(n.size, i))
  cat = lambda a: np.concatenate(a) if a else np.zeros(0)
  th = phase.fit_exponent(cat(pos), cat(gp), x_floor=phase.GAP_FLOOR)
  ga = phase.fit_exponent(cat(neg), cat(gn), sign=-1, x_floor=phase.GAP_FLOOR)
  return dict(fit=label, states="entry" if entry else "minima", n_states=len(rows),
              theta=th["exponent"], theta_ci=th["ci"],
              theta_cdf=th["exponent_cdf"], theta_ci_cdf=th["ci_cdf"],
              theta_stable=th["stable"], n_theta_samples=th["n_samples"],
              n_at_margin=th["n_below_floor"], gamma=ga["exponent"], gamma_ci=ga["ci"],
              gamma_cdf=ga["exponent_cdf"], n_gamma_samples=ga["n_samples"],
              n_delta_over_n=[r["n_delta" + tag] / r["N"] for r in rows])


def plot(rows: list, path: str) -> str:
  """Empirical CDFs of Delta/sqrt(loss) > 0 and of the gaps -Delta > 0, per
  run, at the minima (full lines) and at the entry states (dashed)."""
  from lossland.plots import _agg
  plt = _agg.pyplot()
  fig, axs = plt.subplots(1, 2, figsize=(9, 3.6))
  runs = list(dict.fromkeys(r["run"] for r in rows))
  for j, run in enumerate(runs):
    for entry, ls in ((False, "-"), (True, "--")):
      sel = [r for r in rows if r["run"] == run and (entry or r["minimum"])]
      if not sel:
        continue
      pos, neg = (np.concatenate(v) for v in zip(*(samples(r, entry) for r in sel)))
      label = (f"P = {sel[0]['P']}: " + (f"{len(sel)} entry states" if entry
                                          else f"{len(sel)} minima"))
      for ax, v in ((axs[0], pos), (axs[1], neg)):
        v = np.sort(v[v > phase.GAP_FLOOR])
        if v.size:
          ax.loglog(v, np.arange(1, v.size + 1) / v.size, ls, color=f"C{j}", lw=1,
                    label=label)
  for ax, name, paper in ((axs[0], "Delta/sqrt(loss) > 0", 0.3), (axs[1], "-Delta > 0", -0.2)):
    if not ax.lines:
      continue
    xd, yd = ax.lines[0].get_data()  # through the first curve's median, 3 decades down
    x1 = float(xd[np.searchsorted(yd, 0.5)])
    xs = np.array([x1 * 1e-3, x1])
    ax.loglog(xs, 0.5 * (xs / x1) ** (1 + paper), ":", color="0.3", lw=1.5,
              label=f"slope 1{paper:+.1f} (the papers' exponent)")
    ax.set_xlabel(name)
    ax.set_ylabel("fraction below (CDF)")
    ax.legend(fontsize=6)
  fig.suptitle(f"{rows[0]['activation']} net, loss + mu|w|^2/2, mu = {rows[0]['mu']:g}: "
               "minima (full) "
               "and the runs' states (dashed)", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def _args(argv):
  opts = [a for a in argv[1:] if a.startswith("--")]
  argv = [a for a in argv if not a.startswith("--")]
  members, correction = None, True
  for o in opts:
    if o in ("--correction=on", "--correction=off"):
      correction = o.endswith("on")
      continue
    if not o.startswith("--members="):
      raise ValueError(f"unknown option {o} (only --members=0,1,... and --correction=on|off)")
    try:
      members = sorted({int(k) for k in o[len("--members="):].split(",")})
    except ValueError:
      raise ValueError(f"--members needs member indices, as --members=0,2 (got {o})") from None
  if len(argv) < 6 or not argv[1].endswith(".json"):
    raise ValueError(__doc__.strip().splitlines()[3].strip())
  mu, iters, workers = float(argv[2]), int(argv[3]), int(argv[4])
  if not (math.isfinite(mu) and mu > 0) or iters < 1 or workers < 1:
    raise ValueError(f"MU must be > 0, ITERS and WORKERS >= 1 (got {argv[2:5]})")
  runs = []
  for path in argv[5:]:
    ens = experiment.load_ensemble(path)
    if ens.net.activation not in SMOOTH + ("relu",):
      raise ValueError(f"{path}: activation {ens.net.activation!r} is not one of "
                       f"{SMOOTH + ('relu',)}")
    if ens.loss.name != "quadratic_hinge" or ens.subtract_init:
      raise ValueError(f"{path}: needs the quadratic hinge without subtract_init")
    if ens.data.x_train.dtype != np.float64:
      raise ValueError(f"{path}: needs a float64 run (--x64)")
    n = len(ens.summary["members"])
    if members is not None and not all(0 <= k < n for k in members):
      raise ValueError(f"{path}: --members {members} out of range (the run has {n})")
    runs.append(ens)
  return argv[1], mu, iters, workers, runs, members, correction


def pooled_fits(paths: list) -> list:
  """``--fits OUT.json ...``: the fits of the certified minima of several
  outputs of this script pooled (one bootstrap over all their members), and
  of all their entry states; ValueError where a file is not such an output
  or mixes values of mu."""
  rows = []
  for path in paths:
    try:
      with open(path) as fh:
        members = json.load(fh)["members"]
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{path}: not an output of decay_control.py ({e})") from None
    rows += [dict(m, delta=np.asarray(m["delta"]), delta_before=np.asarray(m["delta_before"]))
             for m in members]
  if not rows:
    raise ValueError("no members in " + ", ".join(paths))
  if len({r["mu"] for r in rows}) > 1:
    raise ValueError(f"the files mix values of mu: {sorted({r['mu'] for r in rows})}")
  return [fits([r for r in rows if r["minimum"]], "pooled"),
          fits(rows, "pooled", entry=True)]


def main(argv):
  if len(argv) > 1 and argv[1] == "--fits":
    try:
      if len(argv) < 3:
        raise ValueError("--fits needs OUT.json files")
      for f in pooled_fits(argv[2:]):
        print(json.dumps(f), flush=True)
    except ValueError as e:
      print(f"decay_control: {e}", file=sys.stderr)
      return 2
    return 0
  try:
    out_path, mu, iters, workers, runs, members, correction = _args(argv)
  except (ValueError, io.RunError) as e:
    print(f"decay_control: {e}", file=sys.stderr)
    return 2
  jobs = []
  for ens in runs:
    jobs += [(ens, k) for k, m in enumerate(ens.summary["members"])
             if m["n_delta"] > 0 and m.get("class") != "dead_points"
             and (members is None or k in members)]
  if not jobs:
    print("decay_control: no member with unsatisfied points and no dead point "
          "(nothing to finish)",
          file=sys.stderr)
    return 2
  print(f"decay_control: {len(jobs)} members with unsatisfied points, mu = {mu:g}, "
        f"at most {iters} iterations, {workers} at a time", file=sys.stderr, flush=True)
  rows = []
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for row in pool.map(lambda j: run_member(j[0], j[1], mu, iters, correction), jobs):
      print(json.dumps({k: v for k, v in row.items()
                        if k not in ("delta", "delta_before", "params")}),
            flush=True)
      rows.append(row)
  fit_rows = []
  for ens in runs:
    mins = [r for r in rows if r["run"] == ens.path and r["minimum"]]
    fit_rows.append(fits(mins, ens.path))
    fit_rows.append(fits([r for r in rows if r["run"] == ens.path], ens.path, entry=True))
  if len(runs) > 1:
    fit_rows.append(fits([r for r in rows if r["minimum"]], "all"))
  for f in fit_rows:
    print(json.dumps(f), flush=True)
  plot(rows, out_path[:-len(".json")] + ".png")
  members = [dict({k: v for k, v in r.items() if k != "params"},
                  delta=np.asarray(r["delta"]).tolist(),
                  delta_before=np.asarray(r["delta_before"]).tolist(),
                  params=np.asarray(ravel_pytree(r["params"])[0]).tolist()) for r in rows]
  tmp = out_path + ".tmp"
  with open(tmp, "w") as fh:
    json.dump({"members": members, "fits": fit_rows}, fh)
  os.replace(tmp, out_path)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
