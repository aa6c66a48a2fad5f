"""Figures of generalization vs width (:mod:`lossland.generalization` computes the numbers)."""
import numpy as np

from lossland.plots import _agg


def plot(summary: dict, path_prefix: str):
  """Test error vs N/N* and log-log fluctuations with fitted slopes (PNGs).

  Args:
    summary: :func:`lossland.generalization.summarize`'s result (or its
      summary.json).
    path_prefix: writes ``<path_prefix>_test_error.png`` and
      ``<path_prefix>_fluctuations.png``.
  """
  plt = _agg.pyplot()
  from matplotlib import ticker
  rows = summary["per_n"]
  N = np.asarray([r["N"] for r in rows], np.float64)
  ns = summary["n_star"] or 1.0
  x = N / ns
  fig, ax = plt.subplots(figsize=(5, 3.6))
  ax.errorbar(x, [r["mean_test_error"] for r in rows],
              [r["sem_test_error"] for r in rows], marker="o", label="single net")
  ax.plot(x, [r["ensemble_test_error"] for r in rows], "s-", label="ensemble fbar")
  ax.plot(x, [r["early_stop_test_error"] for r in rows], "^-", label="early stopped")
  if summary.get("kernel_test_error") is not None:
    ax.axhline(summary["kernel_test_error"], color="k", ls="--", label="NTK limit")
  ax.axvline(1.0, color="gray", lw=0.5)
  ax.set_xscale("log")
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())  # no overlapping labels
  ax.set_xlabel("N / N*" if summary["n_star"] else "N (no N* found)")
  ax.set_ylabel("test error")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path_prefix + "_test_error.png", dpi=120)
  plt.close(fig)
  fig, ax = plt.subplots(figsize=(5, 3.6))
  for key, m in (("output_variance", "o"), ("ntk_fluctuation", "s"), ("ntk_drift", "^"),
                 ("output_norm", "v")):
    if key not in rows[0]:
      continue
    y = np.asarray([r[key] for r in rows], np.float64)
    fit = summary["fits"].get(key, {})
    lab = key if fit.get("exponent") is None else (
        f"{key}: slope {fit['exponent']:.2f}")
    ax.loglog(N, y, m + "-", label=lab)
  if summary["n_star"]:
    ax.axvline(summary["n_star"], color="gray", lw=0.5)
  ax.set_xlabel("N")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path_prefix + "_fluctuations.png", dpi=120)
  plt.close(fig)
