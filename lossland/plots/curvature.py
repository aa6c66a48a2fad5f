"""Figures of Hessian spectra: densities of H, H0 and Hp, and Hp rescaled by sqrt(L).

Inputs are quadrature rules, so the dense path and SLQ share the code: for K
members, ``nodes`` and ``weights`` of shape [K, n_probes, m] (dense eigenvalues
are ``nodes = eigs[:, None, :]`` with weights 1/N). Nothing here computes
spectra; the functions only draw and save PNG files (Agg backend).
"""
import os

import numpy as np

from lossland.plots import _agg


def broadened(nodes, weights, grid, sigma):
  """Gaussian-broadened density (numpy twin of lanczos.density). nodes [..., m]."""
  nodes = np.asarray(nodes).reshape(-1, np.shape(nodes)[-1])
  weights = np.asarray(weights).reshape(nodes.shape)
  z = (grid[None, None, :] - nodes[..., None]) / sigma
  g = np.exp(-0.5 * z * z) / (sigma * np.sqrt(2 * np.pi))
  return np.mean(np.sum(weights[..., None] * g, axis=1), axis=0)


def log_abs_histogram(nodes, weights, bins):
  """Weighted histograms of |lambda| on log bins, for lambda > 0 and lambda < 0.

  Returns (positive, negative) densities per unit log10|lambda|, each [len(bins)-1];
  each sums (times the bin width) to the fraction of eigenvalues of that sign
  inside the bins.
  """
  nodes = np.asarray(nodes).reshape(-1, np.shape(nodes)[-1])
  weights = np.asarray(weights).reshape(nodes.shape) / nodes.shape[0]
  width = np.diff(np.log10(bins))
  pos, _ = np.histogram(nodes[nodes > 0], bins=bins, weights=weights[nodes > 0])
  neg, _ = np.histogram(-nodes[nodes < 0], bins=bins, weights=weights[nodes < 0])
  return pos / width, neg / width


def _log_bins(nodes, decades: float = 12.0, n: int = 60):
  top = float(np.max(np.abs(nodes))) if np.size(nodes) else 1.0
  top = top if top > 0 else 1.0
  return np.logspace(np.log10(top) - decades, np.log10(top) * 1.0 + 0.05, n)


ZERO_TEXT = "{name} = 0 exactly at a satisfied minimum"


def plot_density(nodes, weights, title: str, path: str, labels=None,
                 zero_tol=None):
  """Two panels: broadened density (linear lambda, log density) and the density
  of log10|lambda| for both signs. nodes, weights: [K, n_probes, m].

  A member whose spectrum is exactly zero (L = 0 with a finite-range loss:
  H = H0 = Hp = 0) has no density to draw; it is named in the legend as
  ``"<label>: <title> = 0 exactly"``, and when every member is zero both
  panels say "<title> = 0 exactly at a satisfied minimum" instead of a density
  broadened by a meaningless sigma.
  """
  plt = _agg.pyplot()
  nodes, weights = np.asarray(nodes), np.asarray(weights)
  k = nodes.shape[0]
  labels = labels or [f"member {i}" for i in range(k)]
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  finite = np.where(np.isfinite(nodes), nodes, 0.0)
  zero = [not np.any(finite[i] != 0) for i in range(k)]
  live = [i for i in range(k) if not zero[i]]
  axes[0].set_title(title)
  axes[1].set_title(f"{title}: |λ| on log scale (dashed: λ<0)")
  if not live:
    for ax in axes:
      ax.text(0.5, 0.5, ZERO_TEXT.format(name=title), ha="center", va="center",
              transform=ax.transAxes)
      ax.set_xticks([])
      ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return
  sub = finite[live]
  lo, hi = float(sub.min()), float(sub.max())
  span = hi - lo if hi > lo else max(abs(hi), abs(lo))
  grid = np.linspace(lo - 0.05 * span, hi + 0.05 * span, 800)
  sigma = 0.01 * span
  bins = _log_bins(sub)
  rho_max = 0.0
  for i in live:
    rho = broadened(finite[i], weights[i], grid, sigma)
    rho_max = max(rho_max, float(rho.max()))
    axes[0].plot(grid, np.maximum(rho, 1e-300), lw=1, label=labels[i])
    pos, neg = log_abs_histogram(finite[i], weights[i], bins)
    centers = np.sqrt(bins[1:] * bins[:-1])
    line, = axes[1].step(centers, pos, where="mid", lw=1, label=f"{labels[i]} λ>0")
    if np.any(neg > 0):
      axes[1].step(centers, neg, where="mid", lw=1, ls="--",
                   color=line.get_color(), label=f"{labels[i]} λ<0")
  for i in range(k):
    if zero[i]:
      axes[1].plot([], [], " ", label=f"{labels[i]}: {title} = 0 exactly")
  axes[0].set_yscale("log")
  axes[0].set_ylim(bottom=1e-6 * rho_max, top=2 * rho_max)
  axes[0].set_xlabel("λ")
  axes[0].set_ylabel(f"ρ(λ), Gaussian σ = {sigma:.2g}")
  axes[1].set_xscale("log")
  axes[1].set_xlabel("|λ|")
  axes[1].set_ylabel("density per decade of |λ|")
  if zero_tol is not None:
    axes[1].axvline(zero_tol, color="gray", lw=0.8, ls=":")
  axes[1].legend(fontsize=6, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_hp_rescaled(nodes, weights, loss, path: str, labels=None):
  """Density of log10(|lambda(Hp)| / sqrt(L)), both signs, per member.

  Near jamming Hp ~ sqrt(L) (1809.09349), so rescaled spectra of different
  members and losses should collapse. Members with L = 0 are skipped.
  """
  plt = _agg.pyplot()
  nodes, weights, loss = np.asarray(nodes), np.asarray(weights), np.asarray(loss)
  labels = labels or [f"member {i}" for i in range(nodes.shape[0])]
  fig, ax = plt.subplots(figsize=(6, 4))
  keep = [i for i in range(nodes.shape[0]) if loss[i] > 0]
  if keep:
    scaled = np.concatenate([nodes[i].ravel() / np.sqrt(loss[i]) for i in keep])
    bins = _log_bins(scaled)
    centers = np.sqrt(bins[1:] * bins[:-1])
    for i in keep:
      pos, neg = log_abs_histogram(nodes[i] / np.sqrt(loss[i]), weights[i], bins)
      line, = ax.step(centers, pos, where="mid", lw=1, label=f"{labels[i]} λ>0")
      ax.step(centers, neg, where="mid", lw=1, ls="--", color=line.get_color(),
              label=f"{labels[i]} λ<0")
    ax.set_xscale("log")
    ax.legend(fontsize=6, ncol=2)
  else:
    ax.text(0.5, 0.5, "all members have L = 0: Hp = 0 exactly at a satisfied "
            "minimum", ha="center", transform=ax.transAxes)
  ax.set_xlabel("|λ(Hp)| / sqrt(L)")
  ax.set_ylabel("density per decade")
  ax.set_title("Hp rescaled by sqrt(loss)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_all(out_dir: str, spectra: dict, loss, labels=None,
             zero_tols=None) -> list:
  """Writes density_h.png, density_h0.png, density_hp.png, hp_rescaled.png.

  Args:
    out_dir: existing directory.
    spectra: {"h": (nodes, weights), "h0": ..., "hp": ...}, arrays [K, n_v, m].
    loss: [K] training losses.
    labels: K legend labels.
    zero_tols: optional {"h": tol, ...} drawn as a dotted line.

  Returns:
    The list of written paths.
  """
  zero_tols = zero_tols or {}
  titles = {"h": "H", "h0": "H0", "hp": "Hp"}
  paths = []
  for name, title in titles.items():
    nodes, weights = spectra[name]
    path = os.path.join(out_dir, f"density_{name}.png")
    plot_density(nodes, weights, title, path, labels, zero_tols.get(name))
    paths.append(path)
  path = os.path.join(out_dir, "hp_rescaled.png")
  plot_hp_rescaled(*spectra["hp"], loss, path, labels)
  paths.append(path)
  return paths


def quadratures(arrays: dict) -> dict:
  """The quadrature rules of :func:`plot_all` from the arrays of an analysis.

  Args:
    arrays: :attr:`lossland.curvature.Spectra.arrays` (or ``spectra.npz``):
      dense ``eig_h``, ``eig_h0``, ``eig_hp`` [K, N], or SLQ ``nodes_*`` and
      ``weights_*`` [K, n_probes, m] of H and Hp with ``eig_h0`` [K, N] (NaN
      where not computed, drawn as zeros).

  Returns:
    {"h": (nodes, weights), "h0": ..., "hp": ...}: eigenvalues become nodes
    [K, 1, N] with weights 1/N.
  """
  def uniform(e):
    e = np.asarray(e)[:, None, :]
    return e, np.full_like(e, 1.0 / e.shape[-1])

  if "eig_h" in arrays:
    return {m: uniform(arrays[f"eig_{m}"]) for m in ("h", "h0", "hp")}
  out = {m: (arrays[f"nodes_{m}"], arrays[f"weights_{m}"]) for m in ("h", "hp")}
  out["h0"] = uniform(np.nan_to_num(arrays["eig_h0"]))
  return out
