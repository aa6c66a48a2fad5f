import numpy as np
import pytest

from lossland import io, observables


def test_ensemble_summary_against_plain_loops():
  rng = np.random.default_rng(0)
  f = rng.normal(size=(5, 50))
  y = np.where(rng.random(50) < 0.5, -1.0, 1.0)
  s = observables.ensemble_summary(f, y)
  member = [np.mean([y[i] * f[k, i] <= 0 for i in range(50)]) for k in range(5)]
  np.testing.assert_allclose(s["member_test_errors"], member)
  assert s["mean_test_error"] == pytest.approx(np.mean(member))
  fbar = [np.mean(f[:, i]) for i in range(50)]
  assert s["ensemble_test_error"] == pytest.approx(np.mean([y[i] * fbar[i] <= 0 for i in range(50)]))
  # The unbiased estimator over members: 1/(K-1) sum_k, averaged over points.
  var = np.mean([sum((f[k, i] - fbar[i]) ** 2 for k in range(5)) / 4 for i in range(50)])
  assert s["output_variance"] == pytest.approx(var)
  assert np.isnan(observables.output_variance(f[:1]))


def test_ensemble_of_identical_members_has_no_variance():
  f = np.tile(np.linspace(-1, 1, 11), (3, 1))
  y = np.ones(11)
  s = observables.ensemble_summary(f, y)
  assert s["output_variance"] == pytest.approx(0.0, abs=1e-25)
  assert s["ensemble_test_error"] == s["mean_test_error"]


def test_n_delta_and_error_conventions():
  f = np.array([2.0, 1.0, 0.5, 0.0, -1.0])
  y = np.ones(5)
  assert int(observables.n_delta(f, y, 1.0)) == 3  # Delta = 1 - f > 0 strictly
  assert float(observables.error(f, y)) == pytest.approx(2 / 5)  # f = 0 counts as an error


def test_delta_histograms_normalization():
  rng = np.random.default_rng(1)
  delta = np.concatenate([rng.uniform(1e-3, 1, 300), -rng.uniform(1e-3, 1, 700)])
  bins = observables.log_bins(1e-4, 10, 50)
  h = observables.delta_histograms(delta, loss=0.25, bins=bins)
  widths = np.diff(bins)
  assert np.sum(h["positive"] * widths) == pytest.approx(0.3)
  assert np.sum(h["negative"] * widths) == pytest.approx(0.7)
  # positive side is rescaled by sqrt(loss) = 0.5
  assert h["n_positive"] == 300
  centers = np.sqrt(bins[1:] * bins[:-1])
  mean_pos = np.sum(centers * h["positive"] * widths) / 0.3
  assert 0.9 < mean_pos < 1.1  # E[U(0,1)] / 0.5 = 1 up to binning (0.5 if not rescaled)


def test_run_dirs_are_atomic(tmp_path):
  with pytest.raises(RuntimeError):
    with io.new_run(str(tmp_path), "x", {"a": 1}) as w:
      w.write_json("summary.json", {})
      raise RuntimeError("boom")
  # Nothing left behind, not even the <root>/x folder this call created.
  assert not (tmp_path / "x").exists()
  with io.new_run(str(tmp_path), "x", {"a": 1}) as w:
    w.log([{"step": 0, "loss": float("nan")}])
    w.save_arrays(a=np.arange(3))
    w.write_json("summary.json", {"v": np.float64(1.5), "inf": float("inf")})
  run = io.load_run(w.final_path)
  assert run.summary == {"v": 1.5, "inf": "inf"}
  assert run.metrics() == [{"step": 0, "loss": None}]
  np.testing.assert_array_equal(run.arrays["a"], np.arange(3))
  with pytest.raises(io.RunError, match="not found"):
    io.load_run(str(tmp_path / "nope"))
  (tmp_path / "partial").mkdir()
  (tmp_path / "partial" / "config.json").write_text("{}")
  with pytest.raises(io.RunError, match="incomplete"):
    io.load_run(str(tmp_path / "partial"))
