"""Jamming phase diagram: transition search, N_Delta jump, Delta exponents, avalanches.

1809.09349 (Geiger et al., PRE 100, 012115): on random data a fully connected
net of N weights fits P points (N_Delta = 0, "sat") below P*(N) and ends in a
jammed minimum with N_Delta/N > 0.4 above it; P*/N does not depend on depth;
at the transition P_+(Delta) ~ Delta^theta (theta ~ 0.3) and
P_-(Delta) ~ |Delta|^-gamma (gamma ~ 0.2).

This module is analysis only: it reads ensemble cells (records of
:func:`lossland.sweep.run_sweep`, ``{"flags", "run_dir", "summary"}``) and
proposes the next P/N of a bisection (:func:`propose_next`); running the
cells is the study's (:mod:`lossland.experiments.phase_study`). Member classes come from ``summary["members"][k]["class"]``
(:func:`lossland.observables.member_classes`): only ``sat`` and ``jammed``
enter the fraction; ``limbo``, ``dead``, ``not_converged``, ``stalled`` and
``diverged`` are counted and reported, never counted as jammed; members
with an unsatisfied dead point (some hidden layer entirely off on it) are
``dead_points``: neither sat nor jammed (:func:`cell_stats`).
"""
import math
import os
from typing import Sequence

import numpy as np

from lossland import avalanches, extrapolate, fits, gap_exponents
from lossland import losses
from lossland import observables

COUNTED = ("sat", "jammed", "unbalanced")
# Stopped jammed with N_Delta > 0.1 N: force-balanced (jammed) or not shown
# to be a minimum (unbalanced, lossland.observables.apply_force_balance). Both
# count as "not sat" in the sat fraction; the exponents use jammed only.
NOT_SAT = ("jammed", "unbalanced")


def member_class(m: dict) -> str:
  """Class of one member of a summary (``class``; older summaries: stop reason).

  A ``jammed`` member that was still descending
  (:func:`lossland.observables.still_descending`: its Newton finish ran out
  of iterations, or the descent probe found a lower loss) is ``unbalanced``
  (:func:`lossland.observables.apply_force_balance`, the rules since
  2026-12-06; summaries written before them have such members as jammed)."""
  if "class" in m:
    return observables.apply_force_balance(
        [m["class"]], [m.get("force_residual")], None,
        descending=[observables.still_descending(m)])[0]
  if m.get("stop_reason") == "sat" or m.get("n_delta") == 0:
    return "sat"
  return m.get("stop_reason", "unknown")


def dead_point_members(record: dict, load_fn=None) -> list:
  """Per member: whether some unsatisfied point is a dead point (f = 0 exactly).

  A ReLU net without biases outputs exactly 0 on an input for which every
  unit of a layer is off; that point keeps Delta = epsilon and a zero
  gradient whatever the training does (the issue's "dead points"): no
  optimizer can satisfy it. For summaries written before the job classified
  such members itself. Reads ``f_train``/``y_train`` of the cell's
  arrays.npz; all False when the record has no run directory or the arrays
  cannot be read.
  """
  members = record["summary"]["members"]
  if not record.get("run_dir"):
    return [False] * len(members)
  try:
    a = (load_fn or _load_arrays)(record["run_dir"])
    f = np.asarray(a["f_train"], np.float64)
    y = np.asarray(a["y_train"], np.float64)
  except (OSError, KeyError, ValueError):
    return [False] * len(members)
  margin = record.get("flags", {}).get("margin")
  eps = 1.0 if margin is None else float(margin)
  return [bool(n > 0) for n in observables.unsatisfied_dead_points(f, y, eps)]


def cell_stats(record: dict, load_fn=None) -> dict:
  """Counts of one cell: P, N, P/N, classes, N_Delta/N of the jammed members.

  Members with an unsatisfied dead point have the class ``dead_points``
  (:func:`lossland.observables.member_classes`, in the cell's summary):
  neither sat nor jammed, left out of the fraction and reported
  (``counts["dead_points"]``). Summaries written before that class: their
  ``sat_dead`` members (every unsatisfied point dead, counted as sat then)
  are ``dead_points``, and their ``stalled``, ``jammed`` and ``not_converged``
  members are checked here (:func:`dead_point_members`).
  """
  s, f = record["summary"], record.get("flags", {})
  members = s["members"]
  classes = ["dead_points" if c == "sat_dead" else c for c in map(member_class, members)]
  old = ("stalled", "jammed", "unbalanced", "not_converged")
  if not any("n_dead_points" in m for m in members) and any(c in old for c in classes):
    dead = dead_point_members(record, load_fn)
    classes = ["dead_points" if c in old and d else c for c, d in zip(classes, dead)]
  N, P = int(s["n_weights"]), int(s["P"])
  counts = {c: classes.count(c) for c in sorted(set(classes))}
  return {
      "P": P, "N": N, "p_over_n": P / N,
      "depth": f.get("depth"), "width": f.get("width"), "d": f.get("d"),
      "n_members": len(members), "counts": counts,
      "n_sat": counts.get("sat", 0),
      "n_dead_points": counts.get("dead_points", 0),
      # not sat: stopped jammed, force-balanced or not (NOT_SAT)
      "n_jammed": sum(counts.get(c, 0) for c in NOT_SAT),
      "n_force_balanced": counts.get("jammed", 0),
      "n_unbalanced": counts.get("unbalanced", 0),
      "nd_over_n_jammed": [float(m["n_delta_over_n"]) for m, c in
                           zip(members, classes) if c in NOT_SAT],
      # force balance of those members (None: recorded before the job
      # measured it, lossland.stationarity)
      "force_residual_jammed": [m.get("force_residual") for m, c in
                                zip(members, classes) if c in NOT_SAT],
      "n_kink_jammed": [m.get("n_kink") for m, c in zip(members, classes)
                        if c in NOT_SAT],
      "force_residual_balanced": [m.get("force_residual") for m, c in
                                  zip(members, classes) if c == "jammed"],
      # item 4e: the contacts of the force-balanced states, unsatisfied
      # points and kink pairs (unit, unsatisfied point at z = 0), over N
      "nd_over_n_balanced": [float(m["n_delta_over_n"]) for m, c in
                             zip(members, classes) if c == "jammed"],
      "kinks_over_n_balanced": [m.get("n_kink", 0) / N for m, c in
                                zip(members, classes) if c == "jammed"],
      # the finishing stage (--finish): members it entered, left sat, left
      # as they were (the anneal's "kept"), and whose Newton finish ran out of
      # iterations ("max_iter": still descending, so never jammed; more
      # --finish_iters may settle them), and the others where the descent
      # probe found a lower loss ("probe_descends": not minima either)
      "finish": {"entered": sum(bool(m.get("finished")) for m in members),
                 "sat": sum(bool(m.get("finished")) and c == "sat"
                            for m, c in zip(members, classes)),
                 "kept": sum(m.get("finish_reason") == "kept" for m in members),
                 "max_iter": sum(m.get("finish_reason") == "max_iter" for m in members),
                 "probe_descends": sum(m.get("finish_reason") != "max_iter"
                                       and observables.probe_descends(m)
                                       for m in members),
                 # of those out of iterations, the ones force-balanced
                 # (r_sub <= the job's jam_max_residual) where the descent
                 # probe finds nothing: nearest to a minimum, but the
                 # finish's own last steps still lowered the loss
                 # (docs/jamming.md, twenty-third session)
                 "balanced_max_iter": sum(_balanced_out_of_iterations(
                     m, s.get("jam_max_residual")) for m in members)},
      # members left with loss > 0 (not sat, healthy) and not shown to be
      # minima (a jammed one has 0 to rounding): the loss's relative slope
      # along the output scale (lossland.stationarity.scale_residual; None:
      # recorded before the job measured it); and how many members left
      # with loss > 0 misclassify no point (then the last layer scaled up
      # satisfies every margin: a sat state one exact step away)
      "scale_residual_loss": [m.get("scale_residual") for m, c in zip(members, classes)
                              if c in LOSS_LEFT and c != "jammed"],
      "n_zero_error_loss": sum(c in LOSS_LEFT and m.get("train_error") == 0
                               for m, c in zip(members, classes)),
      # sat members that reached it by that step (the job's --scale_to_sat)
      "n_scaled_to_sat": sum(c == "sat" and m.get("sat_scale") is not None
                             for m, c in zip(members, classes)),
      "run_dir": record.get("run_dir"),
  }


def _balanced_out_of_iterations(m: dict, threshold) -> bool:
  """A member whose Newton finish ran out of iterations at r_sub <=
  ``threshold`` (None: the job applied no force-balance criterion) and
  whose descent probe found no loss lower by more than
  ``observables.DESCENT_RTOL``."""
  r, gain = m.get("force_residual"), m.get("descent_gain")
  return bool(m.get("finish_reason") == "max_iter" and threshold is not None
              and r is not None and r <= threshold and gain is not None
              and np.isfinite(gain) and not observables.probe_descends(m))


# Healthy classes a member ends in with N_Delta > 0 (limbo: satisfied to
# the precision, lossland.observables.member_classes).
LOSS_LEFT = ("jammed", "unbalanced", "not_converged", "stalled")
UNBALANCED_AS = ("not_sat", "sat")


def fit_cells(stats: Sequence[dict], level: float = 0.95, unbalanced: str = "not_sat") -> dict:
  """fits.fit_threshold of fraction sat / (sat + jammed) vs P/N over cells.

  ``unbalanced``: how the members that stopped jammed without force balance
  count, "not_sat" (the default, as the force-balanced ones) or "sat" (only
  force-balanced members count as jammed). A finish that converged would
  leave each of them sat or force-balanced, so the two fits bracket the P*
  of the same protocol with such a finish (up to their CIs).
  """
  if unbalanced not in UNBALANCED_AS:
    raise ValueError(f"unbalanced must be one of {UNBALANCED_AS}, got {unbalanced!r}")
  x = [c["p_over_n"] for c in stats]
  k = [c["n_sat"] + (c["n_unbalanced"] if unbalanced == "sat" else 0) for c in stats]
  n = [c["n_sat"] + c["n_jammed"] for c in stats]
  return fits.fit_threshold(x, k, n, level=level)


def outside_grid(stats: Sequence[dict], unbalanced: str = "not_sat") -> list | None:
  """Where P* lies when the fraction sat never crosses 1/2 on the measured
  P/N (:func:`fit_cells`' counts, the cells of one P/N pooled):
  ``[">", largest P/N]`` when it is above 1/2 at every one, ``["<",
  smallest P/N]`` when below at every one, None otherwise (crossed, or no
  cell with sat or stopped-jammed members). The bisection steps out from
  there (:func:`propose_points`)."""
  cells = [c for c in stats if c["n_sat"] + c["n_jammed"] > 0]
  if not cells:
    return None
  k = lambda c: c["n_sat"] + (c["n_unbalanced"] if unbalanced == "sat" else 0)
  xs = sorted({c["p_over_n"] for c in cells})
  frac = [sum(k(c) for c in cells if c["p_over_n"] == x) /
          sum(c["n_sat"] + c["n_jammed"] for c in cells if c["p_over_n"] == x) for x in xs]
  if min(frac) > 0.5:
    return [">", float(xs[-1])]
  if max(frac) < 0.5:
    return ["<", float(xs[0])]
  return None


def propose_next(stats: Sequence[dict], grow: float = 1.3,
                 rel_tol: float = 0.03, x_bounds=(0.2, 20.0)):
  """The next P/N of a bisection of the sat -> jammed transition, or None
  (:func:`propose_points` with one point)."""
  xs = propose_points(stats, 1, grow, rel_tol, x_bounds)
  return xs[0] if xs else None


def propose_points(stats: Sequence[dict], n_points: int = 1, grow: float = 1.3,
                   rel_tol: float = 0.03, x_bounds=(0.2, 20.0)) -> list:
  """The next ``n_points`` P/N of a (parallel) bisection of the sat -> jammed
  transition; [] when done.

  Not bracketed (all cells sat or all jammed): step out by ``grow``,
  ``grow**2``, ... (within ``x_bounds``). Else the two measured P/N values
  adjacent to the logistic fit's crossing, lo and hi, split into
  ``n_points + 1`` equal parts (one point: their midpoint); [] once they are
  within ``rel_tol`` (relative) of each other.
  """
  if n_points < 1:
    raise ValueError(f"n_points must be >= 1, got {n_points}")
  stats = [c for c in stats if c["n_sat"] + c["n_jammed"] > 0]
  if not stats:
    return []
  xs = np.array(sorted({c["p_over_n"] for c in stats}))
  steps = range(1, n_points + 1)
  side = outside_grid(stats)
  if side is not None and side[0] == ">":
    return [float(side[1] * grow ** j) for j in steps if side[1] * grow ** j <= x_bounds[1]]
  if side is not None:
    return [float(side[1] / grow ** j) for j in steps if side[1] / grow ** j >= x_bounds[0]]
  fit = fit_cells(stats)
  xh = fit["x_half"]
  if xh is None:
    return []
  lo = xs[xs <= xh].max() if np.any(xs <= xh) else xs.min()
  hi = xs[xs >= xh].min() if np.any(xs >= xh) else xs.max()
  if hi - lo <= rel_tol * 0.5 * (hi + lo):
    return []
  return [float(lo + (hi - lo) * j / (n_points + 1)) for j in steps]


def nd_over_n_at_jamming(stats: Sequence[dict], x_star, min_members: int = 3):
  """Median N_Delta/N of the jammed members in the cells nearest P*/N.

  Cells are taken in order of |P/N - P*/N| until at least ``min_members``
  jammed members are pooled. Returns (median or None, list of P/N used).
  """
  if x_star is None:
    return None, []
  vals, used = [], []
  for c in sorted(stats, key=lambda c: abs(c["p_over_n"] - x_star)):
    if c["nd_over_n_jammed"]:
      vals += c["nd_over_n_jammed"]
      used.append(c["p_over_n"])
    if len(vals) >= min_members:
      break
  return (float(np.median(vals)) if vals else None), used


def depth_spread(p_star: dict):
  """(max - min) / mean of P*/N over depths (None entries ignored)."""
  v = [x for x in p_star.values() if x is not None]
  if len(v) < 2:
    return None
  return float((max(v) - min(v)) / np.mean(v))


def _load_arrays(run_dir: str) -> dict:
  with np.load(os.path.join(run_dir, "arrays.npz"), allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


def delta_samples(record: dict, classes=("jammed",), load_fn=_load_arrays,
                  select=None) -> dict:
  """Delta of the members of one cell (1809.09349: nn_jamming's histograms).

  Delta = eps - y f from ``arrays.npz`` (f_train [K, P], y_train [P]); eps is
  the cell's margin (1 for the hinges when unset). Positive Delta are divided
  by sqrt(loss) of their member, as the authors; negative ones give -Delta.

  ``select(member) -> bool``, if given, replaces the class test (e.g. the
  members that stopped jammed with r_sub below a threshold).

  Returns:
    dict with ``positive`` and ``negative`` samples and their member indices
    ``positive_member``/``negative_member`` (for group bootstraps).
  """
  a = load_fn(record["run_dir"])
  margin = record.get("flags", {}).get("margin")
  eps = 1.0 if margin is None else float(margin)
  f, y = np.asarray(a["f_train"], np.float64), np.asarray(a["y_train"], np.float64)
  delta = losses.margins(f, y[None, :], eps)
  members = record["summary"]["members"]
  pos, neg, pm, nm = [], [], [], []
  for k, m in enumerate(members):
    if not (select(m) if select is not None else member_class(m) in classes):
      continue
    loss = float(m["loss"])
    d = delta[k]
    p = d[d > 0] / (math.sqrt(loss) if loss > 0 else 1.0)
    n = -d[d < 0]
    pos.append(p), neg.append(n)
    pm.append(np.full(p.size, k)), nm.append(np.full(n.size, k))
  return {"positive": _cat(pos), "negative": _cat(neg),
          "positive_member": _cat(pm), "negative_member": _cat(nm)}


def fit_exponent(samples, groups=None, q: float = 0.5,
                 q_checks=(0.25, 0.5, 0.75), n_boot: int = 500, seed: int = 0,
                 sign: int = 1, x_floor: float = 0.0) -> dict:
  """Exponent of p(x) ~ x^a at small x by two methods (lossland.gap_exponents).

  theta = a of the Delta > 0 side (``sign=1``), gamma = -a of the Delta < 0
  side (``sign=-1``). ``exponent``/``ci``: the density fit (truncated
  power-law MLE on (0, quantile q]); ``exponent_cdf``/``ci_cdf``: the
  empirical-CDF fit C(x) ~ x^(1 + a) on the same range; both with a
  bootstrap over members (``groups``) and range checks at ``q_checks``
  (``stable``: the density fit's). Samples <= ``x_floor`` (zero up to the
  states' accuracy: points at the margin) are left out and counted
  (``n_below_floor``). None below 10 samples above the floor.
  """
  x = np.asarray(samples, np.float64)
  n = int(np.sum(x > x_floor))
  n_below = int(np.sum((x > 0) & (x <= x_floor)))
  if n < 10:
    return {"exponent": None, "ci": [None, None], "exponent_cdf": None,
            "ci_cdf": [None, None], "n_samples": n, "stable": None, "stable_cdf": None,
            "method": None, "range_check": None, "q": q, "x_max": None,
            "x_floor": x_floor, "n_below_floor": n_below}
  f = gap_exponents.exponent_fits(x, groups, q=q, q_checks=q_checks, n_boot=n_boot,
                                  seed=seed, sign=sign, x_floor=x_floor)
  dens, cdf = f["density"] or {}, f["cdf"] or {}
  return {"exponent": f["exponent"], "ci": f["ci"], "exponent_cdf": f["exponent_cdf"],
          "ci_cdf": f["ci_cdf"], "n_samples": f["n_samples"], "q": q,
          "x_max": f["x_max"], "method": f["method"], "x_floor": x_floor,
          "n_below_floor": f["n_below_floor"],
          "range_check": {"q": list(q_checks),
                          "exponents": [None if e is None else sign * e for e in
                                        (dens.get("range_check") or {}).get("exponents", [])],
                          "exponents_cdf": [None if e is None else sign * e for e in
                                            (cdf.get("range_check") or {}).get("exponents", [])]},
          "stable": dens.get("stable"), "stable_cdf": cdf.get("stable")}


def avalanche_sizes(history_unsat, running=None) -> np.ndarray:
  """Sizes of the changes of the set of unsatisfied constraints.

  Between consecutive measurements of a member (both while it runs), the
  number of points whose sign of Delta changed (1809.09349: avalanche-like
  dynamics). Measurements are log-spaced in steps, so later intervals are
  longer.

  Args:
    history_unsat: [K, M, P] bool, Delta > 0 at each measurement.
    running: [K, M] bool, whether the member was running (default: all).

  Returns:
    1-d int array of sizes (zeros included).
  """
  u = np.asarray(history_unsat, bool)
  if u.ndim != 3:
    raise ValueError(f"history_unsat must be [K, M, P], got {u.shape}")
  ok = np.ones(u.shape[:2], bool) if running is None else np.asarray(running, bool)
  flips = np.sum(u[:, 1:] != u[:, :-1], axis=-1)
  both = ok[:, 1:] & ok[:, :-1]
  return flips[both].astype(np.int64)


def avalanche_data(record: dict, load_fn=_load_arrays, select=None):
  """Avalanche sizes of a cell's members from its arrays.npz, or None.

  Reads ``history_unsat`` [K, M, P] (train.TrainConfig.record_unsat) and, if
  present, ``history_running`` [K, M]; else running = finite history_loss.
  With a polish stage (job option ``polish``), the polish's own measurements
  (``polish_history_unsat`` [K, M2, P], ``polish_history_running`` [K, M2],
  counted in gradient evaluations) add their sizes too; the interval that
  spans the hand-over from the first stage to the polish is not counted.
  ``select(member summary) -> bool`` keeps only the members it takes (the
  record's ``summary["members"]``, in the arrays' order); None keeps all.
  """
  a = load_fn(record["run_dir"])
  if "history_unsat" not in a:
    return None
  u = a["history_unsat"]
  if "history_running" in a:
    run = np.asarray(a["history_running"], bool)
  elif "history_loss" in a:
    run = np.isfinite(a["history_loss"])
  else:
    run = np.ones(np.shape(u)[:2], bool)
  keep = np.ones(np.shape(u)[0], bool)
  if select is not None:
    keep = np.array([bool(select(m)) for m in record["summary"]["members"]], bool)
    if keep.shape[0] != np.shape(u)[0]:
      raise ValueError(f"{keep.shape[0]} members in the summary, {np.shape(u)[0]} in the arrays")
  sizes = avalanche_sizes(u, run & keep[:, None])
  if "polish_history_unsat" in a:
    pu = a["polish_history_unsat"]
    prun = a.get("polish_history_running")
    prun = np.ones(np.shape(pu)[:2], bool) if prun is None else np.asarray(prun, bool)
    sizes = np.concatenate([sizes, avalanche_sizes(pu, prun & keep[:, None])])
  return sizes


# Delta (Delta / sqrt(loss) for Delta > 0) at or below this is zero up to the
# accuracy of a force-balanced state: points at the margin (docs/jamming.md,
# "points at the margin"), left out of the exponent fits and counted.
GAP_FLOOR = 1e-4


def analyze(records_by_depth: dict, level: float = 0.95, n_boot: int = 500,
            load_fn=_load_arrays, gap_floor: float = GAP_FLOOR) -> dict:
  """The phase-diagram summary of a set of cells.

  Args:
    records_by_depth: depth -> list of cell records (one N per depth).
    level: CI level.
    n_boot: bootstrap replicates of the exponent fits.
    load_fn: reads a run directory's arrays (tests pass a fake).
    gap_floor: the exponent fits' x_floor (:func:`fit_exponent`).

  Returns:
    dict with ``per_depth`` {L: {p_star_over_n, p_star_ci, fit, N, width,
    nd_over_n_at_jamming, n_members, counts, cells,
    p_star_over_n_unbalanced_sat, p_star_ci_unbalanced_sat}} (the second
    P*/N counts the unbalanced members as sat, :func:`fit_cells`), ``depth_spread``,
    ``theta``, ``theta_ci``, ``gamma``, ``gamma_ci`` (pooled over the depths
    whose P* was found, jammed members of the cell nearest P* of each,
    bootstrap over members), ``exponents_per_depth``, ``avalanches``.
    Also ``_samples`` (not JSON: arrays for :func:`lossland.plots.phase.plot_all`).
  """
  per_depth, p_star = {}, {}
  pooled = {"pos": [], "neg": [], "pos_g": [], "neg_g": []}
  stalled = {"pos": [], "neg": [], "pos_g": [], "neg_g": []}
  aval, exps, aval_conv = [], {}, {"sizes": [], "n_members": 0, "n_cells": 0}
  for L, recs in sorted(records_by_depth.items()):
    stats = sorted((cell_stats(r, load_fn) for r in recs), key=lambda c: c["p_over_n"])
    fit = fit_cells(stats, level=level)
    p_star[L] = fit["x_half"]
    # the bracket's other end: only the force-balanced members as jammed
    per_depth[L] = _depth_summary(stats, fit, fit_cells(stats, level=level, unbalanced="sat"))
    # Delta distribution: the cell nearest P* (on either side) with jammed members.
    # Only depths whose transition was located: far from P* the distribution
    # is not the critical one.
    e = _depth_exponents(recs, fit["x_half"], pooled, n_boot, load_fn, gap_floor=gap_floor)
    if e is not None:
      exps[L] = e
    # the same from the members that stalled without force balance
    _depth_exponents(recs, fit["x_half"], stalled, n_boot, load_fn, ("unbalanced",),
                     gap_floor)
    aval += [a for _, a in _cell_avalanches(recs, load_fn)]
    _converged_avalanches(recs, fit["x_half"], load_fn, aval_conv)
  th, ga, P_, N_ = _fit_pair(pooled, n_boot, gap_floor)
  th_s, ga_s, SP, SN = _fit_pair(stalled, n_boot, gap_floor)
  sizes = _cat(aval).astype(np.int64)
  fit_keys = ("n_samples", "q", "x_max", "x_floor", "n_below_floor", "range_check", "stable",
              "stable_cdf")
  return {
      "per_depth": per_depth,
      "depth_spread": depth_spread(p_star),
      "jammed_residual_threshold": _residual_threshold(records_by_depth),
      "theta": th["exponent"], "theta_ci": th["ci"],
      "theta_cdf": th["exponent_cdf"], "theta_cdf_ci": th["ci_cdf"],
      "theta_method": _exponent_method(th),
      "theta_fit": {k: th.get(k) for k in fit_keys},
      "gamma": ga["exponent"], "gamma_ci": ga["ci"],
      "gamma_cdf": ga["exponent_cdf"], "gamma_cdf_ci": ga["ci_cdf"],
      "gamma_method": _exponent_method(ga),
      "gamma_fit": {k: ga.get(k) for k in fit_keys},
      "exponents_per_depth": exps,
      # the stalled states: members that stopped jammed without force balance
      # (class unbalanced), same method; not the exponents of jammed minima
      "theta_stalled": th_s["exponent"], "theta_stalled_ci": th_s["ci"],
      "gamma_stalled": ga_s["exponent"], "gamma_stalled_ci": ga_s["ci"],
      "stalled_fit": {"theta": {k: th_s.get(k) for k in fit_keys},
                      "gamma": {k: ga_s.get(k) for k in fit_keys}},
      "theta_by_residual": by_residual(records_by_depth, p_star, n_boot=n_boot,
                                       load_fn=load_fn, gap_floor=gap_floor),
      "theta_by_distance": by_distance(records_by_depth, p_star, n_boot=n_boot,
                                       load_fn=load_fn, gap_floor=gap_floor),
      "gap_floor": gap_floor,
      "avalanches": _avalanche_summary(sizes),
      "avalanches_converged": _avalanche_summary(
          _cat(aval_conv["sizes"]).astype(np.int64),
          selection=CONVERGED_SELECTION, window=AVALANCHE_WINDOW,
          n_members=aval_conv["n_members"], n_cells=aval_conv["n_cells"]),
      "_samples": {"positive": P_, "negative": N_, "avalanche_sizes": sizes,
                   "theta_xmax": th.get("x_max"), "gamma_xmax": ga.get("x_max"),
                   "positive_stalled": SP, "negative_stalled": SN},
  }


def _cell_avalanches(recs, load_fn, select=None) -> list:
  """``[(record, sizes)]`` of every cell that recorded its unsatisfied sets
  (the sizes of the members ``select`` takes, :func:`avalanche_data`)."""
  out = []
  for r in recs:
    try:
      a = avalanche_data(r, load_fn=load_fn, select=select)
    except (OSError, KeyError, ValueError):
      a = None
    if a is not None:
      out.append((r, a))
  return out


# Avalanches of converged runs (issue 20, item 6): the members that ended at a
# minimum, class sat (loss 0) or jammed (force-balanced, r_sub <= the
# threshold), of the cells within this relative distance of P*/N.
AVALANCHE_WINDOW = 0.2
CONVERGED_CLASSES = ("sat", "jammed")
CONVERGED_SELECTION = (
    "members of class sat (loss 0) or jammed (force-balanced) of the cells with "
    "|P/N - P*/N| <= window * P*/N; sizes of the changes of the unsatisfied set between "
    "consecutive measurements of the training (Adam, then the polish), recorded before "
    "any finish")


def _converged_avalanches(recs, x_star, load_fn, acc: dict):
  """Adds to ``acc`` ("sizes" per cell, "n_members", "n_cells") the
  converged members of the cells near P*/N = ``x_star``
  (:data:`AVALANCHE_WINDOW`)."""
  if x_star is None:
    return
  take = lambda m: member_class(m) in CONVERGED_CLASSES
  near = [r for r in recs if abs(_p_over_n(r) - x_star) <= AVALANCHE_WINDOW * x_star]
  got = _cell_avalanches(near, load_fn, take)
  acc["sizes"] += [a for _, a in got]
  acc["n_members"] += sum(sum(map(take, r["summary"]["members"])) for r, _ in got)
  acc["n_cells"] += len(got)


def _cat(xs):
  return np.concatenate(xs) if xs else np.zeros(0)


def _fit_pair(acc: dict, n_boot: int, gap_floor: float):
  """``(theta fit, gamma fit, Delta > 0 samples, -Delta samples)`` of the
  samples :func:`_depth_exponents` gathered in ``acc``."""
  P_, N_, Pg, Ng = (_cat(acc[k]) for k in ("pos", "neg", "pos_g", "neg_g"))
  return (fit_exponent(P_, Pg, n_boot=n_boot, x_floor=gap_floor),
          fit_exponent(N_, Ng, n_boot=n_boot, sign=-1, x_floor=gap_floor), P_, N_)


def _exponent_method(f: dict) -> str | None:
  if f.get("method") is None:
    return None
  return ("Delta of the force-balanced jammed members (class jammed: r_sub <= "
          "jammed_residual_threshold) of the cell nearest P* of each depth, Delta > 0 "
          "divided by sqrt(loss) per member; " + f["method"])


def _residual_threshold(records_by_depth: dict):
  """The jobs' ``jam_max_residual`` (None if the cells predate it or differ)."""
  vals = {r["summary"].get("jam_max_residual") for recs in records_by_depth.values()
          for r in recs}
  return vals.pop() if len(vals) == 1 else None


def _avalanche_summary(sizes, **extra) -> dict | None:
  if not sizes.size:
    return None
  return {"n_intervals": int(sizes.size), "n_nonzero": int(np.count_nonzero(sizes)),
          "mean": float(sizes.mean()), "max": int(sizes.max()),
          # power law vs exponential of the nonzero sizes (Clauset et al. 2009)
          "distribution": avalanches.compare(sizes),
          # the same from s = 1: the chosen s_min favours a power-law-like
          # tail (avalanches.compare's caveat)
          "distribution_from_1": avalanches.compare(sizes, s_min=1), **extra}


RESIDUAL_THRESHOLDS = (1e-10, 1e-8, 1e-6, 1e-4, 1e-2, float("inf"))


def _stopped_jammed(m: dict) -> bool:
  """Stopped by a stall (the training's jammed rule) with N_Delta > 0, not
  dead-point or otherwise unhealthy: jammed or not yet force balanced."""
  return (m.get("stop_reason") == "jammed"
          and member_class(m) in ("jammed", "unbalanced", "not_converged")
          and m.get("n_delta", 1) > 0)


def by_residual(records_by_depth: dict, p_star: dict, thresholds=RESIDUAL_THRESHOLDS,
                n_boot: int = 200, load_fn=_load_arrays, gap_floor: float = 0.0) -> list:
  """theta and gamma against the force-balance threshold (issue 20, 4a).

  Per threshold t: the Delta samples of the members that stopped jammed with
  r_sub <= t (any class but dead points), pooled over the cells nearest P* of
  the depths: converged states (small t) against merely stalled ones
  (t = inf). One row per threshold: ``threshold``, ``n_members``, theta,
  gamma and their CIs (density fit) and the CDF fit's theta.
  """
  rows = []
  for t in thresholds:
    sel = lambda m, t=t: (_stopped_jammed(m) and m.get("force_residual") is not None
                          and m["force_residual"] <= t)
    rows.append({"threshold": None if math.isinf(t) else t,
                 **_pooled_exponents(records_by_depth, p_star, sel, n_boot, load_fn,
                                     gap_floor)})
  return rows


def by_distance(records_by_depth: dict, p_star: dict, n_boot: int = 200,
                load_fn=_load_arrays, gap_floor: float = 0.0) -> list:
  """theta and gamma of every cell with jammed members against its distance
  from the transition, (P/N - P*/N) / (P*/N) (issue 20, 4b). One row per
  cell: ``depth``, ``p_over_n``, ``distance``, ``n_members``, theta, gamma."""
  rows = []
  for L, recs in sorted(records_by_depth.items()):
    ref = p_star.get(L)
    for r in recs:
      x = r["summary"]["P"] / r["summary"]["n_weights"]
      e = _pooled_exponents({L: [r]}, {L: x}, None, n_boot, load_fn, gap_floor)
      if e["n_members"]:
        rows.append({"depth": L, "p_over_n": x,
                     "distance": None if ref is None else (x - ref) / ref, **e})
  return rows


def _p_over_n(record: dict) -> float:
  return record["summary"]["P"] / record["summary"]["n_weights"]


def _nearest_cell(recs, ref, select=None):
  """The cell nearest P*/N = ``ref`` among those with a member that
  ``select`` takes (default: class jammed); None if there is none."""
  takes = select or (lambda m: member_class(m) == "jammed")
  cells = [r for r in recs if any(map(takes, r["summary"]["members"]))]
  if ref is None or not cells:
    return None
  return min(cells, key=lambda r: abs(_p_over_n(r) - ref))


def pool_fits(records, select=None, n_boot: int = 200, load_fn=_load_arrays,
              gap_floor: float = 0.0):
  """theta and gamma of the members of several cells pooled: ``(n_members,
  theta fit, gamma fit)``, the fits of :func:`fit_exponent` (bootstrap over
  members, cell by cell); ``select`` as in :func:`delta_samples` (default:
  class jammed). A cell whose arrays cannot be read is skipped."""
  pos, neg, pg, ng, n_mem = [], [], [], [], 0
  for i, r in enumerate(records):
    try:
      ds = delta_samples(r, load_fn=load_fn, select=select)
    except (OSError, KeyError, ValueError):
      continue
    members = set(ds["positive_member"].tolist()) | set(ds["negative_member"].tolist())
    n_mem += len(members)
    pos.append(ds["positive"]), neg.append(ds["negative"])
    pg.append(ds["positive_member"] + 1000 * i), ng.append(ds["negative_member"] + 1000 * i)
  th = fit_exponent(_cat(pos), _cat(pg), n_boot=n_boot, x_floor=gap_floor)
  ga = fit_exponent(_cat(neg), _cat(ng), n_boot=n_boot, sign=-1, x_floor=gap_floor)
  return n_mem, th, ga


def _pooled_exponents(records_by_depth, p_star, select, n_boot, load_fn,
                      gap_floor: float = 0.0) -> dict:
  """theta/gamma of the selected members of the cell nearest P* per depth."""
  nearest = [_nearest_cell(recs, p_star.get(L), select)
             for L, recs in sorted(records_by_depth.items()) if recs]
  n_mem, th, ga = pool_fits([r for r in nearest if r is not None], select, n_boot, load_fn,
                            gap_floor)
  return {"n_members": n_mem, "theta": th["exponent"], "theta_ci": th["ci"],
          "theta_cdf": th["exponent_cdf"], "gamma": ga["exponent"], "gamma_ci": ga["ci"],
          "n_at_margin": [th["n_below_floor"], ga["n_below_floor"]]}


def _depth_summary(stats: Sequence[dict], fit: dict, fit_upper: dict | None = None) -> dict:
  """One depth's entry of ``per_depth`` (see :func:`analyze`); ``fit_upper``:
  :func:`fit_cells` with the unbalanced members as sat (None: not fitted)."""
  xs = fit["x_half"]
  nd, used = nd_over_n_at_jamming(stats, xs)
  counts = {}
  for c in stats:
    for k, v in c["counts"].items():
      counts[k] = counts.get(k, 0) + v
  Ns = sorted({c["N"] for c in stats})
  res = [r for c in stats for r in c["force_residual_jammed"] if r is not None]
  bal = [r for c in stats for r in c["force_residual_balanced"] if r is not None]
  kinks = [k for c in stats for k in c["n_kink_jammed"] if k is not None]
  scale = [v for c in stats for v in c.get("scale_residual_loss", []) if v is not None]
  return {
      # r_sub (lossland.stationarity; a minimum has 0) of the force-balanced
      # jammed members, which the exponents use, and of every member that
      # stopped jammed (force-balanced or unbalanced)
      "force_residual_max": max(bal) if bal else None,
      "n_force_balanced": int(sum(c["n_force_balanced"] for c in stats)),
      "n_unbalanced": int(sum(c["n_unbalanced"] for c in stats)),
      "force_residual_median_stopped_jammed": float(np.median(res)) if res else None,
      "n_kink_median": float(np.median(kinks)) if kinks else None,
      "n_kink_range": [int(min(kinks)), int(max(kinks))] if kinks else None,
      "p_star_over_n": xs, "p_star_ci": fit["ci"],
      "p_star_over_n_unbalanced_sat": (fit_upper or {}).get("x_half"),
      "p_star_ci_unbalanced_sat": (fit_upper or {}).get("ci"),
      "p_star_unbalanced_sat_outside": (None if fit_upper is None
                                        else outside_grid(stats, unbalanced="sat")),
      "p_star": None if xs is None else xs * Ns[0],
      "transition_width": fit["width"], "separated": fit["separated"],
      "bracketed": fit["bracketed"],
      "nd_over_n_at_jamming": nd, "nd_cells_p_over_n": used,
      "n_members": int(sum(c["n_members"] for c in stats)),
      "n_dead_point_members": int(sum(c["n_dead_points"] for c in stats)),
      # members left with loss > 0: their output scale's residual (> 0: the
      # loss still gains from larger outputs, so not at a minimum) and how
      # many misclassify no point (cell_stats)
      "scale_residual": {
          "n_measured": len(scale), "n_positive": int(sum(v > 0 for v in scale)),
          "median": float(np.median(scale)) if scale else None,
          "range": [float(min(scale)), float(max(scale))] if scale else None,
          "n_zero_error": int(sum(c.get("n_zero_error_loss", 0) for c in stats))},
      "n_scaled_to_sat": int(sum(c.get("n_scaled_to_sat", 0) for c in stats)),
      "finish": {k: int(sum(c.get("finish", {}).get(k, 0) for c in stats))
                 for k in ("entered", "sat", "kept", "max_iter", "probe_descends",
                           "balanced_max_iter")},
      "N": Ns[0] if len(Ns) == 1 else Ns,
      "width": stats[0]["width"] if stats else None,
      "d": stats[0]["d"] if stats else None,
      "counts": counts,
      "cells": [{k: c[k] for k in ("P", "p_over_n", "n_members", "counts",
                                    "nd_over_n_jammed", "nd_over_n_balanced",
                                    "kinks_over_n_balanced") if k in c} for c in stats],
  }


def _depth_exponents(recs, ref, pooled: dict, n_boot: int, load_fn,
                     classes=("jammed",), gap_floor: float = 0.0) -> dict | None:
  """theta and gamma of one depth from its cell nearest P* (``ref``) with
  members of ``classes``; their samples are appended to ``pooled`` (members
  numbered apart per depth)."""
  takes = lambda m: member_class(m) in classes
  r = _nearest_cell(recs, ref, takes)
  if r is None:
    return None
  try:
    ds = delta_samples(r, classes=classes, load_fn=load_fn)
  except (OSError, KeyError, ValueError):
    return None
  off = 1000 * len(pooled["pos"])
  pooled["pos"].append(ds["positive"]), pooled["neg"].append(ds["negative"])
  pooled["pos_g"].append(ds["positive_member"] + off)
  pooled["neg_g"].append(ds["negative_member"] + off)
  ep = fit_exponent(ds["positive"], ds["positive_member"], n_boot=n_boot, x_floor=gap_floor)
  en = fit_exponent(ds["negative"], ds["negative_member"], n_boot=n_boot, sign=-1,
                    x_floor=gap_floor)
  return {"p_over_n": _p_over_n(r), "theta": ep["exponent"], "theta_ci": ep["ci"],
          "theta_cdf": ep["exponent_cdf"], "theta_cdf_ci": ep["ci_cdf"],
          "gamma": en["exponent"], "gamma_ci": en["ci"],
          "gamma_cdf": en["exponent_cdf"], "gamma_cdf_ci": en["ci_cdf"]}


def finite_size(results: Sequence[dict], model: str = "sqrt") -> dict:
  """How P*/N and its depth spread change with the network size N.

  1809.09349 finds P*/N independent of depth at N ~ 8000; at the few hundred
  weights a CPU affords the thin deep nets jam earlier (docs/jamming.md).
  This puts several :func:`analyze` results (or phase summary.json dicts),
  one per size, side by side.

  Args:
    results: per size, a dict with ``per_depth`` {L: {"N", "p_star_over_n",
      "p_star_ci"}} and ``depth_spread``.

  Returns:
    dict with ``sizes`` (mean N over depths, ascending), ``per_depth`` {L:
    {"N": [...], "p_star_over_n": [...], "p_star_ci": [...]}},
    ``depth_spread`` [...] per size, and ``spread_slope``: the least-squares
    slope of log(depth_spread) vs log(N) over the sizes with a spread > 0
    (None with fewer than two). The slope is descriptive (two or three sizes,
    no error bar), not a fitted law. ``extrapolation``: per depth P*/N
    extrapolated to N -> infinity with ``model`` (:mod:`lossland.extrapolate`:
    P*/N = p_inf + a N^-1/2 for "sqrt", weighted by the CIs, parametric
    bootstrap CI, residuals) and the spread of the limits over depths with a
    test of one common limit; per_depth[L] gains
    ``p_star_over_n_extrapolated`` and ``_ci``.
  """
  rows = []
  for r in results:
    pd = r["per_depth"]
    ns = [v["N"] for v in pd.values() if isinstance(v.get("N"), (int, float))]
    rows.append((float(np.mean(ns)) if ns else float("nan"), r))
  rows.sort(key=lambda t: t[0])
  per_depth = {}
  for _, r in rows:
    for L, v in r["per_depth"].items():
      d = per_depth.setdefault(str(L), {"N": [], "p_star_over_n": [], "p_star_ci": []})
      d["N"].append(v.get("N"))
      d["p_star_over_n"].append(v.get("p_star_over_n"))
      d["p_star_ci"].append(v.get("p_star_ci"))
  sizes = [n for n, _ in rows]
  spread = [r.get("depth_spread") for _, r in rows]
  ok = [(n, s) for n, s in zip(sizes, spread) if s is not None and s > 0 and n > 0]
  slope = None
  if len(ok) >= 2:
    x = np.log([n for n, _ in ok])
    y = np.log([s for _, s in ok])
    slope = float(np.polyfit(x, y, 1)[0])
  out = {"sizes": sizes, "per_depth": per_depth, "depth_spread": spread,
         "spread_slope": slope}
  ext = extrapolate.public(extrapolate.finite_size_extrapolation(out, model=model))
  for L, e in ext["per_depth"].items():
    per_depth[L]["p_star_over_n_extrapolated"] = e.get("p_inf")
    per_depth[L]["p_star_over_n_extrapolated_ci"] = e.get("p_inf_ci")
  out["extrapolation"] = ext
  return out
