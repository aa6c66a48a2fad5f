"""The Hessian across the three phases of the jamming transition (1809.09349; seed 001).

The loss of the quadratic hinge has the Hessian H = H0 + Hp with
H0 = sum_mu grad Delta_mu grad Delta_mu^T over the unsatisfied points (rank <=
N_Delta) and Hp = sum_mu Delta_mu Hess Delta_mu (proportional to Delta ~
sqrt(loss)). The papers' picture, measured here on the members of a phase
study:

* over-parametrized (P/N < P*/N, sat): loss = 0 exactly, so H = H0 = Hp = 0;
* near jamming: H ~ H0 of rank N_Delta < N, a delta-peak at zero and a
  gapped band;
* under-parametrized: Hp grows with the loss; its spectrum is about symmetric
  and scales as sqrt(loss) (spectra of different losses collapse once
  divided by sqrt(loss)); stability of a minimum (H >= 0) needs
  N_-(Hp) <= rank H0 <= N_Delta, so N_-(Hp)/N bounds N_Delta/N from below.

:func:`analyze` reads a phase run directory (``python -m lossland.scripts.phase``
or ``python -m lossland.scripts.figures phase_diagram``), loads the ensemble
run of each of its cells from the sweep directory and computes the dense
spectra of every healthy member (:func:`lossland.curvature.spectra`: exact
eigenvalues and counts). No training happens here.
"""
import json
import os
from typing import Callable, Sequence

import numpy as np

from lossland import experiment, phase
from lossland.experiments import sweep

# Members that no optimizer could fix (dead points), or that diverged or died,
# say nothing about the landscape near a minimum.
CLASSES = ("sat", "jammed", "unbalanced", "stalled", "limbo", "not_converged")


def sweep_dir(run_dir: str, summary: dict) -> str:
  """The phase run's sweep directory: as recorded (relative to where the study
  ran), else ``<out_dir>/sweep`` beside ``<out_dir>/phase/<run>``."""
  recorded = summary.get("sweep_dir")
  if recorded and os.path.isdir(recorded):
    return recorded
  return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(run_dir))), "sweep")


def cell_records(run_dir: str, summary: dict, depths: Sequence[int] | None = None) -> dict:
  """The sweep records of a phase run's cells: {depth: [record sorted by P]}.

  Only the cells of the run's own width per depth (a sweep directory may hold
  several sizes, ``--sizes``).
  """
  by_depth = {}
  recs = sweep.read_cells(sweep_dir(run_dir, summary))
  for L, v in summary["per_depth"].items():
    if depths is not None and int(L) not in depths:
      continue
    want = {c["P"] for c in v["cells"]}
    rows = [r for r in recs if r.get("run_dir") and int(r["flags"].get("depth", -1)) == int(L)
            and r["flags"].get("width") == v["width"] and int(r["summary"]["P"]) in want]
    by_depth[int(L)] = sorted(rows, key=lambda r: int(r["summary"]["P"]))
  return by_depth


def _member_rows(record: dict) -> list:
  """(member index, class) of the members of one cell that are analyzed."""
  out = []
  for k, m in enumerate(record["summary"]["members"]):
    c = phase.member_class(m)
    if c in CLASSES:
      out.append((k, c))
  return out


def _cell_spectra(record: dict, members: list) -> tuple:
  """Dense spectra of some members of one cell: (rows, eig_h, eig_h0, eig_hp)."""
  from lossland import curvature, io  # pylint: disable=g-import-not-at-top
  ens = experiment.load_ensemble(record["run_dir"])
  fns, params, batch = ens.curvature_inputs(members)
  # the parameters (N weights plus any biases) set the matrices' size
  n = int(record["summary"].get("n_params", record["summary"]["n_weights"]))
  try:  # three n x n matrices per member: the papers' N ~ 8000 fit a GPU
    curvature.choose_method("dense", n, batch.x.dtype)
  except MemoryError as e:
    raise io.InputError(f"hessian_phases: dense spectra at N = {n} do not fit ({e})") from None
  # one member at a time beyond small N, so memory stays that of one member
  sp = curvature.spectra(fns, params, batch, curvature.SpectraConfig("dense"),
                         member_ids=members, group_size=None if n <= 2000 else 1)
  a = sp.arrays
  return sp.rows, a["eig_h"], a["eig_h0"], a["eig_hp"]


def _row(L, record, k, cls, srow, eig_hp, p_star_over_n) -> dict:
  s = record["summary"]
  n, P = int(s["n_weights"]), int(s["P"])
  hp_abs = float(np.sum(np.abs(eig_hp)))
  return {
      "depth": L, "P": P, "N": n, "p_over_n": P / n, "member": k,
      "seed": s["members"][k].get("seed", k), "class": cls,
      "distance": (None if p_star_over_n is None else (P / n) / p_star_over_n - 1.0),
      "loss": float(srow["loss"]), "n_delta": int(srow["n_delta"]),
      "n_delta_over_n": int(srow["n_delta"]) / n,
      "n_negative_hp_over_n": srow["n_negative_hp"] / n,
      # sum lambda / sum |lambda| of Hp: 0 for a symmetric spectrum
      "hp_asymmetry": float(np.sum(eig_hp) / hp_abs) if hp_abs > 0 else None,
      **{key: srow[key] for key in ("n_negative_hp", "rank_h0", "n_zero_h",
                                    "n_negative_h", "lambda_min_h", "lambda_max_h",
                                    "stable", "rank_h0_le_n_delta",
                                    "n_negative_hp_resolved", "n_negative_hp_le_n_delta")},
  }


def _collapse(rows: list, eig_hp: np.ndarray) -> dict | None:
  """How well sqrt(loss) collapses the Hp spectra of the jammed members: the
  standard deviation over members of log10 of the median |lambda(Hp)|,
  before and after dividing by sqrt(loss) (smaller after: a collapse)."""
  idx = [i for i, r in enumerate(rows) if r["class"] in phase.NOT_SAT and r["loss"] > 0]
  if len(idx) < 2:
    return None
  med = np.array([np.median(np.abs(eig_hp[i])) for i in idx])
  loss = np.array([rows[i]["loss"] for i in idx])
  return {"n_members": len(idx),
          "log10_loss_range": float(np.ptp(np.log10(loss))),
          "sd_log10_median_abs_hp": float(np.std(np.log10(med))),
          "sd_log10_median_abs_hp_over_sqrt_loss": float(np.std(np.log10(med / np.sqrt(loss))))}


def _checks(rows: list, eig_h: np.ndarray) -> dict:
  """The papers' statements as counts over the analyzed members."""
  sat = [i for i, r in enumerate(rows) if r["class"] == "sat"]
  jam = [r for r in rows if r["class"] in phase.NOT_SAT]
  return {
      "n_sat": len(sat),
      "n_sat_with_h_exactly_zero": int(sum(np.all(eig_h[i] == 0) for i in sat)),
      "n_jammed": len(jam),  # stopped jammed: force-balanced or unbalanced
      "n_force_balanced": sum(r["class"] == "jammed" for r in jam),
      "n_jammed_rank_h0_eq_n_delta": sum(r["rank_h0"] == min(r["n_delta"], r["N"])
                                         for r in jam),
      "n_jammed_rank_h0_le_n_delta": sum(bool(r["rank_h0_le_n_delta"]) for r in jam),
      "n_jammed_stable": sum(bool(r["stable"]) for r in jam),
      "n_jammed_negative_hp_le_n_delta": sum(r["n_negative_hp"] <= r["n_delta"]
                                             for r in jam),
      "mean_jammed_n_negative_hp_over_n": (float(np.mean([r["n_negative_hp_over_n"]
                                                          for r in jam])) if jam else None),
  }


def analyze(run_dir: str, depths: Sequence[int] | None = None,
            log_fn: Callable | None = None) -> tuple:
  """Dense Hessian spectra of the healthy members of a phase run's cells.

  Args:
    run_dir: a phase run directory (its summary.json names the sweep).
    depths: the depths to analyze (default all).
    log_fn: optional ``fn(str)``, one line per cell.

  Returns:
    (result, arrays). ``result``: ``per_depth`` {L: {"N", "p_star_over_n",
    "members": rows, "checks", "collapse"}} with one row per member (P/N,
    class, loss, N_Delta, N_-(Hp), rank H0, n_zero(H), N_-(H), the extreme
    eigenvalues of H, the asymmetry of Hp's spectrum); ``arrays``:
    ``L<depth>_eig_h``, ``_eig_h0``, ``_eig_hp`` [members, N].
  """
  with open(os.path.join(run_dir, "summary.json")) as fh:
    summary = json.load(fh)
  result, arrays = {"phase_run": os.path.abspath(run_dir), "per_depth": {}}, {}
  for L, recs in cell_records(run_dir, summary, depths).items():
    ps = summary["per_depth"][str(L)]["p_star_over_n"]
    rows, eigs = [], {"h": [], "h0": [], "hp": []}
    for r in recs:
      members = _member_rows(r)
      if not members:
        continue
      srows, e_h, e_h0, e_hp = _cell_spectra(r, [k for k, _ in members])
      for j, (k, cls) in enumerate(members):
        rows.append(_row(L, r, k, cls, srows[j], e_hp[j], ps))
      for name, e in (("h", e_h), ("h0", e_h0), ("hp", e_hp)):
        eigs[name].append(np.asarray(e))
      if log_fn:
        log_fn(f"L={L} P={r['summary']['P']}: {len(members)} member(s) analyzed")
    if not rows:
      continue
    for name in eigs:
      arrays[f"L{L}_eig_{name}"] = np.concatenate(eigs[name])
    result["per_depth"][str(L)] = {
        "N": rows[0]["N"], "p_star_over_n": ps, "members": rows,
        "checks": _checks(rows, arrays[f"L{L}_eig_h"]),
        "collapse": _collapse(rows, arrays[f"L{L}_eig_hp"])}
  return result, arrays
