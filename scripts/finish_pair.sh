#!/bin/sh
# Two Newton finishes at once, as two workers of a phase study run them on
# the cores: scripts/finish_probe.py on members M1 and M2 of RUN_DIR, ITERS
# iterations each, their JSON lines appended to OUT. Used to time the BLAS
# thread limit (BUILD_NOTES.md, tenth session):
#   farm-bench -n 3 --warmup 0 --vs "sh scripts/finish_pair.sh RUN_DIR 3 4 30 /tmp/b.out" \
#     -- sh -c 'OPENBLAS_NUM_THREADS=1 exec sh scripts/finish_pair.sh RUN_DIR 3 4 30 /tmp/a.out'
set -e
if [ "$#" -ne 5 ]; then
  echo "usage: sh scripts/finish_pair.sh RUN_DIR M1 M2 ITERS OUT" >&2
  exit 2
fi
python scripts/finish_probe.py "$1" "$2" "$4" >> "$5" 2>&1 &
python scripts/finish_probe.py "$1" "$3" "$4" >> "$5" 2>&1
wait
