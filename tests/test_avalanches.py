import json
import math

import numpy as np
import pytest
from scipy import optimize, special

from lossland import avalanches as av

TAU = 2.2
LAM = 0.3
S_MAX = 10**6  # truncation of the power-law sampler (lost mass ~ 4e-8 at tau 2.2)


class _PowerLaw:
  """Exact inverse-transform sampler of p(s) ~ s^-tau on s_min <= s <= S_MAX."""

  def __init__(self, tau, s_min=1):
    k = np.arange(s_min, S_MAX + 1, dtype=np.float64)
    cdf = np.cumsum(k ** -tau)
    self.cdf = cdf / cdf[-1]
    self.s_min = s_min

  def __call__(self, rng, n):
    i = np.searchsorted(self.cdf, rng.random(n), side="right")
    return (self.s_min + i).astype(np.int64)


@pytest.fixture(scope="module")
def pl():
  return _PowerLaw(TAU)


def _geometric(rng, n, lam=LAM):
  """p(s) = (1 - e^-lam) e^(-lam (s - 1)) on s >= 1."""
  return rng.geometric(-math.expm1(-lam), n).astype(np.int64)


def _var_log_direct(tau, s_min=1, k_max=S_MAX):
  """Var_tau[log s] of the discrete power law by a direct (truncated) sum."""
  k = np.arange(s_min, k_max + 1, dtype=np.float64)
  w = k ** -tau
  w /= w.sum()
  m1 = np.sum(w * np.log(k))
  return np.sum(w * np.log(k) ** 2) - m1 * m1


def test_power_law_mle_recovers_tau_and_stderr(pl):
  # One big sample: tau within 3 stderr, and the stderr equals
  # 1 / sqrt(n Var[log s]) with the variance summed directly over the support.
  x = pl(np.random.default_rng(0), 5000)
  f = av.discrete_power_law_mle(x)
  assert f["n"] == 5000 and f["s_min"] == 1 and not f["at_bound"]
  assert abs(f["tau"] - TAU) < 3 * f["tau_stderr"]
  se = 1 / math.sqrt(5000 * _var_log_direct(f["tau"]))
  assert f["tau_stderr"] == pytest.approx(se, rel=1e-3)
  # Calibration: over 40 samples of 1000, |error| < 1.96 stderr in most
  # (expected 38; fewer than 33 has probability ~ 0.1 %), no systematic bias.
  rng = np.random.default_rng(1)
  z = []
  for _ in range(40):
    g = av.discrete_power_law_mle(pl(rng, 1000))
    z.append((g["tau"] - TAU) / g["tau_stderr"])
  z = np.array(z)
  assert np.sum(np.abs(z) < 1.96) >= 33
  assert abs(z.mean()) < 3 / math.sqrt(40)


def test_power_law_loglik_is_the_direct_sum_and_maximal(pl):
  x = pl(np.random.default_rng(2), 800)
  for s_min in (1, 3):
    f = av.discrete_power_law_mle(x, s_min=s_min)
    t = x[x >= s_min]

    def direct(tau):
      n_log_z = t.size * np.log(special.zeta(tau, s_min))
      return float(-tau * np.sum(np.log(t)) - n_log_z)

    assert f["n"] == t.size
    assert f["loglik"] == pytest.approx(direct(f["tau"]), rel=1e-12)
    assert direct(f["tau"] + 1e-3) < f["loglik"]
    assert direct(f["tau"] - 1e-3) < f["loglik"]
    # Score equation: mean log s = -d/dtau log zeta(tau, s_min).
    h = 1e-6
    dlogz = (np.log(special.zeta(f["tau"] + h, s_min))
             - np.log(special.zeta(f["tau"] - h, s_min))) / (2 * h)
    assert np.mean(np.log(t)) == pytest.approx(-dlogz, rel=1e-5)


def _ks_brute(x, tau, s_min):
  """sup over every integer k in [s_min, max(x)] of |F_n(k) - P(k)|."""
  k = np.arange(s_min, x.max() + 1)
  emp = np.searchsorted(np.sort(x), k, side="right") / x.size
  model = np.cumsum(k.astype(np.float64) ** -tau) / special.zeta(tau, s_min)
  return np.max(np.abs(emp - model))


def test_ks_distance_is_the_sup_over_all_integers(pl):
  # Gappy samples: the sup sits just before a gap closes, not at a sample value.
  cases = [(np.array([1] * 10 + [50] * 10 + [51] * 3), 1),
           (pl(np.random.default_rng(12), 200), 1),
           (pl(np.random.default_rng(13), 200), 3)]
  for x, s_min in cases:
    c = av.compare(x, s_min=s_min)
    brute = _ks_brute(x[x >= s_min], c["tau"], s_min)
    assert c["ks"] == pytest.approx(brute, rel=1e-9)


def test_exponential_mle_matches_closed_form_and_numerics():
  x = _geometric(np.random.default_rng(3), 5000)
  f = av.discrete_exponential_mle(x)
  m = np.mean(x - 1)
  assert f["lam"] == pytest.approx(math.log(1 + 1 / m), rel=1e-12)
  # stderr of lam: 1 / sqrt(n Var[s]) = 0.0043 here.
  assert abs(f["lam"] - LAM) < 0.015
  ll = lambda lam: float(np.sum(np.log(-np.expm1(-lam)) - lam * (x - 1)))
  assert f["loglik"] == pytest.approx(ll(f["lam"]), rel=1e-12)
  r = optimize.minimize_scalar(lambda lam: -ll(lam), bounds=(0.01, 3),
                               method="bounded", options={"xatol": 1e-10})
  assert f["lam"] == pytest.approx(r.x, abs=1e-6)
  # Shifted tail: p(s) = (1 - e^-lam) e^(-lam (s - s_min)), lam unchanged by
  # memorylessness (up to noise), n counts only s >= s_min.
  g = av.discrete_exponential_mle(x, s_min=4)
  t = x[x >= 4]
  assert g["n"] == t.size
  assert g["lam"] == pytest.approx(math.log(1 + 1 / np.mean(t - 4)), rel=1e-12)
  assert abs(g["lam"] - LAM) < 0.03
  # Degenerate: every size at s_min.
  d = av.discrete_exponential_mle([2, 2, 2], s_min=2)
  assert d["lam"] is None and d["loglik"] == 0.0


def test_compare_favors_power_law_on_power_law_data(pl):
  x = pl(np.random.default_rng(4), 5000)
  for s_min in (None, 1):
    c = av.compare(x, s_min=s_min)
    assert c["favored"] == "power_law"
    assert c["p_value"] < 1e-6 and c["vuong_z"] > 0 and c["loglik_ratio"] > 0
    assert abs(c["tau"] - TAU) < 3 * c["tau_stderr"]
    assert c["ks"] < 0.05
  json.dumps(c, allow_nan=False)


def test_compare_favors_exponential_on_geometric_data():
  rng = np.random.default_rng(5)
  x = _geometric(rng, 5000)
  c = av.compare(x, s_min=1)
  assert c["favored"] == "exponential"
  assert c["p_value"] < 1e-6 and c["vuong_z"] < 0
  assert abs(c["lam"] - LAM) < 0.015
  # With s_min chosen by the power law's KS distance, the far tail of an
  # exponential may be undecided, but never a power law.
  for _ in range(3):
    a = av.compare(_geometric(rng, 5000))
    assert a["s_min_source"] == "ks" and a["s_min"] > 1
    assert a["favored"] in ("exponential", "undecided")
    assert not a["tau_at_bound"]


def test_small_samples_are_less_decisive(pl):
  rng = np.random.default_rng(6)
  big_pl = av.compare(pl(rng, 5000), s_min=1)
  big_ex = av.compare(_geometric(rng, 5000), s_min=1)
  small_pl, small_ex = [], []
  for _ in range(10):
    small_pl.append(av.compare(pl(rng, 20), s_min=1))
    small_ex.append(av.compare(_geometric(rng, 20), s_min=1))
  for big, small in ((big_pl, small_pl), (big_ex, small_ex)):
    p_small = np.array([c["p_value"] for c in small])
    assert np.all(p_small > big["p_value"])
    assert np.median(p_small) > 1e3 * big["p_value"]
  # The small power-law samples are undecided at least sometimes (the
  # verdict is honest about 20 sizes).
  assert any(c["favored"] == "undecided" for c in small_pl)
  assert all(c["favored"] != "exponential" for c in small_pl)
  assert all(c["favored"] != "power_law" for c in small_ex)


def test_choose_s_min_finds_the_crossover():
  # Geometric below s = 20, pure power law (tau = 2.2) from 20 on. Any
  # s_min >= 20 has a pure power-law tail, and the least-KS choice above 20 is
  # noisy (Clauset et al. 2009 fig. 3.3): in 60 trial seeds it was 20 in a
  # third of them, > 40 in 10 %, never below 20. So: most within a factor 2,
  # median near 20, never deep in the geometric part.
  tail = _PowerLaw(TAU, s_min=20)
  rng = np.random.default_rng(10)
  chosen = []
  for i in range(20):
    g = _geometric(rng, 20000)
    x = np.concatenate([g[g < 20][:3000], tail(rng, 2000)])
    chosen.append(av.choose_s_min(x))
    if i < 3:
      c = av.compare(x)
      assert c["s_min"] == chosen[-1] and c["favored"] == "power_law"
      # With the head included the KS distance of the power law is much worse.
      assert av.compare(x, s_min=1)["ks"] > 3 * c["ks"]
  chosen = np.array(chosen)
  assert np.sum((chosen >= 10) & (chosen <= 40)) >= 16
  assert 18 <= np.median(chosen) <= 30
  assert chosen.min() >= 15
  # Candidates with too small a tail are skipped; none left -> ValueError.
  assert av.choose_s_min(x, candidates=[1, 20, 10**5]) == 20
  with pytest.raises(ValueError):
    av.choose_s_min(x, candidates=[10**5])
  with pytest.raises(ValueError):
    av.choose_s_min(x[:30], min_tail=50)


def test_zeros_counted_and_excluded(pl):
  x = pl(np.random.default_rng(7), 2000)
  z = np.concatenate([np.zeros(300, np.int64), x])
  np.random.default_rng(8).shuffle(z)
  a, b = av.compare(z, s_min=1), av.compare(x, s_min=1)
  assert a["n_zero"] == 300 and a["n_total"] == 2300 and a["n_tail"] == 2000
  assert b["n_zero"] == 0 and b["n_total"] == 2000
  for k in ("tau", "lam", "loglik_ratio", "p_value", "ks"):
    assert a[k] == pytest.approx(b[k], rel=1e-8)  # up to summation order
  # Automatic s_min: zeros never enter the tail either.
  assert av.compare(z)["s_min"] == av.compare(x)["s_min"]
  h = av.size_histogram(z)
  assert h["n_zero"] == 300 and h["n_pos"] == 2000


def test_too_few_samples_gives_none_with_reason():
  c = av.compare([0, 0, 1, 3, 2, 7, 0])
  assert c["favored"] is None and "fewer than" in c["reason"]
  assert c["n_zero"] == 3 and c["n_tail"] == 4 and c["s_min_source"] == "default"
  json.dumps(c, allow_nan=False)
  # Enough sizes but all in the tail equal: no test either.
  d = av.compare([5] * 30 + [0] * 5, s_min=2)
  assert d["favored"] is None and "equal" in d["reason"]
  # s_min beyond every size.
  e = av.compare(list(range(1, 100)), s_min=1000)
  assert e["favored"] is None and e["n_tail"] == 0
  with pytest.raises(ValueError):
    av.compare([1, 2, -1])
  with pytest.raises(ValueError):
    av.compare([1, 2.5])
  with pytest.raises(ValueError):
    av.discrete_power_law_mle([1, 2, 3], s_min=0)


def test_size_histogram_is_a_density_per_integer(pl):
  x = pl(np.random.default_rng(9), 20000)
  h = av.size_histogram(x, n_bins=20)
  edges, w = np.array(h["edges"]), np.array(h["width"])
  assert np.all(np.diff(edges) > 0) and edges[0] == 1 and edges[-1] == x.max() + 1
  assert np.array_equal(w, np.diff(edges))
  assert sum(h["counts"]) == 20000
  dens = np.array(h["density"])
  assert np.sum(dens * w) == pytest.approx(1.0)
  # Straight line of slope -tau on log-log (bins with >= 20 counts).
  ok = np.array(h["counts"]) >= 20
  slope = np.polyfit(np.log(np.array(h["centers"])[ok]), np.log(dens[ok]), 1)[0]
  assert abs(slope + TAU) < 0.15
  # First bins are single integers: the density is the empirical pmf.
  assert w[0] == 1 and dens[0] == pytest.approx(np.mean(x == 1))
  json.dumps(h, allow_nan=False)
  assert av.size_histogram([0, 0])["edges"] == []
