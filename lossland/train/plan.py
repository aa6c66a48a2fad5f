"""How many members fit on the device(s), and which devices: the engine's plan.

:func:`memory_plan` (bytes per member, group size), :func:`default_group_size`
(vmapping pays on a CPU only up to a work size), the device count the
members are sharded over, and multi-host initialization.
"""
import os

import jax
import numpy as np

from lossland import nets
from lossland.train.trainer import MEASUREMENTS, TrainConfig


def n_devices() -> int:
  """Local devices the members are sharded over (1: no sharding)."""
  return jax.local_device_count()


_CLUSTER_VARS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def cluster_detected(env=None) -> bool:
  """Whether the environment describes a multi-process job.

  True when ``JAX_COORDINATOR_ADDRESS`` is set, or ``SLURM_NTASKS`` or
  ``OMPI_COMM_WORLD_SIZE`` is an integer > 1.
  """
  env = os.environ if env is None else env
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return True
  for name in _CLUSTER_VARS:
    try:
      if int(env.get(name, "1")) > 1:
        return True
    except ValueError:
      continue
  return False


def maybe_initialize_distributed(force: bool = False, env=None) -> bool:
  """Calls ``jax.distributed.initialize()`` in a cluster job (or if forced).

  Must run before any other jax call of the process. jax reads the
  coordinator, process count and id from SLURM, Open MPI or the
  ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``
  variables (docs/engine.md, "Several hosts").

  Returns:
    Whether it initialized.
  """
  if not (force or cluster_detected(env)):
    return False
  jax.distributed.initialize()
  return True


def default_group_size(n_members: int, work_per_member_step: float,
                       backend: str | None = None) -> int:
  """How many members to vmap together (the rest run group after group).

  On accelerators the whole ensemble is one vmapped program (then limited by
  :func:`memory_plan`). On CPU, batching pays off only while a member's step
  is small: past ~3e6 multiply-adds per member-step (P times N) one member
  already keeps the cores busy, and the batched matmuls of a vmap are slower
  than plain ones (docs/engine.md, benchmark "ensemble").
  """
  backend = backend or jax.default_backend()
  if backend != "cpu" or work_per_member_step < CPU_VMAP_WORK_LIMIT:
    return n_members
  return 1


CPU_VMAP_WORK_LIMIT = 3e6

# Compaction's break-even, in multiply-adds (P x N per member-step) that a
# smaller group must save before its new programs are worth compiling: about
# 1 s of compilation per group size on a cold cache (chunk, record and
# compact of the main job, idle 2-core CPU) against about 1e9 multiply-adds
# per second of the CPU engine on small nets, and 1 to 2 s against the
# 3e11 to 5e11 per second of a GPU at paper scale (BUILD_NOTES.md, "Fewer
# compiled programs").
COMPACT_MIN_WORK = {"cpu": 1e9, "gpu": 5e11, "tpu": 5e11}


def compaction_pays(G: int, size: int, t: int, max_steps: int, work_per_member_step: float,
                    min_work: float) -> bool:
  """Whether shrinking a running group of G rows to ``size`` rows at step t pays.

  A deterministic cost model (no timing, so runs stay reproducible bit for
  bit): the rows dropped, times the steps the survivors are expected to run
  on, times P x N, must reach ``min_work`` multiply-adds, the cost of
  compiling the smaller group's programs (:data:`COMPACT_MIN_WORK`). The
  expected steps are min(t, max_steps - t): members still running after t
  steps are taken to run about t more. ``min_work`` 0 compacts whenever the
  group shrinks (the engine before this rule), ``inf`` never.
  """
  steps_left = max(min(t, max_steps - t), 0)
  return size < G and (G - size) * steps_left * work_per_member_step >= min_work


# Share of the free memory the planner lets an ensemble use.
MEMORY_FRACTION = 0.8


def _fmt_bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
    if n < 1024 or unit == "EiB":
      return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
    n /= 1024
  return f"{n:.1f} EiB"


def _device_memory(backend: str) -> int | None:
  if backend == "cpu":
    from lossland import curvature
    return curvature.available_memory_bytes()
  try:
    stats = jax.local_devices(backend=backend)[0].memory_stats() or {}
  except (RuntimeError, ValueError):
    return None
  limit = stats.get("bytes_limit")
  if limit is None:
    return None
  return int(limit) - int(stats.get("bytes_in_use", 0))


def memory_plan(net_cfg: nets.NetConfig, cfg: TrainConfig, P: int, n_test: int,
                n_members: int, itemsize: int, backend: str | None = None,
                available: int | None = None) -> dict:
  """Bytes an ensemble needs and how many members fit in one vmapped group.

  Cheap and allocation-free (call it before building the data set). The
  estimate per member: params, initial params, gradient, the update and the
  optimizer's state (N floats each), the activations of the backward pass
  (P x width x depth, about three arrays: pre-activations, activations and
  their cotangents), the outputs of a measurement on P + n_test points, the
  histories, and the unsatisfied-point record if asked. The results of all
  members (initial and final params, histories) stay on the device.

  Args:
    net_cfg, cfg: the network and training configuration.
    P, n_test: training and test points.
    n_members: ensemble size K.
    itemsize: bytes per float (8 for float64).
    backend: default: jax's default backend.
    available: bytes free (default: the device's free memory; MemAvailable
      of /proc/meminfo on CPU).

  Returns:
    dict with ``bytes_per_member``, ``bytes_data``, ``bytes_results``,
    ``available``, ``usable`` (MEMORY_FRACTION of it) and ``group_size``
    (members that fit at once, at most n_members).

  Raises:
    ValueError: the data, the results or one member do not fit (one line).
  """
  backend = backend or jax.default_backend()
  P, n_test, K = int(P), int(n_test), int(n_members)
  N = nets.n_params(net_cfg)
  width = max(net_cfg.width, net_cfg.d, net_cfg.n_out) if net_cfg.depth else net_cfg.d
  opt_floats = {"adam": 2, "momentum": 1, "sgd": 0, "gradient_flow": 3,
                "fire": 2, "lbfgs": 5 + 2 * cfg.lbfgs_memory}[cfg.optimizer]
  n_meas = len(MEASUREMENTS)
  M = int(np.ceil(np.log10(max(cfg.max_steps, 1)) * cfg.n_log_per_decade)) + 3
  batch = min(cfg.batch_size, P) if cfg.batch_size else P
  acts = 3 * batch * width * max(net_cfg.depth, 1) + 4 * batch
  meas = 2 * (P + n_test) * width + 4 * (P + n_test)
  floats = (4 + opt_floats) * N + max(acts, meas) + (M + 1) * n_meas
  unsat = M * (-(-P // 8)) if cfg.record_unsat else 0
  per_member = floats * itemsize + unsat + 64
  results = K * ((2 * N + (M + 1) * n_meas) * itemsize + unsat + 16)
  data_bytes = (P + n_test) * (net_cfg.d + 1) * itemsize
  if available is None:
    available = _device_memory(backend)
  plan = {"bytes_per_member": int(per_member), "bytes_data": int(data_bytes),
          "bytes_results": int(results), "available": available,
          "usable": None, "group_size": K, "backend": backend}
  if available is None:
    return plan
  usable = int(MEMORY_FRACTION * available)
  plan["usable"] = usable
  where = "the device has" if backend != "cpu" else "the machine has"
  shape = f"P={P}, width={net_cfg.width}, depth={net_cfg.depth}, N={N}"
  if data_bytes > usable:
    raise ValueError(f"the data need {_fmt_bytes(data_bytes)} (P={P}, "
                     f"n_test={n_test}, d={net_cfg.d}), {where} "
                     f"{_fmt_bytes(available)} free")
  if data_bytes + per_member > usable:
    raise ValueError(f"one member needs {_fmt_bytes(per_member)} ({shape}), "
                     f"{where} {_fmt_bytes(available)} free")
  if data_bytes + per_member + results > usable:
    raise ValueError(f"the results of {K} members need {_fmt_bytes(results)} "
                     f"({shape}), {where} {_fmt_bytes(available)} free")
  plan["group_size"] = int(max(1, min(K, (usable - data_bytes - results)
                                      // per_member)))
  return plan


