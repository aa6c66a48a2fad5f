"""Small statistical fitters for transitions and exponents (NumPy only).

* :func:`fit_threshold`: where a fraction (e.g. of members that reach N_Delta
  = 0) crosses 1/2 as a control parameter (e.g. P/N) varies; logistic model
  fitted by maximum likelihood on the binomial counts, confidence interval of
  the crossing point by **profile likelihood** (Wilks, chi^2 with 1 degree of
  freedom).
* :func:`power_law_mle`: the exponent ``a`` of a density p(x) ~ x^a on
  [x_min, x_max] (truncated power law, Clauset, Shalizi & Newman 2009 for the
  untruncated case), either sign of ``a``; bootstrap CI (over samples, or over
  groups such as ensemble members). The jamming exponents of 1809.09349 are
  ``a = theta`` for P_+(Delta) ~ Delta^theta and ``a = -gamma`` for
  P_-(Delta) ~ |Delta|^-gamma.
* :func:`exponent_vs_range`: the same fit over several ranges, to check that
  the exponent does not depend on where the range is cut.
* :func:`log_log_slope`: least squares slope in log-log coordinates with a
  bootstrap CI (over points, or over members when given per-member values),
  e.g. N* ~ P^0.75 or test error - eps_inf ~ N^-1/2.

No NumPy global RNG: randomness comes from ``np.random.default_rng(seed)``.
"""
import math
import statistics
from typing import Sequence

import numpy as np


def _chi2_1_quantile(level: float) -> float:
  """Quantile of chi^2 with one degree of freedom (= z_{(1+level)/2}^2)."""
  z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
  return z * z


def _bisect(fn, lo, hi, n_iter: int = 100):
  """Vectorized bisection for an increasing ``fn``: the root in [lo, hi].

  ``lo``, ``hi`` are arrays of brackets (broadcast with the arrays ``fn``
  closes over); values outside the bracket converge to its ends.
  """
  lo = np.array(lo, np.float64)
  hi = np.array(hi, np.float64)
  lo, hi = np.broadcast_arrays(lo, hi)
  lo, hi = lo.copy(), hi.copy()
  for _ in range(n_iter):
    mid = 0.5 * (lo + hi)
    pos = fn(mid) > 0
    hi = np.where(pos, mid, hi)
    lo = np.where(pos, lo, mid)
  return 0.5 * (lo + hi)


# --------------------------------------------------------------------------
# Threshold of a fraction: logistic fit, profile-likelihood CI
# --------------------------------------------------------------------------


def _log_sigmoid(z):
  return -np.logaddexp(0.0, -z)


def _binom_loglik(z, k, n):
  """sum_i k_i log s(z_i) + (n_i - k_i) log s(-z_i); z [..., m]."""
  return np.sum(k * _log_sigmoid(z) + (n - k) * _log_sigmoid(-z), axis=-1)


def _profile_over_slope(x, k, n, x0, b_max):
  """max over the slope b of the log likelihood with the crossing at x0.

  The model is p(x) = sigmoid(b (x - x0)); for fixed x0 the log likelihood is
  concave in b, so its derivative sum (k - n p)(x - x0) is decreasing in b
  and the maximizer is found by bisection. x0: [G] -> ([G] loglik, [G] b).
  """
  x0 = np.asarray(x0, np.float64)[:, None]
  dx = x[None, :] - x0

  def neg_score(b):  # increasing in b
    p = np.exp(_log_sigmoid(b[:, None] * dx))
    return -np.sum((k - n * p) * dx, axis=-1)

  b = _bisect(neg_score, np.full(x0.shape[0], -b_max),
              np.full(x0.shape[0], b_max), n_iter=60)
  return _binom_loglik(b[:, None] * dx, k, n), b


def _counts(x, n_sat, n_total) -> tuple:
  """(x, k, n) as flat float64 arrays, checked, cells with 0 trials dropped."""
  x = np.asarray(x, np.float64).ravel()
  k = np.asarray(n_sat, np.float64).ravel()
  n = np.asarray(n_total, np.float64).ravel()
  if not (x.shape == k.shape == n.shape):
    raise ValueError(f"x, n_sat and n_total must have the same length, got "
                     f"{x.shape}, {k.shape}, {n.shape}")
  if np.any(k < 0) or np.any(k > n):
    raise ValueError("need 0 <= n_sat <= n_total")
  keep = n > 0
  return x[keep], k[keep], n[keep]


def _profile_argmax(x, k, n, grid, prof, b_max) -> float:
  """The crossing point of largest profile likelihood.

  Under perfect separation the profile is flat (at the saturated likelihood)
  on the gap: the middle of the flat part. Otherwise the maximum is refined
  between the grid neighbours of the best point (three rounds of 33 points).
  """
  near = np.flatnonzero(prof >= prof.max() - 1e-9)
  if near.size > 1:
    return float(0.5 * (grid[near[0]] + grid[near[-1]]))
  i = int(near[0])
  a, b = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
  for _ in range(3):
    t = np.linspace(a, b, 33)
    j = int(np.argmax(_profile_over_slope(x, k, n, t, b_max)[0]))
    a, b = t[max(j - 1, 0)], t[min(j + 1, t.size - 1)]
  return float(0.5 * (a + b))


def _is_separated(x, k, n) -> bool:
  """Perfect separation: every x has fraction 0 or 1 and, in order of x, the
  fraction changes once."""
  xs = np.unique(x)
  fx = np.array([k[x == v].sum() / n[x == v].sum() for v in xs])
  return bool(np.all((fx == 0) | (fx == 1)) and 0 < fx.sum() < fx.size
              and np.count_nonzero(np.diff(fx)) == 1)


def _cut_crossing(x, k, n, b_max, floor, a, b) -> float:
  """Where the profile crosses ``floor`` between ``a`` (below) and ``b`` (above).

  Three rounds of a vectorized 33-point grid (resolution 32^-3 of |b - a|).
  """
  for _ in range(3):
    t = np.linspace(a, b, 33)
    inside_t = _profile_over_slope(x, k, n, t, b_max)[0] >= floor
    j = int(np.argmax(inside_t))  # first inside point (b is inside)
    a, b = t[max(j - 1, 0)], t[j]
  return float(0.5 * (a + b))


def _profile_ci(x, k, n, grid, prof, b_max, cut) -> list:
  """[lo, hi] of {x0: profile(x0) >= max - cut}; None where it runs off the grid."""
  lmax = prof.max()
  idx = np.flatnonzero(prof >= lmax - cut)
  lo_i, hi_i = idx.min(), idx.max()
  ci_lo = (None if lo_i == 0 else
           _cut_crossing(x, k, n, b_max, lmax - cut, grid[lo_i - 1], grid[lo_i]))
  ci_hi = (None if hi_i == grid.size - 1 else
           _cut_crossing(x, k, n, b_max, lmax - cut, grid[hi_i + 1], grid[hi_i]))
  return [ci_lo, ci_hi]


def fit_threshold(x, n_sat, n_total, level: float = 0.95,
                  n_grid: int = 401) -> dict:
  """Where the fraction ``n_sat / n_total`` crosses 1/2, with a CI.

  Fits p(x) = 1 / (1 + exp(-(x - x_half) / s)) (s < 0 for a fraction that
  decreases with x, as the fraction of networks that fit the data decreases
  with P/N) by maximum likelihood on the binomial counts. The CI of x_half is
  the profile-likelihood interval {x0: 2 (l_max - max_s l(x0, s)) <= chi^2_1(level)}.
  When the data are perfectly separated (all sat below some x, none above), the
  likelihood is maximal (slope -> infinity) anywhere in the gap; the estimate
  is then the middle of the gap and the CI covers it.

  Args:
    x: [m] control parameter of each cell (several cells may share an x).
    n_sat: [m] number of successes (e.g. members with N_Delta = 0).
    n_total: [m] number of trials (cells with 0 trials are ignored).
    level: confidence level of the interval.
    n_grid: profile grid points (the CI ends are refined by bisection).

  Returns:
    dict with ``x_half`` (None if the data never cross 1/2 within the measured
    range), ``ci`` [lo, hi] (an end is None when the interval runs past the
    measured range), ``width`` = |s| (the 12%-88% width is 4|s|; 0 for
    separated data), ``slope`` = 1/s, ``separated`` (perfect separation),
    ``bracketed`` (the fraction is above 1/2 at some measured x and below at
    another), ``loglik``, ``n_cells``, ``n_trials``, ``method``.
  """
  x, k, n = _counts(x, n_sat, n_total)
  out = {"x_half": None, "ci": [None, None], "width": None, "slope": None,
         "separated": False, "bracketed": False, "loglik": None,
         "n_cells": int(x.size), "n_trials": int(n.sum()), "level": level,
         "method": "logistic MLE on binomial counts, profile-likelihood CI"}
  frac = k / np.where(n > 0, n, 1)
  if x.size == 0 or np.ptp(x) == 0:
    return out
  out["bracketed"] = bool(frac.max() >= 0.5 >= frac.min() and
                          frac.max() > frac.min())
  span = np.ptp(x)
  # Slopes up to ~1e4 per span: steeper than that is a step for all purposes.
  b_max = 1e4 / span
  lo_g, hi_g = x.min() - 0.5 * span, x.max() + 0.5 * span
  grid = np.linspace(lo_g, hi_g, n_grid)
  grid = np.unique(np.concatenate([grid, x]))
  prof, _ = _profile_over_slope(x, k, n, grid, b_max)
  cut = _chi2_1_quantile(level) / 2.0
  x_best = _profile_argmax(x, k, n, grid, prof, b_max)
  lbest, bbest = _profile_over_slope(x, k, n, np.array([x_best]), b_max)
  separated = _is_separated(x, k, n)
  out["separated"] = separated
  out["loglik"] = float(lbest[0])
  out["slope"] = float(bbest[0])
  out["width"] = 0.0 if separated else float(1.0 / abs(bbest[0]))
  out["ci"] = _profile_ci(x, k, n, grid, prof, b_max, cut)
  inside_data = x.min() <= x_best <= x.max()
  out["x_half"] = x_best if (inside_data and out["bracketed"]) else None
  return out


def logistic(x, x_half: float, slope: float):
  """The fitted curve of :func:`fit_threshold`: sigmoid(slope (x - x_half))."""
  z = slope * (np.asarray(x, np.float64) - x_half)
  return np.exp(_log_sigmoid(z))


# --------------------------------------------------------------------------
# Power laws
# --------------------------------------------------------------------------


def _trunc_mean_u(s, L):
  """E[u] for the density ~ exp(s u) on [0, L] (s = a + 1, u = log(x/x_min)).

  = L / (1 - exp(-s L)) - 1/s, increasing in s from 0 (s -> -inf) to L.
  """
  s = np.asarray(s, np.float64)
  sl = s * L
  small = np.abs(sl) < 1e-6
  safe = np.where(small, 1.0, s)
  big = L / (-np.expm1(-np.where(small, 1.0, sl))) - 1.0 / safe
  return np.where(small, L / 2 + s * L * L / 12, big)


def _pl_exponent(stat, x_min, x_max, n):
  """MLE exponent(s) from sufficient statistic(s) ``stat`` = mean(log x)."""
  stat = np.asarray(stat, np.float64)
  if x_min == 0:
    # p(x) = (a + 1) x^a / x_max^(a+1) on (0, x_max]: a + 1 = 1 / mean(log(x_max / x)).
    return -1.0 + 1.0 / np.maximum(math.log(x_max) - stat, 1e-300)
  if x_max is None:
    # Pareto: a = -1 - 1 / mean(log(x / x_min)).
    return -1.0 - 1.0 / np.maximum(stat - math.log(x_min), 1e-300)
  L = math.log(x_max / x_min)
  u_bar = stat - math.log(x_min)
  # Solve E_s[u] = u_bar; s in a wide bracket (|a| up to 1e3 / L).
  s_max = 1e3 / L
  s = _bisect(lambda s: _trunc_mean_u(s, L) - u_bar,
              np.full(u_bar.shape, -s_max), np.full(u_bar.shape, s_max), 200)
  return s - 1.0


def _log_int_exp(s: float, L: float) -> float:
  """log of int_0^L e^{s u} du = (e^{sL} - 1) / s, without overflow where
  s L is large (samples piled at x_max push the MLE there)."""
  x = s * L
  if abs(x) < 1e-12:
    return math.log(L)
  if x > 0:  # log(e^x - 1) = x + log(1 - e^-x)
    return x + math.log(-math.expm1(-x)) - math.log(s)
  return math.log(-math.expm1(x)) - math.log(-s)


def _pl_loglik(a, logx_sum, n, x_min, x_max):
  s = a + 1.0
  if x_min == 0:
    return n * math.log(s) - n * s * math.log(x_max) + a * logx_sum
  if x_max is None:
    # p(x) = (-s / x_min) (x / x_min)^a on [x_min, inf)
    return n * math.log(-s / x_min) + a * (logx_sum - n * math.log(x_min))
  L = math.log(x_max / x_min)
  log_norm = _log_int_exp(s, L)
  return a * (logx_sum - n * math.log(x_min)) - n * log_norm - n * math.log(x_min)


def power_law_mle(samples, x_min: float, x_max: float | None = None,
                  n_boot: int = 500, level: float = 0.95, seed: int = 0,
                  groups=None) -> dict:
  """Maximum-likelihood exponent of p(x) ~ x^a on [x_min, x_max].

  Samples outside [x_min, x_max] are dropped (the fit is the likelihood
  conditional on the range). Three cases:

  * ``0 < x_min`` and ``x_max`` given: truncated power law, any sign of a; the
    MLE solves E_a[log x] = mean(log x) (exponential family in log x).
  * ``x_min == 0``: p(x) = (a + 1) x^a / x_max^(a + 1) on (0, x_max], needs
    a > -1; a + 1 = 1 / mean(log(x_max / x)). Natural for small-Delta ranges
    (theta of P_+(Delta) ~ Delta^theta).
  * ``x_max is None``: Pareto tail, needs a < -1.

  Args:
    samples: [n] positive values (e.g. Delta / sqrt(loss) for Delta > 0, or
      -Delta for Delta < 0).
    x_min, x_max: the range.
    n_boot: bootstrap replicates (0: no CI).
    level: CI level (percentile bootstrap).
    seed: bootstrap RNG seed.
    groups: optional [n] group labels (e.g. member index): the bootstrap then
      resamples whole groups, which keeps within-member correlations.

  Returns:
    dict with ``exponent`` (a; None if fewer than 2 samples in range), ``ci``
    [lo, hi], ``stderr`` (asymptotic, from the Fisher information),
    ``n_samples`` (in range), ``x_min``, ``x_max``, ``loglik``, ``method``.
  """
  x = np.asarray(samples, np.float64).ravel()
  if x_min < 0 or (x_max is not None and x_max <= x_min):
    raise ValueError(f"need 0 <= x_min < x_max, got {x_min}, {x_max}")
  if x_min == 0 and x_max is None:
    raise ValueError("x_min = 0 needs a finite x_max")
  g = None if groups is None else np.asarray(groups).ravel()
  if g is not None and g.shape != x.shape:
    raise ValueError("groups must have the same length as samples")
  keep = (x > x_min) & np.isfinite(x) & (x > 0)
  if x_max is not None:
    keep &= x <= x_max
  x = x[keep]
  g = None if g is None else g[keep]
  out = {"exponent": None, "ci": [None, None], "stderr": None,
         "n_samples": int(x.size), "x_min": float(x_min),
         "x_max": None if x_max is None else float(x_max), "loglik": None,
         "level": level,
         "method": ("truncated power-law MLE, percentile bootstrap over "
                    + ("groups" if g is not None else "samples"))}
  if x.size < 2:
    return out
  logx = np.log(x)
  n = x.size
  a = float(_pl_exponent(np.array([logx.mean()]), x_min, x_max, n)[0])
  out["exponent"] = a
  out["loglik"] = float(_pl_loglik(a, logx.sum(), n, x_min, x_max))
  # Fisher information: n Var_a[log x].
  out["stderr"] = float(_pl_stderr(a, n, x_min, x_max))
  n_groups = None if g is None else np.unique(g).size
  if n_boot > 0 and (n_groups is None or n_groups >= 2):  # one group: no CI
    rng = np.random.default_rng(seed)
    if g is None:
      idx = rng.integers(0, n, size=(n_boot, n))
      stats = logx[idx].mean(axis=1)
      counts = np.full(n_boot, n)
    else:
      labels, inv = np.unique(g, return_inverse=True)
      sums = np.bincount(inv, weights=logx, minlength=labels.size)
      cnts = np.bincount(inv, minlength=labels.size).astype(np.float64)
      pick = rng.integers(0, labels.size, size=(n_boot, labels.size))
      counts = cnts[pick].sum(axis=1)
      stats = sums[pick].sum(axis=1) / np.maximum(counts, 1)
    ok = counts >= 2
    boots = _pl_exponent(stats[ok], x_min, x_max, n)
    q = (1 - level) / 2
    out["ci"] = [float(np.quantile(boots, q)), float(np.quantile(boots, 1 - q))]
  return out


def _pl_stderr(a, n, x_min, x_max):
  s = a + 1.0
  if x_min == 0 or x_max is None:
    return abs(s) / math.sqrt(n)  # log x is exponential: Var = 1/s^2
  L = math.log(x_max / x_min)
  # Var[u] for density ~ e^{s u} on [0, L]: 1/s^2 - L^2 e^{sL} / (e^{sL} - 1)^2.
  sl = s * L
  if abs(sl) < 1e-4:
    var = L * L / 12
  else:
    e = math.exp(-abs(sl))  # L^2 / (4 sinh^2(sL / 2)), no overflow at large |sL|
    var = 1.0 / s**2 - L * L * e / (1.0 - e) ** 2
  return 1.0 / math.sqrt(max(n * var, 1e-300))


def exponent_vs_range(samples, ranges: Sequence, n_boot: int = 200,
                      level: float = 0.95, seed: int = 0, groups=None) -> dict:
  """Fits :func:`power_law_mle` on several ranges; is the exponent stable?

  Args:
    samples: [n] positive values.
    ranges: list of (x_min, x_max) pairs (x_max may be None).
    n_boot, level, seed, groups: as :func:`power_law_mle`.

  Returns:
    dict with ``fits`` (one per range), ``exponents``, ``spread`` (max - min
    of the exponents) and ``stable``: True when the spread is at most the
    median CI width (the fits agree within their own errors). None when fewer
    than two ranges could be fitted.
  """
  fits = [power_law_mle(samples, lo, hi, n_boot=n_boot, level=level, seed=seed,
                        groups=groups) for lo, hi in ranges]
  exps = [f["exponent"] for f in fits]
  good = [f for f in fits if f["exponent"] is not None and f["ci"][0] is not None]
  out = {"fits": fits, "exponents": exps, "spread": None, "stable": None}
  if len(good) >= 2:
    e = np.array([f["exponent"] for f in good])
    widths = np.array([f["ci"][1] - f["ci"][0] for f in good])
    out["spread"] = float(e.max() - e.min())
    out["stable"] = bool(out["spread"] <= np.median(widths))
  return out


def sample_power_law(key_or_rng, a: float, x_min: float, x_max: float | None,
                     n: int) -> np.ndarray:
  """n samples of p(x) ~ x^a on [x_min, x_max] by inverse CDF (for tests).

  ``key_or_rng``: a ``np.random.Generator`` or an int seed.
  """
  rng = (key_or_rng if isinstance(key_or_rng, np.random.Generator)
         else np.random.default_rng(key_or_rng))
  u = rng.random(n)
  s = a + 1.0
  if x_max is None:
    if s >= 0:
      raise ValueError("an untruncated power law needs a < -1")
    return x_min * (1 - u) ** (1 / s)
  if abs(s) < 1e-12:
    return x_min * (x_max / x_min) ** u
  lo, hi = x_min ** s, x_max ** s
  return (lo + u * (hi - lo)) ** (1 / s)


# --------------------------------------------------------------------------
# Log-log slopes
# --------------------------------------------------------------------------


def _ls_slope(lx, ly):
  """Least-squares slopes of ly vs lx along the last axis ([..., n])."""
  mx = lx.mean(axis=-1, keepdims=True)
  my = ly.mean(axis=-1, keepdims=True)
  sxx = np.sum((lx - mx) ** 2, axis=-1)
  sxy = np.sum((lx - mx) * (ly - my), axis=-1)
  with np.errstate(invalid="ignore", divide="ignore"):
    slope = sxy / sxx
  return slope, (my[..., 0] - slope * mx[..., 0])


def log_log_t_interval(x, y, level: float = 0.95) -> list:
  """Textbook interval of the least-squares exponent of y ~ C x^b:
  b +- t_{n-2} SE (iid Gaussian scatter of log y); [None, None] below three
  positive points. With few points it has the nominal coverage under its
  assumption, where the bootstrap of :func:`log_log_slope` is too narrow."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  ok = (x > 0) & np.isfinite(x) & (y > 0) & np.isfinite(y)
  n = int(ok.sum())
  if n < 3:
    return [None, None]
  from scipy import stats  # pylint: disable=g-import-not-at-top
  lx, ly = np.log(x[ok]), np.log(y[ok])
  slope, icpt = _ls_slope(lx, ly)
  resid = ly - icpt - slope * lx
  se = float(np.sqrt(np.sum(resid ** 2) / (n - 2) / np.sum((lx - lx.mean()) ** 2)))
  t = float(stats.t.ppf(0.5 + level / 2, n - 2))
  return [float(slope - t * se), float(slope + t * se)]


def log_log_slope(x, y, n_boot: int = 1000, seed: int = 0,
                  level: float = 0.95) -> dict:
  """Exponent b of y ~ C x^b by least squares on (log x, log y), with a CI.

  Args:
    x: [n] positive abscissae.
    y: [n] positive values (bootstrap resamples the points (x_i, y_i)), or
      [n, K] per-member values (NaN for missing): the fit is to the mean over
      members at each x and the bootstrap resamples members, which carries
      the member-to-member fluctuations into the CI.
    n_boot: bootstrap replicates (0: no CI).
    seed: bootstrap RNG seed.
    level: CI level (percentile bootstrap).

  Returns:
    dict with ``exponent``, ``prefactor`` C, ``ci`` [lo, hi], ``n_points``,
    ``method``.
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  if x.ndim != 1 or y.shape[0] != x.shape[0] or y.ndim not in (1, 2):
    raise ValueError(f"need x [n] and y [n] or [n, K], got {x.shape}, {y.shape}")
  per_member = y.ndim == 2
  ybar = np.nanmean(y, axis=1) if per_member else y
  ok = (x > 0) & np.isfinite(x) & (ybar > 0) & np.isfinite(ybar)
  out = {"exponent": None, "prefactor": None, "ci": [None, None],
         "n_points": int(ok.sum()), "level": level,
         "method": ("least squares in log-log, percentile bootstrap over "
                    + ("members" if per_member else "points"))}
  if ok.sum() < 2:
    return out
  lx = np.log(x[ok])
  slope, icpt = _ls_slope(lx, np.log(ybar[ok]))
  out["exponent"] = float(slope)
  out["prefactor"] = float(np.exp(icpt))
  if n_boot <= 0:
    return out
  rng = np.random.default_rng(seed)
  if per_member:
    yk = y[ok]
    pick = rng.integers(0, yk.shape[1], size=(n_boot, yk.shape[1]))
    with np.errstate(invalid="ignore"):
      ym = np.nanmean(yk[:, pick], axis=2).T  # [n_boot, n]
    good = np.all(ym > 0, axis=1) & np.all(np.isfinite(ym), axis=1)
    b, _ = _ls_slope(np.broadcast_to(lx, ym.shape)[good], np.log(ym[good]))
  else:
    n = lx.size
    idx = rng.integers(0, n, size=(n_boot, n))
    b, _ = _ls_slope(lx[idx], np.log(ybar[ok])[idx])
  b = b[np.isfinite(b)]
  if b.size:
    q = (1 - level) / 2
    out["ci"] = [float(np.quantile(b, q)), float(np.quantile(b, 1 - q))]
  return out
