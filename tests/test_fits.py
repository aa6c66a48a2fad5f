import numpy as np
import pytest

from lossland import fits


def _threshold_trial(rng, x0=2.5, slope=-10.0, n=12):
  x = np.linspace(2.0, 3.0, 9)
  k = rng.binomial(np.full(x.size, n), fits.logistic(x, x0, slope))
  return fits.fit_threshold(x, k, np.full(x.size, n))


def test_threshold_ci_covers_the_true_crossing():
  # 50 synthetic sweeps of a fraction-sat that falls from 1 to 0 around
  # x0 = 2.5: the 95% profile-likelihood CI covers x0 in most of them
  # (binomial: 95% nominal gives >= 43/50 with prob. 0.96) and misses a value
  # 2 widths away almost always; the CIs are narrow and the estimate unbiased.
  rng = np.random.default_rng(0)
  cover, cover_wrong, widths, errs = 0, 0, [], []
  for _ in range(50):
    f = _threshold_trial(rng)
    lo, hi = f["ci"]
    assert f["bracketed"] and lo is not None and hi is not None
    assert lo <= f["x_half"] <= hi
    cover += lo <= 2.5 <= hi
    cover_wrong += lo <= 2.7 <= hi
    widths.append(hi - lo)
    errs.append(f["x_half"] - 2.5)
  assert cover >= 43
  assert cover_wrong <= 3
  assert np.median(widths) < 0.2
  assert abs(np.mean(errs)) < 0.02


def test_threshold_recovers_slope_and_both_directions():
  x = np.repeat(np.linspace(0, 4, 41), 1)
  n = np.full(x.size, 4000)
  for slope in (-3.0, 3.0):
    k = np.round(n * fits.logistic(x, 1.7, slope))  # near-exact counts
    f = fits.fit_threshold(x, k, n)
    assert f["x_half"] == pytest.approx(1.7, abs=2e-3)
    assert f["slope"] == pytest.approx(slope, rel=1e-2)
    assert f["width"] == pytest.approx(1 / 3, rel=1e-2)
    assert not f["separated"]


def test_threshold_separated_and_not_crossing():
  f = fits.fit_threshold([1, 2, 3, 4], [5, 5, 0, 0], [5, 5, 5, 5])
  assert f["separated"] and f["x_half"] == pytest.approx(2.5)
  assert 2.0 <= f["ci"][0] < 2.1 and 2.9 < f["ci"][1] <= 3.0
  # all sat: no crossing within the measured range
  f = fits.fit_threshold([1, 2, 3], [5, 5, 5], [5, 5, 5])
  assert f["x_half"] is None and not f["bracketed"]
  # empty cells are ignored; bad counts raise
  f = fits.fit_threshold([1, 2, 3, 9], [4, 2, 0, 0], [4, 4, 4, 0])
  assert f["n_cells"] == 3 and f["x_half"] == pytest.approx(2.0, abs=0.05)
  with pytest.raises(ValueError):
    fits.fit_threshold([1, 2], [3, 1], [2, 2])


@pytest.mark.parametrize("a,x_min,x_max", [
    (0.3, 0.0, 1.0),        # theta: P_+(Delta) ~ Delta^0.3 near 0
    (-0.2, 1e-3, 1.0),      # -gamma: P_-(Delta) ~ |Delta|^-0.2
    (1.5, 0.1, 10.0),       # steep increase on a finite range
    (-2.5, 1.0, None),      # Pareto tail
])
def test_power_law_mle_recovers_exponent_with_coverage(a, x_min, x_max):
  rng = np.random.default_rng(1)
  # A large sample: the MLE is within 4 standard errors and the stderr agrees
  # with the spread of the bootstrap.
  s = fits.sample_power_law(rng, a, x_min, x_max, 20000)
  f = fits.power_law_mle(s, x_min, x_max, n_boot=200)
  assert abs(f["exponent"] - a) < 4 * f["stderr"]
  assert f["stderr"] < 0.05
  assert (f["ci"][1] - f["ci"][0]) == pytest.approx(2 * 1.96 * f["stderr"], rel=0.25)
  # Coverage of the bootstrap CI over 40 small samples.
  cover = 0
  for r in range(40):
    s = fits.sample_power_law(rng, a, x_min, x_max, 400)
    f = fits.power_law_mle(s, x_min, x_max, n_boot=200, seed=r)
    cover += f["ci"][0] <= a <= f["ci"][1]
  assert cover >= 33


def test_power_law_mle_drops_out_of_range_and_groups_bootstrap():
  rng = np.random.default_rng(2)
  s = fits.sample_power_law(rng, 0.3, 0.0, 1.0, 2000)
  extra = np.concatenate([s, 5 + rng.random(500), -rng.random(10), [np.nan]])
  a = fits.power_law_mle(s, 0.0, 1.0, n_boot=0)
  b = fits.power_law_mle(extra, 0.0, 1.0, n_boot=0)
  assert a["exponent"] == b["exponent"] and b["n_samples"] == 2000
  # Each sample repeated 10 times: the naive bootstrap believes it has 10x the
  # data (CI ~ sqrt(10) narrower); resampling whole groups does not.
  s = s[:300]
  rep = np.repeat(s, 10)
  groups = np.repeat(np.arange(300), 10)
  w1 = np.diff(fits.power_law_mle(s, 0.0, 1.0, n_boot=400)["ci"])[0]
  w_naive = np.diff(fits.power_law_mle(rep, 0.0, 1.0, n_boot=400)["ci"])[0]
  w_group = np.diff(fits.power_law_mle(rep, 0.0, 1.0, n_boot=400, groups=groups)["ci"])[0]
  assert w_group == pytest.approx(w1, rel=0.25)
  assert w_naive < 0.5 * w1
  assert fits.power_law_mle([0.5], 0.0, 1.0)["exponent"] is None
  with pytest.raises(ValueError):
    fits.power_law_mle(s, 0.0, None)


def test_exponent_vs_range_detects_a_break():
  rng = np.random.default_rng(3)
  pure = fits.sample_power_law(rng, 0.3, 0.0, 1.0, 6000)
  ranges = [(0.0, 0.1), (0.0, 0.3), (0.0, 1.0)]
  r = fits.exponent_vs_range(pure, ranges, n_boot=200)
  assert r["stable"] and len(r["exponents"]) == 3
  # A density that is ~x^0.3 below 0.1 and ~x^2 above: the fit drifts with
  # the range.
  lo = fits.sample_power_law(rng, 0.3, 0.0, 0.1, 3000)
  hi = fits.sample_power_law(rng, 2.0, 0.1, 1.0, 3000)
  r = fits.exponent_vs_range(np.concatenate([lo, hi]), ranges, n_boot=200)
  assert r["stable"] is False
  assert r["exponents"][0] == pytest.approx(0.3, abs=0.15)
  assert abs(r["exponents"][2] - r["exponents"][0]) > 0.3


def test_log_log_slope():
  x = np.logspace(2, 5, 7)
  f = fits.log_log_slope(x, 3.0 * x ** 0.75)
  assert f["exponent"] == pytest.approx(0.75, abs=1e-12)
  assert f["prefactor"] == pytest.approx(3.0, rel=1e-10)
  assert f["ci"][0] == pytest.approx(0.75, abs=1e-10)
  assert f["ci"][1] == pytest.approx(0.75, abs=1e-10)
  rng = np.random.default_rng(4)
  # noisy points: the CI covers the truth and is not vacuous
  cover = 0
  for r in range(30):
    y = x ** -0.5 * np.exp(rng.normal(0, 0.05, x.size))
    f = fits.log_log_slope(x, y, n_boot=300, seed=r)
    cover += f["ci"][0] <= -0.5 <= f["ci"][1]
    assert f["ci"][1] - f["ci"][0] < 0.15
  assert cover >= 24
  # per-member values [n, K] with a missing value: bootstrap over members
  y = x[:, None] ** -0.5 * np.exp(rng.normal(0, 0.3, (x.size, 12)))
  y[0, 3] = np.nan
  f = fits.log_log_slope(x, y, n_boot=300)
  assert "members" in f["method"]
  assert f["ci"][0] <= -0.5 <= f["ci"][1]
  assert f["ci"][1] - f["ci"][0] < 0.2
  with pytest.raises(ValueError):
    fits.log_log_slope(x, y[:3])


def test_log_log_t_interval_is_the_textbook_one():
  from scipy import stats
  rng = np.random.default_rng(3)
  x = np.geomspace(10, 1000, 6)
  y = 2.0 * x ** -0.7 * np.exp(0.05 * rng.standard_normal(6))
  lo, hi = fits.log_log_t_interval(x, y)
  r = stats.linregress(np.log(x), np.log(y))
  half = stats.t.ppf(0.975, 4) * r.stderr
  np.testing.assert_allclose([lo, hi], [r.slope - half, r.slope + half], rtol=1e-10)
  assert fits.log_log_t_interval(x[:2], y[:2]) == [None, None]


def test_power_law_mle_on_samples_piled_at_the_top_of_the_range():
  """Samples just below x_max on [x_min, x_max]: the MLE sits near the edge
  of its bracket, where (e^{sL} - 1) / s overflows a float; the
  log-likelihood is computed without it and equals the closed form."""
  x_min, x_max = 1e-3, 1.0
  s = np.array([0.9999, 0.99995, 0.99999, 0.999999])
  f = fits.power_law_mle(s, x_min, x_max, n_boot=20)
  assert f["exponent"] is not None and f["exponent"] > 50
  L = np.log(x_max / x_min)
  for a in (-0.5, 3.0, 200.0, 5000.0):
    sa = a + 1
    # log((e^{sa L} - 1) / sa) in closed form, written to avoid overflow by hand
    want = sa * L + np.log1p(-np.exp(-sa * L)) - np.log(sa)
    assert fits._log_int_exp(sa, L) == pytest.approx(want, rel=1e-12)
  assert fits._log_int_exp(-2.0, L) == pytest.approx(np.log((1 - np.exp(-2 * L)) / 2))
  assert fits._log_int_exp(1e-15, L) == pytest.approx(np.log(L))
  for a in (-3.0, 0.3, 4.0):
    sl = (a + 1) * L
    var = 1 / (a + 1) ** 2 - L * L / (4 * np.sinh(sl / 2) ** 2)
    assert fits._pl_stderr(a, 10, x_min, x_max) == pytest.approx(1 / np.sqrt(10 * var))
  assert 0 < fits._pl_stderr(5000.0, 10, x_min, x_max) < np.inf
