"""Grids of cells: a batch of ensemble-job cells run over one sweep directory,
by one process or by several worker processes sharing it.

Every cell is an ensemble-job options dict; :func:`lossland.sweep.run_sweep`
runs each cell once (skipping finished cells, resuming interrupted ones) and
holds a per-cell lock while it runs, so several processes can work on the
same sweep directory: each cell runs in whichever process takes its lock
first, with the seeds of its options, and the records are those of one
process.
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Sequence

# A worker process: reads {"cells", "sweep_dir", "x64", "batch_cells", "workers",
# "cache_dir"} as JSON on stdin and runs every cell that no other process
# holds, then exits; it exits at once when its parent dies.
_WORKER_CODE = "from lossland.experiments import grid; grid._worker()"


def auto_workers() -> int:
  """Processes for ``workers=0``: min(2, CPU count) on a CPU backend (the cells
  of a small grid are too small to use two cores each), 1 on an accelerator
  (processes sharing one device would each preallocate its memory)."""
  import jax
  return min(2, os.cpu_count() or 1) if jax.default_backend() == "cpu" else 1


def blas_threads(workers: int):
  """A context in which this process's BLAS uses its share of the cores,
  ``cpu_count // workers`` threads (at least 1), where ``workers`` processes
  share them.

  The host linear algebra of the finishing stage (the Newton finish's eigh
  and SVD of N x N matrices, scipy's bounded least squares) runs while the
  other workers compute. OpenBLAS threads spin-wait for a core then: an
  eigh of a 350 x 350 matrix took 1.7 s with 2 threads per process on the
  loaded 2-core machine against 12 ms with 1 (BUILD_NOTES.md). On exit the
  previous limits come back."""
  from threadpoolctl import threadpool_limits
  return threadpool_limits(limits=max(1, (os.cpu_count() or 1) // max(int(workers), 1)),
                           user_api="blas")


def auto_batch_cells() -> bool:
  """``batch_cells=None``: on an accelerator, where one small cell leaves the
  device idle; off on a CPU, where a long cell keeps the cores busy and the
  padding to the largest P is extra work (the cpu preset batched: 27 min 25 s
  against 22 min 45 s); short cells gain on a CPU too (docs/engine.md)."""
  import jax
  return jax.default_backend() != "cpu"


def run_cells(cells: Sequence[dict], sweep_dir: str, *, shard: tuple = (0, 1),
              workers: int = 1, log_fn: Callable | None = None,
              progress: bool = True, batch_cells: bool = False) -> list:
  """Runs the ``shard`` of ``cells`` in ``sweep_dir``; returns their records in order.

  Args:
    cells: ensemble-job options, one dict per cell.
    sweep_dir: the sweep directory (:mod:`lossland.sweep`).
    shard: ``(i, n)``: run the i-th of n parts of ``cells`` only.
    workers: processes (this one plus ``workers - 1`` subprocesses); the
      records do not depend on it.
    log_fn: ``fn(str)`` for a failed worker's one-line report.
    progress: show the sweep's progress line.
    batch_cells: cells that share a network and protocol train as one
      program (``run_sweep``'s ``batch_cells``; in every worker).
  """
  from lossland.experiments import sweep
  cells = sweep.shard(list(cells), *shard)
  run = lambda cs: sweep.run_sweep(cs, sweep_dir, progress=progress, batch_cells=batch_cells)
  if workers <= 1 or len(cells) <= 1:
    return run(cells)
  with blas_threads(workers):
    return _run_parallel(cells, sweep_dir, workers, log_fn or (lambda m: None), run,
                         batch_cells)


def _worker():
  """Entry of a worker process (see :func:`_run_parallel`)."""
  parent = os.getppid()

  def watch():
    while os.getppid() == parent:
      time.sleep(1.0)
    os._exit(1)
  threading.Thread(target=watch, daemon=True).start()
  spec = json.load(sys.stdin)
  if spec.get("cache_dir"):
    from lossland import compilation_cache
    compilation_cache.enable_compilation_cache(spec["cache_dir"])
  import jax
  jax.config.update("jax_enable_x64", bool(spec["x64"]))
  from lossland.experiments import sweep
  with blas_threads(spec.get("workers", 1)):
    sweep.run_sweep(spec["cells"], spec["sweep_dir"], progress=False,
                    batch_cells=bool(spec.get("batch_cells")))


def _start_worker(cells, sweep_dir, batch_cells=False, workers=2):
  import jax
  err = tempfile.TemporaryFile(mode="w+")
  # On an accelerator the processes share one device: no preallocation in
  # the workers (start the parent with XLA_PYTHON_CLIENT_PREALLOCATE=false too).
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE=os.environ.get(
      "XLA_PYTHON_CLIENT_PREALLOCATE", "false"))
  proc = subprocess.Popen([sys.executable, "-c", _WORKER_CODE], stdin=subprocess.PIPE,
                          stdout=subprocess.DEVNULL, stderr=err, text=True, env=env)
  proc.stdin.write(json.dumps({
      "cells": cells, "sweep_dir": sweep_dir, "x64": bool(jax.config.jax_enable_x64),
      "batch_cells": bool(batch_cells), "workers": int(workers),
      "cache_dir": jax.config.jax_compilation_cache_dir}))
  proc.stdin.close()
  return proc, err


def _stop_worker(proc, err):
  if proc.poll() is None:
    proc.terminate()
    try:
      proc.wait(10)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
  err.close()


def _run_parallel(cells, sweep_dir, n_workers, say, run_sweep, batch_cells=False):
  """Runs ``cells`` in ``n_workers`` processes; returns their records in order.

  Workers 1..n-1 are subprocesses running ``sweep.run_sweep`` on all cells
  (in this process's float64 setting and compilation cache); the per-cell
  lock makes each cell run exactly once. This process then runs
  ``run_sweep(cells)`` itself: it runs what no worker holds, waits for the
  cells the workers hold, and reruns anything a failed worker left. A
  worker's failure is reported as one line; any exit (Ctrl-C included) of
  this process kills the workers.
  """
  procs = []
  try:
    for _ in range(min(n_workers, len(cells)) - 1):
      procs.append(_start_worker(cells, sweep_dir, batch_cells, n_workers))
    out = run_sweep(cells)
    for k, (proc, err) in enumerate(procs):
      if proc.wait() != 0:
        err.seek(0)
        lines = [l for l in err.read().splitlines() if l.strip()]
        say(f"worker {k + 1} failed (exit {proc.returncode}): "
            f"{lines[-1] if lines else 'no message'}; its cells ran here")
    return out
  finally:
    for proc, err in procs:
      _stop_worker(proc, err)
