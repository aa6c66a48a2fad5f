"""theta and gamma of several groups of states, side by side, in one figure.

    python scripts/exponent_summary.py ROWS.json OUT.png

ROWS.json is a list of rows, each {"label": str, "study": a phase study's
--out_dir, "p_over_n": [lo, hi], "class": "jammed" or "unbalanced",
"depth": optional int}. A row pools the members of that class
(``lossland.phase.member_class``, today's rules) of every cell of the study
whose P/N lies in [lo, hi] (and depth, if given) and fits theta (Delta > 0
over sqrt(loss) of its member) and gamma (-Delta of the satisfied points)
as the phase summary does (``lossland.phase.pool_fits``: density MLE and
empirical CDF on the small half, bootstrap over members, samples at or
below ``phase.GAP_FLOOR`` left out and counted). Prints one JSON
line per row and draws both exponents with their 95 % CIs, one row per
line, with the papers' theta ~ 0.3, gamma ~ 0.2 and the sphere class's
0.42, 0.41 (Franz, Hwang & Urbani 2019) marked. Rows with fewer than two
members get no CI. docs/jamming.md, "fourteenth session", has the rows
used there. Exit status 2 on a bad file or row.
"""
import json
import os
import sys

from lossland import phase
from lossland.experiments import sweep

CLASSES = ("jammed", "unbalanced")


def load_rows(path: str) -> list:
  """The rows of ROWS.json, checked (ValueError with the reason)."""
  with open(path) as fh:
    rows = json.load(fh)
  if not isinstance(rows, list) or not rows:
    raise ValueError("ROWS.json must be a non-empty list of rows")
  for i, r in enumerate(rows):
    lo_hi = r.get("p_over_n") if isinstance(r, dict) else None
    if (not isinstance(r, dict) or not isinstance(r.get("label"), str)
        or not isinstance(r.get("study"), str) or r.get("class") not in CLASSES
        or not (isinstance(lo_hi, list) and len(lo_hi) == 2
                and all(isinstance(v, (int, float)) for v in lo_hi) and lo_hi[0] <= lo_hi[1])
        or not isinstance(r.get("depth", 0), int)):
      raise ValueError(f"row {i}: needs label, study, p_over_n [lo, hi] with lo <= hi, "
                       f"class in {CLASSES} and an optional integer depth")
  return rows


def cells_of(study: str) -> list:
  """The records of a phase study's sweep/cells.jsonl, run_dir made absolute."""
  sweep_dir = os.path.join(study, "sweep")
  if not os.path.isfile(os.path.join(sweep_dir, sweep.CELLS_FILE)):
    raise ValueError(f"{study}: no sweep/cells.jsonl (not a phase study's --out_dir)")
  return sweep.read_cells(sweep_dir)


def row_fit(row: dict, n_boot: int = 500) -> dict:
  """The pooled fits of one row."""
  lo, hi = row["p_over_n"]
  recs = [r for r in cells_of(row["study"])
          if lo <= r["summary"]["P"] / r["summary"]["n_weights"] <= hi
          and ("depth" not in row or int(r["flags"]["depth"]) == row["depth"])]
  cls = row["class"]
  n_mem, th, ga = phase.pool_fits(recs, select=lambda m: phase.member_class(m) == cls,
                                  n_boot=n_boot, gap_floor=phase.GAP_FLOOR)
  ns = sorted({int(r["summary"]["n_weights"]) for r in recs})
  return dict(label=row["label"], cells=len(recs), N=ns, members=n_mem,
              theta=th["exponent"], theta_ci=th["ci"] if n_mem > 1 else [None, None],
              theta_cdf=th["exponent_cdf"], gamma=ga["exponent"],
              gamma_ci=ga["ci"] if n_mem > 1 else [None, None], gamma_cdf=ga["exponent_cdf"],
              n_theta_samples=th["n_samples"], n_gamma_samples=ga["n_samples"],
              n_at_margin=[th["n_below_floor"], ga["n_below_floor"]])


def plot(fits: list, path: str) -> str:
  """The two-panel forest plot of ``fits`` (row_fit results), one PNG."""
  from lossland.plots import _agg
  plt = _agg.pyplot()
  fig, axs = plt.subplots(1, 2, figsize=(9, 0.45 * len(fits) + 1.3), sharey=True)
  ys = list(range(len(fits)))[::-1]
  for ax, key, paper, sphere in ((axs[0], "theta", 0.3, 0.42), (axs[1], "gamma", 0.2, 0.41)):
    for y, f in zip(ys, fits):
      v, ci = f[key], f[f"{key}_ci"]
      if v is None:
        continue
      err = ([[v - ci[0]], [ci[1] - v]] if ci[0] is not None else None)
      ax.errorbar([v], [y], xerr=err, marker="o", capsize=3, color="k" if err else "0.5")
    ax.axvline(paper, color="C0", ls="--", lw=1)
    ax.axvline(sphere, color="C1", ls=":", lw=1)
    ax.axvline(0, color="0.8", lw=0.8)
    ax.set_xlabel(key)
  axs[0].set_yticks(ys)
  axs[0].set_yticklabels([f"{f['label']} ({f['members']})" for f in fits], fontsize=8)
  axs[0].set_ylim(-0.6, len(fits) - 0.4)
  fig.suptitle("95 % CIs over members (grey: one member, no CI); dashed: the papers' "
               "theta, gamma; dotted: the sphere class (Franz, Hwang, Urbani 2019)", fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def main(argv):
  if len(argv) != 3:
    print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
    return 2
  try:
    rows = load_rows(argv[1])
    fits = []
    for row in rows:
      fits.append(row_fit(row))
      print(json.dumps(fits[-1]), flush=True)
  except (OSError, ValueError, KeyError) as e:
    print(f"exponent_summary: {e}", file=sys.stderr)
    return 2
  plot(fits, argv[2])
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
