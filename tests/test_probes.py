"""scripts/finish_probe.py, scripts/margin_census.py and scripts/descent_census.py (docs/jamming.md,
"where the descent goes"): on a member the L-BFGS polish leaves jammed, the
probe's one-shot and segment modes never raise the loss, the per-unit table
is the balanced net's, the decay mode and bad arguments behave, and the
census counts hand-made margins exactly and agrees with the run's saved
outputs; the descent census repeats the job's own descent probe."""
import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from lossland import job, nets

QUIET = dict(progress=False, stdout=open(os.devnull, "w"))
# the jammed member of tests/test_anneal.py (L = 2, h = 8, d = 4, biases, P = 120)
_JOB = dict(dataset="sphere", depth=2, width=8, d=4, bias=True, P=120, seed=3, n_seeds=1,
            x64=True, max_steps=3000, lr=1e-2, optimizer="adam", polish="lbfgs",
            polish_steps=2000, polish_jam_window=200, plots=False)


def _probe(name="finish_probe"):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(os.path.dirname(__file__), "..", "scripts", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _lines(probe, argv):
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    rc = probe.main(argv)
  return rc, [json.loads(t) for t in buf.getvalue().strip().splitlines()]


def test_finish_probe_segments_and_unit_table(tmp_path):
  run_dir, s = job.run_ensemble_job(dict(_JOB, out_dir=str(tmp_path / "run")), **QUIET)
  m = s["members"][0]
  assert m["n_delta"] > 0
  probe = _probe()
  rc, lines = _lines(probe, ["finish_probe.py", run_dir, "0", "20", "10"])
  assert rc == 0
  segs, last = lines[:-1], lines[-1]
  assert segs[0]["iterations"] == 0 and segs[0]["n_delta"] == m["n_delta"]
  assert abs(segs[0]["loss"] - m["loss"] * 120) <= 1e-10 * segs[0]["loss"]
  losses_ = [t["loss"] for t in segs]
  assert all(b <= a for a, b in zip(losses_, losses_[1:]))  # steps only lower the loss
  assert "grew_most" in last and last["P"] == 120
  assert all(np.isfinite(t["min_curvature"]) for t in segs[1:])
  # the unit table against a hand computation on the balanced net
  cfg = nets.NetConfig(d=4, width=8, depth=2, bias=True)
  with np.load(os.path.join(run_dir, "arrays.npz")) as a:
    p = nets.unravel_fn(cfg, jnp.float64)(jnp.asarray(a["params_final"][0]))
    x, y = jnp.asarray(a["x_train"]), jnp.asarray(a["y_train"])
  unsat = np.asarray(1.0 - y * nets.make_net(cfg)[1](p, x)) > 0
  rows = probe.unit_table(cfg, p, x, unsat)
  bal = nets.balanced(cfg, p)
  w_in0 = np.sqrt(np.sum(np.asarray(bal[0]["w"]) ** 2, 0) + np.asarray(bal[0]["b"]) ** 2)
  w_out0 = np.sqrt(np.sum(np.asarray(bal[1]["w"]) ** 2, 1))
  np.testing.assert_allclose([r[2] for r in rows[:8]], w_in0, rtol=1e-12)
  np.testing.assert_allclose(w_in0, w_out0, rtol=1e-8)  # balanced: |in| = |out|
  z = np.asarray(nets.preactivations(cfg, p, x)[0])
  assert [r[3] for r in rows[:8]] == list((z > 0).sum(0))
  assert [r[4] for r in rows[:8]] == list(((z > 0) & unsat[:, None]).sum(0))
  # the decay mode runs from the balanced params and reports its gradient
  rc, lines = _lines(probe, ["finish_probe.py", run_dir, "0", "10", "10", "1e-3"])
  assert rc == 0 and lines[1]["gres"] is not None and lines[1]["gres"] > 0
  # the hinge step model: segments that never raise the loss; a bad model exits 2
  rc, lines = _lines(probe, ["finish_probe.py", run_dir, "0", "20", "10", "0", "hinge"])
  assert rc == 0 and lines[2]["loss"] <= lines[1]["loss"] <= lines[0]["loss"]
  assert probe.main(["finish_probe.py", run_dir, "0", "10", "10", "0", "lm"]) == 2
  assert probe.main(["finish_probe.py", run_dir, "0"]) == 2
  assert probe.main(["finish_probe.py", run_dir, "5", "10"]) == 2  # no member 5
  assert probe.main(["finish_probe.py", str(tmp_path / "nowhere"), "0", "10"]) == 2
  # the one-shot mode: the loss before is the run's, the finish never raises it
  rc, lines = _lines(probe, ["finish_probe.py", run_dir, "0", "10"])
  assert rc == 0 and len(lines) == 1
  assert abs(lines[0]["loss_before"] - m["loss"] * 120) <= 1e-10 * lines[0]["loss_before"]
  assert lines[0]["loss_after"] <= lines[0]["loss_before"]
  # the margin census from the params against the run's saved outputs
  census = _probe("margin_census")
  rc, lines = _lines(census, ["margin_census.py", run_dir])
  assert rc == 0 and len(lines) == 1 and lines[0]["member"] == 0
  with np.load(os.path.join(run_dir, "arrays.npz")) as a:
    delta = 1.0 - np.asarray(a["y_train"]) * np.asarray(a["f_train"])[0]
  assert lines[0] == dict(lines[0], **census.census(delta, s["n_weights"]))
  assert lines[0]["n_delta_over_n"] * s["n_weights"] == m["n_delta"]
  assert census.main(["margin_census.py"]) == 2
  assert census.main(["margin_census.py", str(tmp_path / "nowhere")]) == 2
  # scripts/finish_pair.sh: two probes at once, their lines appended to OUT
  pair = os.path.join(os.path.dirname(__file__), "..", "scripts", "finish_pair.sh")
  env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
  out = tmp_path / "pair.out"
  r = subprocess.run(["sh", pair, run_dir, "0", "0", "3", str(out)], env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  got = [json.loads(t) for t in out.read_text().splitlines() if t.startswith("{")]
  assert len(got) == 2 and got[0]["loss_after"] == got[1]["loss_after"] <= m["loss"] * 120
  r = subprocess.run(["sh", pair, run_dir, "0"], env=env, capture_output=True, text=True)
  assert r.returncode == 2 and r.stderr.startswith("usage:")


def test_margin_census_counts_hand_made_margins():
  # sqrt(sum Delta_+^2) = sqrt(9 + 16) = 5: |Delta| < 5e-4, 5e-3, 5e-2
  delta = np.array([3.0, 4.0, 1e-5, -1e-5, 2e-3, -4e-2, -0.5, 0.0])
  out = _probe("margin_census").census(delta, 10)
  assert out["n_delta_over_n"] == 0.4
  assert out["near_margin_over_n"] == {"0.0001": 0.3, "0.001": 0.4, "0.01": 0.5}


def test_descent_census_probes_the_finished_members(tmp_path):
  """scripts/descent_census.py on a run with --finish: one line per finished
  member with N_Delta > 0, its gain the library's descent_probe at the saved
  state (recomputed here) and the job's own descent_gain; a study directory
  is walked; a directory without runs exits 2."""
  from lossland import experiment
  from lossland.optim import kink_newton
  sweep_dir = tmp_path / "study" / "sweep"
  run_dir, s = job.run_ensemble_job(dict(_JOB, finish="newton", finish_iters=15,
                                         out_dir=str(sweep_dir / "cells" / "c0")), **QUIET)
  (sweep_dir / "cells.jsonl").write_text(json.dumps(
      {"cell_id": "c0", "flags": {}, "run_dir": os.path.relpath(run_dir, sweep_dir),
       "summary": {}}) + "\n")
  census = _probe("descent_census")
  rc, lines = _lines(census, ["descent_census.py", str(tmp_path / "study")])
  assert rc == 0 and [r["member"] for r in lines] == [0] and lines[0]["run"] == run_dir
  ens = experiment.load_ensemble(run_dir)
  import jax
  params = jax.tree_util.tree_map(lambda a: a[0], ens.params)
  pr = kink_newton.descent_probe(ens.net, params, ens.data.x_train, ens.data.y_train, ens.loss)
  assert lines[0]["gain"] == pr.gain and lines[0]["line"] == pr.line
  assert lines[0]["gain"] == s["members"][0]["descent_gain"]
  assert census.main(["descent_census.py", str(tmp_path / "empty")]) == 2
  assert census.main(["descent_census.py"]) == 2


def _fake_study(root, cells):
  """A phase study directory with sweep/cells.jsonl and one run per cell:
  ``cells`` is a list of (P/N, classes, deltas [K, P]) with N = 10."""
  os.makedirs(os.path.join(root, "sweep"))
  with open(os.path.join(root, "sweep", "cells.jsonl"), "w") as fh:
    for i, (x, classes, delta) in enumerate(cells):
      run = os.path.join(root, "sweep", f"run{i}")
      os.makedirs(run)
      y = np.where(np.arange(delta.shape[1]) % 2, 1.0, -1.0)
      np.savez(os.path.join(run, "arrays.npz"), f_train=y * (1.0 - delta), y_train=y)
      members = [{"class": c, "loss": 1.0, "n_delta_over_n": 1.0, "stop_reason": "jammed"}
                 for c in classes]
      fh.write(json.dumps({"cell_id": f"c{i}", "flags": {"depth": 2}, "run_dir": f"run{i}",
                           "summary": {"members": members, "n_weights": 10,
                                       "P": int(round(x * 10))}}) + "\n")


def test_exponent_summary_pools_the_rows_members(tmp_path):
  """scripts/exponent_summary.py: a row pools the members of its class in
  the cells of its P/N range (the same fits as lossland.phase.pool_fits on
  those members), draws the figure, and bad rows or studies exit 2."""
  from lossland import phase
  rng = np.random.default_rng(0)
  delta = lambda K: np.where(rng.random((K, 40)) < 0.5, rng.random((K, 40)) ** 2,
                             -rng.random((K, 40)))
  study = str(tmp_path / "study")
  _fake_study(study, [(2.0, ["jammed", "unbalanced", "sat"], delta(3)),
                      (3.0, ["jammed", "jammed", "unbalanced"], delta(3))])
  rows = [{"label": "deep", "study": study, "p_over_n": [2.5, 3.5], "class": "jammed"},
          {"label": "all stalled", "study": study, "p_over_n": [1, 4], "class": "unbalanced"}]
  path = tmp_path / "rows.json"
  path.write_text(json.dumps(rows))
  summ = _probe("exponent_summary")
  rc, lines = _lines(summ, ["exponent_summary.py", str(path), str(tmp_path / "fig.png")])
  assert rc == 0 and os.path.getsize(tmp_path / "fig.png") > 1000
  assert [(r["cells"], r["members"]) for r in lines] == [(1, 2), (2, 2)]
  recs = summ.cells_of(study)
  _, th, ga = phase.pool_fits(recs[1:], select=lambda m: m["class"] == "jammed",
                              gap_floor=phase.GAP_FLOOR, n_boot=500)
  assert lines[0]["theta"] == th["exponent"] and lines[0]["gamma_ci"] == ga["ci"]
  for bad in ([], [{"label": "x", "study": study, "p_over_n": [3, 2], "class": "jammed"}],
              [{"label": "x", "study": study, "p_over_n": [1, 2], "class": "sat"}],
              [{"label": "x", "study": str(tmp_path / "none"), "p_over_n": [1, 2],
                "class": "jammed"}]):
    path.write_text(json.dumps(bad))
    assert summ.main(["exponent_summary.py", str(path), str(tmp_path / "f.png")]) == 2
  assert summ.main(["exponent_summary.py", str(path)]) == 2
  assert not os.path.exists(tmp_path / "f.png")


def test_descent_exponents_follows_each_stopped_member_over_the_stages(tmp_path):
  """scripts/descent_exponents.py: one row per stopped member (jammed or
  unbalanced in the first study) and study, matched by cell and index, its
  theta and gamma the phase summary's fits of that member's samples alone;
  a cell a later study lacks is skipped; bad arguments exit 2."""
  from lossland import phase
  rng = np.random.default_rng(1)
  delta = lambda K: np.where(rng.random((K, 60)) < 0.5, rng.random((K, 60)) ** 3,
                             -rng.random((K, 60)))
  d0, d1 = delta(3), delta(3)
  first, second = str(tmp_path / "a"), str(tmp_path / "b")
  _fake_study(first, [(2.0, ["unbalanced", "sat", "jammed"], d0), (3.0, ["jammed"], delta(1))])
  _fake_study(second, [(2.0, ["jammed", "sat", "jammed"], d1)])
  de = _probe("descent_exponents")
  rc, rows = _lines(de, ["descent_exponents.py", str(tmp_path / "t.png"), first, second])
  assert rc == 0 and os.path.getsize(tmp_path / "t.png") > 1000
  assert [(r["P"], r["member"], r["stage"], r["cls"]) for r in rows] == [
      (20, 0, 0, "unbalanced"), (20, 0, 1, "jammed"), (20, 2, 0, "jammed"),
      (20, 2, 1, "jammed"), (30, 0, 0, "jammed")]
  for r, d in ((rows[1], d1[0]), (rows[2], d0[2])):
    th = phase.fit_exponent(d[d > 0], n_boot=300, x_floor=phase.GAP_FLOOR)
    ga = phase.fit_exponent(-d[d < 0], n_boot=300, sign=-1, x_floor=phase.GAP_FLOOR)
    # the saved outputs f = y (1 - Delta) give Delta back to rounding
    assert [r["theta"], *r["theta_ci"], r["gamma"]] == pytest.approx(
        [th["exponent"], *th["ci"], ga["exponent"]], rel=1e-9)
    assert r["n_theta_samples"] == th["n_samples"] > 10
  assert rows[0]["theta"] != rows[1]["theta"]
  assert de.main(["descent_exponents.py", str(tmp_path / "t.png")]) == 2
  assert de.main(["descent_exponents.py", "t.txt", first]) == 2
  assert de.main(["descent_exponents.py", str(tmp_path / "u.png"), str(tmp_path / "none")]) == 2
  assert not os.path.exists(tmp_path / "u.png")


_SMOOTH_JOB = dict(dataset="sphere", depth=1, width=6, d=4, bias=True, P=80, seed=0, n_seeds=2,
                   x64=True, max_steps=2000, lr=1e-2, optimizer="adam", polish="lbfgs",
                   polish_steps=1000, polish_jam_window=200, plots=False,
                   activation="softplus")


def _control_run(tmp_path, job_cfg: dict, mu: float):
  """A trained run for scripts/decay_control.py whose members all end with
  unsatisfied points: ``(run_dir, summary, the script, the ensemble, x, y,
  F_of)``, ``F_of(params) -> (flat params, F on rows of flat params)`` with
  F = the hinge loss + mu |w|^2 / 2."""
  import jax
  from jax.flatten_util import ravel_pytree
  from lossland import experiment, losses
  run_dir, s = job.run_ensemble_job(dict(job_cfg, out_dir=str(tmp_path / "run")), **QUIET)
  assert all(m["n_delta"] > 0 for m in s["members"])
  ens = experiment.load_ensemble(run_dir)
  x, y = ens.data.x_train, ens.data.y_train
  apply_fn = nets.make_net(ens.net, dtype=x.dtype)[1]

  def F_of(params):
    flat, unravel = ravel_pytree(params)
    F = jax.jit(jax.vmap(lambda w: 0.5 * jnp.sum(jnp.maximum(
        losses.margins(apply_fn(unravel(w), x), y, 1.0), 0.0) ** 2) + 0.5 * mu * jnp.sum(w ** 2)))
    return np.asarray(flat), lambda ws: np.asarray(F(jnp.asarray(ws)))
  return run_dir, s, _probe("decay_control"), ens, x, y, F_of


def test_decay_control_certifies_minima_of_the_decayed_loss(tmp_path):
  """scripts/decay_control.py: its members are minima of F = loss + mu|w|^2/2
  by plain checks (F rises along random directions; r_F and lam_min against
  finite differences of F), its fits use them and the entry states, the
  figure is written, bad arguments exit 2 and write nothing."""
  import jax
  from jax.flatten_util import ravel_pytree
  from lossland import losses
  mu = 1e-2
  run_dir, s, sc, ens, x, y, F_of = _control_run(tmp_path, _SMOOTH_JOB, mu)
  apply_fn = nets.make_net(ens.net, dtype=x.dtype)[1]

  # the certificate at the trained (not decay-stationary) params against
  # central differences of F
  p0 = jax.tree_util.tree_map(lambda a: a[0], ens.params)
  cert = sc.certify(ens.net, ens.loss, x, y, mu, p0)
  w, F = F_of(p0)
  n, h = w.size, 1e-5
  e = np.eye(n)
  g_fd = (F(w + h * e) - F(w - h * e)) / (2 * h)
  d = cert["delta"]
  jac = np.stack([(np.asarray(losses.margins(apply_fn(ravel_pytree(p0)[1](w + h * e[i]), x), y, 1.0))
                   - np.asarray(losses.margins(apply_fn(ravel_pytree(p0)[1](w - h * e[i]), x), y, 1.0)))
                  / (2 * h) for i in range(n)], 1)
  scale = np.sum(d[d > 0] * np.linalg.norm(jac[d > 0], axis=1)) + mu * np.linalg.norm(w)
  assert cert["r_F"] == pytest.approx(np.linalg.norm(g_fd) / scale, rel=1e-5)
  assert cert["r_F"] > 1e-4 and not cert["minimum"]
  hh = 1e-4
  ii, jj = np.triu_indices(n)
  pp = w + hh * (e[ii] + e[jj])
  pm = w + hh * (e[ii] - e[jj])
  mp = w - hh * (e[ii] - e[jj])
  mm = w - hh * (e[ii] + e[jj])
  H = np.zeros((n, n))
  H[ii, jj] = (F(pp) - F(pm) - F(mp) + F(mm)) / (4 * hh ** 2)
  H = H + np.triu(H, 1).T
  ev = np.linalg.eigvalsh(H)
  assert cert["n_at_margin"] == 0
  assert cert["lam_min"] == pytest.approx(ev[0], abs=1e-4 * ev[-1])
  assert cert["lam_max"] == pytest.approx(ev[-1], rel=1e-4)

  # the script: both members driven to certified minima of F, two at a time
  out = tmp_path / "control.json"
  rc, lines = _lines(sc, ["decay_control.py", str(out), str(mu), "300", "2", run_dir])
  assert rc == 0
  rows, fit, entry = lines[:-2], lines[-2], lines[-1]
  assert [r["member"] for r in rows] == [0, 1]
  assert [r["n_delta_before"] for r in rows] == [m["n_delta"] for m in s["members"]]
  assert all(r["N"] == s["n_weights"] < r["n_params"] for r in rows)  # biases not counted
  saved = json.loads(out.read_text())
  assert (tmp_path / "control.png").stat().st_size > 0
  assert [r["r_F"] for r in saved["members"]] == [r["r_F"] for r in rows]
  rng = np.random.default_rng(0)
  for k, r in enumerate(rows):
    assert r["minimum"] and r["r_F"] <= sc.CERT_TOL and r["lam_min"] > 0
    row = sc.run_member(ens, k, mu, 300)  # deterministic: the same state again
    assert row["r_F"] == r["r_F"]
    w, F = F_of(row["params"])
    np.testing.assert_array_equal(saved["members"][k]["params"], w)  # the state, saved
    v = rng.normal(size=(200, w.size))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    for t in (1e-3, 1e-2):
      assert np.all(F(w + t * v) > F(w[None])[0])  # F rises in every direction
    assert r["n_delta"] == int(np.sum(np.asarray(saved["members"][k]["delta"]) > 0))
  assert fit["states"] == "minima" and fit["n_states"] == 2
  assert fit["n_delta_over_n"] == [r["n_delta"] / r["N"] for r in rows]
  assert fit["n_theta_samples"] + fit["n_at_margin"] == sum(r["n_delta"] for r in rows)
  assert entry["states"] == "entry" and entry["n_states"] == 2 and entry["fit"] == run_dir
  assert (entry["n_theta_samples"] + entry["n_at_margin"]
          == sum(m["n_delta"] for m in s["members"]))
  assert entry["theta"] != fit["theta"]

  # the census of the control's members (scripts/smooth_census.py)
  cs = _probe("smooth_census")
  rc, cens = _lines(cs, ["smooth_census.py", str(out)])
  assert rc == 0 and [c["member"] for c in cens] == [0, 1]
  for c, r, m in zip(cens, rows, saved["members"]):
    d, sq = np.asarray(m["delta"]), np.sqrt(r["loss"])
    assert c["near_above"] == int(np.sum((d > 0) & (d <= 1e-2 * sq)))
    assert c["near_below"] == int(np.sum((d < 0) & (d >= -1e-2 * sq)))
    flat = np.asarray(m["params"])  # ravel order: b [6], w [4, 6], then the readout's
    b, W = flat[:6], flat[6:30].reshape(4, 6)
    z = np.abs(np.asarray(x) @ W / 2.0 + b)  # NTK parametrization, fan_in 4
    assert c["z_abs_median"] == pytest.approx(float(np.median(z)), rel=1e-12)
    assert c["bend_fraction"] == float(np.mean(z < 1.0))
    assert c["loss_hessian_low"][0] + mu == pytest.approx(r["lam_min"], abs=1e-9 * r["lam_max"])
    assert all(0.0 <= o <= 1.0 + 1e-12 for o in c["rescaling_overlap"])
  V = np.array([[1.0, -2.0, 0, 0, 0], [0, 0, 3.0, 1.0, 0], [1.0, 0, 1.0, 0, 0]]).T
  assert cs.span_overlap(np.eye(5)[:, :2], V) == pytest.approx([1.0, 0.0, 0.5])
  assert cs.span_overlap(np.zeros((5, 0)), V) == [0.0, 0.0, 0.0]
  # a rank-one G of two equal columns: its span is the line through (1, 1, 0, 0, 0)
  assert cs.span_overlap(np.eye(5)[:, :2] @ np.ones((2, 2)), V) == pytest.approx(
      [0.1, 0.0, 0.25])
  no_params = tmp_path / "old.json"
  no_params.write_text(json.dumps({"members": [{k: v for k, v in saved["members"][0].items()
                                                if k != "params"}], "fits": []}))
  for argv in (["smooth_census.py"], ["smooth_census.py", str(tmp_path / "missing.json")],
               ["smooth_census.py", str(no_params)]):
    assert _lines(cs, argv)[0] == 2

  # bad arguments: exit 2, no output file
  bad = tmp_path / "bad.json"
  hinge_dir = tmp_path / "hinge"
  import shutil
  shutil.copytree(run_dir, hinge_dir)
  cfg = json.loads((hinge_dir / "config.json").read_text())
  cfg["loss"]["name"] = "hinge"
  (hinge_dir / "config.json").write_text(json.dumps(cfg))
  for argv in ([str(bad), "0", "10", "1", run_dir], [str(bad), "1e-2", "0", "1", run_dir],
               [str(bad), "1e-2", "10", "1", str(hinge_dir)],
               [str(bad), "1e-2", "10", "1", str(tmp_path / "nowhere")],
               [str(bad), "1e-2", "10"], ["bad.txt", "1e-2", "10", "1", run_dir],
               [str(bad), "1e-2", "10", "1", run_dir, "--members=2"],
               [str(bad), "1e-2", "10", "1", run_dir, "--members=a"],
               [str(bad), "1e-2", "10", "1", run_dir, "--other"]):
    assert sc.main(["decay_control.py"] + argv) == 2
  assert not bad.exists() and not (tmp_path / "bad.png").exists()

  # --members: only those members, the same states as in the full run
  one = tmp_path / "one.json"
  rc, lines = _lines(sc, ["decay_control.py", str(one), str(mu), "300", "1", run_dir,
                          "--members=1"])
  assert rc == 0 and [r["member"] for r in lines[:-2]] == [1]
  assert lines[0]["r_F"] == rows[1]["r_F"] and lines[0]["loss"] == rows[1]["loss"]


_RELU_JOB = dict(_SMOOTH_JOB, activation="relu", width=12, P=300)


def test_decay_control_certifies_minima_of_a_relu_net(tmp_path):
  """scripts/decay_control.py on a ReLU net: its certified minima of F =
  loss + mu|w|^2/2 sit on kink contacts (n_kink > 0, r_F the subgradient
  residual of F) and F rises along random directions from them (plain
  evaluations: first order off the contacts, second order along them); the
  loss alone is not balanced there; r_F at a state without kink pairs (the
  initialization) is |grad F| / (sum |Delta grad Delta| + mu |w|) by
  central differences; the smooth census refuses the ReLU control; a
  member of class dead_points is left out; a run whose members are all sat
  exits 2 and writes nothing."""
  import jax
  from jax.flatten_util import ravel_pytree
  from lossland import losses
  mu = 1e-2
  run_dir, s, sc, ens, x, y, F_of = _control_run(tmp_path, _RELU_JOB, mu)
  apply_fn = nets.make_net(ens.net, dtype=x.dtype)[1]
  p0 = jax.tree_util.tree_map(lambda a: a[0], ens.params0)  # the init: no kink pairs
  flat0, F = F_of(p0)
  unravel = ravel_pytree(p0)[1]
  cert = sc.certify(ens.net, ens.loss, x, y, mu, p0)
  assert cert["n_kink"] == 0 and cert["n_delta"] > 0 and not cert["minimum"]
  w = np.asarray(flat0)
  n, h = w.size, 1e-6
  e = np.eye(n)
  g_fd = (np.asarray(F(w + h * e)) - np.asarray(F(w - h * e))) / (2 * h)
  margins = jax.vmap(lambda v: losses.margins(apply_fn(unravel(v), x), y, 1.0))
  jac = ((np.asarray(margins(w + h * e)) - np.asarray(margins(w - h * e))) / (2 * h)).T
  d = cert["delta"]
  scale = np.sum(d[d > 0] * np.linalg.norm(jac[d > 0], axis=1)) + mu * np.linalg.norm(w)
  assert cert["r_F"] == pytest.approx(np.linalg.norm(g_fd) / scale, rel=1e-5)

  out = tmp_path / "relu.json"
  rc, lines = _lines(sc, ["decay_control.py", str(out), str(mu), "300", "1", run_dir])
  assert rc == 0
  rows = lines[:-2]
  saved = json.loads(out.read_text())
  rng = np.random.default_rng(0)
  for k, r in enumerate(rows):
    assert r["activation"] == "relu" and r["minimum"], r
    assert r["r_F"] <= sc.CERT_TOL and r["lam_min"] > 0 and r["n_kink"] > 0
    assert r["r_loss"] > 1e3 * r["r_F"]  # the decay's force is part of the balance
    w = np.asarray(saved["members"][k]["params"])
    v = rng.normal(size=(300, w.size))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    F0 = float(np.asarray(F(w[None]))[0])
    for t in (1e-4, 1e-3, 1e-2):
      assert np.all(np.asarray(F(w + t * v)) > F0)
  assert lines[-2]["states"] == "minima" and lines[-2]["n_states"] == 2
  assert _lines(_probe("smooth_census"), ["smooth_census.py", str(out)])[0] == 2
  # --correction=off: the finish without the second-order correction (a
  # depth-1 net's contacts are linear in w: the same steps, the same states)
  rc, off = _lines(sc, ["decay_control.py", str(tmp_path / "off.json"), str(mu), "300", "1",
                        run_dir, "--correction=off"])
  assert rc == 0 and [r["correction"] for r in off[:-2]] == [False, False]
  assert [r["r_F"] for r in off[:-2]] == [r["r_F"] for r in rows] and rows[0]["correction"]
  assert sc.main(["decay_control.py", str(tmp_path / "x.json"), str(mu), "10", "1", run_dir,
                  "--correction=maybe"]) == 2
  # --fits: the minima of several outputs pooled, as one run's fit of all of them
  rc, pooled = _lines(sc, ["decay_control.py", "--fits", str(out), str(tmp_path / "off.json")])
  assert rc == 0 and [f["states"] for f in pooled] == ["minima", "entry"]
  assert pooled[0]["n_states"] == 4 and pooled[1]["n_states"] == 4
  assert pooled[0]["n_theta_samples"] == 2 * lines[-2]["n_theta_samples"]
  mixed = json.loads(out.read_text())
  for m in mixed["members"]:
    m["mu"] = 2 * mu
  (tmp_path / "mixed.json").write_text(json.dumps(mixed))
  for argv in (["--fits"], ["--fits", str(tmp_path / "nowhere.json")],
               ["--fits", str(out), str(tmp_path / "mixed.json")]):
    assert sc.main(["decay_control.py"] + argv) == 2

  # a member of class dead_points stays out (issue 20, item 3)
  import shutil
  dead_dir = tmp_path / "dead"
  shutil.copytree(run_dir, dead_dir)
  summ = json.loads((dead_dir / "summary.json").read_text())
  summ["members"][1]["class"] = "dead_points"
  (dead_dir / "summary.json").write_text(json.dumps(summ))
  rc, dead = _lines(sc, ["decay_control.py", str(tmp_path / "dead.json"), str(mu), "300", "1",
                         str(dead_dir)])
  assert rc == 0 and [r["member"] for r in dead[:-2]] == [0]
  assert dead[0]["r_F"] == rows[0]["r_F"]

  sat_dir, s2 = job.run_ensemble_job(dict(_RELU_JOB, P=8, out_dir=str(tmp_path / "sat")),
                                     **QUIET)
  assert all(m["n_delta"] == 0 for m in s2["members"])
  none = tmp_path / "none.json"
  assert sc.main(["decay_control.py", str(none), str(mu), "10", "1", sat_dir]) == 2
  assert not none.exists() and not (tmp_path / "none.png").exists()
