"""The figure of generalization vs width (:mod:`lossland.generalization` computes the numbers)."""
import numpy as np

from lossland.plots import _agg

# (key in per_n, label, marker) of the log-log panel of fluctuations
_FLUCTUATIONS = (("output_variance", "|f - fbar|^2", "o"),
                 ("ntk_fluctuation", "dTheta_0 (init)", "s"),
                 ("ntk_drift", "|Theta_T - Theta_0| / |Theta_0|", "^"))


def _column(rows, key):
  """per_n[key] as floats (NaN where a row lacks it), or None if no row has it."""
  if not any(key in r for r in rows):
    return None
  return np.asarray([r.get(key, np.nan) if r.get(key) is not None else np.nan
                     for r in rows], np.float64)


def _fit_span(fit: dict, rows, n_min, n_max):
  """[N_lo, N_hi] a fit covered: its own ``N_range``, else (summaries made
  before it was recorded) the rows in [n_min, n_max)."""
  if fit.get("N_range"):
    return fit["N_range"]
  N = [r["N"] for r in rows if (n_min is None or r["N"] > n_min)
       and (n_max is None or r["N"] < n_max)]
  return [min(N), max(N)] if N else None


def _draw_fit(ax, fit, span, scale, color, ls, what):
  """The line C N^a of a fit over its span (x in units of ``scale``)."""
  if not fit or fit.get("exponent") is None or fit.get("prefactor") is None or not span:
    return
  if span[0] >= span[1]:
    return
  N = np.geomspace(span[0], span[1], 20)
  lo, hi = fit.get("ci") or [None, None]
  ci = "" if lo is None or hi is None else f" [{lo:.2f}, {hi:.2f}]"
  ax.plot(N / scale, fit["prefactor"] * N ** fit["exponent"], ls, color=color, lw=1.6,
          label=f"{what} slope {fit['exponent']:.2f}{ci}")


def _regimes(ax, n_star, tail_min, x_max):
  """Shades the near-N* regime and marks N* and the start of the tail."""
  if n_star is None:
    return
  ax.axvline(1.0, color="k", lw=0.6)
  if tail_min is not None:
    hi = tail_min / n_star
    ax.axvspan(1.0, min(hi, x_max) if x_max > 1 else hi, color="tab:orange", alpha=0.12,
               lw=0)
    if hi <= x_max:
      ax.axvline(hi, color="tab:blue", lw=0.6, ls="--")
      ax.text(hi, 0.98, " tail", transform=ax.get_xaxis_transform(), va="top", fontsize=7,
              color="tab:blue")


def _draw_prediction(ax, exponent, fit, scale, color):
  """A dotted line of the predicted slope through the fit's line at its first N."""
  if exponent is None or not fit or fit.get("exponent") is None or not fit.get("N_range"):
    return
  lo, hi = fit["N_range"]
  if lo >= hi:
    return
  N = np.geomspace(lo, hi, 10)
  y0 = fit["prefactor"] * lo ** fit["exponent"]
  ax.plot(N / scale, y0 * (N / lo) ** exponent, ":", color=color, lw=1.2,
          label=f"predicted slope {exponent:.2f}")


def plot_figure(summary: dict, path_prefix: str) -> list:
  """Test error, |f|^2 and the fluctuations vs N/N*, one figure (PNG and PDF).

  Three panels against N/N* (against N when the summary has no N*), the
  near-N* regime N* < N < fit_min_n_over_n_star N* shaded, N* a black line
  and the start of the tail a dashed one:

  * the test error of single nets (mean +- sem over members), of the ensemble
    average fbar and early stopped, the infinite-width NTK limit, and the
    peak measured by ``cusp`` (a star);
  * <|f|^2> on the test set (log-log; 1901.01608's divergence at N*);
  * the output variance |f - fbar|^2, the NTK fluctuation at init and the
    NTK drift (log-log), with the fitted power laws drawn over the widths they
    were fitted on: solid the tail fit (``fits``), dashed the near-N* fit
    (``fits_near_n_star``), the slope and its CI in the legend; dotted the
    slope the papers' mechanism predicts for this grid
    (``expected_exponents_grid``) from the tail fit's first point.

  Summaries written before the tail fit (no ``fit_min_n_over_n_star``, their
  ``fits`` over every N > N*) still plot: their fits are drawn solid over
  N > N*, labelled so, and nothing is shaded.

  Args:
    summary: :func:`lossland.generalization.summarize`'s result or a run
      directory's summary.json read back.
    path_prefix: writes ``<path_prefix>.png`` and ``<path_prefix>.pdf``.

  Returns:
    The paths written.
  """
  plt = _agg.pyplot()
  from matplotlib import ticker
  rows = sorted(summary["per_n"], key=lambda r: r["N"])
  N = np.asarray([r["N"] for r in rows], np.float64)
  ns = summary.get("n_star")
  scale = ns or 1.0
  x = N / scale
  new = "fit_min_n_over_n_star" in summary
  tail_min = summary.get("tail_n_min") if new else None
  xlabel = "N / N*" if ns else "N (no N* found)"
  fig, axs = plt.subplots(1, 3, figsize=(16, 4.4))
  _error_panel(axs[0], summary, rows, x, scale)
  _norm_panel(axs[1], rows, x)
  _fluctuation_panel(axs[2], summary, rows, x, scale, new, tail_min)
  for ax, letter in zip(axs, "abc"):
    _regimes(ax, ns, tail_min, x.max())
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())  # no overlapping labels
    ax.text(-0.02, 1.02, f"({letter})", transform=ax.transAxes, ha="right", fontsize=9)
  fig.tight_layout()
  paths = [path_prefix + ".png", path_prefix + ".pdf"]
  fig.savefig(paths[0], dpi=120)
  fig.savefig(paths[1])
  plt.close(fig)
  return paths


def _error_panel(ax, summary, rows, x, scale):
  """Panel (a): test errors of single nets, the ensemble, early stopping, the
  NTK limit and the cusp's peak."""
  ns = summary.get("n_star")
  ax.errorbar(x, _column(rows, "mean_test_error"), _column(rows, "sem_test_error"),
              marker="o", ms=4, capsize=2, label="single net (+- sem)")
  for key, m, lab in (("ensemble_test_error", "s-", "ensemble average fbar"),
                      ("early_stop_test_error", "^-", "early stopped")):
    y = _column(rows, key)
    if y is not None:
      ax.plot(x, y, m, ms=4, label=lab)
  if summary.get("kernel_test_error") is not None:
    ax.axhline(summary["kernel_test_error"], color="k", ls=":", label="NTK limit (N -> inf)")
  c = summary.get("cusp") or {}
  if c.get("N_peak") is not None:
    sems = [c.get(f"rise_{s}_over_sem") for s in ("left", "right")]
    txt = ", ".join("-" if v is None else f"{v:.1f}" for v in sems)
    ax.plot([c["N_peak"] / scale], [c["peak_error"]], "*", ms=14, color="tab:red",
            mfc="none", label=f"cusp: peak above sides by {txt} sem"
                               + (" (shows)" if c.get("shows") else ""))
  ax.set_ylabel("test error")
  ax.set_title(f"N* = {ns:.0f}" if ns else "no N*", fontsize=9)
  ax.legend(fontsize=6, loc="upper right", framealpha=0.8)


def _norm_panel(ax, rows, x):
  """Panel (b): <|f|^2> on the test set."""
  y = _column(rows, "output_norm")
  if y is not None:
    ax.loglog(x, y, "v-", color="tab:purple", ms=4, label="<|f|^2> (test)")
    ax.legend(fontsize=7)
  ax.set_ylabel("<|f|^2>")


def _fluctuation_panel(ax, summary, rows, x, scale, new, tail_min):
  """Panel (c): the fluctuations with their tail and near-N* fits and the
  predicted slopes."""
  ns = summary.get("n_star")
  fits_tail = summary.get("fits", {})
  fits_near = summary.get("fits_near_n_star", {}) if new else {}
  tail_what = "tail" if new else "N > N*"
  predicted = summary.get("expected_exponents_grid") or {}
  for (key, lab, m), color in zip(_FLUCTUATIONS, ("tab:blue", "tab:green", "tab:red")):
    y = _column(rows, key)
    if y is None:
      continue
    ok = np.isfinite(y) & (y > 0)
    ax.loglog(x[ok], y[ok], m, color=color, ms=4, mfc="none", label=lab)
    f = fits_tail.get(key, {})
    lo = tail_min if new else ns
    _draw_fit(ax, f, _fit_span(f, rows, None if lo is None else lo * (1 - 1e-12), None),
              scale, color, "-", tail_what)
    _draw_prediction(ax, predicted.get(key), f if new else None, scale, color)
    f = fits_near.get(key, {})
    _draw_fit(ax, f, _fit_span(f, rows, ns, tail_min), scale, color, "--", "near N*")
  ax.set_title("shaded: N* < N < tail; solid: tail fit, dashed: near-N* fit,\n"
               "dotted: 1901.01608's slope for this grid (h exponents / (dlog N / dlog h))"
               if new else "fits over N > N*", fontsize=8)
  ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
