"""Gap-distribution exponents by the density MLE and the CDF fit
(lossland.gap_exponents): recovery, CI coverage, group bootstrap, range
stability, sign convention, bad input."""
import json

import numpy as np
import pytest

from lossland import gap_exponents as ge
from lossland.fits import power_law_mle, sample_power_law


def _se(fit):
  """Standard error from a 95% percentile CI."""
  return (fit["ci"][1] - fit["ci"][0]) / 3.92


@pytest.mark.parametrize("a", [0.3, -0.4, -0.2])
def test_cdf_fit_recovers_a_known_exponent(a):
  x = sample_power_law(np.random.default_rng(11), a, 0.0, 1.0, 20000)
  f = ge.cdf_exponent(x, 1.0, n_boot=200, seed=1)
  assert f["n_samples"] == f["n_total"] == 20000
  assert f["ci"][0] < f["exponent"] < f["ci"][1]
  assert abs(f["exponent"] - a) < 3 * _se(f)
  assert _se(f) < 0.03
  assert not f["ci"][0] <= a + 0.15 <= f["ci"][1]  # a wrong a is excluded
  # the same on the small-x part only, (0, median]
  h = ge.cdf_exponent(x, float(np.quantile(x, 0.5)), n_boot=200, seed=1)
  assert abs(h["exponent"] - a) < 3 * _se(h)
  assert "least squares of log C(x) vs log x" in f["method"]


def test_gamma_side_via_exponent_fits():
  # P_-(|Delta|) ~ |Delta|^-gamma with gamma = 0.2: samples with a = -0.2,
  # sign = -1 reports gamma by both methods.
  rng = np.random.default_rng(5)
  x = sample_power_law(rng, -0.2, 0.0, 1.0, 100 * 80)
  g = np.repeat(np.arange(100), 80)
  r = ge.exponent_fits(x, g, n_boot=200, seed=0, sign=-1)
  assert r["exponent"] == pytest.approx(0.2, abs=3 * _se(r))
  cdf_se = (r["ci_cdf"][1] - r["ci_cdf"][0]) / 3.92
  assert r["exponent_cdf"] == pytest.approx(0.2, abs=3 * cdf_se)
  assert r["density"]["stable"] and r["cdf"]["stable"]
  assert "density" in r["method"] and "CDF" in r["method"]
  json.dumps(r)  # JSON-serializable as is


def _coverage(a, n_sets=200, n_members=20, per_member=30, n_boot=200):
  rng = np.random.default_rng(2024)
  g = np.repeat(np.arange(n_members), per_member)
  hit_cdf = hit_den = 0
  est_cdf, est_den = [], []
  for t in range(n_sets):
    x = sample_power_law(rng, a, 0.0, 1.0, g.size)
    x_max = float(np.quantile(x, 0.5))
    c = ge.cdf_exponent(x, x_max, groups=g, n_boot=n_boot, seed=t)
    d = power_law_mle(x, 0.0, x_max, n_boot=n_boot, seed=t, groups=g)
    hit_cdf += c["ci"][0] <= a <= c["ci"][1]
    hit_den += d["ci"][0] <= a <= d["ci"][1]
    est_cdf.append(c["exponent"])
    est_den.append(d["exponent"])
  return (hit_cdf / n_sets, hit_den / n_sets,
          float(np.mean(est_cdf)) - a, float(np.mean(est_den)) - a)


def test_ci_coverage_of_both_methods_with_member_bootstrap():
  # 200 synthetic ensembles of 20 members x 30 samples, a = 0.3 on (0, 1],
  # fit on (0, median], 95% percentile CIs from 200 group-bootstrap replicates.
  # Measured here: CDF method 0.895 (179/200), density MLE 0.945 (189/200).
  # Over 1000 ensembles (other seeds) the CDF CIs covered 0.89 and the MLE's
  # 0.91-0.94: the percentile bootstrap of the log-log CDF slope is ~15% too
  # narrow (the slope leans on the few smallest order statistics, whose law
  # the bootstrap reproduces poorly); its bias is < 0.01, the MLE's ~ +0.01.
  cov_cdf, cov_den, bias_cdf, bias_den = _coverage(0.3)
  assert 0.85 <= cov_cdf <= 0.99
  assert 0.85 <= cov_den <= 0.99
  # Mean error over the 200 fits (its standard error ~0.008 for the CDF fit,
  # 0.005 for the MLE); measured +0.006 (CDF) and +0.009 (MLE). With C = i/n
  # instead of the mid-rank (i - 1/2)/n the CDF fit gives -0.031 and fails.
  assert abs(bias_cdf) < 0.02
  assert abs(bias_den) < 0.02


def test_group_bootstrap_is_wider_for_correlated_members():
  # Each member's samples carry its own scale factor exp(2 z): the samples of
  # one member are correlated, and resampling members must give wider CIs
  # than resampling samples (which treats the 2000 samples as independent).
  # Ratios measured over 20 seeds: CDF 1.7 to 7.8, density 4.1 to 7.0.
  width = lambda f: f["ci"][1] - f["ci"][0]
  n_members, per_member = 40, 50
  g = np.repeat(np.arange(n_members), per_member)
  for seed in range(3):
    rng = np.random.default_rng(seed)
    scale = np.exp(2.0 * rng.standard_normal(n_members))
    x = (sample_power_law(rng, 0.3, 0.0, 1.0, g.size).reshape(n_members, -1)
         * scale[:, None]).ravel()
    x_max = float(np.quantile(x, 0.5))
    by_group = ge.cdf_exponent(x, x_max, groups=g, n_boot=200, seed=seed)
    by_sample = ge.cdf_exponent(x, x_max, n_boot=200, seed=seed)
    assert width(by_group) > 1.5 * width(by_sample)
    assert "over groups" in by_group["method"]
    assert "over samples" in by_sample["method"]
    r = ge.exponent_fits(x, g, n_boot=200, seed=seed)
    r_s = ge.exponent_fits(x, None, n_boot=200, seed=seed)
    assert width(r["density"]) > 1.5 * width(r_s["density"])
    assert width(r["cdf"]) > 1.5 * width(r_s["cdf"])


def test_group_bootstrap_matches_sample_bootstrap_for_independent_members():
  # Without correlations the two bootstraps agree (to bootstrap noise).
  rng = np.random.default_rng(3)
  x = sample_power_law(rng, 0.3, 0.0, 1.0, 4000)
  g = np.repeat(np.arange(200), 20)
  by_group = ge.cdf_exponent(x, 0.5, groups=g, n_boot=400)
  by_sample = ge.cdf_exponent(x, 0.5, n_boot=400)
  w_g = by_group["ci"][1] - by_group["ci"][0]
  w_s = by_sample["ci"][1] - by_sample["ci"][0]
  assert 0.7 < w_g / w_s < 1.4
  assert by_group["exponent"] == pytest.approx(by_sample["exponent"], abs=1e-12)


def test_range_stability_pure_vs_broken_power_law():
  # 20 members x 50 samples. A pure power law (a = 0.3) is stable for both
  # methods (20/20 seeds when measured); two power laws joined at x_c = 0.1
  # (35% of the samples with a = 0.3 on (0, 0.1], 65% with a = -0.7 on
  # (0.1, 10]) put the crossover between the 0.25 and the 0.5 quantiles:
  # unstable for both methods (20/20 seeds).
  g = np.repeat(np.arange(20), 50)
  for seed in range(2):
    rng = np.random.default_rng(seed)
    pure = ge.exponent_fits(sample_power_law(rng, 0.3, 0.0, 1.0, g.size), g,
                            n_boot=200, seed=seed)
    assert pure["density"]["stable"] is True and pure["cdf"]["stable"] is True
    n1 = int(0.35 * g.size)
    mixed = rng.permutation(np.concatenate([
        sample_power_law(rng, 0.3, 0.0, 0.1, n1),
        sample_power_law(rng, -0.7, 0.1, 10.0, g.size - n1)]))
    broken = ge.exponent_fits(mixed, g, n_boot=200, seed=seed)
    assert broken["density"]["stable"] is False
    assert broken["cdf"]["stable"] is False
    for m in ("density", "cdf"):
      rc = broken[m]["range_check"]
      assert rc["q"] == [0.25, 0.5, 0.75] and len(rc["exponents"]) == 3
      e = rc["exponents"]
      assert rc["spread"] == pytest.approx(max(e) - min(e))
      assert rc["exponents"][0] > rc["exponents"][2] + 0.3  # a falls past x_c


def test_sign_minus_one_flips_exponent_and_ci():
  rng = np.random.default_rng(7)
  x = sample_power_law(rng, -0.2, 0.0, 1.0, 600)
  g = np.repeat(np.arange(20), 30)
  plus = ge.exponent_fits(x, g, n_boot=100, seed=3, sign=+1)
  minus = ge.exponent_fits(x, g, n_boot=100, seed=3, sign=-1)
  assert plus["exponent"] == plus["density"]["exponent"]
  assert minus["exponent"] == -plus["exponent"]
  assert minus["ci"] == [-plus["ci"][1], -plus["ci"][0]]
  assert minus["exponent_cdf"] == -plus["exponent_cdf"]
  assert minus["ci_cdf"] == [-plus["ci_cdf"][1], -plus["ci_cdf"][0]]
  assert minus["ci"][0] < minus["exponent"] < minus["ci"][1]
  assert minus["density"] == plus["density"] and minus["cdf"] == plus["cdf"]
  assert "-a" in minus["method"]
  with pytest.raises(ValueError):
    ge.exponent_fits(x, g, sign=2)


def test_too_few_samples_give_none():
  x = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
  f = ge.cdf_exponent(x, 0.45)  # 4 in range
  assert f["exponent"] is None and f["ci"] == [None, None]
  assert f["n_samples"] == 4 and f["n_total"] == 9
  assert ge.cdf_exponent(x, 0.55)["exponent"] is not None  # 5 in range
  one = ge.cdf_exponent(x, 1.0, groups=np.zeros(9))  # one member
  assert one["exponent"] is None and one["ci"] == [None, None]
  nb = ge.cdf_exponent(x, 1.0, n_boot=0)
  assert nb["exponent"] is not None and nb["ci"] == [None, None]
  # non-positive and non-finite samples are dropped, not ranked
  d = ge.cdf_exponent(np.concatenate([x, [0.0, -1.0, np.nan, np.inf]]), 1.0)
  assert d["n_total"] == 9
  assert d["exponent"] == ge.cdf_exponent(x, 1.0)["exponent"]
  for tiny in (np.zeros(0), np.array([0.3, 0.1, 0.2]), -x):
    r = ge.exponent_fits(tiny, n_boot=50)
    assert r["exponent"] is None and r["ci"] == [None, None]
    assert r["exponent_cdf"] is None and r["ci_cdf"] == [None, None]
    json.dumps(r)


def test_bad_input_raises():
  x = sample_power_law(np.random.default_rng(0), 0.3, 0.0, 1.0, 100)
  with pytest.raises(ValueError):
    ge.cdf_exponent(x, 0.5, x_min=0.5)
  with pytest.raises(ValueError):
    ge.cdf_exponent(x, 0.2, x_min=0.5)
  with pytest.raises(ValueError):
    ge.cdf_exponent(x, 0.5, x_min=-0.1)
  with pytest.raises(ValueError):
    ge.cdf_exponent(x, 0.5, groups=np.zeros(99))
  with pytest.raises(ValueError):
    ge.exponent_fits(x, groups=np.zeros(101))
  with pytest.raises(ValueError):
    ge.exponent_fits(x, q=0.0)


def test_a_floor_leaves_out_a_peak_at_zero_and_recovers_the_tail_exponent():
  """Force-balanced states hold points at the margin, Delta = 0 up to the
  state's accuracy (docs/jamming.md): a peak at 0, here 12 % of the samples
  at 1e-12..1e-6. Fitted with them the exponent is dragged far below the
  truth; with x_floor = 1e-4 both fits recover a = 0.3 and count the peak."""
  rng = np.random.default_rng(7)
  tail = sample_power_law(rng, 0.3, 0.0, 1.0, 60 * 50)
  peak = 10.0 ** rng.uniform(-12, -6, size=60 * 7)
  x = np.concatenate([tail, peak])
  g = np.concatenate([np.repeat(np.arange(60), 50), np.repeat(np.arange(60), 7)])
  raw = ge.exponent_fits(x, g, n_boot=200, seed=0)
  assert raw["ci"][1] < 0.0 and raw["x_floor"] == 0.0 and raw["n_below_floor"] == 0
  r = ge.exponent_fits(x, g, n_boot=200, seed=0, x_floor=1e-4)
  assert r["n_below_floor"] == 60 * 7 + int(np.sum(tail <= 1e-4))
  assert r["n_samples"] == int(np.sum(tail > 1e-4))
  assert r["ci"][0] < 0.3 < r["ci"][1] and r["ci_cdf"][0] < 0.3 < r["ci_cdf"][1]
  assert r["density"]["x_min"] == 1e-4 and "samples <= 0.0001 left out" in r["method"]
  assert r["x_max"] == pytest.approx(float(np.quantile(tail[tail > 1e-4], 0.5)))
  with pytest.raises(ValueError, match="x_floor"):
    ge.exponent_fits(x, g, x_floor=-1.0)
