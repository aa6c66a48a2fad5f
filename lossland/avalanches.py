"""Size distribution of avalanches: discrete power law vs discrete exponential.

Near the jamming transition the set of unsatisfied constraints changes in
avalanche-like rearrangements (1809.09349); :func:`lossland.phase.avalanche_sizes`
gives their sizes s >= 0 (integers, zeros included). This module fits and
compares two one-parameter models for the sizes s >= s_min, following
Clauset, Shalizi & Newman, "Power-law distributions in empirical data", SIAM
Review 51, 661 (2009), sections 3-5:

* :func:`discrete_power_law_mle`: p(s) = s^-tau / zeta(tau, s_min) (Hurwitz
  zeta), tau by numerical maximum likelihood, stderr from the observed Fisher
  information (eq. 3.7 and appendix B of Clauset et al.).
* :func:`discrete_exponential_mle`: p(s) = (1 - e^-lam) e^(-lam (s - s_min))
  (a geometric law started at s_min), closed-form MLE.
* :func:`choose_s_min`: the s_min whose tail is closest, in Kolmogorov-Smirnov
  distance, to its own fitted power law (Clauset et al. section 3.3).
* :func:`compare`: both models on the same tail, Vuong's normalized
  log-likelihood-ratio test (Clauset et al. section 5.1; Vuong, Econometrica
  57, 307 (1989)).
* :func:`size_histogram`: log-binned density per integer, for a log-log figure.

The tests assume independent sizes. Sizes of one member at consecutive
measurements are correlated, so the p-values are optimistic; treat them as a
guide, not a calibrated error rate.

NumPy + SciPy only; no NumPy global RNG.
"""
import math

import numpy as np

# Search interval of the power-law exponent: tau <= 1 is not normalizable; the
# upper end is far above physical values, but a far tail of an exponential law
# is fitted by tau ~ lam s_min, which must not hit the bound.
TAU_BOUNDS = (1.001, 20.0)
# Below this many tail sizes :func:`compare` does not decide.
MIN_TAIL_COMPARE = 10
# Vuong p-value above which the comparison is "undecided".
P_UNDECIDED = 0.1


def _as_sizes(s) -> np.ndarray:
  """Flat int64 array of sizes; ValueError unless finite integers >= 0."""
  a = np.asarray(s, np.float64).ravel()
  if not np.all(np.isfinite(a)):
    raise ValueError("sizes must be finite")
  if np.any(a < 0) or np.any(a != np.round(a)):
    raise ValueError("sizes must be integers >= 0")
  return a.astype(np.int64)


def _check_s_min(s_min) -> int:
  if int(s_min) != s_min or s_min < 1:
    raise ValueError(f"s_min must be an integer >= 1, got {s_min}")
  return int(s_min)


def _tail(s, s_min: int) -> np.ndarray:
  x = _as_sizes(s)
  return x[x >= s_min]


def _nonempty_tail(s, s_min):
  """(s_min checked, the sizes >= s_min); ValueError when there are none."""
  s_min = _check_s_min(s_min)
  x = _tail(s, s_min)
  if x.size == 0:
    raise ValueError(f"no sizes >= s_min = {s_min}")
  return s_min, x


# --------------------------------------------------------------------------
# Discrete power law
# --------------------------------------------------------------------------


def _zeta(tau, q):
  """Hurwitz zeta (scipy.special imported on use: lossland's import stays light)."""
  from scipy import special
  return special.zeta(tau, q)


def _log_zeta(tau, s_min):
  return np.log(_zeta(tau, s_min))


def _pl_neg_loglik(tau, sum_log, n, s_min):
  """-log L = tau sum(log s) + n log zeta(tau, s_min)."""
  return tau * sum_log + n * _log_zeta(tau, s_min)


def _pl_var_log(tau: float, s_min: int) -> float:
  """Var_tau[log s] = d^2/dtau^2 log zeta(tau, s_min) (central differences).

  log zeta is a cumulant generating function in -tau, so its second
  derivative is the variance of log s under the model; the step shrinks near
  tau = 1, where the curvature ~ 1/(tau - 1)^2 grows.
  """
  h = min(1e-4, (tau - 1.0) / 20)
  f0 = _log_zeta(tau, s_min)
  fp = _log_zeta(tau + h, s_min)
  fm = _log_zeta(tau - h, s_min)
  return float((fp - 2 * f0 + fm) / (h * h))


def _pl_fit(sum_log: float, n: int, s_min: int) -> tuple:
  """(tau, at_bound) maximizing the likelihood (convex in tau: Brent)."""
  lo, hi = TAU_BOUNDS
  from scipy import optimize  # on use (import cost)
  r = optimize.minimize_scalar(_pl_neg_loglik, bounds=(lo, hi), method="bounded",
                               args=(sum_log, n, s_min),
                               options={"xatol": 1e-9})
  tau = float(r.x)
  return tau, bool(tau - lo < 1e-4 or hi - tau < 1e-4)


def discrete_power_law_mle(s, s_min: int = 1) -> dict:
  """Maximum-likelihood exponent of a discrete power law on s >= s_min.

  The model is p(s) = s^-tau / zeta(tau, s_min) on the integers s >= s_min
  (Clauset, Shalizi & Newman 2009, eq. 2.4 and 3.5). The log likelihood
  -tau sum(log s) - n log zeta(tau, s_min) is concave in tau and is maximized
  by bounded Brent search on :data:`TAU_BOUNDS`; the stderr is
  1 / sqrt(n Var_tau[log s]) (observed = expected Fisher information here:
  an exponential family in log s).

  Args:
    s: [n] integer sizes; those below s_min are dropped.
    s_min: smallest size of the tail (integer >= 1).

  Returns:
    dict with ``tau``, ``tau_stderr``, ``n`` (sizes >= s_min), ``s_min``,
    ``loglik`` (at tau), ``at_bound`` (tau at an end of the search interval,
    e.g. all sizes equal to s_min: the estimate is then meaningless).

  Raises:
    ValueError: no size >= s_min, or invalid sizes.
  """
  s_min, x = _nonempty_tail(s, s_min)
  n = int(x.size)
  sum_log = float(np.sum(np.log(x)))
  tau, at_bound = _pl_fit(sum_log, n, s_min)
  var = _pl_var_log(tau, s_min)
  return {"tau": tau,
          "tau_stderr": float(1.0 / math.sqrt(n * var)) if var > 0 else None,
          "n": n, "s_min": s_min,
          "loglik": float(-_pl_neg_loglik(tau, sum_log, n, s_min)),
          "at_bound": at_bound}


def _pl_loglik_each(x, tau, s_min):
  """[n] log p(s_i) of the discrete power law."""
  return -tau * np.log(x) - _log_zeta(tau, s_min)


def _pl_ks(x, tau: float, s_min: int) -> float:
  """Kolmogorov-Smirnov distance between the tail x and its power law.

  Both CDFs are step functions on the integers. Between consecutive distinct
  sample values v_j < v_{j+1} the empirical CDF is constant and the model CDF
  P(k) = 1 - zeta(tau, k + 1) / zeta(tau, s_min) increases, so the supremum
  is attained at k = v_j or k = v_{j+1} - 1; below v_0 the empirical CDF is
  0 (largest gap at k = v_0 - 1), above the largest value it is 1 (largest
  gap at that value).

  Args:
    x: [n] tail sizes, all >= s_min.
    tau, s_min: the fitted power law.
  """
  v, c = np.unique(x, return_counts=True)
  emp = np.cumsum(c) / x.size                                  # F_n(v_j)
  z0 = _zeta(tau, s_min)
  model_at = 1.0 - _zeta(tau, v + 1.0) / z0              # P(v_j)
  model_before = 1.0 - _zeta(tau, v.astype(np.float64)) / z0  # P(v_j - 1)
  emp_before = np.concatenate([[0.0], emp[:-1]])                # F_n(v_j - 1)
  return float(max(np.max(np.abs(emp - model_at)),
                   np.max(np.abs(emp_before - model_before))))


# --------------------------------------------------------------------------
# Discrete exponential
# --------------------------------------------------------------------------


def _exp_lam(mean_excess: float) -> float:
  """MLE of lam from mean(s - s_min): E[s - s_min] = 1 / (e^lam - 1)."""
  return math.log1p(1.0 / mean_excess) if mean_excess > 0 else math.inf


def _exp_loglik_each(x, lam, s_min):
  """[n] log p(s_i) = log(1 - e^-lam) - lam (s_i - s_min)."""
  if math.isinf(lam):  # all sizes at s_min: p(s_min) = 1
    return np.where(x == s_min, 0.0, -np.inf)
  return math.log(-math.expm1(-lam)) - lam * (x - s_min)


def discrete_exponential_mle(s, s_min: int = 1) -> dict:
  """Maximum-likelihood rate of a discrete exponential on s >= s_min.

  The model is p(s) = (1 - e^-lam) e^(-lam (s - s_min)) on the integers
  s >= s_min (a geometric law of s - s_min; Clauset et al. 2009, table 2.1).
  With m = mean(s - s_min), the MLE is lam = log(1 + 1/m) and the maximum log
  likelihood n [log(1 - e^-lam) - lam m].

  Args:
    s: [n] integer sizes; those below s_min are dropped.
    s_min: smallest size of the tail (integer >= 1).

  Returns:
    dict with ``lam`` (None if every size equals s_min: lam = infinity), ``n``,
    ``s_min``, ``loglik`` (0.0 in the degenerate case).

  Raises:
    ValueError: no size >= s_min, or invalid sizes.
  """
  s_min, x = _nonempty_tail(s, s_min)
  n = int(x.size)
  m = float(np.mean(x - s_min))
  lam = _exp_lam(m)
  if math.isinf(lam):
    return {"lam": None, "n": n, "s_min": s_min, "loglik": 0.0}
  loglik = n * (math.log(-math.expm1(-lam)) - lam * m)
  return {"lam": lam, "n": n, "s_min": s_min, "loglik": float(loglik)}


# --------------------------------------------------------------------------
# Lower cutoff
# --------------------------------------------------------------------------


def _s_min_scan(x, candidates, min_tail: int) -> list:
  """[(s_min, ks, tau)] for the candidates with >= min_tail sizes and two
  distinct values in the tail."""
  xs = np.sort(x)
  out = []
  for c in candidates:
    c = _check_s_min(c)
    t = xs[np.searchsorted(xs, c):]
    if t.size < min_tail or t[0] == t[-1]:
      continue
    tau, _ = _pl_fit(float(np.sum(np.log(t))), int(t.size), c)
    out.append((c, _pl_ks(t, tau, c), tau))
  return out


def choose_s_min(s, candidates=None, min_tail: int = 50) -> int:
  """The s_min of least KS distance between the tail and its power law.

  For each candidate s_min, tau is fitted on the sizes >= s_min and the KS
  distance D between their empirical CDF and the fitted discrete power law is
  computed; the candidate of least D is returned (Clauset, Shalizi & Newman
  2009, section 3.3, eq. 3.9).

  Args:
    s: [n] integer sizes (zeros allowed; they are never in a tail).
    candidates: integers >= 1 to try; default: every distinct positive size.
    min_tail: candidates whose tail has fewer sizes (or a single distinct
      value) are skipped.

  Returns:
    The chosen s_min (int).

  Raises:
    ValueError: no candidate has a tail of min_tail sizes.
  """
  x = _as_sizes(s)
  x = x[x >= 1]
  if candidates is None:
    candidates = np.unique(x)
  scan = _s_min_scan(x, candidates, min_tail)
  if not scan:
    raise ValueError(f"no candidate s_min has >= {min_tail} sizes in its tail "
                     f"({x.size} positive sizes)")
  return int(min(scan, key=lambda r: (r[1], r[0]))[0])


# --------------------------------------------------------------------------
# Vuong comparison
# --------------------------------------------------------------------------


def compare(s, s_min: int | None = None, min_tail: int = 50) -> dict:
  """Discrete power law vs discrete exponential on the same tail (Vuong).

  Zeros (no rearrangement) are dropped and counted; s_min is chosen by
  :func:`choose_s_min` unless given (if no candidate has min_tail sizes, s_min
  = 1). Both models are fitted on the sizes s >= s_min; with the per-size log
  likelihood ratios l_i = log p_pl(s_i) - log p_exp(s_i), R = sum_i l_i and
  sigma^2 = mean((l_i - mean(l))^2), Vuong's statistic is
  z = R / (sigma sqrt(n)), asymptotically N(0, 1) when the two (non-nested)
  models are equally close to the truth; the two-sided p-value is
  erfc(|z| / sqrt(2)). The sign of R picks the model if p < 0.1, else the
  data do not decide (Clauset, Shalizi & Newman 2009, section 5.1 and
  appendix C). Sizes are assumed independent.

  Caveat: the KS choice of s_min favours whatever tail looks most like a power
  law. On exponential data it picks a far tail, where a steep power law
  (tau ~ lam s_min) is hard to tell from the exponential, so the verdict is
  often "undecided" rather than "exponential"; also run it with a fixed s_min
  (e.g. 1) before concluding.

  Args:
    s: [n] integer sizes >= 0 (e.g. :func:`lossland.phase.avalanche_sizes`).
    s_min: lower cutoff of the tail (integer >= 1), or None to choose it.
    min_tail: passed to :func:`choose_s_min`.

  Returns:
    JSON-serializable dict: ``favored`` ("power_law", "exponential",
    "undecided", or None with a ``reason`` when the tail has fewer than
    :data:`MIN_TAIL_COMPARE` sizes or a single distinct value),
    ``loglik_ratio`` (R), ``llr_std`` (sigma), ``vuong_z``, ``p_value``,
    ``tau``, ``tau_stderr``, ``tau_at_bound``, ``lam``, ``ks`` (KS distance of
    the power law on the tail), ``s_min``, ``s_min_source`` ("given", "ks" or
    "default"), ``n_tail``, ``n_zero``, ``n_total``, ``method``.
  """
  x = _as_sizes(s)
  n_total, n_zero = int(x.size), int(np.count_nonzero(x == 0))
  pos = x[x >= 1]
  s_min, source = _compare_s_min(pos, s_min, min_tail)
  t = pos[pos >= s_min]
  out = _compare_result(s_min, source, t, n_zero, n_total)
  out["reason"] = _compare_skip_reason(t, s_min)
  if out["reason"] is not None:
    return out
  out.update(_vuong(t, s_min))
  return out


def _compare_s_min(pos, s_min, min_tail: int):
  """(s_min, source) of :func:`compare`: the given one, the KS choice, or 1
  when no candidate has min_tail sizes."""
  if s_min is not None:
    return _check_s_min(s_min), "given"
  try:
    return choose_s_min(pos, min_tail=min_tail), "ks"
  except ValueError:
    return 1, "default"


def _compare_result(s_min: int, source: str, t, n_zero: int,
                    n_total: int) -> dict:
  """The result dict of :func:`compare` before the fits (nothing favored)."""
  how = {"ks": "s_min of least KS distance",
         "given": "s_min given",
         "default": "s_min = 1: too few sizes to choose it"}[source]
  return {"favored": None, "reason": None, "loglik_ratio": None,
          "llr_std": None, "vuong_z": None, "p_value": None, "tau": None,
          "tau_stderr": None, "tau_at_bound": None, "lam": None, "ks": None,
          "s_min": int(s_min), "s_min_source": source, "n_tail": int(t.size),
          "n_zero": n_zero, "n_total": n_total,
          "method": ("discrete power law s^-tau / zeta(tau, s_min) vs discrete "
                     "exponential (1 - e^-lam) e^(-lam (s - s_min)), both by "
                     "maximum likelihood on the nonzero sizes s >= s_min ("
                     + how + "); Vuong's normalized log-likelihood ratio, "
                     "two-sided normal p-value, undecided if p >= "
                     f"{P_UNDECIDED} "
                     "(Clauset, Shalizi & Newman 2009)")}


def _compare_skip_reason(t, s_min: int):
  """Why the tail ``t`` is not compared (too few sizes, or all equal), or
  None."""
  if t.size < MIN_TAIL_COMPARE:
    return (f"{t.size} sizes >= s_min = {s_min}, fewer than "
            f"{MIN_TAIL_COMPARE}")
  if t.min() == t.max():
    return f"all {t.size} tail sizes equal {int(t[0])}"
  return None


def _vuong(t, s_min: int) -> dict:
  """Both fits on the tail ``t`` and Vuong's test: the fitted keys of
  :func:`compare`'s result."""
  pl = discrete_power_law_mle(t, s_min)
  ex = discrete_exponential_mle(t, s_min)
  ell = (_pl_loglik_each(t, pl["tau"], s_min)
         - _exp_loglik_each(t, ex["lam"], s_min))
  r = float(np.sum(ell))
  sigma = float(np.std(ell))
  n = t.size
  z = r / (sigma * math.sqrt(n))
  p = math.erfc(abs(z) / math.sqrt(2))
  return {
      "loglik_ratio": r, "llr_std": sigma, "vuong_z": float(z),
      "p_value": float(p), "tau": pl["tau"], "tau_stderr": pl["tau_stderr"],
      "tau_at_bound": pl["at_bound"], "lam": ex["lam"],
      "ks": _pl_ks(t, pl["tau"], s_min),
      "favored": ("undecided" if p >= P_UNDECIDED
                  else "power_law" if r > 0 else "exponential")}


# --------------------------------------------------------------------------
# Histogram for figures
# --------------------------------------------------------------------------


def size_histogram(s, n_bins: int = 20) -> dict:
  """Log-binned density per integer of the positive sizes.

  Bin edges are log-spaced integers from 1 to max(s) + 1, made unique (so
  there may be fewer than n_bins bins: the small sizes get one bin each). Bin
  i holds the integers edges[i] <= s < edges[i + 1]; its density is
  count_i / (n_pos * width_i), the mean probability per integer, so that
  sum(density * width) = 1 and a power law p(s) ~ s^-tau is a straight line
  of slope -tau on log-log axes.

  Args:
    s: [n] integer sizes >= 0; zeros are counted in ``n_zero`` only.
    n_bins: number of log-spaced bins before merging duplicate edges.

  Returns:
    dict of lists: ``edges`` [B + 1] ints, ``centers`` [B] (geometric mean of
    the first and last integer of each bin), ``width`` [B] integers per bin,
    ``counts`` [B], ``density`` [B]; and ``n_pos``, ``n_zero``. Empty lists if
    no size is positive.
  """
  x = _as_sizes(s)
  n_zero = int(np.count_nonzero(x == 0))
  x = x[x >= 1]
  if x.size == 0:
    return {"edges": [], "centers": [], "width": [], "counts": [], "density": [],
            "n_pos": 0, "n_zero": n_zero}
  top = int(x.max()) + 1
  edges = np.unique(np.floor(np.logspace(0.0, math.log10(top), n_bins + 1)))
  edges = edges.astype(np.int64)
  edges[-1] = top  # guard against rounding of the last edge
  edges = np.unique(edges)
  counts, _ = np.histogram(x, bins=edges)
  width = np.diff(edges)
  density = counts / (x.size * width)
  centers = np.sqrt(edges[:-1] * (edges[1:] - 1.0))
  return {"edges": edges.tolist(), "centers": centers.tolist(),
          "width": width.tolist(), "counts": counts.tolist(),
          "density": density.tolist(), "n_pos": int(x.size), "n_zero": n_zero}
