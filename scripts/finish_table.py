"""What the finishing stage did in a phase study (or any sweep): one row per cell.

    python scripts/finish_table.py STUDY_DIR

STUDY_DIR is a phase study's --out_dir (or a sweep directory): every
``sweep/cells/*/ensemble/*/summary.json`` below it (or ``cells/*/...``) is
read. Prints one JSON line per cell: depth, P, P/N, the class counts, the
members that entered the finish, how many of them it left sat, how many it
left as they were ("kept": the anneal's result was not lower), the median
and range of loss after / loss before over the others, and the range of
r_sub of the entrants left with N_Delta > 0; then one line of totals. Used
for docs/jamming.md, "the annealed finish". Writes nothing.
"""
import collections
import glob
import json
import os
import sys

import numpy as np

from lossland import phase


def _cells(root):
  pats = [os.path.join(root, "sweep", "cells", "*", "ensemble", "*", "summary.json"),
          os.path.join(root, "cells", "*", "ensemble", "*", "summary.json")]
  return sorted(f for pat in pats for f in glob.glob(pat))


def _row(path):
  with open(path) as fh:
    s = json.load(fh)
  with open(os.path.join(os.path.dirname(path), "config.json")) as fh:
    net = json.load(fh)["net"]
  entered = [m for m in s["members"] if m.get("finished")]
  ratios = [m["loss"] / m["loss_before_finish"] for m in entered
            if m.get("finish_reason") != "kept" and m["loss_before_finish"]
            and m["n_delta"] > 0]
  r_sub = [m["force_residual"] for m in entered
           if m["n_delta"] > 0 and m.get("force_residual") is not None]
  return dict(depth=net["depth"], P=s["P"], p_over_n=round(s["P"] / s["n_weights"], 3),
              classes=_counts(s["members"]), entered=len(entered),
              finished_sat=sum(m["class"] == "sat" for m in entered),
              kept=sum(m.get("finish_reason") == "kept" for m in entered),
              loss_ratio_median=float(np.median(ratios)) if ratios else None,
              loss_ratio_range=[float(min(ratios)), float(max(ratios))] if ratios else None,
              r_sub_range=[float(min(r_sub)), float(max(r_sub))] if r_sub else None,
              n_force_balanced=sum(phase.member_class(m) == "jammed" for m in entered))


def _counts(members) -> dict:
  """Class counts by ``lossland.phase.member_class`` (today's rule, also for
  summaries written before it)."""
  return dict(collections.Counter(phase.member_class(m) for m in members))


def main(argv):
  if len(argv) != 2:
    print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
    return 2
  files = _cells(argv[1])
  if not files:
    print(f"finish_table: no cell summaries under {argv[1]}", file=sys.stderr)
    return 2
  rows = sorted((_row(f) for f in files), key=lambda r: (r["depth"], r["P"]))
  for r in rows:
    print(json.dumps(r))
  print(json.dumps(dict(total_entered=sum(r["entered"] for r in rows),
                        total_finished_sat=sum(r["finished_sat"] for r in rows),
                        total_kept=sum(r["kept"] for r in rows),
                        total_force_balanced=sum(r["n_force_balanced"] for r in rows))))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
