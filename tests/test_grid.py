"""Worker processes of a grid share the cores: each one's BLAS gets its share
(lossland.experiments.grid.blas_threads)."""
import numpy as np
import pytest

from lossland.experiments import grid

threadpoolctl = pytest.importorskip("threadpoolctl")  # a runtime requirement


def _blas_threads():
  return {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}


def test_blas_threads_are_the_cores_share_and_come_back(monkeypatch):
  before = _blas_threads()
  assert before  # numpy's BLAS is loaded
  monkeypatch.setattr(grid.os, "cpu_count", lambda: 8)
  with grid.blas_threads(2):
    assert _blas_threads() == {4}
    np.linalg.eigh(np.eye(3))  # usable inside
  with grid.blas_threads(16):
    assert _blas_threads() == {1}
  assert _blas_threads() == before


def test_a_parallel_grid_runs_its_cells_with_the_share(monkeypatch, tmp_path):
  """run_cells(workers=2): this process's cells run under the limit, and each
  worker is told the number of workers (its own limit, in _worker)."""
  from lossland.experiments import sweep
  seen, started = {}, []

  class Proc:
    returncode = 0

    def wait(self, *a):
      return 0

    def poll(self):
      return 0

  class Err:
    def close(self):
      pass

  def fake_start(cells, sweep_dir, batch_cells=False, workers=2):
    started.append(workers)
    return Proc(), Err()

  def fake_run_sweep(cells, sweep_dir, progress=True, batch_cells=False):
    seen["threads"] = _blas_threads()
    return [{"cell": c} for c in cells]

  monkeypatch.setattr(grid.os, "cpu_count", lambda: 6)
  monkeypatch.setattr(grid, "_start_worker", fake_start)
  monkeypatch.setattr(sweep, "run_sweep", fake_run_sweep)
  before = _blas_threads()
  out = grid.run_cells([{"a": 1}, {"a": 2}, {"a": 3}], str(tmp_path), workers=3)
  assert out == [{"cell": {"a": 1}}, {"cell": {"a": 2}}, {"cell": {"a": 3}}]
  assert seen["threads"] == {2} and started == [3, 3]
  assert _blas_threads() == before
  # one process: no limit
  grid.run_cells([{"a": 1}], str(tmp_path), workers=1)
  assert seen["threads"] == before
