"""Figures of the jamming phase diagram (:mod:`lossland.phase` computes the numbers)."""
import os

import numpy as np

from lossland import fits, phase
from lossland.plots import _agg


def _sat(cell: dict) -> int:
  """Members of a cell that reached N_Delta = 0."""
  return cell["counts"].get("sat", 0)


def _fraction_sat(plt, per_depth: dict):
  """Fraction sat / (sat + stopped jammed) vs P/N per depth, with the logistic fit."""
  fig, ax = plt.subplots(figsize=(5, 3.5))
  fraction_sat_ax(ax, per_depth)
  return fig


def fraction_sat_ax(ax, per_depth: dict) -> dict:
  """Draws the fraction sat / (sat + stopped jammed) of each cell vs P/N per depth and
  the fitted logistic curve; returns the points drawn {L: {"p_over_n",
  "n_sat", "n_counted"}}."""
  data = {}
  for L, v in per_depth.items():
    x = np.array([c["p_over_n"] for c in v["cells"]])
    k = np.array([_sat(c) for c in v["cells"]])
    n = np.array([_sat(c) + sum(c["counts"].get(j, 0) for j in phase.NOT_SAT)
                  for c in v["cells"]])
    m = n > 0
    line = ax.plot(x[m], k[m] / n[m], "o", label=f"L={L}")[0]
    if v["p_star_over_n"] is not None and x.size:
      xx = np.linspace(x.min(), x.max(), 200)
      w = v["transition_width"] or 1e-3
      ax.plot(xx, fits.logistic(xx, v["p_star_over_n"], -1.0 / max(w, 1e-3)),
              color=line.get_color())
    data[str(L)] = {"p_over_n": x.tolist(), "n_sat": k.tolist(), "n_counted": n.tolist()}
  ax.axhline(0.5, color="gray", lw=0.5)
  ax.set_xlabel("P/N"), ax.set_ylabel("fraction sat / (sat + stopped jammed)")
  ax.legend(fontsize=7)
  return data


def _nd_over_n(plt, per_depth: dict):
  """N_Delta / N of every member (0 for the sat ones) vs P/N per depth."""
  fig, ax = plt.subplots(figsize=(5, 3.5))
  nd_over_n_ax(ax, per_depth)
  return fig


def nd_over_n_ax(ax, per_depth: dict) -> dict:
  """Draws N_Delta/N of the sat (0) and jammed members vs P/N per depth and
  returns the points {L: {"p_over_n", "nd_over_n"}}."""
  data = {}
  for L, v in per_depth.items():
    xs, ys = [], []
    for c in v["cells"]:
      n_sat = _sat(c)
      xs += [c["p_over_n"]] * (len(c["nd_over_n_jammed"]) + n_sat)
      ys += c["nd_over_n_jammed"] + [0.0] * n_sat
    ax.plot(xs, ys, "o", alpha=0.5, label=f"L={L}")
    data[str(L)] = {"p_over_n": xs, "nd_over_n": ys}
  ax.set_xlabel("P/N"), ax.set_ylabel("N_Delta / N (sat and stopped jammed)")
  ax.legend(fontsize=7)
  return data


def _phase_diagram(plt, per_depth: dict):
  """N* against P* per depth (log-log), with the CI of P*."""
  fig, ax = plt.subplots(figsize=(4.5, 3.5))
  phase_diagram_ax(ax, per_depth)
  return fig


def _star_points(per_depth: dict, sizes: dict | None) -> dict:
  """{L: [(N, P*, P*_lo, P*_hi)]} from one phase result (and a finite-size
  result's per-depth lists, when given)."""
  pts = {}
  if sizes:
    for L, v in sizes["per_depth"].items():
      for n, x, ci in zip(v["N"], v["p_star_over_n"], v["p_star_ci"]):
        if x is not None and isinstance(n, (int, float)):
          ci = ci or [None, None]
          pts.setdefault(str(L), []).append(
              (n, x * n, (ci[0] or x) * n, (ci[1] or x) * n))
    return pts
  for L, v in per_depth.items():
    if v["p_star"] is not None and isinstance(v["N"], (int, float)):
      lo, hi = v["p_star_ci"] or (None, None)
      n = v["N"]
      pts[str(L)] = [(n, v["p_star"], (lo or v["p_star_over_n"]) * n,
                      (hi or v["p_star_over_n"]) * n)]
  return pts


def phase_diagram_ax(ax, per_depth: dict, sizes: dict | None = None) -> dict:
  """Draws N* against P* per depth (log-log) with the CI of P*, and the line
  N = P / c for the mean P*/N of the points (1809.09349: N* < c0 P); with a
  finite-size result (``sizes``), one point per size. Returns the points."""
  pts = _star_points(per_depth, sizes)
  ratios = []
  for L, rows in pts.items():
    n, p, lo, hi = map(np.asarray, zip(*rows))
    ax.errorbar(p, n, xerr=[p - lo, hi - p], fmt="o", capsize=3, label=f"L={L}")
    ratios += list(p / n)
  if ratios:
    c = float(np.mean(ratios))
    lim = np.array(ax.get_xlim())
    ax.plot(lim, lim / c, color="gray", lw=0.7, ls="--", label=f"N = P/{c:.2f}")
  ax.set_xscale("log"), ax.set_yscale("log")
  ax.set_xlabel("P*"), ax.set_ylabel("N*")
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)
  return {L: [dict(zip(("N", "p_star", "p_star_lo", "p_star_hi"), map(float, r)))
              for r in rows] for L, rows in pts.items()}


def _power_law_density(x, a, xm, lo=0.0):
  """The normalized density of p(x) ~ x^a on (lo, xm]: (a + 1) x^a /
  (xm^(a + 1) - lo^(a + 1)), or x^-1 / log(xm / lo) at a = -1."""
  if abs(a + 1) < 1e-12:
    return 1.0 / (x * np.log(xm / lo))
  return (a + 1) * x ** a / (xm ** (a + 1) - lo ** (a + 1))


def delta_ax(ax, x, exponent, ci, x_max, name: str, reference=None,
             x_floor: float = 0.0) -> dict:
  """Draws the log-binned density of the samples ``x`` (> 0) with the fitted
  power law x^exponent over its fitted range (x_floor, x_max], the band of
  the exponents at the ends of its CI, and a paper's exponent
  (``reference``, dashed) for comparison; samples at or below ``x_floor``
  (points at the margin, left out of the fit) are drawn and the floor
  marked. Returns the histogram and the curves."""
  x = np.asarray(x, np.float64)
  x = x[x > 0]
  lo = float(x_floor or 0.0)
  out = {"n_samples": int(x.size), "exponent": exponent, "ci": ci, "x_max": x_max,
         "x_floor": lo, "n_below_floor": int(np.sum(x <= lo))}
  if not x.size:
    ax.set_xlabel(name)
    return out
  bins = np.logspace(np.log10(x.min()), np.log10(x.max()), 30)
  h, _ = np.histogram(x, bins, density=True)
  c = np.sqrt(bins[1:] * bins[:-1])
  ax.loglog(c[h > 0], h[h > 0], "o", ms=4, label=f"{x.size} samples")
  out.update(bin_centers=c.tolist(), density=h.tolist())
  if lo > 0 and out["n_below_floor"]:
    ax.axvline(lo, color="gray", ls=":", lw=0.8,
               label=f"floor: {out['n_below_floor']} at the margin")
  above = x[x > lo]
  if exponent is not None and above.size:
    xm = x_max or above.max()
    frac = float(np.mean((x > lo) & (x <= xm)))
    xx = np.logspace(np.log10(above.min()), np.log10(xm), 20)
    lab = f"fit {exponent:.2f}"
    dens = lambda a: frac * _power_law_density(xx, a, xm, lo)
    if ci and ci[0] is not None:
      lab += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
      c_lo, c_hi = dens(ci[0]), dens(ci[1])
      ax.fill_between(xx, np.minimum(c_lo, c_hi), np.maximum(c_lo, c_hi), alpha=0.25)
    ax.loglog(xx, dens(exponent), "-", label=lab)
    if reference is not None:
      ax.loglog(xx, dens(reference), "k--", lw=0.8, label=f"papers {reference:+.1f}")
  ax.set_xlabel(name), ax.set_ylabel("density")
  ax.legend(fontsize=7)
  return out


def _delta_distributions(plt, result: dict):
  """Densities of Delta/sqrt(loss) > 0 and of -Delta > 0 with the fitted power laws."""
  s = result["_samples"]
  fig, axs = plt.subplots(1, 2, figsize=(8, 3.5))
  _delta_pair(axs, result, s["positive"], s["negative"], s["theta_xmax"], s["gamma_xmax"],
              x_floor=result.get("gap_floor") or 0.0)
  return fig


def _delta_pair(axs, result: dict, positive, negative, x_max_pos, x_max_neg,
                reference: bool = False, x_floor: float = 0.0) -> dict:
  """The two panels of the Delta distributions (theta, then gamma as the
  exponent -gamma of -Delta), with the papers' exponents when ``reference``."""
  gamma, gci = result.get("gamma"), result.get("gamma_ci")
  return {
      "positive": delta_ax(axs[0], positive, result.get("theta"), result.get("theta_ci"),
                           x_max_pos, "Delta/sqrt(loss), Delta > 0",
                           PAPER_THETA if reference else None, x_floor),
      "negative": delta_ax(axs[1], negative, None if gamma is None else -gamma,
                           None if not gci or gci[0] is None else [-gci[1], -gci[0]],
                           x_max_neg, "-Delta, Delta < 0",
                           -PAPER_GAMMA if reference else None, x_floor)}


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


def _save(plt, fig, path_prefix: str):
  fig.tight_layout()
  fig.savefig(path_prefix + ".png", dpi=80)
  fig.savefig(path_prefix + ".pdf")
  plt.close(fig)


def phase_diagram_figure(result: dict, path_prefix: str, sizes: dict | None = None) -> dict:
  """The jamming phase diagram (1809.09349 Figs. 1-2) in three panels: the
  fraction sat vs P/N per depth with the logistic fits, N* vs P* (log-log;
  one point per size with a finite-size result ``sizes``), N_Delta/N vs P/N
  (the jump). Writes ``<path_prefix>.png`` and ``.pdf``; returns the data
  drawn (JSON)."""
  plt = _agg.pyplot()
  pd = result["per_depth"]
  fig, axs = plt.subplots(1, 3, figsize=(12, 3.6))
  data = {"fraction_sat": fraction_sat_ax(axs[0], pd),
          "n_star_vs_p_star": phase_diagram_ax(axs[1], pd, sizes),
          "nd_over_n": nd_over_n_ax(axs[2], pd),
          "p_star_over_n": {str(L): v["p_star_over_n"] for L, v in pd.items()},
          "p_star_ci": {str(L): v["p_star_ci"] for L, v in pd.items()},
          "nd_over_n_at_jamming": {str(L): v["nd_over_n_at_jamming"] for L, v in pd.items()},
          "depth_spread": result.get("depth_spread")}
  _save(plt, fig, path_prefix)
  return data


# 1809.09349: p(Delta) ~ Delta^theta (Delta > 0), p(-Delta) ~ |Delta|^-gamma.
PAPER_THETA, PAPER_GAMMA = 0.3, 0.2


def delta_distributions_figure(result: dict, positive, negative, path_prefix: str,
                               stalled=None) -> dict:
  """P+(Delta/sqrt(loss)) and P-(-Delta) of the force-balanced jammed members
  of the cells nearest P* (:func:`lossland.phase.analyze`'s samples) with the
  fitted power laws, their CI bands and the papers' exponents. Without such
  members and with ``stalled`` = (positive, negative) samples of the members
  that stalled unbalanced, draws those instead, titled as stalled states (not
  minima). Writes PNG and PDF; returns the histograms and fits (JSON), with
  ``states`` saying which were drawn."""
  plt = _agg.pyplot()
  fig, axs = plt.subplots(1, 2, figsize=(8.5, 3.6))
  use_stalled = (not np.size(positive) and not np.size(negative) and stalled is not None
                 and (np.size(stalled[0]) or np.size(stalled[1])))
  if use_stalled:
    fits_ = result.get("stalled_fit") or {}
    th, ga = fits_.get("theta") or {}, fits_.get("gamma") or {}
    positive, negative = stalled
    theta, tci = result.get("theta_stalled"), result.get("theta_stalled_ci")
    gamma, gci = result.get("gamma_stalled"), result.get("gamma_stalled_ci")
    shown = dict(result, theta=theta, theta_ci=tci, gamma=gamma, gamma_ci=gci)
    tag = "stalled states (unbalanced, not minima): "
  else:
    th = result.get("theta_fit") or {}
    ga = result.get("gamma_fit") or {}
    theta, tci = result.get("theta"), result.get("theta_ci")
    gamma, gci = result.get("gamma"), result.get("gamma_ci")
    shown, tag = result, ""
  data = _delta_pair(axs, shown, positive, negative, th.get("x_max"), ga.get("x_max"),
                     reference=True, x_floor=result.get("gap_floor") or 0.0)
  axs[0].set_title(f"{tag}theta = {_fmt(theta)} {_fmt_ci(tci)}", fontsize=8)
  axs[1].set_title(f"{tag}gamma = {_fmt(gamma)} {_fmt_ci(gci)}", fontsize=8)
  data["states"] = "stalled (unbalanced)" if use_stalled else "force-balanced (jammed)"
  data["theta_method"] = result.get("theta_method")
  _save(plt, fig, path_prefix)
  return data


def _fmt(x) -> str:
  return "n/a" if x is None else f"{x:.2f}"


def _fmt_ci(ci) -> str:
  return "" if not ci or ci[0] is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"
