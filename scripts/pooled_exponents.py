"""theta and gamma of the force-balanced jammed states of a band of cells.

    python scripts/pooled_exponents.py STUDY_DIR[,STUDY_DIR...] LO HI [P_STAR]

STUDY_DIR is a phase study's --out_dir (sweep/cells.jsonl, the cells' run
directories and phase/*/summary.json, of which the newest gives P*/N per
depth and the gap floor); several, comma-separated, pool their cells (e.g.
cells of more seeds run as another study), P*/N and the gap floor from the
first. Pools the members of class ``jammed``
(force-balanced, r_sub <= the study's jam_max_residual) of every cell whose
distance from the transition, (P/N - P*/N) / (P*/N), lies in [LO, HI], and
fits theta (Delta > 0 over sqrt(loss) of its member) and gamma (-Delta of
the satisfied points) as the phase summary does (``lossland.phase.pool_fits``:
density MLE and empirical CDF on the small half, bootstrap over members,
samples at or below the gap floor left out and counted). Prints one JSON
line per depth with cells, members, samples and both fits. P_STAR, a
number, replaces every depth's P*/N (for a study whose few cells do not fix
it; say where the value comes from). The phase
summary fits the cell nearest P* alone (``theta_by_distance`` one cell at a
time); pooling a band gives the few-member cells of small studies a usable
sample. Used for docs/jamming.md, "converged states with the anneal".
Writes nothing.
"""
import glob
import json
import os
import sys

from lossland import phase
from lossland.experiments.sweep import CELLS_FILE, read_cells


def pooled(records, p_star: float, lo: float, hi: float, gap_floor: float,
           load_fn=None, n_boot: int = 500) -> dict:
  """The pooled fits (``lossland.phase.pool_fits``) of the jammed members of
  ``records`` (one depth) with distance in [lo, hi] from ``p_star`` (P*/N)."""
  band, cells = [], []
  for r in records:
    x = r["summary"]["P"] / r["summary"]["n_weights"]
    dist = (x - p_star) / p_star
    n = sum(phase.member_class(m) == "jammed" for m in r["summary"]["members"])
    if lo <= dist <= hi and n:
      band.append(r)
      cells.append(dict(p_over_n=round(x, 4), distance=round(dist, 4), members=n))
  kw = {} if load_fn is None else {"load_fn": load_fn}
  n_mem, th, ga = phase.pool_fits(band, n_boot=n_boot, gap_floor=gap_floor, **kw)
  return dict(cells=cells, n_members=n_mem, n_theta_samples=th["n_samples"],
              n_gamma_samples=ga["n_samples"], theta=th["exponent"], theta_ci=th["ci"],
              theta_cdf=th["exponent_cdf"], theta_cdf_ci=th["ci_cdf"], gamma=ga["exponent"],
              gamma_ci=ga["ci"], gamma_cdf=ga["exponent_cdf"], gamma_cdf_ci=ga["ci_cdf"],
              n_at_margin=[th["n_below_floor"], ga["n_below_floor"]])


def main(argv):
  if len(argv) not in (4, 5):
    print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
    return 2
  studies = argv[1].split(",")
  try:
    lo, hi = float(argv[2]), float(argv[3])
    p_star_given = float(argv[4]) if len(argv) == 5 else None
  except ValueError:
    print(f"pooled_exponents: LO, HI and P_STAR must be numbers, got {' '.join(argv[2:])!r}",
          file=sys.stderr)
    return 2
  if p_star_given is not None and not p_star_given > 0:
    print(f"pooled_exponents: P_STAR must be positive, got {argv[4]!r}", file=sys.stderr)
    return 2
  by_depth, summary = {}, None
  for study in studies:
    sweep = os.path.join(study, "sweep")
    summaries = sorted(glob.glob(os.path.join(study, "phase", "*", "summary.json")))
    if not os.path.isfile(os.path.join(sweep, CELLS_FILE)) or not summaries or lo > hi:
      print(f"pooled_exponents: {study} is not a finished phase study (or LO > HI)",
            file=sys.stderr)
      return 2
    if summary is None:
      with open(summaries[-1]) as fh:
        summary = json.load(fh)
    for r in read_cells(sweep):  # run_dir joined with sweep
      by_depth.setdefault(int(r["flags"]["depth"]), []).append(r)
  for L, recs in sorted(by_depth.items()):
    p_star = p_star_given or (summary["per_depth"].get(str(L)) or {}).get("p_star_over_n")
    if p_star is None:
      print(json.dumps(dict(depth=L, p_star_over_n=None)))
      continue
    out = pooled(recs, p_star, lo, hi, float(summary.get("gap_floor") or 0.0))
    print(json.dumps(dict(depth=L, p_star_over_n=p_star, p_star_given=p_star_given is not None,
                          band=[lo, hi], **out)), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
