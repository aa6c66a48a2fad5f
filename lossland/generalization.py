"""Generalization vs width across the jamming point (1810.09665, 1901.01608).

For a fixed data set and a grid of widths h (N weights), with K members per
width (ensembles of initializations, trained by the sweep engine), this module
measures per N:

* ``mean_test_error`` and ``sem_test_error`` of single nets; the
  ``ensemble_test_error`` of fbar = mean_k f_k; ``early_stop_test_error``
  (each member's best test error along its measured history, averaged);
* ``output_variance`` <|f - fbar|^2> on the test set;
* ``ntk_fluctuation`` at init: rms_k |Theta_0^k - <Theta_0>| / |<Theta_0>|
  (Frobenius, <.> over members, (K - 1) normalization), expected ~ h^-1/2
  (N^-1/4 for N ~ h^2 L, N^-1/2 with one hidden layer);
* ``ntk_drift`` |Theta_T - Theta_0| / |Theta_0| averaged over members,
  expected ~ h^-1 (lazy regime);
* ``frac_sat``: fraction of members that reached N_Delta = 0;
* ``output_norm`` <|f|^2>: mean over members and test points of f^2, the
  quantity that 1901.01608 finds diverging as (N - N*)^-1 just above N*;
* whether the members that did not reach N_Delta = 0 stopped at a minimum:
  ``max_grad_norm`` (largest |grad L| over those members, 0 if every member
  is sat) and ``mean_n_delta_over_n`` (their mean N_Delta / N); with the
  job's polish stage (``polish="lbfgs"``) ``n_polished`` and per member the
  polish's evaluations and the stop reason before it,

both NTKs on the first ``n_ntk`` test points. ``n_star`` is where ``frac_sat``
crosses 1/2 (linear interpolation in log N), and the infinite-width asymptote
``kernel_test_error`` is the test error of the hinge gradient flow with the
infinite-width NTK (:func:`lossland.ntk.kernel_hinge_flow`, from f = 0, i.e.
the limit of training f(w) - f(w0)). For a standard-parametrized net (the
authors' network, which has no infinite-width NTK) the kernel is that of its
NTK-parametrized twin, the same function at initialization. Power laws are
fitted with :func:`lossland.fits.log_log_slope` (bootstrap CIs) on the tail
N >= 10 N* (the factor is an argument) and, separately, on the near-N* regime
where the divergence at N* decays (:func:`summarize`), and
:func:`cusp` measures the peak of the single-net test error around N*
against the lowest errors on both sides of it.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from lossland import experiment
from lossland import fits
from lossland import io
from lossland import losses
from lossland import nets
from lossland import ntk
from lossland import train

PER_N_KEYS = ("N", "width", "mean_test_error", "sem_test_error",
              "ensemble_test_error", "output_variance", "ntk_fluctuation",
              "ntk_drift", "frac_sat", "early_stop_test_error",
              "output_norm", "max_grad_norm", "mean_n_delta_over_n", "n_polished")


def analyze_run(run_dir: str, n_ntk: int = 50) -> dict:
  """The per-N observables of one ensemble run directory (module docstring)."""
  ens = experiment.load_ensemble(run_dir)
  run = io.load_run(run_dir)
  arrays = run.arrays
  members = run.summary.get("members", [])
  y_test = np.asarray(ens.data.y_test, np.float64)
  f_test = np.asarray(arrays["f_test"], np.float64)
  K = f_test.shape[0]
  errs = np.mean(y_test * f_test <= 0, axis=1)
  fbar = f_test.mean(0)
  hist = np.asarray(arrays["history_test_error"], np.float64)
  final = np.asarray(arrays["final_test_error"], np.float64)
  best = np.fmin(np.nanmin(np.where(np.isnan(hist), np.inf, hist), axis=1), final)

  x_sub = ens.data.x_test[:n_ntk]
  fn = jax.jit(jax.vmap(ntk.empirical_ntk_fn(ens.net), (0, None, None)))
  th0 = np.asarray(fn(ens.params0, x_sub, x_sub), np.float64)
  th_t = np.asarray(fn(ens.params, x_sub, x_sub), np.float64)
  fro = lambda a: np.sqrt(np.sum(a * a, axis=(-2, -1)))
  mean0 = th0.mean(0)
  fluct = (math.sqrt(np.sum(fro(th0 - mean0) ** 2) / max(K - 1, 1)) / fro(mean0)
           if K > 1 else float("nan"))
  with np.errstate(invalid="ignore", divide="ignore"):
    drift_k = fro(th_t - th0) / fro(th0)
  stop = np.asarray(arrays["stop_code"])
  unsat = stop != train.SAT
  n_w = nets.n_weights(ens.net.d, ens.net.width, ens.net.depth)
  gnorm = grad_norms(ens)
  nd = np.asarray(arrays["final_n_delta"], np.float64) if "final_n_delta" in arrays else None
  return {
      "N": n_w,
      "width": ens.net.width,
      "mean_test_error": float(errs.mean()),
      "sem_test_error": float(errs.std(ddof=1) / math.sqrt(K)) if K > 1 else float("nan"),
      "ensemble_test_error": float(np.mean(y_test * fbar <= 0)),
      "output_variance": float(np.mean((f_test - fbar) ** 2)),
      "ntk_fluctuation": float(fluct),
      # a dead member (all-zero Theta_0, e.g. every ReLU off at h = 2) has no drift
      "ntk_drift": float(np.nanmean(drift_k)) if np.isfinite(drift_k).any() else float("nan"),
      "frac_sat": float(np.mean(stop == train.SAT)),
      "early_stop_test_error": float(best.mean()),
      "output_norm": float(np.mean(f_test ** 2)),
      "max_grad_norm": float(gnorm[unsat].max()) if unsat.any() else 0.0,
      "mean_n_delta_over_n": (float(nd[unsat].mean() / n_w) if unsat.any() and nd is not None
                              else 0.0),
      "member_test_errors": errs.tolist(),
      "member_grad_norms": gnorm.tolist(),
      "member_stop_codes": stop.tolist(),
      "member_ntk_drift": drift_k.tolist(),
      "member_stop_reasons": [m.get("stop_reason") for m in members],
      # the job's polish stage (absent from unpolished runs: 0 and False)
      "n_polished": int(sum(bool(m.get("polished", False)) for m in members)),
      "member_polish_steps": [int(m.get("polish_steps", 0)) for m in members],
      "member_stop_before_polish": [m.get("stop_before_polish", m.get("stop_reason"))
                                    for m in members],
      "run_dir": run_dir,
  }


def grad_norms(ens) -> np.ndarray:
  """|grad L| at the final params of each member: [K] (the training loss).

  The loss is the one the trainer minimized (``LossConfig.scale`` included),
  of f(w) or of f(w) - f(w0) as the run trained.
  """
  _, apply_fn = nets.make_net(ens.net)
  out_fn = nets.output_fn(apply_fn, ens.subtract_init)
  x, y = ens.data.x_train, ens.data.y_train

  def norm(params, params0):
    g = jax.grad(lambda p: losses.mean_loss(ens.loss, out_fn(p, params0, x), y))(params)
    return jnp.sqrt(sum(jnp.sum(l * l) for l in jax.tree.leaves(g)))

  return np.asarray(jax.jit(jax.vmap(norm))(ens.params, ens.params0), np.float64)


def cusp(per_n, n_star_value, window: float = 2.0, min_sems: float = 2.0) -> dict | None:
  """The peak of the single-net test error around N*, in standard errors.

  The peak is the highest local maximum of ``mean_test_error`` vs N (higher
  than both neighbouring widths) within the window N*/window <= N <=
  N* window; it is compared with the lowest error on each side of it inside
  the window (``left``: smaller N, ``right``: larger N). A cusp in the sense of
  1810.09665 (the error rises with N up to N* and falls after it) ``shows``
  when the peak is more than ``min_sems`` combined standard errors
  sqrt(sem_peak^2 + sem_side^2) above both sides. A peak with no width beside
  it in the window on one side does not show. The
  ensemble and early-stopped errors at the same three widths are reported
  with the same rises (1810.09665: both are flat there), when the rows have
  them.

  Returns:
    None without N* or without a width in the window; else a dict (its
    values None where there is no local maximum, e.g. a monotone decay) with
    ``N_peak``, ``N_peak_over_n_star``, ``peak_error``, ``peak_sem``; per side
    (``left``, ``right``) ``<side>_N``, ``<side>_error``, ``<side>_sem``,
    ``rise_<side>`` (peak minus side) and ``rise_<side>_over_sem`` (None
    without a width on that side); ``ensemble`` and ``early_stop``:
    ``{"left", "peak", "right", "rise_left", "rise_right"}`` (or None); and
    ``shows``.
  """
  if n_star_value is None:
    return None
  every = sorted(per_n, key=lambda r: r["N"])
  err = lambda r: r["mean_test_error"]
  inside = [j for j, r in enumerate(every)
            if n_star_value / window <= r["N"] <= n_star_value * window]
  if not inside:
    return None
  maxima = [j for j in inside if 0 < j < len(every) - 1
            and err(every[j]) > err(every[j - 1]) and err(every[j]) > err(every[j + 1])]
  out = {k: None for k in ("N_peak", "N_peak_over_n_star", "peak_error", "peak_sem",
                           "ensemble", "early_stop")}
  for side in ("left", "right"):
    out.update({f"{side}_N": None, f"{side}_error": None, f"{side}_sem": None,
                f"rise_{side}": None, f"rise_{side}_over_sem": None})
  out["shows"] = False
  if not maxima:
    return out
  i = max(maxima, key=lambda j: err(every[j]))
  peak = every[i]
  out.update({"N_peak": peak["N"], "N_peak_over_n_star": peak["N"] / n_star_value,
              "peak_error": err(peak), "peak_sem": peak["sem_test_error"]})
  sides = {"left": [every[j] for j in inside if j < i],
           "right": [every[j] for j in inside if j > i]}
  lows = {}
  for side, cand in sides.items():
    low = min(cand, key=err) if cand else None
    lows[side] = low
    if low is None:
      continue
    rise = err(peak) - err(low)
    sem = math.sqrt(peak["sem_test_error"] ** 2 + low["sem_test_error"] ** 2)
    out.update({f"{side}_N": low["N"], f"{side}_error": err(low),
                f"{side}_sem": low["sem_test_error"], f"rise_{side}": rise,
                f"rise_{side}_over_sem": _over(rise, sem)})
  for key, name in (("ensemble_test_error", "ensemble"),
                    ("early_stop_test_error", "early_stop")):
    if key not in peak or lows["left"] is None or lows["right"] is None:
      out[name] = None
      continue
    at = {"left": lows["left"][key], "peak": peak[key], "right": lows["right"][key]}
    at.update(rise_left=at["peak"] - at["left"], rise_right=at["peak"] - at["right"])
    out[name] = at
  out["shows"] = bool(all(out[f"rise_{side}_over_sem"] is not None
                          and out[f"rise_{side}_over_sem"] > min_sems
                          for side in sides))
  return out


def _over(x, sem):
  if sem > 0:
    return x / sem
  return math.copysign(math.inf, x) if x else 0.0


def n_star(N, frac_sat) -> float | None:
  """Where frac_sat crosses 1/2 going up in N (interpolated in log N).

  The last crossing from below 1/2 to at least 1/2; None if there is none
  (every width sat, or none).
  """
  N = np.asarray(N, np.float64)
  f = np.asarray(frac_sat, np.float64)
  order = np.argsort(N)
  N, f = N[order], f[order]
  for i in range(len(N) - 2, -1, -1):
    if f[i] < 0.5 <= f[i + 1]:
      t = (0.5 - f[i]) / (f[i + 1] - f[i])
      return float(np.exp(np.log(N[i]) + t * (np.log(N[i + 1]) - np.log(N[i]))))
  return None


def kernel_test_error(net_cfg: nets.NetConfig, data, loss_cfg, **flow_kw) -> dict:
  """Test error of the infinite-width net: hinge flow with ``ntk.kernel_fn``.

  A standard-parametrized ``net_cfg`` uses its NTK-parametrized twin (same
  function at init; the standard parametrization has no N -> infinity NTK).
  """
  if net_cfg.parametrization == "standard":
    net_cfg = dataclasses.replace(net_cfg, parametrization="ntk")
  kfn = jax.jit(ntk.kernel_fn(net_cfg))
  k = kfn(data.x_train, data.x_train)["ntk"]
  kt = kfn(data.x_test, data.x_train)["ntk"]
  out = ntk.kernel_hinge_flow(k, data.y_train, kt, loss_cfg, **flow_kw)
  return {"kernel_test_error": float(np.mean(np.asarray(data.y_test) * np.asarray(out["f_test"]) <= 0)),
          "kernel_train_loss": float(out["loss"]),
          "kernel_n_delta": int(out["n_delta"]),
          "kernel_flow_steps": int(out["steps"]),
          "kernel_converged": bool(out["converged"])}


def fit_range(per_n, key, n_min=None, n_max=None, n_boot=1000, seed=0,
              offset=0.0) -> dict:
  """log-log slope of per_n[key] - offset vs N over n_min <= N < n_max.

  Either bound may be None (no bound). The result is
  :func:`lossland.fits.log_log_slope`'s (``ci``: percentile bootstrap over
  the points) with added: ``fitted_N`` (the N of the rows in the range, in
  order; rows whose value is not positive are dropped by the fit itself, so
  ``n_points`` may be smaller), ``N_range`` [min, max] of ``fitted_N`` (None
  without rows) and ``ci_t``, the textbook least-squares interval
  slope +- t_{n-2} SE (iid Gaussian scatter of log y; None below 3 points).
  With 5 points the bootstrap CI is too narrow: measured coverage 0.89 at a
  nominal 0.95 on a clean power law with 5 % log-normal noise (the t
  interval has the nominal coverage under its assumption).
  """
  rows = sorted((r for r in per_n
                 if (n_min is None or r["N"] >= n_min) and (n_max is None or r["N"] < n_max)),
                key=lambda r: r["N"])
  x = np.asarray([r["N"] for r in rows], np.float64)
  y = np.asarray([r[key] for r in rows], np.float64) - offset
  fitted = [r["N"] for r in rows]
  where = {"fitted_N": fitted, "N_range": [min(fitted), max(fitted)] if fitted else None}
  if len(x) < 2:
    return {"exponent": None, "prefactor": None, "ci": [None, None],
            "n_points": int(len(x)), **where}
  out = {**fits.log_log_slope(x, y, n_boot=n_boot, seed=seed), **where}
  out["ci_t"] = fits.log_log_t_interval(x, y, out.get("level", 0.95))
  return out


FIT_KEYS = ("output_variance", "ntk_fluctuation", "ntk_drift")

# 1901.01608's mechanism in the width h (papers_jamming.md, 3.2): the NTK is
# an average over h units, Delta Theta_0 ~ h^-1/2, |f - fbar| ~ Delta Theta_0
# (variance ~ h^-1), the kernel moves by ~ h^-1 in training, and the test
# error grows by ~ |f - fbar|^2 ~ h^-1. The papers state these in N with
# N ~ h^2 L (fully connected, L >= 2 hidden layers): PAPER_EXPONENTS. With one
# hidden layer N ~ h and the same mechanism gives twice the N exponents.
WIDTH_EXPONENTS = {"output_variance": -1.0, "ntk_fluctuation": -0.5, "ntk_drift": -1.0,
                   "test_error_excess": -1.0}
PAPER_EXPONENTS = {"output_variance": -0.5, "ntk_fluctuation": -0.25, "ntk_drift": -0.5,
                   "test_error_excess": -0.5}


def n_per_width_exponent(per_n, n_min=None) -> float | None:
  """d log N / d log h over the rows with N >= n_min (least squares).

  1 for one hidden layer (N = (d + 1) h), tending to 2 for deeper nets as h
  grows (N ~ h^2 (L - 1)); None with fewer than two distinct widths.
  """
  rows = [r for r in per_n if "width" in r and (n_min is None or r["N"] >= n_min)]
  h = np.asarray([r["width"] for r in rows], np.float64)
  if len(np.unique(h)) < 2:
    return None
  N = np.asarray([r["N"] for r in rows], np.float64)
  return float(np.polyfit(np.log(h), np.log(N), 1)[0])


def _fits(rows, n_min, n_max, eps_inf, n_boot, seed) -> dict:
  """The fits of FIT_KEYS and of the test error's excess over ``eps_inf``."""
  f = {k: fit_range(rows, k, n_min, n_max, n_boot, seed) for k in FIT_KEYS}
  f["test_error_excess"] = (fit_range(rows, "mean_test_error", n_min, n_max, n_boot, seed,
                                      offset=eps_inf) if eps_inf is not None
                            else {"exponent": None, "ci": [None, None], "n_points": 0})
  return f


def summarize(per_n, kernel: dict | None, n_boot: int = 1000, seed: int = 0,
              fit_min_n_over_n_star: float = 10.0) -> dict:
  """summary.json contents from the per-N rows and the kernel asymptote.

  The power laws of 1901.01608 hold for N >> N*; just above N* the output
  variance and the drift decay from the divergence at N* much faster, so a
  fit over every N > N* measures that decay, not the tail. The exponents are
  fitted (:func:`fit_range`, least squares in log-log, bootstrap CIs over the
  points) in three ranges, each a dict keyed by FIT_KEYS and
  ``test_error_excess`` (mean_test_error - kernel_test_error):

  * ``fits``: the tail N >= fit_min_n_over_n_star N* (the headline numbers;
    every N when there is no N*);
  * ``fits_near_n_star``: N* < N < fit_min_n_over_n_star N* (exponents None
    without N*);
  * ``fits_above_n_star``: every N > N* (what ``fits`` was before the tail
    fit; every N without N*).

  Args:
    per_n: rows of :func:`analyze_run` (at least N, width, frac_sat and the
      fitted keys).
    kernel: :func:`kernel_test_error`'s result, or None.
    n_boot, seed: bootstrap replicates and seed of every fit.
    fit_min_n_over_n_star: where the tail starts, in units of N*.

  Returns:
    dict with ``per_n`` (the PER_N_KEYS of each row, sorted by N), ``n_star``,
    ``fit_min_n_over_n_star``, ``tail_n_min`` (its N, None without N*), the
    three fit dicts (each fit also has ``fitted_N``, ``N_range`` and ``ci_t``),
    ``cusp``,
    ``expected_exponents`` (the papers' exponents in N, stated for N ~ h^2 L),
    ``width_exponents`` (the same mechanism in h), ``n_per_width_exponent``
    (d log N / d log h on the tail's rows: 1 for one hidden layer) and
    ``expected_exponents_grid`` (width_exponents / n_per_width_exponent: what
    the mechanism predicts in N for this grid, twice the papers' exponents with
    one hidden layer), ``kernel_test_error`` and ``kernel``.
  """
  per_n = sorted(per_n, key=lambda r: r["N"])
  ns = n_star([r["N"] for r in per_n], [r["frac_sat"] for r in per_n])
  eps_inf = None if kernel is None else kernel["kernel_test_error"]
  tail_min = None if ns is None else fit_min_n_over_n_star * ns
  above = per_n if ns is None else [r for r in per_n if r["N"] > ns]
  fit = lambda rows, lo, hi: _fits(rows, lo, hi, eps_inf, n_boot, seed)
  nu = n_per_width_exponent(per_n, tail_min)
  return {"per_n": [{k: r[k] for k in PER_N_KEYS if k in r} for r in per_n],
          "n_star": ns, "fit_min_n_over_n_star": fit_min_n_over_n_star,
          "tail_n_min": tail_min,
          "fits": fit(per_n, tail_min, None),
          "fits_near_n_star": fit(above if ns is not None else [], None, tail_min),
          "fits_above_n_star": fit(above, None, None),
          "cusp": cusp(per_n, ns),
          "expected_exponents": dict(PAPER_EXPONENTS),
          "width_exponents": dict(WIDTH_EXPONENTS),
          "n_per_width_exponent": nu,
          "expected_exponents_grid": (None if nu is None else
                                      {k: v / nu for k, v in WIDTH_EXPONENTS.items()}),
          "kernel_test_error": eps_inf, "kernel": kernel}
