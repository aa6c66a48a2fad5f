import json
import os

import numpy as np
import pytest

from lossland import fits, phase
from lossland.experiments import phase_study

import cli_runner


def _record(P, N, classes, nd=None, depth=3, run_dir=None, losses=None):
  members = []
  for k, c in enumerate(classes):
    members.append({"class": c, "n_delta_over_n": (nd[k] if nd else (0.6 if c == "jammed" else 0.0)),
                    "loss": (losses[k] if losses else 0.01), "stop_reason": "x"})
  return {"flags": {"depth": depth, "width": 8, "d": 8}, "run_dir": run_dir,
          "summary": {"members": members, "n_weights": N, "P": P}}


def _fake_cells(x_star, N=200, K=40, slope=-8.0, seed=0, depth=3):
  """A fake job: each member is sat with probability logistic(P/N), else jammed;
  plus one limbo and one not_converged member per cell, which must not count."""
  rng = np.random.default_rng(seed)

  def run_cells(cells):
    out = []
    for c in cells:
      p = fits.logistic(c["P"] / N, x_star, slope)
      sat = rng.random(K) < p
      classes = ["sat" if s else "jammed" for s in sat] + ["limbo", "not_converged"]
      out.append(_record(c["P"], N, classes, depth=c["depth"]))
    return out
  return run_cells


def test_cell_stats_counts_only_sat_and_jammed():
  r = _record(500, 200, ["sat", "jammed", "limbo", "dead", "not_converged", "jammed"],
              nd=[0, 0.5, 0, 0, 0.2, 0.7])
  s = phase.cell_stats(r)
  assert s["p_over_n"] == 2.5 and s["n_sat"] == 1 and s["n_jammed"] == 2
  assert s["counts"] == {"dead": 1, "jammed": 2, "limbo": 1, "not_converged": 1, "sat": 1}
  assert s["nd_over_n_jammed"] == [0.5, 0.7]
  assert s["finish"] == {"entered": 0, "sat": 0, "kept": 0, "max_iter": 0, "probe_descends": 0,
                         "balanced_max_iter": 0}


def test_scale_residual_of_the_members_left_with_loss():
  """Per cell, the scale residuals of the healthy members left with loss > 0
  and not shown to be minima (unbalanced, not_converged; not jammed, sat,
  limbo or dead) and how many members left with loss > 0 misclassify no
  point; per depth, their count, sign and median (None where no member
  measured it: older summaries)."""
  r = _record(500, 200, ["sat", "unbalanced", "not_converged", "jammed", "limbo", "dead",
                         "unbalanced"])
  extra = [dict(scale_residual=None, train_error=0.0),
           dict(scale_residual=0.2, train_error=0.05),
           dict(scale_residual=1.0, train_error=0.0),
           dict(scale_residual=-1e-9, train_error=0.1),
           dict(scale_residual=0.7, train_error=0.0),
           dict(scale_residual=None, train_error=0.0),
           dict(scale_residual=None, train_error=0.02)]
  for m, e in zip(r["summary"]["members"], extra):
    m.update(e)
  c = phase.cell_stats(r)
  assert c["scale_residual_loss"] == [0.2, 1.0, None]
  assert c["n_zero_error_loss"] == 1
  assert c["n_scaled_to_sat"] == 0
  old = _record(600, 200, ["unbalanced", "sat"])  # written before the field
  d = phase._depth_summary([c, phase.cell_stats(old)],
                           {"x_half": 2.5, "ci": [2.0, 3.0], "width": 0.1,
                            "separated": True, "bracketed": True})
  assert d["scale_residual"] == {"n_measured": 2, "n_positive": 2, "median": 0.6,
                                 "range": [0.2, 1.0], "n_zero_error": 1}
  assert phase.cell_stats(old)["scale_residual_loss"] == [None]
  # sat members the job's --scale_to_sat reached (sat_scale set), per cell and depth
  r = _record(500, 200, ["sat", "sat", "unbalanced", "sat"])
  for m, scale in zip(r["summary"]["members"], (1.5, None, None, 2.0)):
    m["sat_scale"] = scale
  c2 = phase.cell_stats(r)
  assert c2["n_scaled_to_sat"] == 2 and c2["n_sat"] == 3
  d2 = phase._depth_summary([c, c2], {"x_half": 2.5, "ci": [2.0, 3.0], "width": 0.1,
                                      "separated": True, "bracketed": True})
  assert d2["n_scaled_to_sat"] == 2


def test_finish_counts_per_cell_and_depth():
  """--finish: members the stage entered, left sat, kept as they were, that
  ran out of iterations, and that the descent probe found descending (a
  jammed member whose probe found the loss lower by more than
  observables.DESCENT_RTOL is unbalanced; one just within it stays jammed)."""
  from lossland import observables
  r = _record(500, 200, ["sat", "sat", "unbalanced", "unbalanced", "jammed", "jammed",
                         "jammed"])
  tol = observables.DESCENT_RTOL
  extra = [{}, {"finished": True, "finish_reason": "sat"},
           {"finished": True, "finish_reason": "kept"},
           {"finished": True, "finish_reason": "max_iter"}, {"finished": False},
           {"finished": True, "finish_reason": "stuck", "descent_gain": -3 * tol},
           {"finished": True, "finish_reason": "converged", "descent_gain": -0.3 * tol}]
  for m, e in zip(r["summary"]["members"], extra):
    m.update(e)
  assert [phase.member_class(m) for m in r["summary"]["members"][4:]] == [
      "jammed", "unbalanced", "jammed"]
  s = phase.cell_stats(r)
  assert s["finish"] == {"entered": 5, "sat": 1, "kept": 1, "max_iter": 1, "probe_descends": 1,
                         "balanced_max_iter": 0}
  summ = phase._depth_summary([s, s], {"x_half": 2.0, "ci": None, "width": None,
                                       "separated": True, "bracketed": True})
  assert summ["finish"] == {"entered": 10, "sat": 2, "kept": 2, "max_iter": 2,
                            "probe_descends": 2, "balanced_max_iter": 0}


def test_cell_stats_counts_force_balanced_members_out_of_iterations():
  """Of the members whose finish ran out of iterations (still descending,
  never jammed), those with r_sub <= the job's jam_max_residual where the
  descent probe finds nothing above observables.DESCENT_RTOL are counted
  (balanced_max_iter), table-driven; a job without the criterion counts none."""
  from lossland import observables
  tol = observables.DESCENT_RTOL
  rows = [  # (finish_reason, force_residual, descent_gain, counted)
      ("max_iter", 3e-10, -7e-14, True),
      ("max_iter", 1e-6, 0.0, True),  # at the threshold
      ("max_iter", 1e-6, -tol, True),  # at the probe's tolerance
      ("max_iter", 2e-6, 0.0, False),  # above the threshold
      ("max_iter", 3e-10, -3 * tol, False),  # the probe finds a descent
      ("max_iter", 3e-10, None, False),  # no probe recorded
      ("max_iter", None, 0.0, False),  # no r_sub
      ("max_iter", 3e-10, float("nan"), False),
      ("stuck", 3e-10, 0.0, False),  # not out of iterations: jammed
  ]
  r = _record(500, 200, ["unbalanced"] * len(rows))
  r["summary"]["jam_max_residual"] = 1e-6
  for m, (why, res, gain, _) in zip(r["summary"]["members"], rows):
    m.update(finished=True, finish_reason=why, force_residual=res, descent_gain=gain)
  s = phase.cell_stats(r)
  assert s["finish"]["balanced_max_iter"] == sum(row[3] for row in rows) == 3
  assert s["finish"]["max_iter"] == 8
  summ = phase._depth_summary([s, s], {"x_half": 2.0, "ci": None, "width": None,
                                       "separated": True, "bracketed": True})
  assert summ["finish"]["balanced_max_iter"] == 6
  r["summary"]["jam_max_residual"] = None  # a job with no criterion
  assert phase.cell_stats(r)["finish"]["balanced_max_iter"] == 0


def test_unbalanced_members_count_as_not_sat_but_give_no_exponent_samples(tmp_path):
  """Issue 20: a member that stopped jammed without force balance (class
  unbalanced) is not sat in the fraction, but the Delta samples of the
  exponents come from force-balanced (jammed) members only."""
  y = np.array([1.0, -1.0, 1.0, -1.0])
  f = np.array([[0.5, -0.2, 2.0, 0.1],      # jammed: Delta = 0.5, 0.8, -1, 1.1
                [0.1, -0.1, 0.3, -0.3],     # unbalanced
                [2.0, -2.0, 2.0, -2.0]])    # sat
  np.savez(tmp_path / "arrays.npz", f_train=f, y_train=y)
  r = _record(400, 100, ["jammed", "unbalanced", "sat"], nd=[0.3, 0.4, 0.0],
              run_dir=str(tmp_path), losses=[1.0, 1.0, 0.0])
  for m, res, nk in zip(r["summary"]["members"], (1e-8, 3e-3, None), (7, 9, 0)):
    m["force_residual"], m["n_kink"] = res, nk
  s = phase.cell_stats(r)
  assert (s["n_sat"], s["n_jammed"], s["n_force_balanced"], s["n_unbalanced"]) == (1, 2, 1, 1)
  assert s["nd_over_n_jammed"] == [0.3, 0.4]
  assert s["force_residual_balanced"] == [1e-8]
  # the contacts of the force-balanced member only (item 4e)
  assert s["nd_over_n_balanced"] == [0.3] and s["kinks_over_n_balanced"] == [0.07]
  ds = phase.delta_samples(r, load_fn=lambda d: np.load(os.path.join(d, "arrays.npz")))
  assert set(ds["positive_member"].tolist()) | set(ds["negative_member"].tolist()) == {0}
  np.testing.assert_allclose(np.sort(ds["positive"]), [0.5, 0.8, 1.1])
  summ = phase._depth_summary([s], {"x_half": 4.0, "ci": None, "width": None,
                                    "separated": True, "bracketed": True})
  assert summ["force_residual_max"] == 1e-8 and summ["n_unbalanced"] == 1
  assert summ["force_residual_median_stopped_jammed"] == pytest.approx((1e-8 + 3e-3) / 2)
  assert summ["cells"][0]["kinks_over_n_balanced"] == [0.07]


def test_a_jammed_member_whose_finish_ran_out_of_iterations_counts_as_unbalanced(tmp_path):
  """Summaries written before the rule (observables.apply_force_balance,
  ``descending``) call such a member jammed; the analysis does not: its
  finish was still descending, so its small r_sub is a snapshot."""
  y = np.array([1.0, -1.0, 1.0, -1.0])
  f = np.array([[0.5, -0.2, 2.0, 0.1], [0.4, -0.3, 0.2, 0.1]])
  np.savez(tmp_path / "arrays.npz", f_train=f, y_train=y)
  r = _record(400, 100, ["jammed", "jammed"], nd=[0.3, 0.4], run_dir=str(tmp_path),
              losses=[1.0, 1.0])
  for m, why in zip(r["summary"]["members"], ("converged", "max_iter")):
    m.update(force_residual=3e-7, n_kink=0, finished=True, finish_reason=why)
  assert [phase.member_class(m) for m in r["summary"]["members"]] == ["jammed", "unbalanced"]
  s = phase.cell_stats(r)
  assert (s["n_force_balanced"], s["n_unbalanced"], s["n_jammed"]) == (1, 1, 2)
  ds = phase.delta_samples(r, load_fn=lambda d: np.load(os.path.join(d, "arrays.npz")))
  assert set(ds["positive_member"].tolist()) == {0}


def test_propose_next_brackets_then_bisects():
  st = lambda x, k, n: {"p_over_n": x, "n_sat": k, "n_jammed": n - k}
  assert phase.propose_next([st(1.0, 5, 5), st(2.0, 4, 5)]) == pytest.approx(2.6)
  assert phase.propose_next([st(3.0, 0, 5), st(4.0, 0, 5)]) == pytest.approx(3.0 / 1.3)
  # separated at 2 | 3: the midpoint
  assert phase.propose_next([st(1.0, 5, 5), st(2.0, 5, 5), st(3.0, 0, 5)]) == pytest.approx(2.5)
  # converged bracket
  assert phase.propose_next([st(2.0, 5, 5), st(2.01, 0, 5)]) is None


def test_propose_points_is_a_parallel_bisection():
  st = lambda x, k, n: {"p_over_n": x, "n_sat": k, "n_jammed": n - k}
  brk = [st(1.0, 5, 5), st(2.0, 5, 5), st(3.0, 0, 5)]
  # bracketed between 2 and 3: k points split it into k + 1 equal parts
  assert phase.propose_points(brk, 1) == pytest.approx([2.5])
  assert phase.propose_points(brk, 3) == pytest.approx([2.25, 2.5, 2.75])
  assert phase.propose_next(brk) == phase.propose_points(brk, 1)[0]
  # not bracketed: step out by grow, grow^2, ... within the bounds
  assert phase.propose_points([st(1.0, 5, 5)], 3) == pytest.approx([1.3, 1.69, 2.197])
  assert phase.propose_points([st(3.0, 0, 5)], 2) == pytest.approx([3 / 1.3, 3 / 1.69])
  assert phase.propose_points([st(15.0, 5, 5)], 3) == pytest.approx([19.5])
  # done: the bracket is narrow, or no cell has a sat or jammed member
  assert phase.propose_points([st(2.0, 5, 5), st(2.01, 0, 5)], 4) == []
  assert phase.propose_points([{"p_over_n": 1.0, "n_sat": 0, "n_jammed": 0}], 2) == []
  with pytest.raises(ValueError):
    phase.propose_points(brk, 0)


def test_a_round_proposes_several_p_per_depth():
  from lossland.experiments import phase_study
  groups = [dict(depth=2, width=5, _N=100), dict(depth=3, width=4, _N=60)]
  prop = phase_study.transition_proposer(groups, (1.0, 3.0), n_points=3)
  first = prop([])
  assert [(c["depth"], c["P"]) for c in first] == [(2, 100), (2, 300), (3, 60), (3, 180)]
  # every depth sat at P/N = 1 and jammed at 3: three points inside each bracket
  pairs = [(c, _record(c["P"], g["_N"], ["sat"] * 4 if c["P"] / g["_N"] < 2 else
                       ["jammed"] * 4, depth=c["depth"]))
           for c in first for g in groups if g["depth"] == c["depth"]]
  nxt = prop(pairs)
  assert [(c["depth"], c["P"]) for c in nxt] == [(2, 150), (2, 200), (2, 250),
                                                 (3, 90), (3, 120), (3, 150)]


def test_search_transition_finds_known_crossing():
  calls = []
  fake = _fake_cells(2.3)

  def run_cells(cells):
    calls.append(len(cells))
    return fake(cells)

  groups = [{"depth": 3, "_N": 200}, {"depth": 2, "_N": 200}]
  per_group = phase_study.search_transition(groups, [1.5, 2.0, 2.5, 3.0], run_cells, n_rounds=3)
  assert calls[0] == 8 and all(c <= 2 for c in calls[1:]) and len(calls) == 4
  for recs in per_group:
    assert len(recs) >= 5  # bisection added cells
    fit = phase.fit_cells([phase.cell_stats(r) for r in recs])
    lo, hi = fit["ci"]
    assert lo < 2.3 < hi and hi - lo < 0.3
  # a group that starts all sat is extended outward
  per_group = phase_study.search_transition([{"depth": 3, "_N": 200}], [1.0, 1.2], _fake_cells(2.3),
                                      n_rounds=4)
  assert max(phase.cell_stats(r)["p_over_n"] for r in per_group[0]) > 2.3


def test_analyze_hand_made_cells_and_exponents():
  # Depth 3 crosses at 2.25 (separated), depth 2 at 2.75; the jammed members'
  # Delta follow known power laws: theta = 0.3 (Delta > 0 rescaled by
  # sqrt(loss)), gamma = 0.2 (|Delta|^-0.2 for Delta < 0), plus 40 points
  # per member at the margin (|Delta| ~ 1e-9..1e-7: zero up to the state's
  # accuracy), which the default gap floor leaves out and counts.
  rng = np.random.default_rng(0)
  arrays = {}

  def load(run_dir):
    return arrays[run_dir]

  def cell_arrays(K, P, losses):
    f = np.zeros((K, P))
    y = np.where(np.arange(P) % 2 == 0, 1.0, -1.0)
    for k in range(K):
      half = P // 2 - 20
      pos = fits.sample_power_law(rng, 0.3, 0.0, 1.0, half) * np.sqrt(losses[k])
      neg = -fits.sample_power_law(rng, -0.2, 0.0, 1.0, P - half - 40)
      at_margin = 10.0 ** rng.uniform(-9, -7, 40) * np.where(np.arange(40) < 20, 1, -1)
      delta = np.concatenate([pos, neg, at_margin])
      f[k] = (1.0 - delta) * y  # Delta = 1 - y f
    return {"f_train": f, "y_train": y}

  recs = {}
  for L, xs in ((3, 2.25), (2, 2.75)):
    recs[L] = []
    for x in (1.5, 2.0, 2.5, 3.0, 3.5):
      P = int(x * 200)
      sat = x < xs
      classes = ["sat"] * 6 if sat else ["jammed"] * 5 + ["limbo"]
      losses = [0.04] * 6
      nd = [0.0] * 6 if sat else [0.45, 0.5, 0.55, 0.6, 0.65, 0.0]
      rd = f"L{L}_P{P}"
      arrays[rd] = cell_arrays(6, 2000, losses)
      recs[L].append(_record(P, 200, classes, nd=nd, depth=L, run_dir=rd, losses=losses))
  out = phase.analyze(recs, n_boot=200, load_fn=load)
  d3, d2 = out["per_depth"][3], out["per_depth"][2]
  assert d3["p_star_over_n"] == pytest.approx(2.25)
  assert d2["p_star_over_n"] == pytest.approx(2.75)
  assert d3["p_star_ci"][0] >= 2.0 and d3["p_star_ci"][1] <= 2.5
  assert d3["nd_over_n_at_jamming"] == pytest.approx(0.55)
  assert d3["counts"]["limbo"] == 3 and d3["counts"]["jammed"] == 15
  assert out["depth_spread"] == pytest.approx(0.5 / 2.5)
  # within two CI half-widths of the truth (a 95% CI alone misses 1 in 20)
  for name, true in (("theta", 0.3), ("gamma", 0.2)):
    lo, hi = out[f"{name}_ci"]
    assert lo < out[name] < hi and hi - lo < 0.1
    assert abs(out[name] - true) < (hi - lo)
  assert abs(out["theta"] - 0.3) < 0.05 and abs(out["gamma"] - 0.2) < 0.05
  # the margin points: 20 per side per member, 5 members at each depth's cell
  assert out["gap_floor"] == phase.GAP_FLOOR == 1e-4
  assert out["theta_fit"]["n_below_floor"] == 2 * 5 * 20
  assert 2 * 5 * 20 <= out["gamma_fit"]["n_below_floor"] <= 2 * 5 * 20 + 20
  assert "left out" in out["theta_method"]
  # the CDF method agrees, and the method text names both fits
  for name, true in (("theta", 0.3), ("gamma", 0.2)):
    assert abs(out[f"{name}_cdf"] - true) < 0.08
    assert "density" in out[f"{name}_method"] and "CDF" in out[f"{name}_method"]
  # by distance from P*: one row per cell with jammed members (3 at L = 3, 2 at L = 2)
  rows = out["theta_by_distance"]
  assert len(rows) == 5 and all(r["n_members"] == 5 for r in rows)
  assert sorted(r["distance"] for r in rows if r["depth"] == 3) == pytest.approx(
      [(x - 2.25) / 2.25 for x in (2.5, 3.0, 3.5)])
  # by residual threshold: these hand-made members carry no stop reason
  # "jammed" nor r_sub, so no threshold selects any
  assert [r["n_members"] for r in out["theta_by_residual"]] == [0] * 6
  assert out["avalanches"] is None
  json.dumps({k: v for k, v in out.items() if k != "_samples"})
  # fitted with the margin points, theta is dragged far below the truth
  raw = phase.analyze(recs, n_boot=50, load_fn=load, gap_floor=0.0)
  assert raw["theta_ci"][1] < 0.2 and raw["theta_fit"]["n_below_floor"] == 0


def test_avalanche_sizes():
  u = np.zeros((2, 4, 5), bool)
  u[0, 0] = [1, 1, 0, 0, 0]
  u[0, 1] = [1, 0, 0, 1, 1]   # 3 flips
  u[0, 2] = [1, 0, 0, 1, 1]   # 0
  u[0, 3] = [0, 0, 0, 0, 0]   # 3 (but member 0 stopped: not counted)
  u[1, 1] = [1, 1, 1, 1, 1]   # 5
  running = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
  s = phase.avalanche_sizes(u, running)
  assert sorted(s.tolist()) == [0, 0, 3, 5, 5]
  assert sorted(phase.avalanche_sizes(u).tolist()) == [0, 0, 3, 3, 5, 5]


def test_avalanche_data_adds_the_polish_stage():
  u = np.zeros((1, 2, 3), bool)
  u[0, 1] = [1, 1, 0]                       # first stage: 2 flips
  pu = np.zeros((1, 3, 3), bool)
  pu[0, 0] = [1, 1, 1]                      # hand-over interval: not counted
  pu[0, 1] = [0, 1, 1]                      # 1
  pu[0, 2] = [0, 0, 0]                      # 2, but the polish had stopped
  arrays = {"history_unsat": u, "history_running": np.ones((1, 2), bool)}
  rec = {"run_dir": "x"}
  assert phase.avalanche_data(rec, lambda _: arrays).tolist() == [2]
  arrays.update(polish_history_unsat=pu,
                polish_history_running=np.array([[1, 1, 0]], bool))
  assert sorted(phase.avalanche_data(rec, lambda _: arrays).tolist()) == [1, 2]


def test_unbalanced_members_bracket_p_star():
  # 20 members per cell: sat below 2.0; from 1.5 up, unbalanced members
  # replace sat ones; force-balanced jammed members appear from 2.5 on.
  # Counted as not sat (the default), the unbalanced members move P* down;
  # counted as sat, P* is where the force-balanced ones take over.
  table = {1.0: (20, 0, 0), 1.5: (14, 6, 0), 2.0: (6, 14, 0), 2.5: (2, 14, 4),
           3.0: (0, 4, 16), 3.5: (0, 0, 20)}
  stats = [phase.cell_stats(_record(int(x * 100), 100, ["sat"] * s + ["unbalanced"] * u
                                    + ["jammed"] * j + ["dead_points"]))
           for x, (s, u, j) in table.items()]
  lo, hi = (phase.fit_cells(stats, unbalanced=u) for u in phase.UNBALANCED_AS)
  want = {"not_sat": ([20, 14, 6, 2, 0, 0], [20] * 6), "sat": ([20, 20, 20, 16, 4, 0], [20] * 6)}
  for fit, u in ((lo, "not_sat"), (hi, "sat")):
    ref = fits.fit_threshold(list(table), *want[u])
    assert fit["x_half"] == pytest.approx(ref["x_half"])
  assert 1.5 < lo["x_half"] < 2.0 < 2.5 < hi["x_half"] < 3.0
  with pytest.raises(ValueError, match="unbalanced"):
    phase.fit_cells(stats, unbalanced="maybe")
  out = phase.analyze({2: [_record(int(x * 100), 100, ["sat"] * s + ["unbalanced"] * u
                                   + ["jammed"] * j, depth=2) for x, (s, u, j) in table.items()]},
                      n_boot=10, load_fn=lambda _: {})
  d = out["per_depth"][2]
  assert d["p_star_over_n"] == pytest.approx(lo["x_half"])
  assert d["p_star_over_n_unbalanced_sat"] == pytest.approx(hi["x_half"])
  assert d["p_star_ci_unbalanced_sat"] == pytest.approx(hi["ci"])


def test_avalanche_data_keeps_only_the_selected_members():
  # member k flips k + 1 points once in the first stage and once in the polish
  u = np.zeros((3, 2, 8), bool)
  pu = np.zeros((3, 2, 8), bool)
  for k in range(3):
    u[k, 1, :k + 1] = True
    pu[k, 1, :k + 1] = True
  arrays = {"history_unsat": u, "history_running": np.ones((3, 2), bool),
            "polish_history_unsat": pu}
  rec = {"run_dir": "x", "summary": {"members": [{"class": c} for c in
                                                 ("sat", "unbalanced", "jammed")]}}
  take = lambda m: m["class"] in ("sat", "jammed")
  assert sorted(phase.avalanche_data(rec, lambda _: arrays).tolist()) == [1, 1, 2, 2, 3, 3]
  assert sorted(phase.avalanche_data(rec, lambda _: arrays, take).tolist()) == [1, 1, 3, 3]
  rec["summary"]["members"].pop()
  with pytest.raises(ValueError, match="members"):
    phase.avalanche_data(rec, lambda _: arrays, take)


def test_avalanches_of_converged_runs_near_p_star():
  # cells at P/N 1, 2, 2.2 and 4 (N = 100); the transition lies between 2 and
  # 2.2, so only those two cells are within 20 % of P*/N. Member k of cell c
  # flips 10 c + k + 1 points once: the sizes name the members counted.
  classes = {1.0: ["sat"] * 6,
             2.0: ["sat", "sat", "sat", "sat", "jammed", "unbalanced"],
             2.2: ["sat", "sat", "jammed", "unbalanced", "unbalanced", "dead_points"],
             4.0: ["jammed"] * 5 + ["unbalanced"]}
  arrays, recs = {}, []
  for c, (x, cl) in enumerate(classes.items()):
    u = np.zeros((6, 2, 80), bool)
    for k in range(6):
      u[k, 1, :10 * c + k + 1] = True
    arrays[f"c{c}"] = {"history_unsat": u, "history_running": np.ones((6, 2), bool)}
    recs.append(_record(int(x * 100), 100, cl, depth=2, run_dir=f"c{c}"))
  out = phase.analyze({2: recs}, n_boot=20, load_fn=arrays.__getitem__)
  x_star = out["per_depth"][2]["p_star_over_n"]
  assert 2.0 < x_star < 2.2 and 4.0 - x_star > phase.AVALANCHE_WINDOW * x_star
  conv = out["avalanches_converged"]
  # cell 1 (P/N = 2): members 0-3 sat, 4 jammed; cell 2: 0, 1 sat, 2 jammed
  want = [11, 12, 13, 14, 15, 21, 22, 23]
  assert conv["n_members"] == 8 and conv["n_cells"] == 2
  assert conv["n_nonzero"] == 8 and conv["max"] == max(want)
  assert conv["mean"] == pytest.approx(sum(want) / 8)
  assert conv["window"] == phase.AVALANCHE_WINDOW and "force-balanced" in conv["selection"]
  # the all-member summary counts every member of every cell
  assert out["avalanches"]["n_nonzero"] == 24 and out["avalanches"]["max"] == 36
  for a in (conv, out["avalanches"]):
    assert "favored" in a["distribution"] and "favored" in a["distribution_from_1"]
  json.dumps({k: v for k, v in out.items() if k != "_samples"})


def _run(args, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return cli_runner.run("lossland.scripts.phase", [*args, "--out_dir", str(tmp_path / "out")],
                        env=env, timeout=300)


def test_script_end_to_end_tiny_grid(tmp_path):
  args = ["--depths", "2", "--widths", "5", "--p_over_n", "0.5,4", "--n_seeds", "2",
          "--max_steps", "200", "--rounds", "0", "--n_boot", "20"]
  r = _run(args, tmp_path)
  assert r.returncode == 0, r.stderr[-2000:]
  runs = os.listdir(tmp_path / "out" / "phase")
  assert len(runs) == 1
  s = json.load(open(tmp_path / "out" / "phase" / runs[0] / "summary.json"))
  d = s["per_depth"]["2"]
  assert d["N"] == 55 and d["n_members"] == 4 and len(d["cells"]) == 2
  for key in ("depth_spread", "theta", "theta_ci", "gamma", "gamma_ci"):
    assert key in s
  # a second invocation resumes: no cell is run again
  r = _run(args, tmp_path)
  assert r.returncode == 0 and "running cell" not in r.stderr


def test_finite_size_puts_sizes_side_by_side():
  def res(ns, xs, spread):
    return {"per_depth": {L: {"N": n, "p_star_over_n": x,
                              "p_star_ci": [None, None] if x is None else [x - 0.1, x + 0.1]}
                          for L, n, x in zip((2, 3), ns, xs)},
            "depth_spread": spread}
  big, small = res([600, 620], [2.7, 2.4], 0.2), res([300, 310], [2.4, 1.8], 0.4)
  fs = phase.finite_size([big, small])            # any order in
  assert fs["sizes"] == [305.0, 610.0]
  assert fs["per_depth"]["3"]["p_star_over_n"] == [1.8, 2.4]
  assert fs["per_depth"]["2"]["N"] == [300, 600]
  assert fs["depth_spread"] == [0.4, 0.2]
  # log(0.2 / 0.4) / log(610 / 305) = -1
  assert fs["spread_slope"] == pytest.approx(-1.0)
  # one size, or a spread of None: no slope
  assert phase.finite_size([small])["spread_slope"] is None
  assert phase.finite_size([small, res([600, 620], [None, 2.4], None)])["spread_slope"] is None
  # extrapolation to N -> inf (P*/N = p_inf + a N^-1/2): two sizes, exact
  ext = fs["extrapolation"]["per_depth"]["3"]
  a = (2.4 - 1.8) / (620 ** -0.5 - 310 ** -0.5)
  assert ext["p_inf"] == pytest.approx(2.4 - a * 620 ** -0.5, rel=1e-9)
  assert fs["per_depth"]["3"]["p_star_over_n_extrapolated"] == ext["p_inf"]
  lo, hi = fs["per_depth"]["3"]["p_star_over_n_extrapolated_ci"]
  assert lo < ext["p_inf"] < hi
  json.dumps(fs)


def test_finite_size_extrapolation_recovers_a_known_limit():
  """Synthetic P*/N(N) = 0.9 + 2 N^-1/2 (depth 2) and 1.3 - 3 N^-1/2 (depth 3)
  at four sizes with CIs: the limits come back and the depths differ."""
  def res(n):
    pd = {}
    for L, (p_inf, a) in ((2, (0.9, 2.0)), (3, (1.3, -3.0))):
      x = p_inf + a * n ** -0.5
      pd[L] = {"N": n, "p_star_over_n": x, "p_star_ci": [x - 0.01, x + 0.01]}
    return {"per_depth": pd, "depth_spread": 0.1}
  fs = phase.finite_size([res(n) for n in (150, 300, 600, 900)])
  pd = fs["per_depth"]
  assert pd["2"]["p_star_over_n_extrapolated"] == pytest.approx(0.9, abs=1e-9)
  assert pd["3"]["p_star_over_n_extrapolated"] == pytest.approx(1.3, abs=1e-9)
  sp = fs["extrapolation"]["spread"]
  assert sp["spread"] == pytest.approx(0.4, abs=1e-9) and not sp["consistent"]


def test_script_sizes_runs_each_size_and_compares(tmp_path):
  args = ["--depths", "1,2", "--sizes", "20,40", "--p_over_n", "4", "--n_seeds", "2",
          "--max_steps", "50", "--rounds", "0", "--n_boot", "0"]
  r = _run(args, tmp_path)
  assert r.returncode == 0, r.stderr[-2000:]
  assert len(os.listdir(tmp_path / "out" / "phase")) == 2
  runs = os.listdir(tmp_path / "out" / "phase_sizes")
  assert len(runs) == 1
  d = tmp_path / "out" / "phase_sizes" / runs[0]
  fs = json.load(open(d / "summary.json"))
  assert len(fs["sizes"]) == 2 and fs["sizes"][0] < fs["sizes"][1]
  assert [len(v["N"]) for v in fs["per_depth"].values()] == [2, 2]
  for rd in fs["run_dirs"]:
    s = json.load(open(os.path.join(rd, "summary.json")))
    assert set(s["per_depth"]) == {"1", "2"}
  assert os.path.exists(d / "p_star_vs_n.png")


def _cell_nets(tmp_path, section="net"):
  """The ``section`` ("net", "train", ...) of every cell's config.json."""
  out = []
  for line in open(tmp_path / "out" / "sweep" / "cells.jsonl"):
    r = json.loads(line)
    if "summary" in r:
      rd = os.path.join(tmp_path / "out" / "sweep", r["run_dir"])
      out.append(json.load(open(os.path.join(rd, "config.json")))[section])
  return out


@pytest.mark.parametrize("extra, want", [
    (["--net", "authors"], dict(parametrization="standard", init="orthogonal_gain1",
                                normalize_activation=False, bias=True)),
    (["--net", "authors", "--nobias"], dict(init="orthogonal_gain1", bias=False)),
    (["--bias"], dict(parametrization="ntk", init="normal", normalize_activation=True,
                      bias=True))])
def test_net_flags_reach_every_cell(extra, want, tmp_path):
  r = _run(["--depths", "2", "--widths", "4", "--p_over_n", "1", "--n_seeds", "1",
            "--max_steps", "20", "--rounds", "0", "--n_boot", "0", "--noplots", *extra],
           tmp_path)
  assert r.returncode == 0, r.stderr[-2000:]
  cfgs = _cell_nets(tmp_path)
  assert len(cfgs) == 1
  for k, v in want.items():
    assert cfgs[0][k] == v, (k, cfgs[0])


@pytest.mark.parametrize("bad", [["--depths", "2,3", "--widths", "4,5,6"],
                                 ["--shard", "3/2", "--preset", "cpu"],
                                 ["--preset", "cpu", "--n_seeds", "0"],
                                 # the trainer's config rejects it (FIRE adapts dt itself)
                                 ["--preset", "cpu", "--optimizer", "fire"],
                                 ["--preset", "cpu", "--min_lr", "-1"],
                                 ["--preset", "cpu", "--workers", "0"],
                                 ["--preset", "cpu", "--net", "wide"],
                                 ["--preset", "cpu", "--sizes", "300", "--N", "300"],
                                 ["--preset", "cpu", "--sizes", "0,300"],
                                 ["--preset", "cpu", "--gap_floor", "-1"],
                                 ["--preset", "cpu", "--gap_floor", "nan"],
                                 ["--preset", "cpu", "--finish_from", "runs/x"],
                                 ["--preset", "cpu", "--finish", "newton", "--finish_from",
                                  "no_such_study"]])
def test_bad_flags_exit_2(bad, tmp_path):
  r = _run(bad, tmp_path)
  assert r.returncode == 2, r.stderr
  assert r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1
  assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("rows, recorded, want", [
    # (outputs f on 4 points with y = [1, -1, 1, 1], recorded class, class)
    ([2.0, -3.0, 0.0, 1.5], "stalled", "dead_points"),   # its one unsat point: f = 0
    ([2.0, -3.0, 0.5, 1.5], "stalled", "stalled"),       # a live unsat point
    ([0.2, 0.1, 0.3, 0.0], "jammed", "dead_points"),     # live unsat points and a dead one
    ([0.2, 0.1, 0.3, 0.4], "jammed", "jammed"),          # no dead point
    ([2.0, -3.0, 0.0, 1.5], "sat_dead", "dead_points"),  # the old class, counted sat then
    ([2.0, -3.0, 1.0, 1.5], "sat", "sat"),
])
def test_members_with_unsatisfied_dead_points_are_never_sat(rows, recorded, want):
  """Table-driven on hand-made outputs: a member with an unsatisfied dead
  point (f = 0 exactly: no optimizer can satisfy it) is neither sat nor
  jammed, whatever the summary recorded (old summaries are checked here)."""
  y = np.array([1.0, -1.0, 1.0, 1.0])
  f = np.array([rows])
  rec = _record(4, 10, [recorded], nd=[0.4], run_dir="x")
  c = phase.cell_stats(rec, lambda run_dir: {"f_train": f, "y_train": y})
  assert c["counts"] == {want: 1}
  assert c["n_sat"] == (want == "sat") and c["n_jammed"] == (want == "jammed")
  assert c["n_dead_points"] == (want == "dead_points")


def test_dead_point_members_reads_the_arrays_or_nothing():
  y = np.array([1.0, -1.0, 1.0, 1.0])
  f = np.array([[2.0, -3.0, 0.0, 1.5], [2.0, -3.0, 0.5, 1.5], [0.2, 0.1, 0.3, 0.0]])
  rec = _record(4, 10, ["stalled", "stalled", "jammed"], nd=[0.1, 0.1, 0.4], run_dir="x")
  load = lambda run_dir: {"f_train": f, "y_train": y}
  assert phase.dead_point_members(rec, load) == [True, False, True]
  # without arrays (no run directory) nothing is reclassified
  c = phase.cell_stats(dict(rec, run_dir=None))
  assert c["counts"] == {"stalled": 2, "jammed": 1} and c["n_sat"] == 0
  # a summary whose job classified dead points itself is not re-checked
  rec2 = _record(4, 10, ["jammed"], nd=[0.4], run_dir="x")
  rec2["summary"]["members"][0]["n_dead_points"] = 0
  assert phase.cell_stats(rec2, lambda r: {"f_train": f[2:], "y_train": y})["counts"] == {
      "jammed": 1}


def test_workers_give_the_same_records_as_one_process(tmp_path):
  # Three cells run by 2 processes (a subprocess worker and the script's own
  # run_sweep, sharing the sweep directory through its per-cell locks) must
  # give exactly the records of one process: same cells, same seeds, same
  # numbers.
  args = ["--depths", "2", "--widths", "4", "--p_over_n", "0.5,2,4", "--n_seeds", "2",
          "--max_steps", "100", "--rounds", "0", "--n_boot", "0", "--noplots"]
  out = {}
  for w in (1, 2):
    r = _run(args + ["--workers", str(w)], tmp_path / f"w{w}")
    assert r.returncode == 0, r.stderr[-2000:]
    with open(tmp_path / f"w{w}" / "out" / "sweep" / "cells.jsonl") as fh:
      recs = [json.loads(l) for l in fh if l.strip()]
    out[w] = {rec["cell_id"]: rec for rec in recs}
    assert len(out[w]) == 3
    if w == 2:  # the worker ran at least one cell (the script logs only its own)
      assert r.stderr.count("running cell") < 3, r.stderr[-2000:]
  assert out[1].keys() == out[2].keys()
  for cid, rec in out[1].items():
    m1, m2 = rec["summary"]["members"], out[2][cid]["summary"]["members"]
    assert len(m1) == len(m2) == 2
    for a, b in zip(m1, m2):
      for key in ("class", "loss", "n_delta_over_n", "stop_reason"):
        assert a[key] == b[key], (cid, key)
      assert isinstance(a["loss"], float)


def test_gpu_preset_sets_the_paper_nets_and_the_engine_layout(tmp_path):
  """--preset gpu: the paper's depths and N ~ 8000, the polish, and the
  engine layout (wgrad_split, pad_to) in every cell; run here at tiny widths."""
  from lossland import nets
  from lossland.configs import phase as presets
  p = presets.gpu()
  assert [nets.n_weights(h, h, L) for L, h in zip(p.depths, p.widths)] == [7750, 7854, 8040]
  assert p.job["polish"] == "lbfgs" and p.job["wgrad_split"] == 64 and p.job["pad_to"] == 8
  assert p.bisect_points == 3 and p.batch_cells is None   # batched on an accelerator
  # here on the CPU with --batch_cells: each depth's two cells in one program
  r = _run(["--preset", "gpu", "--widths", "3,3,3", "--p_over_n", "1,2", "--n_seeds", "1",
            "--max_steps", "20", "--rounds", "0", "--n_boot", "0", "--polish_steps", "10",
            "--noplots", "--workers", "1", "--batch_cells"], tmp_path)
  assert r.returncode == 0, r.stderr[-2000:]
  trains = _cell_nets(tmp_path, "train")
  assert len(trains) == 6
  for t in trains:
    assert (t["wgrad_split"], t["pad_to"], t["optimizer"]) == (64, 8, "adam")
  for line in open(tmp_path / "out" / "sweep" / "cells.jsonl"):
    assert json.loads(line)["summary"]["batch"] == {"jobs": 2, "members": 2}


def test_contacts_script_counts_unsatisfied_margin_and_kinks(tmp_path, capsys):
  """scripts/contacts.py on a hand-made cell: one force-balanced member with
  3 unsatisfied points (one at the margin, Delta/sqrt(loss) = 1e-9), one
  satisfied point at the margin (-Delta = 1e-8) and 2 kink pairs; N = 20,
  L = 1, h = 4, so the constraints (2 + 2 + 2) count against N - hL = 16."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "contacts", os.path.join(os.path.dirname(__file__), "..", "scripts", "contacts.py"))
  contacts = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(contacts)
  run = tmp_path / "sweep" / "cells" / "c0"
  run.mkdir(parents=True)
  y = np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
  delta = np.array([0.5, 0.3, 1e-9 * np.sqrt(0.01), -1e-8, -0.7, -2.0])
  np.savez(run / "arrays.npz", f_train=np.stack([(1.0 - delta) * y] * 2), y_train=y)
  members = [{"class": "jammed", "n_delta": 3, "loss": 0.01, "n_kink": 2},
             # its finish ran out of iterations: still descending, not counted
             {"class": "jammed", "n_delta": 3, "loss": 0.01, "n_kink": 2,
              "finished": True, "finish_reason": "max_iter"}]
  (run / "summary.json").write_text(json.dumps({"members": members, "n_weights": 20, "P": 6}))
  (tmp_path / "sweep" / "cells.jsonl").write_text(json.dumps(
      {"run_dir": "cells/c0", "flags": {"width": 4, "depth": 1}}) + "\n")
  assert contacts.main(["contacts.py", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "P/N 0.300  members 1" in out
  # N_Delta/N = 0.15, margin 2/20 = 0.10, kinks 2/20 = 0.10, (2 + 2 + 2)/16
  assert "0.15 (0.15-0.15) 0.10 (0.10-0.10) 0.10 (0.10-0.10) 0.38 (0.38-0.38)" in out
  assert contacts.main(["contacts.py", str(tmp_path / "nowhere")]) == 2


def test_script_batched_cells_and_parallel_bisection(tmp_path):
  """--batch_cells: each depth's new cells of a batch are one program (the
  grid, then each round's --bisect_points cells); the cells, their classes
  and the estimate are those of the cell-by-cell run."""
  args = ["--depths", "1,2", "--widths", "8", "--d", "3", "--bias", "--p_over_n", "0.5,6",
          "--n_seeds", "2", "--max_steps", "1500", "--lr", "0.02", "--jam_window", "200",
          "--rounds", "1", "--bisect_points", "2", "--n_boot", "0", "--plots=false"]
  out = {}
  for name, flag in (("batched", "--batch_cells"), ("alone", "--nobatch_cells")):
    r = _run(args + [flag], tmp_path / name)
    assert r.returncode == 0, r.stderr[-2000:]
    recs = [json.loads(l) for l in open(tmp_path / name / "out" / "sweep" / "cells.jsonl")]
    out[name] = {rec["cell_id"]: rec["summary"] for rec in recs}
    run = os.listdir(tmp_path / name / "out" / "phase")[0]
    s = json.load(open(tmp_path / name / "out" / "phase" / run / "summary.json"))
    assert s["settings"]["batch_cells"] == (name == "batched")
    assert s["settings"]["bisect_points"] == 2
  b, a = out["batched"], out["alone"]
  # 4 grid cells, then 2 for depth 1 (jammed at both P/N: two steps down)
  assert set(b) == set(a) and len(b) == 6
  for cid in a:
    assert [m["class"] for m in b[cid]["members"]] == [m["class"] for m in a[cid]["members"]]
    assert "batch" not in a[cid]
  jobs = sorted(s["batch"]["jobs"] for s in b.values() if "batch" in s)
  assert jobs and set(jobs) == {2}, jobs      # two cells per depth and batch
  r = _run(args + ["--batch_cells", "--bisect_points", "0"], tmp_path / "bad")
  assert r.returncode == 2 and "bisect_points" in r.stderr


def test_report_names_the_exponents_states():
  """The printed theta/gamma line says whose exponents they are: the
  force-balanced jammed members near P*, or none, and the unbalanced states'
  apart, labelled as not minima."""
  depth = {"width": 16, "N": 336, "p_star_over_n": 2.0, "p_star_ci": [1.9, 2.1],
           "p_star_over_n_unbalanced_sat": None, "p_star_ci_unbalanced_sat": [None, None],
           "nd_over_n_at_jamming": 0.5, "counts": {"sat": 3, "unbalanced": 3}}
  base = {"per_depth": {2: depth}, "depth_spread": None, "avalanches_converged": None}
  none = dict(base, theta=None, theta_ci=[None, None], gamma=None, gamma_ci=[None, None],
              theta_stalled=-0.25, theta_stalled_ci=[-0.3, -0.2], gamma_stalled=0.6,
              gamma_stalled_ci=[0.55, 0.65])
  lines = phase_study.report_lines({"runs": [(none, "RUN")], "finite_size": None})
  assert lines[0].startswith("L=2 h=16 N=336: P*/N = 2.000 [1.900, 2.100] (unbalanced members "
                             "as sat: None [None, None])")
  # where that fraction never crosses 1/2, the line says on which side of the grid P* is
  depth["p_star_unbalanced_sat_outside"] = [">", 2.0]
  lines = phase_study.report_lines({"runs": [(none, "RUN")], "finite_size": None})
  assert lines[0].startswith("L=2 h=16 N=336: P*/N = 2.000 [1.900, 2.100] (unbalanced members "
                             "as sat: > 2, above the largest P/N measured), ")
  depth["p_star_unbalanced_sat_outside"] = ["<", 0.5]
  lines = phase_study.report_lines({"runs": [(none, "RUN")], "finite_size": None})
  assert "(unbalanced members as sat: < 0.5, below the smallest P/N measured), " in lines[0]
  del depth["p_star_unbalanced_sat_outside"]
  assert lines[2] == ("theta, gamma: none (no force-balanced jammed member in the cell nearest "
                      "P* of a depth whose P* was found); of the unbalanced states, not minima: "
                      "theta -0.250 [-0.300, -0.200], gamma 0.600 [0.550, 0.650]")
  some = dict(base, theta=0.3, theta_ci=[0.1, 0.5], gamma=0.4, gamma_ci=None)
  lines = phase_study.report_lines({"runs": [(some, "RUN")], "finite_size": None})
  assert lines[2] == ("theta 0.300 [0.100, 0.500], gamma 0.400 [None, None] (force-balanced "
                      "jammed members of the cell nearest P*)")
  assert lines[-1] == "run directory: RUN"
  # with a finish, the depth line says how many ran out of iterations
  depth["finish"] = {"entered": 4, "sat": 1, "kept": 0, "max_iter": 3}
  lines = phase_study.report_lines({"runs": [(some, "RUN")], "finite_size": None})
  assert lines[0].endswith("classes {'sat': 3, 'unbalanced': 3}; finish: 4 entered, 3 ran out "
                           "of iterations (still descending: more --finish_iters may settle them)")
  depth["finish"] = {"entered": 4, "sat": 1, "kept": 0, "max_iter": 2, "probe_descends": 1}
  lines = phase_study.report_lines({"runs": [(some, "RUN")], "finite_size": None})
  assert lines[0].endswith("2 ran out of iterations (still descending: more --finish_iters "
                           "may settle them), 1 more found descending by the descent probe")
  depth["finish"] = {"entered": 4, "sat": 1, "kept": 0, "max_iter": 2, "probe_descends": 1,
                     "balanced_max_iter": 1}
  lines = phase_study.report_lines({"runs": [(some, "RUN")], "finite_size": None})
  assert lines[0].endswith("2 ran out of iterations (still descending: more --finish_iters "
                           "may settle them; 1 of them force-balanced, with no descent the "
                           "probe finds), 1 more found descending by the descent probe")
  depth["finish"]["balanced_max_iter"] = 0
  # the output scale's residual of the members left with loss > 0
  depth["scale_residual"] = {"n_measured": 3, "n_positive": 2, "median": 0.123,
                             "range": [-0.01, 0.5], "n_zero_error": 1}
  lines = phase_study.report_lines({"runs": [(some, "RUN")], "finite_size": None})
  assert lines[0].endswith("1 more found descending by the descent probe; loss > 0, not "
                           "jammed: 2 of 3 still gain from larger outputs (scale residual "
                           "median +0.12), 1 "
                           "misclassify no point (sat once the last layer is scaled up: "
                           "--scale_to_sat)")
  # members the job scaled to sat come first
  depth["n_scaled_to_sat"] = 2
  lines = phase_study.report_lines({"runs": [(some, "RUN")], "finite_size": None})
  assert ("1 more found descending by the descent probe; 2 sat by scaling the last layer "
          "(they classified every point); loss > 0, not jammed: 2 of 3" in lines[0])
  depth["n_scaled_to_sat"] = 0
  depth["scale_residual"] = {"n_measured": 0, "n_positive": 0, "median": None, "range": None,
                             "n_zero_error": 0}
  lines = phase_study.report_lines({"runs": [(some, "RUN")], "finite_size": None})
  assert lines[0].endswith("1 more found descending by the descent probe")


def test_outside_grid_says_which_side_of_the_cells_p_star_is():
  """With every cell mostly sat (the unbalanced members counted as sat or
  not), P* is above the largest P/N measured; with every one mostly not
  sat, below the smallest; crossed, or no counted member, None."""
  cell = lambda x, sat, jam, unb: {"p_over_n": x, "n_sat": sat, "n_jammed": jam,
                                   "n_unbalanced": unb}
  stats = [cell(1.0, 6, 0, 0), cell(1.75, 2, 4, 4), cell(2.0, 0, 6, 6)]
  assert phase.outside_grid(stats, unbalanced="sat") == [">", 2.0]
  assert phase.outside_grid(stats) is None                        # crossed at 1/2
  stats = [cell(1.5, 1, 5, 1), cell(2.0, 0, 6, 0), cell(0.5, 0, 0, 0)]
  assert phase.outside_grid(stats, unbalanced="sat") == ["<", 1.5]
  assert phase.outside_grid([cell(1.0, 3, 3, 0)]) is None          # exactly 1/2
  # the cells of one P/N pool (the bisection's rule): 5 of 12 sat at 1.0
  assert phase.outside_grid([cell(1.0, 5, 1, 0), cell(1.0, 0, 6, 0), cell(2.0, 0, 6, 0)]) \
      == ["<", 1.0]
  assert phase.outside_grid([cell(1.0, 0, 0, 0)]) is None
  stats = [phase.cell_stats(_record(300, 300, ["sat"] * 6)),
           phase.cell_stats(_record(600, 300, ["unbalanced"] * 6))]
  fit = {"x_half": 1.5, "ci": [1.2, 1.8], "width": 0.1, "separated": True, "bracketed": True}
  d = phase._depth_summary(stats, fit, phase.fit_cells(stats, unbalanced="sat"))
  assert d["p_star_unbalanced_sat_outside"] == [">", 2.0]
  assert d["p_star_over_n_unbalanced_sat"] is None
  assert phase._depth_summary(stats, fit)["p_star_unbalanced_sat_outside"] is None
