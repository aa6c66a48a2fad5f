"""The figure of :mod:`lossland.experiments.hessian_phases`: H, H0 and Hp across the phases."""
import numpy as np

from lossland import phase
from lossland.plots import _agg


def representatives(rows: list) -> dict:
  """Indices of one member per phase: ``over`` (a sat member of the lowest
  P/N), ``jamming`` (a jammed member of the cell nearest P*), ``under`` (the
  jammed member of largest loss at the largest P/N); absent when none."""
  out = {}
  sat = [i for i, r in enumerate(rows) if r["class"] == "sat"]
  jam = [i for i, r in enumerate(rows) if r["class"] in phase.NOT_SAT]
  if sat:
    out["over"] = min(sat, key=lambda i: rows[i]["p_over_n"])
  if jam:
    near = [i for i in jam if rows[i]["distance"] is not None]
    if near:
      out["jamming"] = min(near, key=lambda i: (abs(rows[i]["distance"]), rows[i]["loss"]))
    out["under"] = max(jam, key=lambda i: (rows[i]["p_over_n"], rows[i]["loss"]))
  return out


def _label(r) -> str:
  return f"P/N={r['p_over_n']:.2f} {r['class']}, loss {r['loss']:.1e}"


def _sorted_ax(ax, curves, title):
  """Sorted eigenvalues against their rank / (number of eigenvalues: the
  parameters, N weights plus the biases of a net with biases) on a symlog
  axis."""
  top = max([float(np.max(np.abs(e))) for e, _ in curves] + [1e-30])
  for e, lab in curves:
    m = len(e)
    ax.plot(np.arange(1, m + 1) / m, np.sort(e), lw=1.2, label=lab)
  ax.set_yscale("symlog", linthresh=max(top * 1e-8, 1e-300))
  ax.set_xlabel("rank / parameters"), ax.set_ylabel("eigenvalue (symlog)")
  ax.set_title(title, fontsize=8)
  ax.legend(fontsize=6)


def _collapse_ax(ax, rows, eig_hp):
  """Densities of lambda(Hp)/sqrt(loss) of the jammed members (up to 6, spread in loss)."""
  jam = sorted((i for i, r in enumerate(rows) if r["class"] in phase.NOT_SAT and r["loss"] > 0),
               key=lambda i: rows[i]["loss"])
  if len(jam) > 6:
    jam = [jam[j] for j in np.linspace(0, len(jam) - 1, 6).round().astype(int)]
  if not jam:
    ax.text(0.5, 0.5, "no jammed member", ha="center", transform=ax.transAxes)
    return
  scaled = [eig_hp[i] / np.sqrt(rows[i]["loss"]) for i in jam]
  lim = float(np.quantile(np.abs(np.concatenate(scaled)), 0.98))
  bins = np.linspace(-lim, lim, 41)
  for i, s in zip(jam, scaled):
    h, _ = np.histogram(s, bins, density=True)
    ax.step(0.5 * (bins[1:] + bins[:-1]), h, where="mid", lw=1,
            label=f"loss {rows[i]['loss']:.1e}, P/N {rows[i]['p_over_n']:.2f}")
  ax.set_yscale("log")
  ax.set_xlabel("lambda(Hp) / sqrt(loss)"), ax.set_ylabel("density")
  ax.set_title("Hp rescaled by sqrt(loss) (jammed members)", fontsize=8)
  ax.legend(fontsize=5)


def _bound_ax(ax, per_depth):
  """N_-(Hp)/N against N_Delta/N of every jammed member, the line N_Delta = N_-."""
  pts = {}
  for L, v in per_depth.items():
    rows = [r for r in v["members"] if r["class"] in phase.NOT_SAT]
    if rows:
      x = [r["n_delta_over_n"] for r in rows]
      y = [r["n_negative_hp_over_n"] for r in rows]
      ax.plot(x, y, "o", alpha=0.6, label=f"L={L}")
      pts[L] = {"n_delta_over_n": x, "n_negative_hp_over_n": y}
  ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="N_Delta = N_-(Hp)")
  ax.set_xlabel("N_Delta / N"), ax.set_ylabel("N_-(Hp) / N")
  ax.set_title("a minimum needs N_-(Hp) <= rank H0 <= N_Delta", fontsize=8)
  ax.legend(fontsize=6)
  return pts


def plot(result: dict, arrays: dict, path_prefix: str, depth: int | None = None) -> dict:
  """Four panels: H in the three phases, H0 and Hp at jamming, Hp / sqrt(loss),
  N_-(Hp)/N vs N_Delta/N. Writes ``<path_prefix>.png`` and ``.pdf``.

  Args:
    result, arrays: :func:`lossland.experiments.hessian_phases.analyze`'s.
    path_prefix: the files' path without extension.
    depth: the depth of the first three panels (default the smallest).

  Returns:
    the members drawn in each panel (JSON), for the figure's data file.
  """
  plt = _agg.pyplot()
  pd = result["per_depth"]
  L = str(depth if depth is not None else min(int(k) for k in pd))
  v = pd[L]
  rows, n = v["members"], v["N"]
  e = {k: arrays[f"L{L}_eig_{k}"] for k in ("h", "h0", "hp")}
  rep = representatives(rows)
  fig, axs = plt.subplots(2, 2, figsize=(9, 6.6))
  _sorted_ax(axs[0, 0], [(e["h"][i], f"{ph}: {_label(rows[i])}") for ph, i in rep.items()],
             f"H, L={L}, N={n} (sat: H = 0 exactly)")
  drawn = {ph: rows[i] for ph, i in rep.items()}
  if "jamming" in rep:
    i = rep["jamming"]
    _sorted_ax(axs[0, 1], [(e["h0"][i], f"H0 (rank {rows[i]['rank_h0']})"),
                           (e["hp"][i], f"Hp (N_- = {rows[i]['n_negative_hp']})"),
                           (e["h"][i], "H")],
               f"near jamming: {_label(rows[i])}, N_Delta = {rows[i]['n_delta']}")
  _collapse_ax(axs[1, 0], rows, e["hp"])
  bound = _bound_ax(axs[1, 1], pd)
  fig.tight_layout()
  fig.savefig(path_prefix + ".png", dpi=80)
  fig.savefig(path_prefix + ".pdf")
  plt.close(fig)
  return {"depth": int(L), "representatives": drawn, "bound": bound}
