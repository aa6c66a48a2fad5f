"""The seeds' figures (lossland.figures, scripts.figures): the numbers
drawn against their inputs, the Hessian across the phases against jax.hessian."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lossland import experiment
from lossland import figures
from lossland.experiments import hessian_phases
from lossland.experiments.phase_study import PhaseConfig
from lossland.plots import phase as phase_plots

import cli_runner


def _tiny_phase_study(root):
  from lossland.experiments import phase_study
  cfg = PhaseConfig(depths=(1,), widths=(8,), p_over_n=(0.3, 3.0), n_seeds=2, rounds=0,
                    n_boot=20, plots=False, out_dir=str(root),
                    job=dict(max_steps=600, lr=1e-2, optimizer="adam"))
  phase_study.run(cfg, log_fn=lambda m: None)


@pytest.fixture(scope="module")
def phase_root(tmp_path_factory, run_once):
  """A tiny phase study (one hidden layer of 8 units, N = 72: a sat cell and an
  under-parametrized one; wide enough that dead points are rare), run once per
  test session: with pytest-xdist the first worker to get here runs it in a
  folder every worker sees, and each worker draws into its own copy."""
  shared = run_once("figures_study", lambda folder: _tiny_phase_study(folder / "study"))
  root = tmp_path_factory.mktemp("figures")
  shutil.copytree(shared / "study" / "phase", root / "phase")
  return str(root)


def _figure(root, name):
  return figures.make_figure(figures.FigureConfig(name=name, out_dir=root), log_fn=lambda m: None)


def test_phase_diagram_draws_the_cells_it_read(phase_root):
  path = _figure(phase_root, "phase_diagram")
  for ext in ("png", "pdf", "json"):
    assert os.path.getsize(os.path.join(path, f"phase_diagram.{ext}")) > 0
  rec = json.load(open(os.path.join(path, "phase_diagram.json")))
  summary = json.load(open(os.path.join(rec["source"], "summary.json")))
  cells = summary["per_depth"]["1"]["cells"]
  drawn = rec["data"]["fraction_sat"]["1"]
  assert drawn["p_over_n"] == [c["p_over_n"] for c in cells]
  assert drawn["n_sat"] == [c["counts"].get("sat", 0) for c in cells]
  # the members drawn in N_Delta/N: every sat member and every member that
  # stopped jammed (force-balanced or unbalanced) of every cell
  nd = rec["data"]["nd_over_n"]["1"]["nd_over_n"]
  assert len(nd) == sum(sum(c["counts"].get(k, 0) for k in ("sat", "jammed", "unbalanced"))
                        for c in cells)


def test_redrawing_reuses_the_study_and_replaces_the_figure(phase_root):
  before = sorted(os.listdir(os.path.join(phase_root, "phase")))
  first = os.path.getmtime(os.path.join(_figure(phase_root, "delta_distributions"),
                                        "delta_distributions.png"))
  path = _figure(phase_root, "delta_distributions")
  assert sorted(os.listdir(os.path.join(phase_root, "phase"))) == before  # nothing trained
  assert os.path.getmtime(os.path.join(path, "delta_distributions.png")) >= first
  assert not [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".")]
  rec = json.load(open(os.path.join(path, "delta_distributions.json")))
  with np.load(os.path.join(rec["source"], "arrays.npz")) as z:
    assert rec["data"]["positive"]["n_samples"] == int(np.sum(z["delta_positive"] > 0))


def test_hessian_phases_matches_jax_hessian_of_the_recorded_loss(phase_root):
  path = _figure(phase_root, "hessian_phases")
  rec = json.load(open(os.path.join(path, "hessian_phases.json")))
  rows = rec["data"]["analysis"]["per_depth"]["1"]["members"]
  eig = np.load(os.path.join(path, "hessian_phases.npz"))
  assert eig["L1_eig_h"].shape == (len(rows), rows[0]["N"])
  summary = json.load(open(os.path.join(rec["source"], "summary.json")))
  records = hessian_phases.cell_records(rec["source"], summary)[1]
  by_p = {int(r["summary"]["P"]): r for r in records}
  checked = {"sat": 0, "loss": 0}
  for i, row in enumerate(rows):
    if row["class"] == "sat":
      assert np.all(eig["L1_eig_h"][i] == 0)  # loss 0 exactly: H = 0 exactly
      checked["sat"] += 1
      continue
    if checked["loss"] or row["loss"] <= 0:
      continue
    ens = experiment.load_ensemble(by_p[row["P"]]["run_dir"])
    params, _ = ens.member(row["member"])
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    f_fn = ens.output_fn()
    x, y = jnp.asarray(ens.data.x_train), jnp.asarray(ens.data.y_train)

    def loss(w):  # the quadratic hinge, eps = 1, written out
      delta = 1.0 - y * f_fn(unravel(w), None, x)
      return jnp.mean(0.5 * jnp.maximum(delta, 0.0) ** 2)
    assert float(loss(flat)) == pytest.approx(row["loss"], rel=1e-9)
    want = np.linalg.eigvalsh(np.asarray(jax.hessian(loss)(flat)))
    scale = np.max(np.abs(want))
    np.testing.assert_allclose(np.sort(eig["L1_eig_h"][i]), want, atol=1e-9 * scale)
    assert row["rank_h0"] <= row["n_delta"]
    checked["loss"] += 1
  assert checked["sat"] > 0 and checked["loss"] == 1


def test_hessian_phases_summary_counts_follow_the_rows():
  rows = [dict(cls, N=10, P=5, p_over_n=0.5, loss=l, rank_h0=r, n_delta=nd,
               n_negative_hp=nm, n_negative_hp_over_n=nm / 10, rank_h0_le_n_delta=r <= nd,
               stable=True)
          for cls, l, r, nd, nm in (({"class": "sat"}, 0.0, 0, 0, 0),
                                    ({"class": "jammed"}, 1e-2, 4, 4, 3),
                                    ({"class": "jammed"}, 1e-4, 3, 4, 5))]
  eig_h = np.zeros((3, 10))
  c = hessian_phases._checks(rows, eig_h)
  assert (c["n_sat"], c["n_sat_with_h_exactly_zero"], c["n_jammed"]) == (1, 1, 2)
  assert c["n_jammed_rank_h0_eq_n_delta"] == 1
  assert c["n_jammed_negative_hp_le_n_delta"] == 1
  # spectra exactly proportional to sqrt(loss) collapse perfectly
  base = np.linspace(-1, 1, 10) + 0.05
  eig_hp = np.stack([0 * base, np.sqrt(1e-2) * base, np.sqrt(1e-4) * base])
  col = hessian_phases._collapse(rows, eig_hp)
  assert col["sd_log10_median_abs_hp_over_sqrt_loss"] == pytest.approx(0, abs=1e-12)
  assert col["sd_log10_median_abs_hp"] == pytest.approx(0.5)


def test_delta_figure_draws_the_fitted_law_over_the_samples(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.uniform(size=20000) ** (1 / 1.3)  # p(x) ~ x^0.3 on (0, 1]
  result = {"theta": 0.3, "theta_ci": [0.25, 0.35], "theta_fit": {"x_max": 1.0},
            "gamma": 0.2, "gamma_ci": [0.1, 0.3], "gamma_fit": {"x_max": None}}
  data = phase_plots.delta_distributions_figure(result, x, np.zeros(0),
                                                str(tmp_path / "d"))
  assert os.path.isfile(tmp_path / "d.png") and os.path.isfile(tmp_path / "d.pdf")
  c, h = np.array(data["positive"]["bin_centers"]), np.array(data["positive"]["density"])
  m = (h > 0) & (c > 0.05)
  # the histogram follows 1.3 x^0.3 (the drawn law) within sampling noise
  np.testing.assert_allclose(h[m], 1.3 * c[m] ** 0.3, rtol=0.25)
  assert data["negative"]["n_samples"] == 0


def test_script_redraws_and_rejects_bad_input(phase_root, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = lambda *a: cli_runner.run("lossland.scripts.figures", a, env=env, timeout=300)
  bad = [("nope", "--out_dir", str(tmp_path)), ("--out_dir", str(tmp_path)),
         ("phase_diagram", "--preset", "huge", "--out_dir", str(tmp_path))]
  good = run("phase_diagram", "--out_dir", phase_root)
  assert good.returncode == 0, good.stderr[-2000:]
  assert good.stdout.strip().endswith(os.path.join("figures", "phase_diagram"))
  assert "reusing" in good.stderr
  for b in bad:
    p = run(*b)
    assert p.returncode == 2, (b, p.stderr[-500:])
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith("error")
  assert os.listdir(tmp_path) == []


def test_hessian_phases_beyond_memory_is_bad_input_and_writes_nothing(phase_root, monkeypatch):
  from lossland import curvature, io

  def too_big(method, n, dtype, dense_max_n=10000):
    raise MemoryError(f"dense needs more than is available at N = {n}")
  monkeypatch.setattr(curvature, "choose_method", too_big)
  figs = os.path.join(phase_root, "figures")
  before = sorted(os.listdir(figs)) if os.path.isdir(figs) else []
  with pytest.raises(io.InputError, match="do not fit"):
    _figure(phase_root, "hessian_phases")
  assert sorted(os.listdir(figs)) == before  # nothing new, no staging folder left


def test_delta_figure_falls_back_to_the_stalled_states_and_says_so(tmp_path):
  """No force-balanced member (issue 20): the figure draws the unbalanced
  members' samples with their own exponents, titled as stalled states."""
  rng = np.random.default_rng(1)
  x = rng.uniform(size=5000) ** (1 / 0.6)  # p(x) ~ x^-0.4 on (0, 1]
  result = {"theta": None, "theta_ci": None, "theta_fit": {}, "gamma": None,
            "gamma_ci": None, "gamma_fit": {}, "theta_stalled": -0.4,
            "theta_stalled_ci": [-0.45, -0.35], "gamma_stalled": None,
            "gamma_stalled_ci": None, "stalled_fit": {"theta": {"x_max": 1.0}, "gamma": {}}}
  data = phase_plots.delta_distributions_figure(result, np.zeros(0), np.zeros(0),
                                                str(tmp_path / "d"), stalled=(x, np.zeros(0)))
  assert data["states"] == "stalled (unbalanced)"
  assert data["positive"]["n_samples"] == 5000
  c, h = np.array(data["positive"]["bin_centers"]), np.array(data["positive"]["density"])
  m = (h > 0) & (c > 0.05)
  np.testing.assert_allclose(h[m], 0.6 * c[m] ** -0.4, rtol=0.3)
  # with force-balanced samples those are drawn, whatever the stalled ones
  data = phase_plots.delta_distributions_figure(dict(result, theta=0.3), x, np.zeros(0),
                                                str(tmp_path / "e"), stalled=(x, x))
  assert data["states"] == "force-balanced (jammed)"


def test_sorted_spectra_follow_the_parameter_count_of_nets_with_biases():
  """A net with biases has more parameters than weights (the authors' N): a
  cpu-preset cell of L = 2, h = 16, d = 4 has 336 weights and 369
  parameters, and the Hessian figure drew eigenvalues against rank / N and
  failed on it. Each curve now runs over its own eigenvalues."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from lossland.plots import hessian_phases as hp_plots
  fig, ax = plt.subplots()
  e = np.linspace(-1.0, 2.0, 369)
  hp_plots._sorted_ax(ax, [(e, "H"), (e[:336], "weights only")], "title")
  xs = [line.get_xdata() for line in ax.get_lines()]
  assert [len(x) for x in xs] == [369, 336] and all(x[-1] == 1.0 for x in xs)
  np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), np.sort(e))
  plt.close(fig)
