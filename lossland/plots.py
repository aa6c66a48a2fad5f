"""Matplotlib figures of an ensemble run, made from its run directory only."""
import json
import os

import numpy as np

from lossland import observables


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _load(run_dir):
  with np.load(os.path.join(run_dir, "arrays.npz"), allow_pickle=False) as z:
    arrays = {k: z[k] for k in z.files}
  with open(os.path.join(run_dir, "config.json")) as fh:
    config = json.load(fh)
  return arrays, config


def _save(fig, path):
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  _pyplot().close(fig)
  return path


_REASON_COLORS = {1: "tab:green", 2: "tab:red", 3: "tab:orange", 4: "black"}


def plot_training(run_dir: str, path: str | None = None) -> str:
  """Loss and N_Delta against step for every member (log-log)."""
  plt = _pyplot()
  a, _ = _load(run_dir)
  steps = a["history_step"]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for k in range(a["seeds"].shape[0]):
    c = _REASON_COLORS.get(int(a["stop_code"][k]), "tab:blue")
    ok = ~np.isnan(a["history_loss"][k])
    x = np.append(steps[ok], a["steps"][k]) + 1
    for ax, name in zip(axes, ("loss", "n_delta")):
      y = np.append(a[f"history_{name}"][k][ok], a[f"final_{name}"][k])
      ax.plot(x, np.where(y > 0, y, np.nan), color=c, alpha=0.6, lw=1)
  for ax, label in zip(axes, ("loss", r"$N_\Delta$")):
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step + 1")
    ax.set_ylabel(label)
  handles = [plt.Line2D([], [], color=c, label=l) for c, l in
             [("tab:green", "sat"), ("tab:red", "jammed"),
              ("tab:orange", "max_steps"), ("black", "diverged")]]
  axes[0].legend(handles=handles, fontsize=8)
  fig.suptitle("training of every member (zero values not shown)")
  return _save(fig, path or os.path.join(run_dir, "training.png"))


def plot_test_errors(run_dir: str, path: str | None = None) -> str:
  """Test error of each member beside the ensemble predictor's."""
  plt = _pyplot()
  a, _ = _load(run_dir)
  if a["y_test"].shape[0] == 0:
    return ""
  summ = observables.ensemble_summary(a["f_test"], a["y_test"])
  errs = np.asarray(summ["member_test_errors"])
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.bar(np.arange(errs.size), errs, color="tab:blue", alpha=0.7,
         label="members")
  ax.axhline(summ["mean_test_error"], color="tab:blue", ls="--",
             label=f"mean member {summ['mean_test_error']:.3f}")
  ax.axhline(summ["ensemble_test_error"], color="tab:red",
             label=f"ensemble {summ['ensemble_test_error']:.3f}")
  ax.set_xticks(np.arange(errs.size))
  ax.set_xticklabels([str(s) for s in a["seeds"]], fontsize=7)
  ax.set_xlabel("member seed")
  ax.set_ylabel("test error")
  lo = max(0.0, min(errs.min(), summ["ensemble_test_error"]) * 0.8)
  ax.set_ylim(lo, errs.max() * 1.1 + 1e-3)
  ax.legend(fontsize=8)
  return _save(fig, path or os.path.join(run_dir, "test_errors.png"))


def plot_delta_distribution(run_dir: str, path: str | None = None) -> str:
  """Distribution of Delta at the end of training, pooled over members.

  Left: Delta > 0 rescaled by sqrt(loss) (per member); right: -Delta for
  Delta < 0, both on log-log axes as in 1809.09349 (theta ~ 0.3, gamma ~ 0.2
  at jamming).
  """
  plt = _pyplot()
  a, config = _load(run_dir)
  eps = config["loss"]["margin"]
  if eps is None:
    from lossland import losses
    eps = losses.LossConfig(config["loss"]["name"]).epsilon
  bins = observables.log_bins(1e-6, 1e2, 64)
  pos = np.zeros(len(bins) - 1)
  neg = np.zeros(len(bins) - 1)
  for k in range(a["seeds"].shape[0]):
    delta = eps - a["y_train"] * a["f_train"][k]
    h = observables.delta_histograms(delta, float(a["final_loss"][k]), bins)
    pos += h["positive"]
    neg += h["negative"]
  K = a["seeds"].shape[0]
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
  fig.suptitle(r"distribution of $\Delta = \epsilon - y f$ at the end of training")
  return _save(fig, path or os.path.join(run_dir, "delta_distribution.png"))


def plot_run(run_dir: str) -> list:
  """All figures of an ensemble run; returns their paths."""
  return [p for p in (plot_training(run_dir), plot_test_errors(run_dir),
                      plot_delta_distribution(run_dir)) if p]
