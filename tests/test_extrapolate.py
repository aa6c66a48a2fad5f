import json
import math

import numpy as np
import pytest
from scipy import stats

from lossland import extrapolate as ex
from lossland import phase

SIZES = np.array([150.0, 300.0, 600.0, 900.0])
Z95 = 1.959963984540054


def _cis(p, sigma, z=Z95):
  return [[float(x - z * s), float(x + z * s)] for x, s in zip(p, sigma)]


def test_noise_free_sqrt_limit_is_recovered_exactly():
  p = 0.9 + 2.0 * SIZES**-0.5
  for ci in (None, _cis(p, np.full(4, 0.02))):
    r = ex.extrapolate(SIZES, p, ci=ci, model="sqrt")
    assert r["reason"] is None and r["weighted"] == (ci is not None)
    assert r["p_inf"] == pytest.approx(0.9, abs=1e-10)
    assert r["a"] == pytest.approx(2.0, abs=1e-8)
    assert r["omega"] == 0.5 and r["dof"] == 2 and r["n_sizes"] == 4
    assert np.max(np.abs(r["residuals"])) < 1e-12
    assert r["chi2"] < 1e-20
    lo, hi = r["p_inf_ci"]
    assert lo <= 0.9 + 1e-10 and 0.9 - 1e-10 <= hi
  # the inverse model on 1/N data
  p1 = 0.9 + 30.0 / SIZES
  r = ex.extrapolate(SIZES, p1, model="inverse")
  assert r["p_inf"] == pytest.approx(0.9, abs=1e-10) and r["omega"] == 1.0
  # the wrong model does not fit: a 1/N correction seen through N^-1/2
  r = ex.extrapolate(SIZES, p1, model="sqrt")
  assert abs(r["p_inf"] - 0.9) > 0.01 and r["rss"] > 1e-6


def test_power_model_recovers_omega_and_limit():
  p = 0.9 + 2.0 * SIZES**-0.7
  r = ex.extrapolate(SIZES, p, model="power", n_boot=200)
  assert r["reason"] is None and r["dof"] == 1
  assert r["omega"] == pytest.approx(0.7, abs=0.01)   # grid step 0.01
  assert r["omega_at_edge"] is False
  assert r["p_inf"] == pytest.approx(0.9, abs=1e-6)
  assert r["a"] == pytest.approx(2.0, abs=1e-3)
  # off the grid (step 0.01): the refinement finds omega far below the step
  r = ex.extrapolate(SIZES, 0.9 + 2.0 * SIZES**-0.7333, model="power", n_boot=0)
  assert r["omega"] == pytest.approx(0.7333, abs=1e-5)
  assert r["p_inf"] == pytest.approx(0.9, abs=1e-5)
  # omega fixed by hand with model "power"
  r = ex.extrapolate(SIZES, p, model="power", omega=0.7, n_boot=0)
  assert r["omega"] == 0.7 and r["dof"] == 2
  assert r["p_inf"] == pytest.approx(0.9, abs=1e-10)
  assert r["p_inf_ci"] == [None, None] and r["n_boot"] == 0


def test_bootstrap_ci_covers_the_truth_at_about_the_nominal_rate():
  # 200 noisy data sets (sigma known, 95% CIs built from it), model sqrt.
  # Measured coverage: 0.97 (194/200); 1000 repetitions give 0.951. The fit
  # is linear, so the parametric-bootstrap CI is the WLS +- 1.96 se: its width
  # matches the analytic one.
  sig = np.array([0.03, 0.025, 0.02, 0.02])
  x = SIZES**-0.5
  w = 1 / sig**2
  cov = np.linalg.inv(np.array([[w.sum(), (w * x).sum()],
                                [(w * x).sum(), (w * x * x).sum()]]))
  width_exact = 2 * Z95 * math.sqrt(cov[0, 0])
  rng = np.random.default_rng(1)
  cover, widths = 0, []
  for i in range(200):
    p = 0.9 + 2.0 * x + sig * rng.standard_normal(4)
    r = ex.extrapolate(SIZES, p, ci=_cis(p, sig), seed=i)
    lo, hi = r["p_inf_ci"]
    cover += lo <= 0.9 <= hi
    widths.append(hi - lo)
  assert 0.85 <= cover / 200 <= 0.99, cover
  assert np.median(widths) == pytest.approx(width_exact, rel=0.1)


def test_chi2_residuals_and_sigma_follow_their_definitions():
  rng = np.random.default_rng(3)
  p = 1.0 + 1.5 * SIZES**-0.5 + 0.01 * rng.standard_normal(4)
  # asymmetric CIs: sigma = mean half width / z
  ci = [[x - 0.02, x + 0.04] for x in p]
  r = ex.extrapolate(SIZES, p, ci=ci, n_boot=50)
  sig = np.array(r["sigma"])
  np.testing.assert_allclose(sig, 0.03 / Z95)
  fit = r["p_inf"] + r["a"] * SIZES**-0.5
  np.testing.assert_allclose(r["residuals"], p - fit, atol=1e-14)
  res = np.array(r["residuals"])
  assert r["chi2"] == pytest.approx(np.sum((res / sig) ** 2), rel=1e-10)
  assert r["rss"] == pytest.approx(np.sum(res**2), rel=1e-10)
  assert r["dof"] == 2
  assert r["chi2_pvalue"] == pytest.approx(stats.chi2.sf(r["chi2"], 2))
  # the fit minimizes chi2: moving p_inf or a increases it
  for dp, da in ((1e-3, 0), (0, 1e-2)):
    r2 = np.sum(((p - fit - dp - da * SIZES**-0.5) / sig) ** 2)
    assert r2 > r["chi2"]
  # without CIs chi2 is the residual sum of squares and has no p-value
  r = ex.extrapolate(SIZES, p, n_boot=50)
  assert r["chi2"] == pytest.approx(r["rss"]) and r["chi2_pvalue"] is None
  assert r["sigma"] == [None] * 4 and not r["weighted"]
  # any input order: the sizes come out by ascending N, residuals in that order
  rr = ex.extrapolate(SIZES[::-1], p[::-1], ci=ci[::-1], n_boot=0)
  assert rr["N"] == list(SIZES) and rr["p"] == list(p)
  np.testing.assert_allclose(rr["residuals"], res, atol=1e-14)
  # a CI of another level: ci_level sets z
  r90 = ex.extrapolate(SIZES, p, ci=ci, n_boot=0, ci_level=0.9)
  np.testing.assert_allclose(r90["sigma"], 0.03 / stats.norm.ppf(0.95))


def test_missing_sizes_are_dropped_with_a_reason():
  p = list(0.9 + 2.0 * SIZES**-0.5)
  ci = _cis(p, np.full(4, 0.02))
  N = list(SIZES) + [1200.0, 2400.0, None, 50.0]
  P = p + [None, float("nan"), 0.95, 1.2]
  C = ci + [[None, None], [0.9, 1.0], [0.9, 1.0], [None, None]]
  r = ex.extrapolate(N, P, ci=C, n_boot=100)
  ref = ex.extrapolate(SIZES, p, ci=ci, n_boot=100)
  assert r["N"] == list(SIZES) and r["n_sizes"] == 4
  assert r["p_inf"] == pytest.approx(ref["p_inf"], abs=1e-12)
  assert r["p_inf_ci"] == pytest.approx(ref["p_inf_ci"])
  reasons = sorted(d["reason"] for d in r["dropped"])
  assert reasons == ["N missing or not positive", "P*/N missing", "P*/N missing",
                     "no finite CI (weight unknown)"]
  # a CI with one finite end: that half width
  r = ex.extrapolate(SIZES, p, ci=ci[:3] + [[p[3] - 0.05, None]], n_boot=0)
  assert r["sigma"][3] == pytest.approx(0.05 / Z95)
  # no finite CI at all: equal weights (and residual bootstrap)
  r = ex.extrapolate(SIZES, p, ci=[[None, None]] * 4, n_boot=10)
  assert not r["weighted"] and r["p_inf"] == pytest.approx(0.9, abs=1e-10)


def test_too_few_sizes_give_a_reason_not_an_exception():
  p = 0.9 + 2.0 * SIZES**-0.5
  ci = _cis(p, np.full(4, 0.02))
  cases = [
      ex.extrapolate(SIZES[:1], p[:1], ci=ci[:1]),                   # 1 < 2
      ex.extrapolate(SIZES[:2], p[:2]),                              # no CI: 2 < 3
      ex.extrapolate(SIZES[:3], p[:3], ci=ci[:3], model="power"),    # 3 < 4
      ex.extrapolate(SIZES, [None] * 4, ci=ci),
      ex.extrapolate([], []),
      ex.extrapolate([300, 300, 300], [1.0, 1.01, 0.99]),            # one N
  ]
  for r in cases:
    assert r["p_inf"] is None and r["p_inf_ci"] == [None, None]
    assert isinstance(r["reason"], str) and r["reason"]
    json.dumps(ex.public(r), allow_nan=False)
  assert "needs 3" in cases[1]["reason"] and "needs 4" in cases[2]["reason"]
  # two sizes with CIs: the line through them, its error from the CIs
  r = ex.extrapolate(SIZES[:2], p[:2], ci=ci[:2])
  assert r["dof"] == 0 and r["p_inf"] == pytest.approx(0.9, abs=1e-10)
  assert r["p_inf_ci"][0] < 0.9 < r["p_inf_ci"][1] and r["chi2_pvalue"] is None
  # three sizes without CIs: residual bootstrap with one dof
  r = ex.extrapolate(SIZES[:3], p[:3] + [0.0, 0.01, 0.0])
  assert r["dof"] == 1 and r["p_inf_ci"][0] < r["p_inf"] < r["p_inf_ci"][1]


def _depth(limit, sigma, seed=0, noise=None, n_boot=1000):
  p = limit + 2.0 * SIZES**-0.5
  if noise is not None:
    p = p + noise
  return ex.extrapolate(SIZES, p, ci=_cis(p, np.full(4, sigma)),
                        n_boot=n_boot, seed=seed)


def test_depth_spread_detects_different_limits():
  same = {2: _depth(0.9, 0.02, seed=1), 3: _depth(0.9, 0.02, seed=2)}
  s = ex.depth_spread_extrapolated(same)
  assert s["reason"] is None and s["depths"] == ["2", "3"]
  assert s["spread"] < 1e-10 and s["consistent"] and s["p_value"] > 0.05
  assert s["common_p_inf"] == pytest.approx(0.9, abs=1e-10)
  lo, hi = s["spread_ci"]
  assert 0 <= lo < hi < 0.5   # max - min > 0 in each replicate
  # a little noise, still one limit
  rng = np.random.default_rng(5)
  near = {L: _depth(0.9, 0.02, seed=L, noise=0.005 * rng.standard_normal(4))
          for L in (2, 3, 4)}
  s = ex.depth_spread_extrapolated(near)
  assert s["consistent"] and s["p_value"] > 0.05 and s["dof"] == 2
  # limits 0.9 and 1.3 with small errors: inconsistent, spread 0.4
  apart = {2: _depth(0.9, 0.002, seed=1), 5: _depth(1.3, 0.002, seed=2)}
  s = ex.depth_spread_extrapolated(apart)
  assert s["consistent"] is False and s["p_value"] < 1e-6
  assert s["spread"] == pytest.approx(0.4, abs=1e-9)
  assert s["spread_relative"] == pytest.approx(0.4 / 1.1)
  lo, hi = s["spread_ci"]
  assert lo < 0.4 < hi and hi - lo < 0.1
  json.dumps(s, allow_nan=False)
  # read back from JSON (no replicates): normal draws from p_inf_se, same CI
  back = json.loads(json.dumps(ex.public(apart)))
  s2 = ex.depth_spread_extrapolated(back)
  assert s2["spread_ci"] == pytest.approx(s["spread_ci"], abs=0.01)
  assert s2["p_value"] == s["p_value"]


def test_depth_spread_shuffles_replicates_of_equal_seeds():
  # two depths with the same data and the same seed have identical replicates;
  # paired naively their spread would be 0 in every replicate.
  a, b = _depth(0.9, 0.02, seed=7), _depth(0.9, 0.02, seed=7)
  np.testing.assert_array_equal(a["_boot"], b["_boot"])
  s = ex.depth_spread_extrapolated({2: a, 3: b})
  assert s["spread_ci"][1] > 0.5 * a["p_inf_se"]


def test_depth_spread_needs_two_depths():
  s = ex.depth_spread_extrapolated({2: _depth(0.9, 0.02),
                                    3: ex.extrapolate([300], [1.0])})
  assert s["spread"] is None and s["reason"] and s["excluded"] == ["3"]
  assert ex.depth_spread_extrapolated({})["reason"]


def _check_fse(out, depths):
  assert sorted(out["per_depth"]) == sorted(depths)
  json.dumps(ex.public(out), allow_nan=False)
  assert all("_boot" in v for v in out["per_depth"].values())
  assert "N^-1/2" in out["model"] and out["model_name"] == "sqrt"


def test_finite_size_extrapolation_on_a_hand_made_dict():
  def entry(limit, ns, sigma=0.01, missing=()):
    n1 = [n[0] if isinstance(n, list) else n for n in ns]
    p = [None if i in missing else limit + 2.0 * n**-0.5 for i, n in enumerate(n1)]
    ci = [[None, None] if x is None else [x - Z95 * sigma, x + Z95 * sigma] for x in p]
    return {"N": list(ns), "p_star_over_n": p, "p_star_ci": ci}
  fs = {"sizes": [150.0, 300.0, 600.0, 900.0],
        "per_depth": {"2": entry(0.9, [150, 300, 600, 900]),
                      "3": entry(0.9, [150, 300, 600, 900]),
                      "10": entry(0.9, [148, 302, 598, [905, 905]], missing=(0,)),
                      "4": entry(1.3, [152, 298, 604, 895], sigma=0.002)},
        "depth_spread": [0.3, 0.2, 0.1, 0.05], "spread_slope": -1.0}
  out = ex.finite_size_extrapolation(fs, n_boot=300)
  _check_fse(out, ["2", "3", "4", "10"])
  pd = out["per_depth"]
  for L, lim in (("2", 0.9), ("3", 0.9), ("4", 1.3), ("10", 0.9)):
    assert pd[L]["p_inf"] == pytest.approx(lim, abs=1e-10)
  assert pd["10"]["n_sizes"] == 3 and pd["10"]["N"][-1] == 905.0
  assert out["spread"]["depths"] == ["2", "3", "4", "10"]
  assert out["spread"]["spread"] == pytest.approx(0.4, abs=1e-9)
  assert out["spread"]["consistent"] is False
  # the depths are bootstrapped with different seeds: same data, other replicates
  assert pd["2"]["p_inf_ci"] == pytest.approx(pd["3"]["p_inf_ci"], abs=0.01)
  assert not np.allclose(pd["2"]["_boot"], pd["3"]["_boot"])
  with pytest.raises(ValueError):
    ex.finite_size_extrapolation(fs, model="quadratic")


def test_finite_size_extrapolation_from_phase_finite_size():
  # Three sizes of a phase study (per-size results shaped like phase.analyze's),
  # put side by side by phase.finite_size, then extrapolated.
  def result(n, limits, sigma=0.01):
    pd = {}
    for L, lim in limits.items():
      x = lim + 2.0 * n**-0.5
      pd[L] = {"N": n, "p_star_over_n": x,
               "p_star_ci": [x - Z95 * sigma, x + Z95 * sigma]}
    return {"per_depth": pd, "depth_spread": phase.depth_spread(
        {L: v["p_star_over_n"] for L, v in pd.items()})}
  limits = {2: 1.1, 3: 1.1, 5: 1.1}
  fs = phase.finite_size([result(n, limits) for n in (600, 150, 300)])
  assert fs["sizes"] == [150.0, 300.0, 600.0]
  out = ex.finite_size_extrapolation(fs, n_boot=300, seed=4)
  _check_fse(out, ["2", "3", "5"])
  for v in out["per_depth"].values():
    assert v["p_inf"] == pytest.approx(1.1, abs=1e-10) and v["dof"] == 1
  assert out["spread"]["consistent"] and out["spread"]["spread"] < 1e-10
  # power needs four sizes: a reason per depth, no spread
  out = ex.finite_size_extrapolation(fs, model="power", n_boot=50)
  assert all(v["p_inf"] is None and v["reason"] for v in out["per_depth"].values())
  assert out["spread"]["spread"] is None and out["spread"]["reason"]


def test_bad_model_or_inputs_raise():
  p = 0.9 + 2.0 * SIZES**-0.5
  with pytest.raises(ValueError, match="unknown model"):
    ex.extrapolate(SIZES, p, model="log")
  with pytest.raises(ValueError):
    ex.extrapolate(SIZES, p, model="sqrt", omega=1.0)
  with pytest.raises(ValueError):
    ex.extrapolate(SIZES, p, model="power", omega=0.0)
  with pytest.raises(ValueError):
    ex.extrapolate(SIZES, p[:3])
