import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lossland import generalization
from lossland import losses
from lossland import nets

import cli_runner


def test_n_star_interpolates_in_log_n():
  assert generalization.n_star([10, 100, 1000], [0.0, 0.0, 1.0]) == pytest.approx(
      np.sqrt(100 * 1000))
  assert generalization.n_star([100, 10, 1000], [0.25, 0.0, 0.75]) == pytest.approx(
      np.sqrt(100 * 1000))
  assert generalization.n_star([10, 100], [1.0, 1.0]) is None
  assert generalization.n_star([10, 100], [0.0, 0.2]) is None


def test_summarize_fits_known_power_laws_above_n_star():
  rng = np.random.default_rng(0)
  rows = []
  for i, N in enumerate([50, 100, 200, 400, 800, 1600, 3200]):
    noise = lambda: float(np.exp(0.02 * rng.normal()))
    rows.append({"N": N, "width": i + 1, "mean_test_error": 0.1 + N ** -0.5 * noise(),
                 "sem_test_error": 0.01, "ensemble_test_error": 0.1,
                 "output_variance": 3 * N ** -0.5 * noise(),
                 "ntk_fluctuation": N ** -0.25 * noise(),
                 "ntk_drift": 2 * N ** -0.5 * noise(),
                 "frac_sat": 0.0 if N < 200 else 1.0, "early_stop_test_error": 0.1})
  # below N* a different law that must be left out of the fits
  rows[0]["output_variance"] = 1e-6
  s = generalization.summarize(rows, {"kernel_test_error": 0.1}, n_boot=200,
                               fit_min_n_over_n_star=2.0)
  assert s["n_star"] == pytest.approx(np.sqrt(100 * 200))
  assert s["tail_n_min"] == pytest.approx(2 * np.sqrt(100 * 200))
  assert [r["N"] for r in s["per_n"]] == sorted(r["N"] for r in rows)
  # one law on both sides of the tail's start: every range recovers it
  for fits, Ns in (("fits_above_n_star", [200, 400, 800, 1600, 3200]),
                   ("fits", [400, 800, 1600, 3200]), ("fits_near_n_star", [200])):
    for key, expected in (("output_variance", -0.5), ("ntk_fluctuation", -0.25),
                          ("ntk_drift", -0.5), ("test_error_excess", -0.5)):
      fit = s[fits][key]
      assert fit["fitted_N"] == Ns, (fits, key)
      if len(Ns) < 2:  # one point: no fit
        assert fit["exponent"] is None and fit["n_points"] == 1
        continue
      assert fit["exponent"] == pytest.approx(expected, abs=0.05), key
      assert fit["ci"][0] - 0.02 <= expected <= fit["ci"][1] + 0.02, key
      assert fit["ci"][1] - fit["ci"][0] < 0.2, key
      assert fit["N_range"] == [Ns[0], Ns[-1]]


def _tail_rows(rng, widths=(4, 8, 12, 16, 18, 20, 24, 32, 48, 64, 96, 128, 192, 256, 384,
                            512, 768), h_star=17.0, d=10):
  """Per-N rows of a one-hidden-layer grid (N = (d + 1) h) with known laws.

  Tail (N >> N*): output variance 2 h^-1, NTK drift 5 h^-1, fluctuation at
  init h^-1/2. Near N* the variance and drift carry a divergence
  300 / (h - h*)^2 that has decayed to 1 % of them at h >= 10 h*, so the
  tail is clean while a fit over every N > N* is dominated by the decay.
  5 % multiplicative noise per point.
  """
  rows = []
  for h in widths:
    noise = lambda: float(np.exp(0.05 * rng.normal()))
    div = 3e2 / (h - h_star) ** 2 if h > h_star else 50.0
    rows.append({"N": (d + 1) * h, "width": h, "frac_sat": float(h > h_star),
                 "mean_test_error": 0.1 + 0.5 / h, "sem_test_error": 0.003,
                 "ensemble_test_error": 0.08, "early_stop_test_error": 0.075,
                 "output_variance": (2.0 / h + 2.0 * div / h) * noise(),
                 "ntk_fluctuation": h ** -0.5 * noise(),
                 "ntk_drift": (5.0 / h + 5.0 * div / h) * noise(),
                 "output_norm": 3.0 + div})
  return rows


def test_tail_fit_recovers_the_tail_exponent_where_the_fit_above_n_star_does_not():
  laws = (("output_variance", -1.0), ("ntk_drift", -1.0), ("ntk_fluctuation", -0.5),
          ("test_error_excess", -1.0))
  covered = {k: [] for k, _ in laws}
  tail_exps = {k: [] for k, _ in laws}
  # 5 tail points: one draw's 95 % CI misses the truth now and then (the
  # bootstrap over 5 points covers ~0.9, lossland.generalization.fit_range),
  # so the claim is checked over 20 noise draws
  for seed in range(20):
    rows = _tail_rows(np.random.default_rng(seed))
    s = generalization.summarize(rows, {"kernel_test_error": 0.1}, n_boot=200, seed=seed)
    ns = s["n_star"]
    assert 16 * 11 < ns < 18 * 11
    assert s["fit_min_n_over_n_star"] == 10.0 and s["tail_n_min"] == pytest.approx(10 * ns)
    tail_N = [r["N"] for r in rows if r["N"] >= 10 * ns]
    near_N = [r["N"] for r in rows if ns < r["N"] < 10 * ns]
    assert len(tail_N) == 5 and len(near_N) == 8
    for key, true in laws:
      tail, near, above = (s[f][key] for f in ("fits", "fits_near_n_star",
                                               "fits_above_n_star"))
      assert tail["fitted_N"] == tail_N and near["fitted_N"] == near_N, key
      assert above["fitted_N"] == near_N + tail_N, key
      covered[key].append(tail["ci"][0] <= true <= tail["ci"][1])
      tail_exps[key].append(tail["exponent"])
      assert tail["exponent"] == pytest.approx(true, abs=0.2), (key, seed)
      if key in ("output_variance", "ntk_drift"):
        # the decay of the divergence: much steeper, the truth outside the CIs
        # (measured: above -1.96 to -1.99, near -3.26 to -3.36 over the draws)
        assert above["ci"][1] < true and above["exponent"] < true - 0.8, (key, seed)
        assert near["ci"][1] < true and near["exponent"] < true - 2.0, (key, seed)
  for key, true in laws:
    assert np.mean(covered[key]) >= 0.75, (key, covered[key])
    assert np.mean(tail_exps[key]) == pytest.approx(true, abs=0.03), key
  # one hidden layer: N ~ h, so the papers' h-mechanism gives -1, -1/2, -1 in N
  assert s["n_per_width_exponent"] == pytest.approx(1.0)
  assert s["expected_exponents_grid"] == pytest.approx(dict(laws))
  assert s["expected_exponents"]["output_variance"] == -0.5  # as the papers state it
  # the tail's start is a parameter: from 3 N* the fit takes in the decay
  s3 = generalization.summarize(rows, {"kernel_test_error": 0.1}, n_boot=50,
                                fit_min_n_over_n_star=3.0)
  assert s3["fits"]["output_variance"]["fitted_N"] == [r["N"] for r in rows
                                                       if r["N"] >= 3 * ns]
  # summary.json round trip
  assert json.loads(json.dumps(s))["fits"]["ntk_drift"]["fitted_N"] == tail_N


def test_summarize_without_n_star_fits_every_n_and_has_no_near_regime():
  rows = _tail_rows(np.random.default_rng(0), widths=(64, 128, 256, 512))
  s = generalization.summarize(rows, None, n_boot=50)
  assert s["n_star"] is None and s["tail_n_min"] is None
  assert s["fits"]["ntk_fluctuation"]["fitted_N"] == [r["N"] for r in rows]
  assert s["fits_near_n_star"]["ntk_fluctuation"]["exponent"] is None
  assert s["fits"]["test_error_excess"]["exponent"] is None


def _png_pdf(prefix):
  for ext, magic in ((".png", b"\x89PNG"), (".pdf", b"%PDF")):
    with open(prefix + ext, "rb") as f:
      assert f.read(4) == magic, ext
    assert os.path.getsize(prefix + ext) > 5000, ext


def _old_format(summary):
  """The summary.json of the runs made before the tail fit (commit 3a2d3dd)."""
  old = {k: v for k, v in summary.items()
         if k in ("per_n", "n_star", "fits", "cusp", "expected_exponents",
                  "kernel_test_error", "kernel")}
  old["fits"] = {k: {kk: vv for kk, vv in f.items() if kk not in ("fitted_N", "N_range")}
                 for k, f in summary["fits_above_n_star"].items()}
  return json.loads(json.dumps(old))


def test_plot_figure_writes_png_and_pdf_for_new_old_and_n_star_less_summaries(tmp_path):
  from lossland.plots import generalization as plots
  rows = _tail_rows(np.random.default_rng(1))
  s = json.loads(json.dumps(generalization.summarize(rows, {"kernel_test_error": 0.1},
                                                     n_boot=50)))
  assert s["cusp"] is not None
  for name, summary in (("new", s), ("old", _old_format(s))):
    prefix = str(tmp_path / name)
    assert plots.plot_figure(summary, prefix) == [prefix + ".png", prefix + ".pdf"]
    _png_pdf(prefix)
  # older still: rows without |f|^2 and early stopping, no N*, no kernel
  bare = _old_format(s)
  bare["per_n"] = [{k: v for k, v in r.items() if k not in ("output_norm",
                                                            "early_stop_test_error")}
                   for r in bare["per_n"]]
  bare.update(n_star=None, cusp=None, kernel_test_error=None)
  plots.plot_figure(bare, str(tmp_path / "bare"))
  _png_pdf(str(tmp_path / "bare"))


def _rows(errors, sem=0.005, Ns=(50, 70, 100, 140, 200, 280, 400), ens=None):
  rows = [{"N": N, "mean_test_error": e, "sem_test_error": sem} for N, e in zip(Ns, errors)]
  for r, e in zip(rows, ens or []):
    r["ensemble_test_error"] = e
    r["early_stop_test_error"] = e + 0.01
  return rows


def test_cusp_measures_the_peak_against_both_sides_in_the_window():
  # window [60, 240] around N* = 120: N = 70 ... 200
  rows = _rows([0.10, 0.15, 0.17, 0.19, 0.16, 0.14, 0.13],
               ens=[0.08, 0.09, 0.10, 0.10, 0.09, 0.09, 0.09])
  c = generalization.cusp(rows, 120.0)
  assert c["N_peak"] == 140 and c["N_peak_over_n_star"] == pytest.approx(140 / 120)
  # left: the lowest error in the window below the peak (N = 50 is outside)
  assert (c["left_N"], c["right_N"]) == (70, 200)
  assert c["rise_left"] == pytest.approx(0.04) and c["rise_right"] == pytest.approx(0.03)
  assert c["rise_left_over_sem"] == pytest.approx(0.04 / np.sqrt(2 * 0.005 ** 2))
  assert c["rise_right_over_sem"] == pytest.approx(0.03 / np.sqrt(2 * 0.005 ** 2))
  assert c["ensemble"] == pytest.approx({"left": 0.09, "peak": 0.10, "right": 0.09,
                                         "rise_left": 0.01, "rise_right": 0.01})
  assert c["early_stop"]["peak"] == pytest.approx(0.11)
  assert c["shows"]
  # the same peak inside the noise does not count
  assert not generalization.cusp(_rows([0.10, 0.15, 0.17, 0.19, 0.16, 0.14, 0.13],
                                       sem=0.02), 120.0)["shows"]
  # a rise without a fall (the step of a label-noise plateau): right side too close
  c = generalization.cusp(_rows([0.10, 0.15, 0.18, 0.19, 0.188, 0.186, 0.17]), 120.0)
  assert c["N_peak"] == 140 and c["rise_right"] == pytest.approx(0.002)
  assert c["rise_left_over_sem"] > 2 and not c["shows"]
  # monotone decay through N*: no local maximum, no peak (the under-fitted
  # smallest N with the largest error is not a cusp)
  c = generalization.cusp(_rows([0.30, 0.18, 0.17, 0.16, 0.15, 0.14, 0.13]), 120.0)
  assert c["N_peak"] is None and c["left_N"] is None and c["ensemble"] is None
  assert not c["shows"]
  # the small rise of docs/generalization.md's digits L = 3 run (N* = 69)
  c = generalization.cusp(_rows([0.30, 0.131, 0.135, 0.123, 0.113, 0.112, 0.11],
                                Ns=(42, 69, 100, 135, 174, 217, 264)), 69.0)
  assert c["N_peak"] == 100 and c["rise_left"] == pytest.approx(0.004) and not c["shows"]
  # still rising through the window: no local maximum, no cusp
  c = generalization.cusp(_rows([0.10, 0.11, 0.12, 0.13, 0.14, 0.15, 0.16]), 100.0)
  assert c["N_peak"] is None and not c["shows"]
  # a local maximum whose right neighbour is outside the window: no right side
  c = generalization.cusp(_rows([0.10, 0.11, 0.12, 0.13, 0.14, 0.16, 0.15]), 100.0)
  assert c["N_peak"] is None  # N = 280 is outside [50, 200]
  c = generalization.cusp(_rows([0.10, 0.11, 0.12, 0.13, 0.16, 0.15, 0.14]), 100.0)
  assert c["N_peak"] == 200 and c["right_N"] is None and not c["shows"]
  assert generalization.cusp(rows, None) is None
  assert generalization.cusp(rows, 1e6) is None


@pytest.mark.parametrize("subtract_init", [False, True])
def test_grad_norms_match_finite_differences(subtract_init):
  net = nets.NetConfig(d=3, width=3, depth=1, parametrization="standard",
                       init="orthogonal_gain1", bias=True, normalize_activation=False)
  init_fn, apply_fn = nets.make_net(net, jnp.float64)
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(12, 3)))
  y = jnp.asarray(np.sign(rng.normal(size=12)))
  keys = jax.random.split(jax.random.key(0), 4)
  params0 = jax.vmap(init_fn)(keys)
  params = jax.vmap(init_fn)(jax.random.split(jax.random.key(1), 4))
  loss = losses.LossConfig("quadratic_hinge", margin=1.0)
  data = types.SimpleNamespace(x_train=x, y_train=y)
  ens = types.SimpleNamespace(net=net, subtract_init=subtract_init, data=data,
                              loss=loss, params=params, params0=params0)
  got = generalization.grad_norms(ens)  # conftest switches float64 on
  unravel = nets.unravel_fn(net, jnp.float64)
  flat = nets.flatten_members(params)
  flat0 = nets.flatten_members(params0)

  def L(w, w0):  # plain NumPy loss of one member
    f = np.asarray(apply_fn(unravel(jnp.asarray(w)), x), np.float64)
    if subtract_init:
      f = f - np.asarray(apply_fn(unravel(jnp.asarray(w0)), x), np.float64)
    delta = 1.0 - np.asarray(y) * f
    return np.mean(0.5 * np.maximum(delta, 0) ** 2)

  for k in range(4):
    h = 1e-6
    g = [(L(flat[k] + h * e, flat0[k]) - L(flat[k] - h * e, flat0[k])) / (2 * h)
         for e in np.eye(flat.shape[1])]
    assert got[k] == pytest.approx(np.linalg.norm(g), rel=1e-5)
  assert np.all(got > 0)


def _run(tmp_path, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return cli_runner.run("lossland.scripts.generalization", [f"--out_dir={tmp_path}", *args],
                        env=env, timeout=600)


def test_script_end_to_end_tiny_grid(tmp_path):
  # the authors' network: its kernel asymptote is its NTK-parametrized twin's
  r = _run(tmp_path, "--preset=none", "--dataset=sphere", "--P=16", "--d=3",
           "--n_test=16", "--depth=1", "--widths=2,8", "--n_seeds=2",
           "--max_steps=100", "--n_ntk=4", "--n_boot=20", "--net=authors",
           "--decay_every=50", "--jam_window=50", "--fit_min_n_over_n_star=2")
  assert r.returncode == 0, r.stderr[-2000:]
  root = tmp_path / "generalization"
  (run,) = os.listdir(root)
  s = json.load(open(root / run / "summary.json"))
  assert [row["N"] for row in s["per_n"]] == [2 * 3 + 2, 8 * 3 + 8]
  for row in s["per_n"]:
    assert set(generalization.PER_N_KEYS) <= set(row)
    assert 0 <= row["mean_test_error"] <= 1 and row["ntk_fluctuation"] > 0
    assert row["output_norm"] > 0 and row["max_grad_norm"] >= 0
  for fits in ("fits", "fits_near_n_star", "fits_above_n_star"):
    assert set(s[fits]) == {"output_variance", "ntk_fluctuation", "ntk_drift",
                            "test_error_excess"}
  assert s["fit_min_n_over_n_star"] == 2.0
  _png_pdf(str(root / run / "generalization"))
  assert 0 <= s["kernel_test_error"] <= 1
  assert "cusp" in s
  cfg = json.load(open(root / run / "config.json"))
  cell = cfg["cells"][0]
  assert (cell["parametrization"], cell["init"], cell["bias"], cell["schedule"]) == (
      "standard", "orthogonal_gain1", True, "step")


def test_script_label_noise_trains_every_width_on_the_same_noisy_labels(tmp_path):
  r = _run(tmp_path, "--preset=none", "--dataset=digits", "--P=40", "--d=4",
           "--n_test=30", "--depth=1", "--widths=2,5", "--n_seeds=2",
           "--max_steps=60", "--n_ntk=4", "--n_boot=10", "--plots=false",
           "--label_noise=0.25", "--data_seed=3")
  assert r.returncode == 0, r.stderr[-2000:]
  from lossland import data, io
  clean = data.digits(40, 4, 30)
  want = data.make_dataset("digits", 40, 4, 30, key=jax.random.key(3), label_noise=0.25)
  root = tmp_path / "generalization"
  (run,) = os.listdir(root)
  cells = json.load(open(root / run / "config.json"))["cells"]
  # the job's own option, no prepared npz detour
  assert {(c["dataset"], c["label_noise"], c["data_seed"]) for c in cells} == {
      ("digits", 0.25, 3)}
  assert not (tmp_path / "generalization_data").exists()
  (sweep,) = (tmp_path / "generalization_sweeps").iterdir()
  rec = [json.loads(line) for line in open(sweep / "cells.jsonl")]
  assert len(rec) == 2
  for cell in rec:
    a = io.load_run(str(sweep / cell["run_dir"])).arrays
    y = a["y_train"]
    np.testing.assert_array_equal(y, want.y_train)
    assert np.sum(y != np.asarray(clean.y_train)) == 10  # round(0.25 * 40)
    np.testing.assert_array_equal(a["label_flipped"], y != np.asarray(clean.y_train))
    assert cell["summary"]["n_labels_flipped"] == 10
    np.testing.assert_array_equal(a["y_test"], clean.y_test)  # test labels clean
    np.testing.assert_allclose(a["x_train"], clean.x_train)


def test_script_polish_continues_the_unsat_members_with_lbfgs(tmp_path):
  # too few Adam steps to reach N_Delta = 0: every member is polished
  r = _run(tmp_path, "--preset=none", "--dataset=sphere", "--P=24", "--d=3",
           "--n_test=16", "--depth=1", "--widths=2,3", "--n_seeds=2",
           "--max_steps=40", "--n_ntk=4", "--n_boot=10", "--plots=false",
           "--polish=lbfgs", "--polish_steps=60", "--kernel_max_steps=100")
  assert r.returncode == 0, r.stderr[-2000:]
  root = tmp_path / "generalization"
  (run,) = os.listdir(root)
  cells = json.load(open(root / run / "config.json"))["cells"]
  assert {(c["polish"], c["polish_steps"]) for c in cells} == {("lbfgs", 60)}
  s = json.load(open(root / run / "summary.json"))
  (sweep,) = (tmp_path / "generalization_sweeps").iterdir()
  rec = {json.loads(line)["flags"]["width"]: json.loads(line)
         for line in open(sweep / "cells.jsonl")}
  logged = {r["width"]: r for r in map(json.loads, open(root / run / "metrics.jsonl"))
            if "width" in r}
  assert sorted(logged) == sorted(row["width"] for row in s["per_n"]) == [2, 3]
  for row in s["per_n"]:
    members = rec[row["width"]]["summary"]["members"]
    unsat = [m for m in members if m["stop_before_polish"] != "sat"]
    assert unsat and row["n_polished"] == len(unsat)
    for m, steps in zip(members, logged[row["width"]]["member_polish_steps"]):
      assert steps == m["polish_steps"]
      if m["polished"]:
        # L-BFGS with a line search only accepts descent; Adam's 40 steps
        # left it room
        assert 0 < m["polish_steps"] <= 60 and m["stop_before_polish"] == "max_steps"
        assert m["loss"] < m["loss_before_polish"]
        assert m["steps"] == 40 + m["polish_steps"]


@pytest.mark.parametrize("args", [["--widths=0,4"], ["--n_seeds=1"], ["--P=-3"],
                                  ["--preset=huge"], ["--widths=a,b"], ["extra"],
                                  ["--decay_every=-1"], ["--label_noise=0.5"],
                                  ["--label_noise=0.1", "--P=5000"],
                                  ["--polish=bfgs"], ["--polish_steps=0"],
                                  ["--fit_min_n_over_n_star=0.5"]])
def test_bad_flags_exit_2_and_write_nothing(tmp_path, args):
  r = _run(tmp_path, *args)
  assert r.returncode == 2, r.stderr
  assert r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1
  assert not os.listdir(tmp_path)
