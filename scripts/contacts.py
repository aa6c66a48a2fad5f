"""Contacts of the force-balanced jammed states of a phase study, per cell.

    python scripts/contacts.py OUT_DIR [GAP_FLOOR]

OUT_DIR is a phase study's directory (its sweep/cells.jsonl and the cells'
run directories). For every cell with members of class ``jammed``
(force-balanced), prints one line: P/N, the number of such members and the
means (min-max) per member, in units of N, of
  * N_Delta: the unsatisfied points (Delta > 0),
  * the points at the margin: |Delta| <= GAP_FLOOR * sqrt(loss) for Delta > 0
    (as the exponent fits rescale them) and -Delta <= GAP_FLOOR for Delta <= 0
    (default 1e-4, lossland.phase.GAP_FLOOR),
  * n_kink: the kink pairs (unit, unsatisfied point at z = 0),
and the ratio (N_Delta above the floor + margin + kinks) / (N - h L): the
constraints of the state against the degrees of freedom left by the per-unit
rescaling symmetry of a bias-free ReLU net (h L hidden units; the authors'
count, nn_jamming's nips2018.md). Used for docs/jamming.md, issue 20, 4e.
Writes nothing.
"""
import json
import os
import sys

import numpy as np

from lossland import losses, phase


def main(argv):
  if len(argv) not in (2, 3):
    print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
    return 2
  out_dir, floor = argv[1], float(argv[2]) if len(argv) == 3 else 1e-4
  cells = os.path.join(out_dir, "sweep", "cells.jsonl")
  if not os.path.isfile(cells):
    print(f"contacts: no {cells}", file=sys.stderr)
    return 2
  rows = []
  for line in open(cells):
    c = json.loads(line)
    run = os.path.join(out_dir, "sweep", c["run_dir"])
    s = json.load(open(os.path.join(run, "summary.json")))
    keep = [k for k, m in enumerate(s["members"]) if phase.member_class(m) == "jammed"]
    if not keep:
      continue
    a = np.load(os.path.join(run, "arrays.npz"))
    eps = c["flags"].get("margin") or 1.0
    delta = np.asarray(losses.margins(a["f_train"], a["y_train"][None, :], eps))
    N, f = s["n_weights"], c["flags"]
    units = f["width"] * f["depth"] if f.get("activation", "relu") == "relu" else 0
    per = []
    for k in keep:
      d, m = delta[k], s["members"][k]
      root = np.sqrt(m["loss"]) if m["loss"] > 0 else 1.0
      margin = int(np.sum((d > 0) & (d / root <= floor)) + np.sum((d <= 0) & (-d <= floor)))
      above = int(np.sum(d / root > floor))
      per.append((m["n_delta"] / N, margin / N, m.get("n_kink", 0) / N,
                  (above + margin + m.get("n_kink", 0)) / (N - units)))
    rows.append((s["P"] / N, np.array(per)))
  for x, per in sorted(rows, key=lambda r: r[0]):
    cols = " ".join(f"{per[:, j].mean():.2f} ({per[:, j].min():.2f}-{per[:, j].max():.2f})"
                    for j in range(4))
    print(f"P/N {x:.3f}  members {len(per)}  N_Delta/N, margin/N, kinks/N, "
          f"constraints/(N - hL): {cols}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
