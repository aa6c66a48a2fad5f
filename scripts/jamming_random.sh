#!/usr/bin/env bash
# Jamming on random data (1809.09349 Fig. 1B in miniature): a fixed network
# (depth 2, d = h = 10, N = 210 weights) trained on P random points, P swept
# across the transition, a small ensemble per P. Prints N_delta/N and the
# fraction of members reaching N_delta = 0 for each P/N.
#   bash scripts/jamming_random.sh [OUT_DIR]        (~10 min on 2 CPU cores)
set -euo pipefail
OUT=${1:-runs/jamming_random}
for P in 150 300 450 600 750 900 1200; do
  python -m lossland.scripts.ensemble --dataset sphere --P "$P" --d 10 --n_test 0 \
    --depth 2 --width 10 --n_seeds 4 --max_steps 100000 --lr 1e-2 \
    --jam_window 10000 --jam_rtol 1e-3 --plots=false --out_dir "$OUT" > /dev/null
done
python - "$OUT" <<'PY'
import glob, json, os, sys
rows = []
for d in glob.glob(os.path.join(sys.argv[1], "ensemble", "[0-9]*")):
  s = json.load(open(os.path.join(d, "summary.json")))
  N, P = s["n_weights"], s["P"]
  nd = [m["n_delta"] / N for m in s["members"]]
  sat = sum(m["stop_reason"] == "sat" for m in s["members"]) / len(s["members"])
  rows.append((P / N, P, N, sat, sum(nd) / len(nd), min(nd), max(nd),
               ",".join(m["stop_reason"][:3] for m in s["members"])))
print(f"{'P/N':>6} {'P':>5} {'N':>4} {'frac_sat':>8} {'<N_d/N>':>8} {'min':>6} {'max':>6}  stops")
for r in sorted(rows):
  print(f"{r[0]:6.2f} {r[1]:5d} {r[2]:4d} {r[3]:8.2f} {r[4]:8.3f} {r[5]:6.3f} {r[6]:6.3f}  {r[7]}")
PY
