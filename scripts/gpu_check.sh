#!/usr/bin/env bash
# GPU check, one command (docs/reliability.md, "GPU readiness audit"):
#
#   bash scripts/gpu_check.sh [OUT_DIR]
#
# on a machine with a CUDA GPU and the project installed with a CUDA jax
# (README: pip install -U "jax[cuda12]"). No network needed. It
#   1. records the environment (jax version, devices, nvidia-smi);
#   2. runs the whole test suite on the GPU in WORKERS (default 8) pytest-xdist
#      processes, with XLA_PYTHON_CLIENT_PREALLOCATE=false so they share the
#      device (each would otherwise take 75 % of its memory);
#   3. runs the paper-scale step profile (bench step: L = 3, d = h = 51,
#      P = 23562, K = 8, float64 and float32, the split-K variants);
#   4. runs the ensemble benchmark (vmapped vs sequential rows and the rows
#      against a naive jit(vmap(scan(adam)))), in float32 and in float64;
#   5. runs the quick ensemble benchmark (float32) under --command_buffers off
#      and scan (lossland.xla_options), to set against the default-mode run of
#      step 4: launch costs are what command buffers save, and the quick
#      sizes are the launch-bound ones (skip with COMMAND_BUFFERS=0);
#   6. with PHASE_SECONDS > 0, runs the gpu preset's phase study (batched
#      cells) for at most that long, into OUT_DIR/phase_gpu (resumable).
# Everything goes to OUT_DIR (default runs/gpu_check/<UTC time>): environment.txt,
# pytest.txt, bench_step/, bench_ensemble_f32/, bench_ensemble_f64/,
# bench_quick_cb_{xla,off,scan}/ and their .txt logs.
# Exit status: 0 if the suite and both benchmarks passed, 1 if one failed,
# 2 if jax sees no GPU.
#
# Settings (environment): PYTHON (default python), WORKERS (8), PHASE_SECONDS (0),
# COMMAND_BUFFERS (1; 0 skips step 5), PYTEST_ARGS
# (extra pytest arguments, e.g. a test file), BENCH_ARGS (extra benchmark flags,
# e.g. --quick), GPU_CHECK_ALLOW_CPU=1 (run anyway without a GPU: only to try
# this script). XLA_FLAGS etc. pass through (e.g.
# XLA_FLAGS=--xla_gpu_deterministic_ops=true).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-runs/gpu_check/$(date -u +%Y%m%dT%H%M%SZ)}
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}

backend=$("$PY" -c "import jax; print(jax.default_backend())" 2>/dev/null | tail -n 1)
if [ "$backend" != "gpu" ] && [ "${GPU_CHECK_ALLOW_CPU:-0}" != "1" ]; then
  echo "error: jax sees no GPU (default backend: ${backend:-none}); install a CUDA jax or set GPU_CHECK_ALLOW_CPU=1" >&2
  exit 2
fi
mkdir -p "$OUT" || exit 1
{
  date -u
  "$PY" -c "import sys, jax, jaxlib; print('python', sys.version.split()[0]); print('jax', jax.__version__, 'jaxlib', jaxlib.__version__); print('backend', jax.default_backend()); print('devices', jax.devices())"
  echo "XLA_PYTHON_CLIENT_PREALLOCATE=$XLA_PYTHON_CLIENT_PREALLOCATE XLA_FLAGS=${XLA_FLAGS:-}"
  command -v nvidia-smi >/dev/null && nvidia-smi
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

status=0
echo "== test suite (-n ${WORKERS:-8})"
start=$(date +%s)
# shellcheck disable=SC2086
"$PY" -m pytest -q -n "${WORKERS:-8}" -p no:cacheprovider --durations=25 ${PYTEST_ARGS:-} 2>&1 \
  | tee "$OUT/pytest.txt"
rc=${PIPESTATUS[0]}
echo "suite: exit $rc, $(( $(date +%s) - start )) s" | tee -a "$OUT/pytest.txt"
[ "$rc" -eq 0 ] || status=1

echo "== paper-scale step profile"
start=$(date +%s)
"$PY" -m lossland.scripts.bench step --out_dir "$OUT/bench_step" 2>&1 | tee "$OUT/bench_step.txt"
rc=${PIPESTATUS[0]}
echo "bench step: exit $rc, $(( $(date +%s) - start )) s" | tee -a "$OUT/bench_step.txt"
[ "$rc" -eq 0 ] || status=1

for prec in f32 f64; do
  flag=--nox64
  [ "$prec" = f64 ] && flag=--x64
  echo "== ensemble benchmark ($prec)"
  start=$(date +%s)
  # shellcheck disable=SC2086
  "$PY" -m lossland.scripts.bench ensemble --out_dir "$OUT/bench_ensemble_$prec" $flag \
    ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_ensemble_$prec.txt"
  rc=${PIPESTATUS[0]}
  echo "bench $prec: exit $rc, $(( $(date +%s) - start )) s" | tee -a "$OUT/bench_ensemble_$prec.txt"
  [ "$rc" -eq 0 ] || status=1
done

if [ "${COMMAND_BUFFERS:-1}" != "0" ]; then
  for mode in xla off scan; do
    echo "== ensemble benchmark (f32, --quick), --command_buffers $mode"
    start=$(date +%s)
    "$PY" -m lossland.scripts.bench ensemble --quick --nox64 --command_buffers "$mode" \
      --out_dir "$OUT/bench_quick_cb_$mode" 2>&1 | tee "$OUT/bench_quick_cb_$mode.txt"
    rc=${PIPESTATUS[0]}
    echo "bench quick, command buffers $mode: exit $rc, $(( $(date +%s) - start )) s" \
      | tee -a "$OUT/bench_quick_cb_$mode.txt"
    [ "$rc" -eq 0 ] || status=1
  done
fi

if [ "${PHASE_SECONDS:-0}" -gt 0 ]; then
  # As much of the gpu preset's phase study as PHASE_SECONDS allow; it resumes
  # from a copy of $OUT/phase_gpu (same command, --out_dir pointing at the copy).
  echo "== phase --preset gpu (at most ${PHASE_SECONDS} s)"
  start=$(date +%s)
  timeout "${PHASE_SECONDS}" "$PY" -m lossland.scripts.phase --preset gpu \
    --out_dir "$OUT/phase_gpu" 2>&1 | tee "$OUT/phase_gpu.txt"
  rc=${PIPESTATUS[0]}
  echo "phase gpu: exit $rc, $(( $(date +%s) - start )) s (124: stopped by the time limit; resumable)" \
    | tee -a "$OUT/phase_gpu.txt"
  [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || status=1
fi

echo "gpu_check: $( [ $status -eq 0 ] && echo passed || echo FAILED ), results in $OUT"
exit $status
