"""theta and gamma of the same members along a finish continued over several runs.

    python scripts/descent_exponents.py OUT.png STUDY [STUDY ...]

STUDY, ...: a phase study and its continuations, in order (each run with
``--finish_from`` the one before, so the cells have the same nets, data and
seeds). Cells are matched by (depth, width, P) and members by their index.
For every member that stopped with N_Delta > 0 in the first study (class
jammed or unbalanced there), one JSON line per study: its class
(``lossland.phase.member_class``), loss, r_sub, the finish's iterations in
all, and theta and gamma of that member alone, fitted as the phase summary
fits them (``lossland.phase.fit_exponent``: density MLE and empirical CDF on
the small half of Delta/sqrt(loss) > 0 and of -Delta > 0, samples at or
below ``phase.GAP_FLOOR`` left out and counted), with a bootstrap over its
samples. The figure draws theta and gamma of each member against the
finish's iterations, filled where the member is class jammed. It answers
whether a stalled state's exponents move while its finish goes on
(docs/jamming.md, sixteenth session). Exit status 2 on a bad argument or a
study without cells.
"""
import json
import os
import sys

from lossland import phase
from lossland.experiments import sweep

STOPPED = ("jammed", "unbalanced")


def cells_by_key(study: str) -> dict:
  """{(depth, width, P): record} of a phase study's sweep/cells.jsonl, run_dir
  made absolute (ValueError without cells)."""
  sweep_dir = os.path.join(study, "sweep")
  if not os.path.isfile(os.path.join(sweep_dir, sweep.CELLS_FILE)):
    raise ValueError(f"{study}: no sweep/cells.jsonl (not a phase study's --out_dir)")
  out = {}
  for r in sweep.read_cells(sweep_dir):
    key = (int(r["flags"]["depth"]), r["flags"].get("width"), int(r["summary"]["P"]))
    out[key] = r
  return out


def member_row(record: dict, k: int, n_boot: int = 300) -> dict:
  """Class, loss, r_sub, finish iterations, theta and gamma of member k of a cell."""
  m = record["summary"]["members"][k]
  ds = phase.delta_samples(record, select=lambda mm: mm is m)
  th = phase.fit_exponent(ds["positive"], n_boot=n_boot, x_floor=phase.GAP_FLOOR)
  ga = phase.fit_exponent(ds["negative"], n_boot=n_boot, sign=-1, x_floor=phase.GAP_FLOOR)
  return dict(cls=phase.member_class(m), loss=m.get("loss"), r_sub=m.get("force_residual"),
              finish_iterations=m.get("finish_iterations", 0),
              theta=th["exponent"], theta_ci=th["ci"], theta_cdf=th["exponent_cdf"],
              gamma=ga["exponent"], gamma_ci=ga["ci"], n_theta_samples=th["n_samples"],
              n_at_margin=th["n_below_floor"])


def trajectories(studies: list, n_boot: int = 300) -> list:
  """One dict per (cell, member, study) as the module docstring says."""
  stages = [cells_by_key(s) for s in studies]
  rows = []
  for key, rec in sorted(stages[0].items(), key=lambda kv: (kv[0][0], kv[0][2])):
    for k, m in enumerate(rec["summary"]["members"]):
      if phase.member_class(m) not in STOPPED:
        continue
      for i, (study, cells) in enumerate(zip(studies, stages)):
        if key not in cells:
          continue
        row = member_row(cells[key], k, n_boot)
        rows.append(dict(depth=key[0], width=key[1], P=key[2],
                         N=cells[key]["summary"].get("n_weights"), member=k,
                         seed=m.get("seed"), stage=i, study=study, **row))
  return rows


def plot(rows: list, path: str) -> str:
  """theta and gamma against the finish's iterations, one line per member."""
  from lossland.plots import _agg
  plt = _agg.pyplot()
  fig, axs = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True)
  groups = {}
  for r in rows:
    groups.setdefault((r["depth"], r["P"], r["member"]), []).append(r)
  for j, ((L, P, k), rs) in enumerate(sorted(groups.items())):
    color = f"C{j % 10}"
    for ax, key in ((axs[0], "theta"), (axs[1], "gamma")):
      pts = [(r["finish_iterations"], r[key], r["cls"]) for r in rs if r[key] is not None]
      if not pts:
        continue
      ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color=color, lw=1,
              label=f"L={L} P={P} member {k}" if key == "theta" else None)
      for x, y, c in pts:
        ax.plot([x], [y], "o", color=color, mfc=color if c == "jammed" else "white", ms=5)
  for ax, key, paper in ((axs[0], "theta", 0.3), (axs[1], "gamma", 0.2)):
    ax.axhline(paper, color="0.5", ls="--", lw=1)
    ax.set_xlabel("finish iterations in all")
    ax.set_ylabel(f"{key} of the member (density fit)")
  if len(groups) <= 12:
    axs[0].legend(fontsize=6)
  fig.suptitle("filled: class jammed (a minimum); open: still descending; dashed: the "
               "papers' value", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def main(argv):
  if len(argv) < 3 or not argv[1].endswith(".png"):
    print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
    return 2
  try:
    rows = trajectories(argv[2:])
  except (OSError, ValueError, KeyError) as e:
    print(f"descent_exponents: {e}", file=sys.stderr)
    return 2
  for r in rows:
    print(json.dumps(r), flush=True)
  plot(rows, argv[1])
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
