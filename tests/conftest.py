"""Test configuration: float64 by default (the physics needs it); tests that
check float32 behaviour use ``jax.enable_x64(False)``.

On a GPU (docs/reliability.md, "GPU readiness audit"): pytest-xdist runs
several worker processes on one device, and each would preallocate 75 % of
its memory on first use, so the second worker runs out of memory. Unless the
caller says otherwise, the workers (and the script subprocesses, which
inherit ``os.environ``) allocate on demand. This must happen before jax
creates its backend; on CPU it changes nothing.
"""
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# The tests' programs are tiny: compiling them costs more than running them.
# XLA's backend optimization level 0 and the CPU's legacy fusion emitters
# (the MLIR fusion emitters take most of a small program's compile time) each
# roughly halve it (the suite's wall time on 2 cores: BUILD_NOTES.md, "What
# costs"). They change only rounding, which every comparison inside the suite
# sees on both sides (subprocesses inherit os.environ); the bitwise baseline's
# subprocesses (scripts/compare_runs.py) drop XLA_* variables and run with the
# defaults. A caller's own XLA_FLAGS win.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 "
                      "--xla_cpu_use_fusion_emitters=false")

# pytest-xdist's workers share the cores: each one's BLAS (OpenBLAS, before
# numpy loads it) gets its share, as the phase script's workers do
# (lossland.experiments.grid.blas_threads): more threads spin-wait for a core
# that the other workers hold. A caller's own setting wins.
_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _XDIST_WORKERS > 1:
  os.environ.setdefault("OPENBLAS_NUM_THREADS",
                        str(max(1, (os.cpu_count() or 1) // _XDIST_WORKERS)))

import time  # noqa: E402

import jax  # noqa: E402  (after the allocator setting)
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)


@pytest.fixture
def key():
  return jax.random.key(0)


@pytest.fixture
def on_cpu():
  """``with on_cpu():`` runs jax code on the CPU device.

  For tests that compare numbers computed in this process with those of a
  ``JAX_PLATFORMS=cpu`` subprocess: on a GPU the two sides would otherwise
  run on different backends, whose float64 results agree only to rounding
  (different matmul and transcendental kernels), not to the tests' 1e-10 or
  exact counts. On a CPU-only machine this is the default device: no change.
  """
  cpu = jax.devices("cpu")[0]
  return lambda: jax.default_device(cpu)


# Known-slow tests first: pytest-xdist hands tests to its workers in
# collection order, and a minutes-long test that starts last keeps one worker
# busy while the other idles. Stable: everything else keeps its order.
_SLOW_FIRST = (
    "test_bitwise_baseline.py::test_runs_bitwise_equal_to_baseline",
    "test_generalization.py::test_script_end_to_end_tiny_grid",
    "test_cells.py::test_each_member_equals_its_own_cell",
    "test_generalization.py::test_script_polish_continues",
    "test_flax.py::test_cnn_on_digits_ensemble_hessian_and_ntk",
    "test_phase.py::test_workers_give_the_same_records_as_one_process",
    "test_sweep.py::test_a_long_sweep_does_not_pile_up_compiled_programs",
    "test_bench_cli.py::test_tiny_ensemble_benchmark",
    "test_phase.py::test_script_sizes_runs_each_size_and_compares",
    "test_train_lbfgs.py::test_members_equal_one_by_one_and_resume_is_bitwise",
    "test_multidevice.py::test_sharded_ensemble_equals_single_device",
    "test_phase.py::test_gpu_preset_sets_the_paper_nets_and_the_engine_layout",
    "test_job_options.py::test_bulk_float32_trains_in_float32",
    "test_phase.py::test_script_end_to_end_tiny_grid",
    "test_kink_newton.py",
    "test_notebooks.py::test_notebook_runs_at_tiny_sizes[landscape]",
    "test_figures.py::test_phase_diagram_draws_the_cells_it_read",
    "test_readme.py::test_main_job_gives_the_numbers_the_readme_states",
)


def pytest_collection_modifyitems(session, config, items):
  del session, config
  rank = lambda item: next((i for i, s in enumerate(_SLOW_FIRST) if s in item.nodeid),
                           len(_SLOW_FIRST))
  items.sort(key=rank)


def once_per_session(tmp_path_factory, name: str, make, timeout: float = 600):
  """A folder that ``make(folder)`` filled once per test session.

  With pytest-xdist the first worker to get here runs ``make`` in a folder
  every worker sees (beside the workers' own temporary folders); the others
  wait for it, and fail at once if it failed. Returns the folder.
  """
  base = tmp_path_factory.getbasetemp()
  shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
  shared.mkdir(exist_ok=True)
  done = shared / ".done"
  try:
    os.close(os.open(shared / ".lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
  except FileExistsError:
    deadline = time.time() + timeout
    while not done.exists():
      if time.time() > deadline:
        pytest.fail(f"no {done}: the worker running {name} did not finish")
      time.sleep(0.2)
    if done.read_text() != "ok":
      pytest.fail(f"{name} failed in another worker: {done.read_text()}")
    return shared
  try:
    make(shared)
  except BaseException as e:
    done.write_text(f"{type(e).__name__}: {e}")
    raise
  done.write_text("ok")
  return shared


@pytest.fixture(scope="session")
def run_once(tmp_path_factory):
  """``run_once(name, make)``: :func:`once_per_session` for session fixtures."""
  return lambda name, make: once_per_session(tmp_path_factory, name, make)
