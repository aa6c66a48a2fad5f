"""Finite-size extrapolation of the jamming point P*/N to N -> infinity.

1809.09349 (Geiger et al., PRE 100, 012115) finds P*/N independent of the
depth L at N ~ 8000 weights; at the few hundred weights a CPU affords the
thin deep nets jam earlier (:func:`lossland.phase.finite_size`). "Depth
independent" is then a statement about the limit N -> infinity: per depth,
fit

    P*/N (N) = p_inf + a N^-omega

to the transition points measured at several sizes N (each with its
profile-likelihood CI from :func:`lossland.fits.fit_threshold`), and ask
whether the limits p_inf agree over the depths.

* :func:`extrapolate`: one depth. omega = 1/2 (``"sqrt"``, the usual
  finite-size correction of a threshold whose width scales as N^-1/2),
  omega = 1 (``"inverse"``) or omega free (``"power"``, profiled on a grid).
  Weighted least squares with sigma_i from the CIs, CI of p_inf by a
  parametric bootstrap (percentile), residuals and chi^2 for the model check.
* :func:`depth_spread_extrapolated`: the spread max - min of p_inf over the
  depths with a bootstrap CI (the per-depth replicates combined), and a chi^2
  test of one common limit.
* :func:`finite_size_extrapolation`: both, on the output of
  :func:`lossland.phase.finite_size`.
* :func:`public`: a result without its private (``_``-prefixed, not JSON)
  keys.

With a handful of sizes (typically 3 or 4) the extrapolation is only as good
as the assumed correction: compare ``"sqrt"`` and ``"inverse"``, look at the
residuals and chi^2, and read the CIs as conditional on the model.

No NumPy global RNG: randomness comes from ``np.random.default_rng(seed)``.
"""
import math
import statistics
import numpy as np

# model name -> fixed exponent omega (None: free, profiled).
MODELS = {"sqrt": 0.5, "inverse": 1.0, "power": None}
# The profile grid of the free exponent: [lo, hi], n points, then refinement.
OMEGA_RANGE = (0.1, 2.0)
OMEGA_GRID_POINTS = 191  # step 0.01
_REFINE_ROUNDS = 6       # each round narrows the bracket 16x (33 points)


def _chi2_sf(chi2: float, dof: int) -> float:
  # scipy.stats on use: importing it costs every lossland process ~0.3 s
  from scipy import stats
  return float(stats.chi2.sf(chi2, dof))


def _z(level: float) -> float:
  """z_{(1+level)/2} of the standard normal."""
  return statistics.NormalDist().inv_cdf(0.5 + level / 2)


def _num(v):
  """A finite float, or None (None, NaN, inf, non-numbers)."""
  if v is None or isinstance(v, bool):
    return None
  try:
    f = float(v)
  except (TypeError, ValueError):
    return None
  return f if math.isfinite(f) else None


def _sigma_from_ci(p: float, ci, z: float):
  """sigma of one size from its CI: mean half width / z; None if unknown.

  Both ends finite: (hi - lo) / 2 / z (the mean of the two half widths, so an
  asymmetric profile-likelihood CI counts by its average width). One end
  finite (the interval ran past the measured range): that end's half width
  |p - end| / z, an underestimate of the error. No finite end, or a width of
  0: None.
  """
  if ci is None:
    return None
  try:
    lo, hi = ci
  except (TypeError, ValueError):
    return None
  lo, hi = _num(lo), _num(hi)
  if lo is not None and hi is not None:
    half = 0.5 * (hi - lo)
  elif lo is not None:
    half = p - lo
  elif hi is not None:
    half = hi - p
  else:
    return None
  return half / z if half > 0 else None


def _wls(x, y, w):
  """Weighted least squares of y = p_inf + a x along the last axis.

  Args:
    x: [..., n] regressor (N^-omega), broadcast against ``y``.
    y: [..., n] data.
    w: [..., n] weights 1 / sigma^2.

  Returns:
    (p_inf, a, chi2), each [...]; chi2 = sum_i w_i (y_i - p_inf - a x_i)^2.
    Centered normal equations (x is small and nearly constant for large N).
  """
  x, y, w = np.broadcast_arrays(x, y, w)
  s = w.sum(-1)
  xm = (w * x).sum(-1) / s
  ym = (w * y).sum(-1) / s
  dx = x - xm[..., None]
  with np.errstate(invalid="ignore", divide="ignore"):
    a = (w * dx * y).sum(-1) / (w * dx * dx).sum(-1)
  p_inf = ym - a * xm
  r = y - p_inf[..., None] - a[..., None] * x
  return p_inf, a, (w * r * r).sum(-1)


def _fit_free_omega(log_n, y, w):
  """omega minimizing the profile chi^2(omega) = min_{p_inf, a} chi^2.

  A grid of :data:`OMEGA_GRID_POINTS` points on :data:`OMEGA_RANGE` (global
  minimum), then :data:`_REFINE_ROUNDS` rounds of a 33-point grid between
  the neighbours of the best point (resolution 0.01 / 16^rounds).

  Args:
    log_n: [n] log N.
    y: [B, n] data sets (B bootstrap replicates, or 1).
    w: [n] weights.

  Returns:
    (p_inf, a, chi2, omega), each [B].
  """
  lo, hi = OMEGA_RANGE
  grid = np.linspace(lo, hi, OMEGA_GRID_POINTS)
  x = np.exp(-grid[:, None] * log_n[None, :])               # [G, n]
  chi2 = _wls(x[None], y[:, None, :], w)[2]                  # [B, G]
  chi2 = np.where(np.isfinite(chi2), chi2, np.inf)
  best = grid[np.argmin(chi2, axis=1)]
  h = grid[1] - grid[0]
  rows = np.arange(y.shape[0])
  u = np.linspace(0.0, 1.0, 33)
  for _ in range(_REFINE_ROUNDS):
    a_, b_ = np.clip(best - h, lo, hi), np.clip(best + h, lo, hi)
    t = a_[:, None] + (b_ - a_)[:, None] * u                 # [B, 33]
    x = np.exp(-t[..., None] * log_n)                        # [B, 33, n]
    c = _wls(x, y[:, None, :], w)[2]
    c = np.where(np.isfinite(c), c, np.inf)
    best = t[rows, np.argmin(c, axis=1)]
    h = (b_ - a_) / 32
  p_inf, a, chi2 = _wls(np.exp(-best[:, None] * log_n), y, w)
  return p_inf, a, chi2, best


def _fit(log_n, y, w, omega):
  """(p_inf, a, chi2, omega) [B] for data y [B, n]; omega None: free."""
  if omega is None:
    return _fit_free_omega(log_n, y, w)
  p_inf, a, chi2 = _wls(np.exp(-omega * log_n), y, w)
  return p_inf, a, chi2, np.full(y.shape[0], float(omega))


def _law(omega) -> str:
  """The fitted law, in words."""
  if omega is None:
    return (f"P*/N = p_inf + a N^-omega, omega free (profiled on "
            f"[{OMEGA_RANGE[0]}, {OMEGA_RANGE[1]}])")
  w = {0.5: "1/2", 1.0: "1"}.get(float(omega), f"{float(omega):g}")
  return f"P*/N = p_inf + a N^-{w}"


def _model_sentence(omega, weighted: bool) -> str:
  if weighted:
    how = ("weighted least squares (sigma from the CIs), parametric bootstrap "
           "(normal, sigma per size, around the fit), percentile CI")
  else:
    how = ("ordinary least squares (no CIs: equal weights), bootstrap of the "
           "residuals (rescaled by sqrt(n / dof)), percentile CI")
  return f"{_law(omega)}, {how}"


def _quantiles(v, level):
  q = (1 - level) / 2
  return [float(np.quantile(v, q)), float(np.quantile(v, 1 - q))]


def extrapolate(N, p, ci=None, model: str = "sqrt", omega: float | None = None,
                n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                ci_level: float | None = None) -> dict:
  """Limit N -> infinity of P*/N measured at several sizes N.

  Fits p(N) = p_inf + a N^-omega by weighted least squares, sigma_i from the
  CI of each size: sigma_i = (hi_i - lo_i) / 2 / z_{(1+ci_level)/2} (an
  asymmetric CI counts by its mean half width; a CI with one finite end by
  that end's half width; a size whose CI has no finite end is dropped when
  other sizes have CIs). The CI of p_inf is a percentile bootstrap:

  * with CIs, parametric: p_i* ~ Normal(fit(N_i), sigma_i), refit. The
    sigma_i are taken as known: chi^2 / dof >> 1 (``chi2_pvalue`` small)
    means the CIs understate the scatter or the model is wrong, and the CI
    of p_inf is then too narrow.
  * without CIs (or none finite), residuals: p_i* = fit(N_i) + r_j
    sqrt(n / dof) with r_j drawn from the residuals with replacement. With
    a few sizes this undercovers (measured: 0.79 at level 0.95 for 4 sizes,
    model ``"sqrt"``): prefer CIs.

  The free-omega fit with 4 sizes constrains omega weakly (its bootstrap CI
  typically spans most of the grid) and p_inf much less than a fixed omega;
  use it as a check of the fixed-omega fits, not as the headline.

  Minimum number of usable sizes (else ``p_inf`` None and a ``reason``):
  with CIs 2 for a fixed omega (the line through two points; its error comes
  from the CIs, dof = 0) and 4 for a free omega; without CIs one more than
  the number of parameters (3 for a fixed omega, 4 for a free one), because
  with zero degrees of freedom the residuals vanish and there is nothing to
  resample: a point estimate without an error bar is not reported. Also
  needed: as many distinct N as parameters.

  Args:
    N: [n] network sizes (weights); None or non-positive entries dropped.
    p: [n] P*/N per size; None / NaN entries dropped.
    ci: [n] CIs [lo, hi] of P*/N (ends may be None), or None (equal weights).
    model: ``"sqrt"`` (omega = 1/2), ``"inverse"`` (omega = 1) or ``"power"``
      (omega free, profile over :data:`OMEGA_RANGE`; or fixed at ``omega``).
    omega: with ``model="power"``, a fixed exponent (> 0); None: free. With
      the other models it must be None or their exponent.
    n_boot: bootstrap replicates (0: no CI).
    level: level of the CI of p_inf.
    seed: bootstrap RNG seed.
    ci_level: level of the input CIs (default: ``level``).

  Returns:
    JSON-serializable dict (after dropping ``_boot``): ``p_inf``,
    ``p_inf_ci`` [lo, hi], ``p_inf_se`` (bootstrap standard deviation), ``a``,
    ``a_ci``, ``omega`` (fixed or fitted), ``omega_ci`` (free omega only),
    ``omega_at_edge`` (free omega at an end of the grid: the fit prefers a
    correction outside the range, p_inf is then poorly determined),
    ``model`` (a sentence), ``model_name``, ``weighted``, ``residuals``
    (p_i - fit, per used size), ``sigma`` (per used size, None without CIs),
    ``chi2`` = sum_i (residual_i / sigma_i)^2 (sigma_i = 1 without CIs, then
    = ``rss``), ``rss``, ``dof`` = n - parameters, ``chi2_pvalue`` (chi^2
    survival at dof; with CIs and dof > 0 only), ``n_sizes``, ``N``, ``p``
    (used sizes, ascending N), ``dropped`` [{N, p, reason}], ``n_boot``
    (finite replicates), ``level``, ``reason`` (None when fitted), and
    ``_boot`` [n_boot] the p_inf replicates (NumPy, for
    :func:`depth_spread_extrapolated`).

  Raises:
    ValueError: unknown model, inconsistent omega, or lengths that differ.
  """
  omega = _check_model(model, omega)
  N, p = _as_lists(N, p, ci)
  z = _z(level if ci_level is None else ci_level)
  rows, dropped, weighted = _usable_rows(N, p, ci, z)
  out = _extrapolate_result(rows, dropped, omega, model, weighted, level)
  out["reason"] = _too_few(rows, model, omega is None, weighted)
  if out["reason"] is not None:
    return out
  fit = _point_fit(out, rows, omega, weighted)
  if n_boot > 0:
    out.update(_bootstrap(fit, omega, weighted, n_boot, level, seed))
  return out


def _check_model(model: str, omega):
  """The exponent omega of ``model`` (None: free); ValueError for an unknown
  model or an omega that contradicts it."""
  if model not in MODELS:
    raise ValueError(f"unknown model {model!r}; expected one of {sorted(MODELS)}")
  if model != "power":
    if omega is not None and float(omega) != MODELS[model]:
      raise ValueError(f"model {model!r} fixes omega = {MODELS[model]}, got omega={omega}")
    return MODELS[model]
  if omega is not None:
    omega = float(omega)
    if not omega > 0:
      raise ValueError(f"omega must be > 0, got {omega}")
  return omega


def _as_lists(N, p, ci):
  """(N, p) as lists; ValueError unless N, p (and ci) have one length."""
  N, p = list(N), list(p)
  if len(N) != len(p) or (ci is not None and len(ci) != len(N)):
    raise ValueError(f"N, p and ci must have the same length, got {len(N)}, "
                     f"{len(p)}, {None if ci is None else len(ci)}")
  return N, p


def _usable_rows(N, p, ci, z: float):
  """(rows [(N, p, sigma)] ascending N, dropped [{N, p, reason}], weighted).

  Sizes without a positive N or without p are dropped; ``weighted`` when some
  size has a finite CI, and then the sizes without one are dropped too.
  """
  rows, dropped = [], []
  for i, (n_i, p_i) in enumerate(zip(N, p)):
    nf, pf = _num(n_i), _num(p_i)
    if nf is None or nf <= 0:
      dropped.append({"N": nf, "p": pf, "reason": "N missing or not positive"})
    elif pf is None:
      dropped.append({"N": nf, "p": None, "reason": "P*/N missing"})
    else:
      s = None if ci is None else _sigma_from_ci(pf, ci[i], z)
      rows.append((nf, pf, s))
  weighted = any(s is not None for _, _, s in rows)
  if weighted:
    for r in [r for r in rows if r[2] is None]:
      dropped.append({"N": r[0], "p": r[1], "reason": "no finite CI (weight unknown)"})
    rows = [r for r in rows if r[2] is not None]
  rows.sort(key=lambda r: r[0])
  return rows, dropped, weighted


def _extrapolate_result(rows, dropped, omega, model: str, weighted: bool,
                        level: float) -> dict:
  """The result dict of :func:`extrapolate` before the fit (no p_inf)."""
  out = {"p_inf": None, "p_inf_ci": [None, None], "p_inf_se": None,
         "a": None, "a_ci": [None, None], "omega": omega, "omega_ci": [None, None],
         "omega_at_edge": None, "model": _model_sentence(omega, weighted),
         "model_name": model, "weighted": weighted, "residuals": [],
         "sigma": [], "chi2": None, "rss": None, "dof": None, "chi2_pvalue": None,
         "n_sizes": len(rows), "N": [r[0] for r in rows], "p": [r[1] for r in rows],
         "dropped": dropped, "n_boot": 0, "level": level, "reason": None,
         "_boot": np.zeros(0)}
  out["sigma"] = [r[2] for r in rows] if weighted else [None] * len(rows)
  return out


def _n_params(free: bool) -> int:
  """Parameters of the law: p_inf, a (and omega when free)."""
  return 3 if free else 2


def _too_few(rows, model: str, free: bool, weighted: bool):
  """Why ``rows`` cannot be fitted (too few sizes or distinct N), or None."""
  k = _n_params(free)
  need = (4 if free else 2) if weighted else k + 1
  n = len(rows)
  if n < need:
    return (f"{n} usable size(s); the {model} model "
            f"{'with' if weighted else 'without'} CIs needs {need}")
  if len({r[0] for r in rows}) < k:
    return f"fewer than {k} distinct N"
  return None


def _point_fit(out: dict, rows, omega, weighted: bool) -> dict:
  """Fits the law to ``rows``, fills the fit keys of ``out`` in place.

  Returns:
    dict of what the bootstrap needs: ``log_n``, ``w`` (weights), ``sig``,
    ``fitted``, ``res`` (residuals), each [n], and ``dof``.
  """
  n = len(rows)
  log_n = np.log(np.array([r[0] for r in rows]))
  y = np.array([r[1] for r in rows])
  sig = np.array([r[2] for r in rows]) if weighted else np.ones(n)
  w = 1.0 / sig**2
  p_inf, a, chi2, om = (float(v[0]) for v in _fit(log_n, y[None], w, omega))
  fitted = p_inf + a * np.exp(-om * log_n)
  res = y - fitted
  dof = n - _n_params(omega is None)
  out.update(p_inf=p_inf, a=a, omega=om, residuals=[float(v) for v in res],
             chi2=float(chi2), rss=float(np.sum(res**2)), dof=dof)
  if omega is None:
    out["omega_at_edge"] = bool(min(om - OMEGA_RANGE[0], OMEGA_RANGE[1] - om) < 1e-9)
  if weighted and dof > 0:
    out["chi2_pvalue"] = _chi2_sf(chi2, dof)
  return {"log_n": log_n, "w": w, "sig": sig, "fitted": fitted, "res": res,
          "dof": dof}


def _bootstrap(fit: dict, omega, weighted: bool, n_boot: int, level: float,
               seed: int) -> dict:
  """The bootstrap keys of :func:`extrapolate`'s result (``n_boot``,
  ``_boot``; with >= 2 finite replicates the CIs and ``p_inf_se``).

  Parametric (normal, sigma per size) when ``weighted``, else residuals
  rescaled by sqrt(n / dof); each replicate refitted as the data.
  """
  rng = np.random.default_rng(seed)
  fitted, n = fit["fitted"], fit["fitted"].size
  if weighted:
    yb = fitted + fit["sig"] * rng.standard_normal((n_boot, n))
  else:
    r = fit["res"] * math.sqrt(n / fit["dof"])
    yb = fitted + r[rng.integers(0, n, size=(n_boot, n))]
  pb, ab, _, ob = _fit(fit["log_n"], yb, fit["w"], omega)
  ok = np.isfinite(pb) & np.isfinite(ab)
  pb, ab, ob = pb[ok], ab[ok], ob[ok]
  out = {"n_boot": int(pb.size), "_boot": pb}
  if pb.size >= 2:
    out["p_inf_ci"] = _quantiles(pb, level)
    out["p_inf_se"] = float(np.std(pb, ddof=1))
    out["a_ci"] = _quantiles(ab, level)
    if omega is None:
      out["omega_ci"] = _quantiles(ob, level)
  return out


def depth_spread_extrapolated(per_depth: dict, level: float = 0.95,
                              seed: int = 0) -> dict:
  """How far apart the extrapolated limits of the depths are.

  The spread is max - min of p_inf over the depths. Its CI combines the
  per-depth bootstrap replicates (``_boot`` of :func:`extrapolate`): each
  depth's replicates are shuffled independently (so that depths fitted with
  the same seed do not share their noise), truncated to the shortest, and
  the spread is taken per replicate; percentile CI. Where a depth has no
  replicates (e.g. a result read back from JSON) they are drawn from
  Normal(p_inf, p_inf_se).

  max - min is biased upward by the noise (with equal limits its CI never
  contains 0), so "one common limit" is decided by a chi^2 test instead:
  chi^2 = sum_L (p_inf_L - p_bar)^2 / se_L^2 with p_bar the inverse-variance
  weighted mean and se_L the bootstrap standard deviation of p_inf_L, at
  (number of depths - 1) degrees of freedom. A heavy-tailed bootstrap (free
  omega) makes the test approximate.

  Args:
    per_depth: {L: :func:`extrapolate` result}; depths with p_inf None are
      left out (listed in ``excluded``).
    level: CI level; the test rejects one common limit at p < 1 - level.
    seed: RNG seed of the shuffles (and of the normal draws).

  Returns:
    dict with ``depths`` (used, as str), ``p_inf`` {L: value}, ``p_inf_se``,
    ``spread`` (max - min), ``spread_ci`` [lo, hi], ``spread_relative``
    ((max - min) / mean, as :func:`lossland.phase.depth_spread`),
    ``common_p_inf`` (weighted mean) and ``common_p_inf_se``, ``chi2``,
    ``dof``, ``p_value``, ``consistent`` (p_value > 1 - level), ``excluded``,
    ``level``, ``method``, ``reason`` (None when computed).
  """
  ok = {str(L): r for L, r in per_depth.items() if r.get("p_inf") is not None}
  out = _spread_result(ok, per_depth, level)
  if len(ok) < 2:
    out["reason"] = f"{len(ok)} depth(s) with an extrapolated p_inf; need 2"
    return out
  depths = out["depths"]
  v = np.array([ok[L]["p_inf"] for L in depths])
  out["spread"] = float(v.max() - v.min())
  out["spread_relative"] = float((v.max() - v.min()) / v.mean()) if v.mean() != 0 else None
  out["spread_ci"] = _spread_ci(ok, depths, level, seed)
  out.update(_common_limit(ok, depths, v, level))
  return out


def _spread_result(ok: dict, per_depth: dict, level: float) -> dict:
  """The result dict of :func:`depth_spread_extrapolated` before the spread;
  ``ok`` the depths (as str) with a p_inf."""
  depths = sorted(ok, key=_depth_key)
  excluded = sorted((str(L) for L in per_depth if str(L) not in ok),
                    key=_depth_key)
  return {"depths": depths,
          "p_inf": {L: ok[L]["p_inf"] for L in depths},
          "p_inf_se": {L: ok[L].get("p_inf_se") for L in depths},
          "spread": None, "spread_ci": [None, None], "spread_relative": None,
          "common_p_inf": None, "common_p_inf_se": None, "chi2": None,
          "dof": None, "p_value": None, "consistent": None,
          "excluded": excluded, "level": level,
          "method": ("spread = max - min of p_inf over depths, percentile CI "
                     "from the per-depth bootstrap replicates (shuffled "
                     "independently); common limit: chi^2 of the "
                     "inverse-variance weighted mean against the bootstrap "
                     "standard errors"),
          "reason": None}


def _spread_ci(ok: dict, depths, level: float, seed: int) -> list:
  """Percentile CI of max - min over ``depths`` from their replicates
  (``_boot``, else Normal(p_inf, p_inf_se) draws), each shuffled; [None,
  None] when a depth has neither."""
  rng = np.random.default_rng(seed)
  reps = []
  for L in depths:
    b = ok[L].get("_boot")
    b = None if b is None else np.asarray(b, np.float64)
    se = _num(ok[L].get("p_inf_se"))
    if b is None or b.size < 2:
      b = None if se is None else ok[L]["p_inf"] + se * rng.standard_normal(1000)
    reps.append(b)
  if not all(b is not None for b in reps):
    return [None, None]
  m = min(b.size for b in reps)
  mat = np.stack([rng.permutation(b)[:m] for b in reps])  # [depths, m]
  return _quantiles(mat.max(0) - mat.min(0), level)


def _common_limit(ok: dict, depths, v, level: float) -> dict:
  """chi^2 test of one common limit of the p_inf ``v`` of ``depths``: the
  keys ``common_p_inf`` ... ``consistent``; {} unless every depth has a
  positive p_inf_se."""
  se = [_num(ok[L].get("p_inf_se")) for L in depths]
  if not all(s is not None and s > 0 for s in se):
    return {}
  wt = 1.0 / np.array(se) ** 2
  pbar = float(np.sum(wt * v) / np.sum(wt))
  chi2 = float(np.sum(wt * (v - pbar) ** 2))
  dof = len(depths) - 1
  pval = _chi2_sf(chi2, dof)
  return {"common_p_inf": pbar,
          "common_p_inf_se": float(1 / math.sqrt(np.sum(wt))), "chi2": chi2,
          "dof": dof, "p_value": pval, "consistent": bool(pval > 1 - level)}


def _depth_key(L):
  """Sort depths numerically when they are numbers ("10" after "9")."""
  s = str(L)
  try:
    return (0, float(s), s)
  except ValueError:
    return (1, 0.0, s)


def _single_n(v):
  """One N from a finite_size entry: a number, or a list of one distinct value."""
  if isinstance(v, (list, tuple)):
    vals = {_num(x) for x in v}
    return vals.pop() if len(vals) == 1 else None
  return _num(v)


def finite_size_extrapolation(finite_size_result: dict, model: str = "sqrt",
                              n_boot: int = 1000, seed: int = 0,
                              level: float = 0.95) -> dict:
  """:func:`extrapolate` per depth and :func:`depth_spread_extrapolated`.

  Args:
    finite_size_result: :func:`lossland.phase.finite_size`'s result: ``per_depth``
      {L: {"N": [...], "p_star_over_n": [...], "p_star_ci": [[lo, hi], ...]}}.
      An N given as a list (one depth whose cells had several N) is used when
      its values agree, else that size is dropped.
    model: as :func:`extrapolate` (``"power"``: omega free).
    n_boot: bootstrap replicates per depth.
    seed: RNG seed; each depth gets its own child seed (SeedSequence.spawn).
    level: CI level (also taken as the level of the input CIs).

  Returns:
    dict with ``per_depth`` {L: :func:`extrapolate` result (with ``_boot``)},
    ``spread`` (:func:`depth_spread_extrapolated`), ``model`` (a sentence),
    ``model_name``, ``sizes`` (as in the input), ``level``. JSON after
    :func:`public`.

  Raises:
    ValueError: unknown model.
  """
  if model not in MODELS:
    raise ValueError(f"unknown model {model!r}; expected one of {sorted(MODELS)}")
  pd = finite_size_result["per_depth"]
  depths = sorted(pd, key=_depth_key)
  seeds = np.random.SeedSequence(seed).spawn(len(depths) + 1)
  per_depth = {}
  for L, ss in zip(depths, seeds):
    d = pd[L]
    ns = [_single_n(v) for v in d["N"]]
    ci = d.get("p_star_ci")
    ci = [None] * len(ns) if ci is None else list(ci)
    per_depth[str(L)] = extrapolate(ns, d["p_star_over_n"], ci=ci, model=model,
                                    n_boot=n_boot, level=level,
                                    seed=int(ss.generate_state(1)[0]))
  spread = depth_spread_extrapolated(per_depth, level=level,
                                     seed=int(seeds[-1].generate_state(1)[0]))
  return {"per_depth": per_depth, "spread": spread,
          "model": (f"{_law(MODELS[model])} per depth, extrapolated separately; "
                    "fit and bootstrap in per_depth[L]['model']"),
          "model_name": model, "sizes": finite_size_result.get("sizes"),
          "level": level}


def public(obj):
  """``obj`` without the keys that start with ``_`` (recursively, in dicts and lists)."""
  if isinstance(obj, dict):
    return {k: public(v) for k, v in obj.items()
            if not (isinstance(k, str) and k.startswith("_"))}
  if isinstance(obj, (list, tuple)):
    return [public(v) for v in obj]
  return obj
