"""Figures of the jamming phase diagram (:mod:`lossland.phase` computes the numbers)."""
import os

import numpy as np

from lossland import fits
from lossland.plots import _agg


def _sat(cell: dict) -> int:
  """Members of a cell that reached N_Delta = 0."""
  return cell["counts"].get("sat", 0)


def _fraction_sat(plt, per_depth: dict):
  """Fraction sat / (sat + jammed) vs P/N per depth, with the logistic fit."""
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for L, v in per_depth.items():
    x = np.array([c["p_over_n"] for c in v["cells"]])
    k = np.array([_sat(c) for c in v["cells"]])
    n = np.array([_sat(c) + c["counts"].get("jammed", 0) for c in v["cells"]])
    m = n > 0
    line = ax.plot(x[m], k[m] / n[m], "o", label=f"L={L}")[0]
    if v["p_star_over_n"] is not None and x.size:
      xx = np.linspace(x.min(), x.max(), 200)
      w = v["transition_width"] or 1e-3
      ax.plot(xx, fits.logistic(xx, v["p_star_over_n"], -1.0 / max(w, 1e-3)),
              color=line.get_color())
  ax.axhline(0.5, color="gray", lw=0.5)
  ax.set_xlabel("P/N"), ax.set_ylabel("fraction sat / (sat + jammed)")
  ax.legend()
  return fig


def _nd_over_n(plt, per_depth: dict):
  """N_Delta / N of every member (0 for the sat ones) vs P/N per depth."""
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for L, v in per_depth.items():
    xs, ys = [], []
    for c in v["cells"]:
      n_sat = _sat(c)
      xs += [c["p_over_n"]] * (len(c["nd_over_n_jammed"]) + n_sat)
      ys += c["nd_over_n_jammed"] + [0.0] * n_sat
    ax.plot(xs, ys, "o", alpha=0.5, label=f"L={L}")
  ax.set_xlabel("P/N"), ax.set_ylabel("N_Delta / N (sat and jammed)")
  ax.legend()
  return fig


def _phase_diagram(plt, per_depth: dict):
  """N* against P* per depth (log-log), with the CI of P*."""
  fig, ax = plt.subplots(figsize=(4.5, 3.5))
  for L, v in per_depth.items():
    if v["p_star"] is not None and isinstance(v["N"], int):
      lo, hi = v["p_star_ci"]
      ax.errorbar([v["p_star"]], [v["N"]], xerr=[[v["p_star"] - lo * v["N"] if lo else 0],
                                                 [hi * v["N"] - v["p_star"] if hi else 0]],
                  fmt="o", label=f"L={L}")
  ax.set_xscale("log"), ax.set_yscale("log")
  ax.set_xlabel("P*"), ax.set_ylabel("N*")
  ax.legend()
  return fig


def _delta_distributions(plt, result: dict):
  """Densities of Delta/sqrt(L) > 0 and of -Delta > 0 with the fitted power laws."""
  s = result["_samples"]
  fig, axs = plt.subplots(1, 2, figsize=(8, 3.5))
  for ax, key, name, a in ((axs[0], "positive", "Delta/sqrt(L), Delta>0", result["theta"]),
                           (axs[1], "negative", "-Delta, Delta<0",
                            None if result["gamma"] is None else -result["gamma"])):
    x = s[key][s[key] > 0]
    if x.size:
      bins = np.logspace(np.log10(x.min()), np.log10(x.max()), 30)
      h, _ = np.histogram(x, bins, density=True)
      c = np.sqrt(bins[1:] * bins[:-1])
      ax.loglog(c[h > 0], h[h > 0], "o")
      if a is not None:
        xm = s["theta_xmax" if key == "positive" else "gamma_xmax"] or x.max()
        xx = np.logspace(np.log10(x.min()), np.log10(xm), 20)
        # normalized on (0, xm] with the sample fraction below xm
        frac = np.mean(x <= xm)
        ax.loglog(xx, frac * (a + 1) * xx ** a / xm ** (a + 1), "-",
                  label=f"exponent {a:.2f}")
        ax.legend()
    ax.set_xlabel(name), ax.set_ylabel("density")
  return fig


def _avalanches(plt, sizes):
  """Histogram of the avalanche sizes (log-log)."""
  fig, ax = plt.subplots(figsize=(4.5, 3.5))
  nz = sizes[sizes > 0]
  if nz.size:
    bins = np.unique(np.logspace(0, np.log10(nz.max() + 1), 20).astype(int))
    h, _ = np.histogram(nz, bins)
    ax.loglog(bins[:-1], np.maximum(h, 0.5), "o")
  ax.set_xlabel("constraints changing sign between measurements")
  ax.set_ylabel("count")
  return fig


def plot_all(result: dict, out_dir: str):
  """Small PNG figures of :func:`lossland.phase.analyze`'s result into ``out_dir``.

  Writes fraction_sat.png, nd_over_n.png, phase_diagram.png,
  delta_distributions.png and, when avalanche sizes were recorded,
  avalanches.png; ``result`` needs its ``_samples`` (not stored in
  summary.json). Returns the file names written.
  """
  plt = _agg.pyplot()
  pd = result["per_depth"]
  files = []

  def save(fig, name):
    p = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(p, dpi=90)
    plt.close(fig)
    files.append(name)

  save(_fraction_sat(plt, pd), "fraction_sat.png")
  save(_nd_over_n(plt, pd), "nd_over_n.png")
  save(_phase_diagram(plt, pd), "phase_diagram.png")
  save(_delta_distributions(plt, result), "delta_distributions.png")
  sz = result["_samples"]["avalanche_sizes"]
  if sz.size:
    save(_avalanches(plt, sz), "avalanches.png")
  return files


def plot_finite_size(fs: dict, path: str) -> str:
  """P*/N vs N per depth (with CIs) and the depth spread vs N, one PNG.

  Args:
    fs: :func:`lossland.phase.finite_size`'s result.
    path: the PNG to write.

  Returns:
    ``path``.
  """
  plt = _agg.pyplot()
  from matplotlib import ticker
  fig, axs = plt.subplots(1, 2, figsize=(8, 3.3))
  for L, v in fs["per_depth"].items():
    pts = [(n, x, ci) for n, x, ci in zip(v["N"], v["p_star_over_n"], v["p_star_ci"])
           if x is not None and n is not None]
    if not pts:
      continue
    n, x, ci = zip(*pts)
    lo = [xi - (c[0] if c and c[0] is not None else xi) for xi, c in zip(x, ci)]
    hi = [(c[1] if c and c[1] is not None else xi) - xi for xi, c in zip(x, ci)]
    line = axs[0].errorbar(n, x, yerr=[lo, hi], marker="o", capsize=3, ls="none",
                           label=f"L={L}")
    e = fs.get("extrapolation", {}).get("per_depth", {}).get(str(L))
    if e and e.get("p_inf") is not None:
      # The fit p_inf + a N^-omega and its limit (a bar at the right edge).
      grid = np.geomspace(min(n), 4 * max(n), 50)
      color = line[0].get_color()
      axs[0].plot(grid, e["p_inf"] + e["a"] * grid ** -e["omega"], color=color, lw=1)
      ci = e.get("p_inf_ci") or [None, None]
      if ci[0] is not None:
        axs[0].errorbar([4 * max(n)], [e["p_inf"]], yerr=[[e["p_inf"] - ci[0]],
                        [ci[1] - e["p_inf"]]], color=color, marker="s", capsize=3)
  axs[0].set_xscale("log")
  axs[0].set_xlabel("N (weights)"), axs[0].set_ylabel("P*/N")
  ext = fs.get("extrapolation")
  if ext and ext.get("model_name"):
    axs[0].set_title(f"lines: p_inf + a N^-omega ({ext['model_name']}); squares: N -> inf",
                     fontsize=8)
  axs[0].legend()
  pts = [(n, s) for n, s in zip(fs["sizes"], fs["depth_spread"]) if s is not None]
  if pts:
    axs[1].loglog(*zip(*pts), "ko-")
  axs[1].set_xlabel("N (weights)"), axs[1].set_ylabel("depth spread of P*/N")
  if fs["spread_slope"] is not None:
    axs[1].set_title(f"slope {fs['spread_slope']:.2f}", fontsize=9)
  ticks = [round(n) for n in fs["sizes"] if n == n]
  for ax in axs:
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    if ticks:
      ax.set_xticks(ticks)
      ax.set_xticklabels([str(t) for t in ticks])
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path
