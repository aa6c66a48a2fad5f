"""Matplotlib figures of an ensemble run, made from its run directory only.

Runs are read through :func:`lossland.io.load_run`. Diverged and dead members
(:func:`lossland.observables.member_classes`) are drawn apart: black (diverged)
and grey dashed (dead) in the training curves, hatched grey bars in the test
errors, and left out of the means and of the pooled Delta distribution.
"""
import os

import numpy as np

from lossland import io
from lossland import losses
from lossland import observables
from lossland.plots import _agg


def _load(run_dir):
  run = io.load_run(run_dir)
  return run.arrays, run.config, _classes(run)


def _classes(run) -> list:
  """Member classes: from summary.json, else recomputed from the arrays."""
  members = run.summary.get("members") if isinstance(run.summary, dict) else None
  if members and all("class" in m for m in members):
    return [m["class"] for m in members]
  from lossland import nets
  a = run.arrays
  from lossland import train
  reasons = [train.STOP_REASONS[int(c)] for c in a["stop_code"]]
  net = run.config.get("net", {})
  n_w = nets.n_weights(net.get("d", a["x_train"].shape[1]), net.get("width", 1),
                       net.get("depth", 1))
  return observables.member_classes(reasons, a["final_n_delta"],
                                    a["final_max_delta"], a["f_train"], n_w)


def _save(fig, path):
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  _agg.pyplot().close(fig)
  return path


_REASON_COLORS = {1: "tab:green", 2: "tab:red", 3: "tab:orange", 4: "black"}


def plot_training(run_dir: str, path: str | None = None) -> str:
  """Loss and N_Delta against step for every member (log-log)."""
  plt = _agg.pyplot()
  a, _, classes = _load(run_dir)
  steps = a["history_step"]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for k in range(a["seeds"].shape[0]):
    c = _REASON_COLORS.get(int(a["stop_code"][k]), "tab:blue")
    ls = "-"
    if classes[k] == "diverged":
      c = "black"
    elif classes[k] == "dead":
      c, ls = "tab:gray", "--"
    ok = ~np.isnan(a["history_loss"][k])
    x = np.append(steps[ok], a["steps"][k]) + 1
    for ax, name in zip(axes, ("loss", "n_delta")):
      y = np.append(a[f"history_{name}"][k][ok], a[f"final_{name}"][k])
      y = np.where(np.isfinite(y) & (y > 0), y, np.nan)
      ax.plot(x, y, color=c, ls=ls, alpha=0.6, lw=1)
  for ax, label in zip(axes, ("loss", r"$N_\Delta$")):
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step + 1")
    ax.set_ylabel(label)
  handles = [plt.Line2D([], [], color=c, label=l) for c, l in
             [("tab:green", "sat"), ("tab:red", "jammed"),
              ("tab:orange", "max_steps"), ("black", "diverged")]]
  handles.append(plt.Line2D([], [], color="tab:gray", ls="--", label="dead (f = 0)"))
  axes[0].legend(handles=handles, fontsize=8)
  fig.suptitle("training of every member (zero values not shown)")
  return _save(fig, path or os.path.join(run_dir, "training.png"))


def plot_test_errors(run_dir: str, path: str | None = None) -> str:
  """Test error of each member beside the ensemble predictor's."""
  plt = _agg.pyplot()
  a, _, classes = _load(run_dir)
  if a["y_test"].shape[0] == 0:
    return ""
  healthy = np.array([c not in observables.UNHEALTHY for c in classes])
  errs = np.asarray(observables.error(a["f_test"], a["y_test"]), np.float64)
  fig, ax = plt.subplots(figsize=(6, 4))
  x = np.arange(errs.size)
  ax.bar(x[healthy], errs[healthy], color="tab:blue", alpha=0.7,
         label="members")
  if (~healthy).any():
    ax.bar(x[~healthy], np.nan_to_num(errs[~healthy], nan=0.5), color="lightgray",
           hatch="//", edgecolor="gray", label="diverged / dead (left out)")
  if healthy.any():
    summ = observables.ensemble_summary(a["f_test"][healthy], a["y_test"])
    ax.axhline(summ["mean_test_error"], color="tab:blue", ls="--",
               label=f"mean member {summ['mean_test_error']:.3f}")
    ax.axhline(summ["ensemble_test_error"], color="tab:red",
               label=f"ensemble {summ['ensemble_test_error']:.3f}")
    lo_ref = min(np.nanmin(errs[healthy]), summ["ensemble_test_error"])
  else:
    lo_ref = np.nanmin(np.nan_to_num(errs, nan=0.5))
  ax.set_xticks(x)
  ax.set_xticklabels([str(s) for s in a["seeds"]], fontsize=7)
  ax.set_xlabel("member seed")
  ax.set_ylabel("test error")
  lo = max(0.0, lo_ref * 0.8)
  ax.set_ylim(lo, np.nanmax(np.nan_to_num(errs, nan=0.5)) * 1.1 + 1e-3)
  ax.legend(fontsize=8)
  return _save(fig, path or os.path.join(run_dir, "test_errors.png"))


def plot_delta_distribution(run_dir: str, path: str | None = None) -> str:
  """Distribution of Delta at the end of training, pooled over members.

  Left: Delta > 0 rescaled by sqrt(loss) (per member); right: -Delta for
  Delta < 0, both on log-log axes as in 1809.09349 (theta ~ 0.3, gamma ~ 0.2
  at jamming).
  """
  plt = _agg.pyplot()
  a, config, classes = _load(run_dir)
  eps = losses.LossConfig(**config["loss"]).epsilon
  bins = observables.log_bins(1e-6, 1e2, 64)
  pos = np.zeros(len(bins) - 1)
  neg = np.zeros(len(bins) - 1)
  healthy = [k for k, c in enumerate(classes) if c not in observables.UNHEALTHY]
  for k in healthy:
    delta = losses.margins(a["f_train"][k], a["y_train"], eps)
    h = observables.delta_histograms(delta, float(a["final_loss"][k]), bins)
    pos += h["positive"]
    neg += h["negative"]
  K = max(len(healthy), 1)
  centers = np.sqrt(bins[1:] * bins[:-1])
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, h, lab in ((axes[0], pos / K, r"$\Delta/\sqrt{\mathcal{L}}$, $\Delta>0$"),
                     (axes[1], neg / K, r"$-\Delta$, $\Delta<0$")):
    ok = h > 0
    if ok.any():
      ax.loglog(centers[ok], h[ok], "o-", ms=3)
    else:
      ax.text(0.5, 0.5, "no such points\n(e.g. every member sat)",
              ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(lab)
    ax.set_ylabel("density")
  left_out = len(classes) - len(healthy)
  fig.suptitle(r"distribution of $\Delta = \epsilon - y f$ at the end of training"
               + (f" ({left_out} diverged/dead members left out)" if left_out else ""))
  return _save(fig, path or os.path.join(run_dir, "delta_distribution.png"))


def plot_run(run_dir: str) -> list:
  """All figures of an ensemble run; returns their paths."""
  return [p for p in (plot_training(run_dir), plot_test_errors(run_dir),
                      plot_delta_distribution(run_dir)) if p]
