"""Exponents of the gap distributions at jamming, by two fits (NumPy only).

At the jamming transition the gaps Delta of the training points are power-law
distributed at small |Delta| (Geiger et al., "The jamming transition as a
paradigm to understand the loss landscape of deep neural networks",
arXiv:1809.09349; Franz, Hwang & Urbani, "Jamming in multilayer supervised
learning models", PRL 123, 160602 (2019), arXiv:1904.05813):

* Delta > 0 (rescaled by sqrt(loss) of its network): P_+(Delta) ~ Delta^theta,
  theta ~ 0.3 (1809.09349), ~ 0.42 (isostatic multilayer models, FHU 2019);
* Delta < 0: P_-(|Delta|) ~ |Delta|^-gamma, gamma ~ 0.2 (1809.09349), ~ 0.41
  (FHU 2019).

Both are the exponent ``a`` of a density p(x) ~ x^a at small x (theta = a,
gamma = -a). This module estimates ``a`` two ways, each with its method
stated in the result:

1. **density fit**: the truncated power-law MLE of
   :func:`lossland.fits.power_law_mle` on (0, x_max], with x_max the
   q-quantile of the samples;
2. **CDF fit** (:func:`cdf_exponent`): the empirical CDF C(x) ~ x^(1 + a) on
   the same range, least squares slope of log C vs log x, minus 1.

Both use a percentile bootstrap over groups (the samples of one network are
correlated, so whole networks are resampled) and a range-stability check
(the fit repeated with upper cutoffs at several quantiles; stable when the
spread of the exponents is at most the median CI width, the rule of
:func:`lossland.fits.exponent_vs_range`). :func:`exponent_fits` runs both.

No NumPy global RNG: randomness comes from ``np.random.default_rng(seed)``.
"""
from typing import Sequence

import numpy as np

from lossland.fits import exponent_vs_range, power_law_mle

# At most this many float64 elements per bootstrap chunk ([chunk, groups, m]).
_CHUNK_ELEMS = 2_000_000
_MIN_IN_RANGE = 5


def _check_groups(x, groups):
  """``groups`` as a flat array as long as ``x`` (or None); else ValueError."""
  if groups is None:
    return None
  g = np.asarray(groups).ravel()
  if g.shape != x.shape:
    raise ValueError(f"groups must have the same length as samples, got "
                     f"{g.shape[0]} and {x.shape[0]}")
  return g


def _positive(x, groups):
  """(x, g): the finite positive samples of ``x`` and their group labels.

  ``groups`` is checked against ``x`` (see :func:`_check_groups`) before the
  non-finite and non-positive samples are dropped from both.
  """
  g = _check_groups(x, groups)
  keep = np.isfinite(x) & (x > 0)
  x = x[keep]
  if g is not None:
    g = g[keep]
  return x, g


def _group_index(x, g):
  """(inv [n] group index in [0, G), G); without g, one group per sample."""
  if g is None:
    return np.arange(x.size), x.size
  _, inv = np.unique(g, return_inverse=True)
  inv = inv.ravel()
  return inv, int(inv.max()) + 1 if inv.size else 0


def _padded_groups(x, inv, n_groups, x_max):
  """Per-group values <= x_max, padded with NaN, and per-group totals.

  Args:
    x: [n] positive samples.
    inv: [n] group index in [0, n_groups).
    n_groups: number of groups G.
    x_max: upper end of the fit range.

  Returns:
    (vals [G, m] float64 with each group's samples <= x_max then NaN,
     totals [G] float64: number of samples of each group, all values).
  """
  totals = np.bincount(inv, minlength=n_groups).astype(np.float64)
  low = x <= x_max
  xl, il = x[low], inv[low]
  counts = np.bincount(il, minlength=n_groups)
  m = max(int(counts.max()) if counts.size else 0, 1)
  order = np.argsort(il, kind="stable")
  xl, il = xl[order], il[order]
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  col = np.arange(xl.size) - starts[il]
  vals = np.full((n_groups, m), np.nan)
  vals[il, col] = xl
  return vals, totals


def _cdf_slopes(vals, totals, pick, x_min, x_max):
  """Log-log CDF slopes (1 + a) of the resampled data sets in ``pick``.

  Args:
    vals: [G, m] per-group values <= x_max, NaN padded.
    totals: [G] per-group sample counts (all values).
    pick: [B, G] group indices of each resample.
    x_min, x_max: fit range (x_min, x_max].

  Returns:
    (slopes [B] (NaN where fewer than 5 points in range or no spread in x),
     n_in [B] number of points in range).
  """
  b = pick.shape[0]
  slopes = np.full(b, np.nan)
  n_in = np.zeros(b, np.int64)
  per = max(1, _CHUNK_ELEMS // max(vals.size, 1))
  for s in range(0, b, per):
    p = pick[s:s + per]
    r = np.sort(vals[p].reshape(p.shape[0], -1), axis=1)  # NaN sort last
    n_tot = totals[p].sum(axis=1, keepdims=True)
    rank = np.arange(1, r.shape[1] + 1, dtype=np.float64)[None, :]
    with np.errstate(invalid="ignore"):
      w = (r > x_min) & (r <= x_max)
    lx = np.log(np.where(w, r, 1.0))
    ly = np.log((rank - 0.5) / n_tot)  # mid-rank CDF over all samples
    nw = w.sum(axis=1)
    den = np.maximum(nw, 1)
    mx = np.sum(w * lx, axis=1) / den
    my = np.sum(w * ly, axis=1) / den
    dx = np.where(w, lx - mx[:, None], 0.0)
    sxx = np.sum(dx * dx, axis=1)
    sxy = np.sum(dx * (ly - my[:, None]), axis=1)
    ok = (nw >= _MIN_IN_RANGE) & (sxx > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
      slope = sxy / np.where(sxx > 0, sxx, 1.0)
    slopes[s:s + per] = np.where(ok, slope, np.nan)
    n_in[s:s + per] = nw
  return slopes, n_in


def cdf_exponent(samples, x_max: float, groups=None, n_boot: int = 500,
                 level: float = 0.95, seed: int = 0,
                 x_min: float = 0.0) -> dict:
  """Exponent a of p(x) ~ x^a from the empirical CDF C(x) ~ x^(1 + a).

  The order statistics x_(1) <= ... <= x_(n) of all n positive samples get
  the mid-rank CDF C_i = (i - 1/2) / n (the Hazen plotting position; i the
  1-based position among ALL samples, so C is the CDF of the whole
  distribution, not of the range). The slope of log C_i vs log x_(i) by least
  squares over the x_(i) in (x_min, x_max], minus 1, is ``a`` (needs a > -1,
  where the CDF at small x is a power law; for x_min > 0 it is the slope of
  the same C(x) ~ x^(1 + a) on a narrower range, not a re-normalized CDF).

  Why the mid-rank: for a continuous law, E[log F(x_(i))] = psi(i) -
  psi(n + 1) (digamma), and psi(i) ~ log(i - 1/2) to better than 0.12 at i =
  1 and 0.02 from i = 2 on, while log i is off by 0.58 at i = 1 and 0.27 at i
  = 2: with i / n the smallest points, which have the largest leverage in log
  x, bend the log-log line and bias the slope (measured: mean error -0.031
  with i / n, +0.006 with the mid-rank, for a = 0.3 and 300 points in range,
  against a standard deviation of 0.11). The normalization by n only shifts
  log C and does not change the slope. What remains is the attenuation of a
  regression on a noisy abscissa (log x_(i) scatters around its mean by
  ~ 1 / sqrt(i) / (1 + a)), small against the CI.

  The least squares slope leans on the few smallest order statistics, whose
  law the bootstrap reproduces poorly: its percentile CI is ~15% narrower
  than the true spread (95% CIs covered the truth in 0.89 of 1000 synthetic
  ensembles of 20 members x 30 samples; the MLE's in 0.91-0.94), and its
  standard deviation is ~1.4x the MLE's. It is a cross-check of
  :func:`lossland.fits.power_law_mle`, not a replacement.

  Bootstrap: each replicate resamples the groups (or the samples when
  ``groups`` is None) with replacement, recomputes the mid-rank CDF of the
  resampled set (ties from repeated draws keep their consecutive ranks) and
  refits on the same fixed (x_min, x_max]; the CI is the percentile interval
  of the replicates' exponents (replicates with fewer than 5 points in range
  are dropped). Vectorized over replicates in chunks.

  Args:
    samples: [n] values; non-finite and non-positive ones are dropped (as in
      :func:`lossland.fits.power_law_mle`) before ranking.
    x_max: upper end of the fit range (fixed, also in the bootstrap).
    groups: optional [n] group labels (e.g. member index of each sample): the
      bootstrap resamples whole groups.
    n_boot: bootstrap replicates (0: no CI).
    level: CI level.
    seed: bootstrap RNG seed.
    x_min: lower end of the fit range (exclusive), 0 <= x_min < x_max.

  Returns:
    dict with ``exponent`` (a, None if fewer than 5 samples in range or, with
    groups, only one group), ``ci`` [lo, hi] (None without bootstrap),
    ``n_samples`` (in range), ``n_total`` (all positive samples), ``x_min``,
    ``x_max``, ``level``, ``n_boot_used`` (replicates with a fit) and
    ``method``.

  Raises:
    ValueError: x_max <= x_min, x_min < 0, or groups of another length.
  """
  x = np.asarray(samples, np.float64).ravel()
  _check_range(x_min, x_max)
  x, g = _positive(x, groups)
  out = _cdf_result(x, g, x_min, x_max, level)
  inv, n_groups = _group_index(x, g)
  if out["n_samples"] < _MIN_IN_RANGE or (g is not None and n_groups < 2):
    return out
  vals, totals = _padded_groups(x, inv, n_groups, x_max)
  every = np.arange(n_groups)[None, :]
  slope, _ = _cdf_slopes(vals, totals, every, x_min, x_max)
  if not np.isfinite(slope[0]):
    return out
  out["exponent"] = float(slope[0] - 1.0)
  if n_boot > 0:
    out["n_boot_used"], out["ci"] = _cdf_bootstrap(
        vals, totals, x_min, x_max, n_boot, level, seed)
  return out


def _check_range(x_min, x_max):
  """ValueError unless 0 <= x_min < x_max, both finite."""
  finite = np.isfinite(x_min) and np.isfinite(x_max)
  if not finite or x_min < 0 or x_max <= x_min:
    raise ValueError(f"need 0 <= x_min < x_max, got {x_min}, {x_max}")


def _cdf_result(x, g, x_min, x_max, level) -> dict:
  """The result dict of :func:`cdf_exponent` before the fit (no exponent)."""
  over = "groups" if g is not None else "samples"
  return {"exponent": None, "ci": [None, None],
          "n_samples": int(np.sum((x > x_min) & (x <= x_max))),
          "n_total": int(x.size), "x_min": float(x_min), "x_max": float(x_max),
          "level": level, "n_boot_used": 0,
          "method": (f"least squares of log C(x) vs log x on ({x_min:g}, "
                     f"{x_max:g}], C = mid-rank empirical CDF (i - 1/2)/n over "
                     f"all samples, a = slope - 1; percentile bootstrap over "
                     f"{over}")}


def _cdf_bootstrap(vals, totals, x_min, x_max, n_boot, level, seed):
  """(replicates with a fit, percentile CI [lo, hi]) of the CDF exponent.

  Each of the n_boot replicates resamples the G groups of ``vals`` /
  ``totals`` (see :func:`_cdf_slopes`) with replacement; the CI is
  [None, None] when no replicate has a fit.
  """
  n_groups = vals.shape[0]
  rng = np.random.default_rng(seed)
  pick = rng.integers(0, n_groups, size=(n_boot, n_groups))
  boots, _ = _cdf_slopes(vals, totals, pick, x_min, x_max)
  boots = boots[np.isfinite(boots)] - 1.0
  if not boots.size:
    return 0, [None, None]
  lo = (1 - level) / 2
  return int(boots.size), [float(np.quantile(boots, lo)),
                           float(np.quantile(boots, 1 - lo))]


def _stability(fits: Sequence[dict]):
  """(spread, stable) of several fits, the rule of fits.exponent_vs_range."""
  good = [f for f in fits
          if f["exponent"] is not None and f["ci"][0] is not None]
  if len(good) < 2:
    return None, None
  e = np.array([f["exponent"] for f in good])
  widths = np.array([f["ci"][1] - f["ci"][0] for f in good])
  spread = float(e.max() - e.min())
  return spread, bool(spread <= np.median(widths))


def _enough(fit: dict) -> dict:
  """A power_law_mle result with no exponent when fewer than 5 samples are in
  range (the threshold of :func:`cdf_exponent`, so both methods agree)."""
  if fit["n_samples"] < _MIN_IN_RANGE:
    fit = {**fit, "exponent": None, "ci": [None, None], "stderr": None,
           "loglik": None}
  return fit


def _signed(a, ci, sign):
  if a is None:
    return None, [None, None]
  if sign > 0:
    return a, list(ci)
  lo, hi = ci
  return -a, [None if hi is None else -hi, None if lo is None else -lo]


def exponent_fits(samples, groups=None, q: float = 0.5,
                  q_checks: Sequence[float] = (0.25, 0.5, 0.75),
                  n_boot: int = 500, seed: int = 0, sign: int = +1,
                  level: float = 0.95, x_floor: float = 0.0) -> dict:
  """Small-x exponent by the density MLE and by the CDF fit, with range checks.

  Both fits are on (x_floor, x_max], x_max = the q-quantile of the samples
  above x_floor (with x_floor = 0: the positive samples),
  with a percentile bootstrap over groups (or samples); each is repeated with
  x_max at the quantiles ``q_checks`` (bootstraps of at most 200 replicates)
  and is ``stable`` when the spread of those exponents is at most their
  median CI width.

  For theta of P_+(Delta) ~ Delta^theta pass the Delta > 0 samples (divided by
  sqrt(loss) of their network) with sign=+1; for gamma of P_-(Delta) ~
  |Delta|^-gamma pass -Delta of the Delta < 0 samples with sign=-1 (gamma =
  -a, CI [-hi, -lo]). References: arXiv:1809.09349 (theta ~ 0.3, gamma ~
  0.2), Franz, Hwang & Urbani PRL 2019 (theta ~ 0.42, gamma ~ 0.41).

  Args:
    samples: [n] values; non-finite and non-positive ones are dropped.
    groups: optional [n] labels (member index of each sample).
    q: quantile of the samples that sets the upper end of the main fit.
    q_checks: quantiles of the range-stability fits.
    n_boot: bootstrap replicates of the main fits.
    seed: bootstrap RNG seed.
    sign: +1 (top-level exponent = a) or -1 (= -a).
    level: CI level.
    x_floor: samples at or below it are left out of the fits and counted
      (``n_below_floor``): values that are zero up to the accuracy of the
      state they come from (docs/jamming.md: points at the margin of a
      force-balanced state), which are a peak at 0, not the small-x tail.
      With x_floor > 0 the density fit is the truncated power law on
      [x_floor, x_max] and the CDF is that of the samples above x_floor.

  Returns:
    JSON-serializable dict: ``density`` (the
    :func:`lossland.fits.power_law_mle` result plus ``range_check`` and
    ``stable``; its exponent is None, as the CDF fit's, when fewer than 5
    samples are in range), ``cdf`` (the
    :func:`cdf_exponent` result plus ``range_check`` and ``stable``); in both
    the exponent and CI are of the density exponent a itself (unsigned).
    Both are None when there is no positive sample.
    Top level, signed: ``exponent`` and ``ci`` (density method),
    ``exponent_cdf`` and ``ci_cdf`` (CDF method), plus ``sign``, ``q``,
    ``x_max``, ``n_samples`` (positive samples), ``n_groups`` and ``method``.
    ``range_check`` = {``q``, ``x_max``, ``exponents``, ``cis``, ``spread``,
    ``stable``}.

  Raises:
    ValueError: sign not +-1, q or q_checks outside (0, 1], groups of
      another length.
  """
  qs = _check_fit_args(sign, q, q_checks)
  if not (np.isfinite(x_floor) and x_floor >= 0):
    raise ValueError(f"x_floor must be finite and >= 0, got {x_floor}")
  x, g = _positive(np.asarray(samples, np.float64).ravel(), groups)
  above = x > x_floor
  n_below = int(x.size - np.sum(above))
  x, g = x[above], None if g is None else g[above]
  out = _fits_result(x, g, sign, q, qs, level, x_floor, n_below)
  if x.size == 0:
    return out
  x_max = float(np.quantile(x, q))
  out["x_max"] = x_max
  ranges = [(float(x_floor), float(np.quantile(x, v))) for v in qs]
  dens = _density_fits(x, g, x_max, qs, ranges, n_boot, level, seed)
  cdf = _cdf_fits(x, g, x_max, qs, ranges, n_boot, level, seed)
  out["density"], out["cdf"] = dens, cdf
  out["exponent"], out["ci"] = _signed(dens["exponent"], dens["ci"], sign)
  out["exponent_cdf"], out["ci_cdf"] = _signed(cdf["exponent"], cdf["ci"],
                                               sign)
  return out


def _check_fit_args(sign, q, q_checks) -> list:
  """The q_checks as floats; ValueError for a sign not +-1 or a quantile
  outside (0, 1]."""
  if sign not in (1, -1):
    raise ValueError(f"sign must be +1 or -1, got {sign}")
  qs = [float(v) for v in q_checks]
  if not all(0 < v <= 1 for v in [q] + qs):
    raise ValueError(f"quantiles must be in (0, 1], got q={q}, q_checks={qs}")
  return qs


def _fits_result(x, g, sign, q, qs, level, x_floor=0.0, n_below=0) -> dict:
  """The result dict of :func:`exponent_fits` before the fits."""
  over = "groups" if g is not None else "samples"
  lo = "0" if x_floor == 0 else f"{x_floor:g}"
  floor = ("" if x_floor == 0 else
           f"samples <= {x_floor:g} left out (zero up to the states' accuracy; "
           f"{n_below} of {x.size + n_below}); ")
  return {"exponent": None, "ci": [None, None], "exponent_cdf": None,
          "ci_cdf": [None, None], "sign": int(sign), "q": float(q),
          "x_max": None, "x_floor": float(x_floor), "n_below_floor": n_below,
          "n_samples": int(x.size),
          "n_groups": None if g is None else int(np.unique(g).size),
          "level": level,
          "method": (floor + f"(1) density: truncated power-law MLE of p(x) ~ x^a on "
                     f"({lo}, x_max]; (2) CDF: least squares slope of log C(x) vs "
                     f"log x on ({lo}, x_max] minus 1 (mid-rank empirical CDF); "
                     f"x_max = {q:g}-quantile of the samples; percentile "
                     f"bootstrap over {over}; range checks at quantiles {qs}; "
                     + ("exponent = a" if sign > 0 else "exponent = -a")),
          "density": None, "cdf": None}


def _density_fits(x, g, x_max, qs, ranges, n_boot, level, seed) -> dict:
  """The density MLE on (0, x_max] with its range check at ``ranges``
  (bootstraps of at most 200 replicates there)."""
  n_check = min(n_boot, 200)
  dens = _enough(power_law_mle(x, ranges[0][0], x_max, n_boot=n_boot, level=level,
                               seed=seed, groups=g))
  r = exponent_vs_range(x, ranges, n_boot=n_check, level=level, seed=seed,
                        groups=g)
  # _stability of these = r["spread"], r["stable"] when all fit
  _add_range_check(dens, [_enough(f) for f in r["fits"]], qs, ranges)
  return dens


def _cdf_fits(x, g, x_max, qs, ranges, n_boot, level, seed) -> dict:
  """The CDF fit on (0, x_max] with its range check at ``ranges``
  (bootstraps of at most 200 replicates there)."""
  n_check = min(n_boot, 200)
  lo = ranges[0][0]
  cdf = cdf_exponent(x, x_max, groups=g, n_boot=n_boot, level=level, seed=seed, x_min=lo)
  cfits = [cdf_exponent(x, hi, groups=g, n_boot=n_check, level=level, seed=seed, x_min=lo)
           for _, hi in ranges]
  _add_range_check(cdf, cfits, qs, ranges)
  return cdf


def _add_range_check(fit: dict, checks: Sequence[dict], qs, ranges) -> None:
  """Adds ``range_check`` and ``stable`` (from the fits ``checks`` at the
  quantiles ``qs``, upper ends of ``ranges``) to ``fit``, in place."""
  spread, stable = _stability(checks)
  fit["range_check"] = {"q": qs, "x_max": [hi for _, hi in ranges],
                        "exponents": [f["exponent"] for f in checks],
                        "cis": [f["ci"] for f in checks],
                        "spread": spread, "stable": stable}
  fit["stable"] = stable
