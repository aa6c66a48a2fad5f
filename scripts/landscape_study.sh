#!/usr/bin/env bash
# Depth x n_data sweep of the Verpoort-Lee-Wales study at comparable parameter count
# (N ~ 57: depth 1 h=6, depth 2 h=4, depth 3 h=3), then the grid of graphs.
#   scripts/landscape_study.sh [OUT_ROOT] [extra flags for lossland.scripts.landscape]
# Budgets: 16 chains x 500 basin-hopping steps, up to 300 connect attempts (connect,
# then refine alternative paths); about 25 minutes on 2 CPU cores.
set -euo pipefail
OUT=${1:-runs/landscape_study}
shift || true
PY=${PYTHON:-python}
mkdir -p "$OUT"
: > "$OUT/runs.txt"
for depth in 1 2 3; do
  for n_data in 30 120; do
    echo "== depth=$depth n_data=$n_data" >&2
    $PY -m lossland.scripts.landscape --depth "$depth" --n_data "$n_data" --n_params 57 \
      --bh_chains 16 --bh_steps 500 --connect_budget 300 --seed 0 --out_dir "$OUT" "$@" \
      | tail -n 1 >> "$OUT/runs.txt"
  done
done
$PY -m lossland.scripts.landscape_grid --out "$OUT/grid.png" $(cat "$OUT/runs.txt")
