"""Benchmark: K members vmapped against the same K one after another.

Both paths run the same jitted training chunk of :mod:`lossland.train` (the
sequential path is the group size 1 of :func:`train.train_ensemble`); the
"library" path is what :func:`train.default_group_size` picks on this backend.
Every member runs exactly ``steps`` full-batch Adam steps (stops disabled), the
compilation is done in a warm-up run and not timed, and each timing is the best
of ``repeats``. FLOPs are counted as 6 N P per member-step (forward 2NP plus
backward 4NP, the dense-layer count; activations and the loss are ignored).
The achieved FLOP/s are compared with a dense [n, n] @ [n, n] matmul timed in
the same process, in the same dtype.

**Against a naive scan** (docs/engine.md): in the same process, a plain
``jax.jit(jax.vmap(run))`` where ``run`` initializes one member exactly as the
library does and makes a fixed-length ``lax.scan`` of ``optax.adam`` steps on
the same ReLU net, quadratic hinge and data (no stops, no measurements).
``summary.json["lib_over_naive_time"]`` is the flat dict
``{"<size>_K<K>_s<steps>": t_library / t_naive}`` for the same member-steps,
with ``train_ensemble`` run as one group of K members; member-steps/s of both
are in ``lib_member_steps_per_s`` and ``naive_member_steps_per_s``. Each
timing follows a warm-up run of the same configuration (compilation not
timed); 100-step timings are the best of ``repeats``, longer ones of one run.
"""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from lossland import dtypes
from lossland import data, losses, nets, train
# the shared helpers, also importable from here as before
from lossland.scripts._bench_common import (  # noqa: F401
    _time_naive, _time_path, matmul_flops, naive_runner)

# (name, P, d, depth, width): P * N of about 1e5, 1e6 and 1e7 or more.
SIZES = (
    ("small", 100, 10, 2, 25),
    ("medium", 1000, 16, 2, 24),
    ("large", 2048, 64, 3, 96),
)
QUICK_SIZES = (
    ("small", 64, 8, 2, 8),
    ("medium", 256, 8, 2, 16),
    ("large", 512, 16, 2, 48),
)


# Ensemble sizes of the naive comparison, per backend kind and size
# (--full; the default benchmark runs DEFAULT_SIZES with DEFAULT_MEMBERS_*).
NAIVE_MEMBERS_CPU = {"small": (20, 200), "medium": (20, 200), "large": (20,)}
NAIVE_MEMBERS_ACCEL = {"small": (20, 200, 1000), "medium": (20, 200, 1000),
                       "large": (20, 100)}
DEFAULT_SIZES = SIZES[:2]
DEFAULT_MEMBERS_CPU = {"small": (20,), "medium": (20,)}
DEFAULT_MEMBERS_ACCEL = {"small": (20, 1000), "medium": (20, 1000)}
NAIVE_STEPS = (100, 1000)


def naive_comparison(sizes, members: dict, steps_list, repeats: int,
                     lr: float = 1e-3) -> dict:
  """train_ensemble (one group of K) against the naive scan, same member-steps."""
  loss = losses.LossConfig()
  dtype = dtypes.float_dtype()
  out = {"lib_over_naive_time": {}, "lib_member_steps_per_s": {},
         "naive_member_steps_per_s": {}, "lib_seconds": {}, "naive_seconds": {}}
  print(f"{'case':>22}  {'t_lib[s]':>9}  {'t_naive[s]':>10}  {'lib/naive':>9}  "
        f"{'lib Msteps/s':>12}  {'naive Msteps/s':>14}", flush=True)
  for name, P, d, depth, width in sizes:
    net = nets.NetConfig(d=d, width=width, depth=depth)
    ds = data.sphere(jax.random.key(0), P, d, n_test=0)
    for K in members[name]:
      seeds = list(range(K))
      keys = jax.vmap(jax.random.key)(jnp.arange(K))
      for steps in steps_list:
        reps = repeats if steps <= 100 else 1
        cfg = train.TrainConfig(lr=lr, max_steps=steps, stop_at_sat=False,
                                jam_window=10 * steps, chunk_steps=steps,
                                n_log_per_decade=1)
        t_lib = _time_path(seeds, ds, net, loss, cfg, K, reps)
        t_naive = _time_naive(naive_runner(net, loss, steps, lr, dtype), keys,
                              ds, reps)
        case = f"{name}_K{K}_s{steps}"
        out["lib_over_naive_time"][case] = t_lib / t_naive
        out["lib_member_steps_per_s"][case] = K * steps / t_lib
        out["naive_member_steps_per_s"][case] = K * steps / t_naive
        out["lib_seconds"][case] = t_lib
        out["naive_seconds"][case] = t_naive
        print(f"{case:>22}  {t_lib:9.3f}  {t_naive:10.3f}  {t_lib / t_naive:9.2f}  "
              f"{K * steps / t_lib / 1e6:12.3f}  {K * steps / t_naive / 1e6:14.3f}",
              flush=True)
  return out


def grid_row(n_cells: int = 9, members: int = 8, steps: int = 200, depth: int = 2,
             width: int = 12, repeats: int = 2) -> dict:
  """A phase grid batched into one program against cell by cell.

  ``n_cells`` cells of P/N = 1.25, 1.5, ... (sphere data, d = h = width,
  N = 300 at the defaults), ``members`` members each, ``steps`` Adam steps
  with stops off: :func:`lossland.train.cells.train_cells` on all of them
  against one ``train_ensemble`` per cell (each one group), in the same
  process, best of ``repeats`` after a first call of each; the first calls
  (compilation included: each cell alone has its own shapes, the batch one
  set) are reported too, as ``seconds_first_*``.
  """
  from lossland.train import cells
  net = nets.NetConfig(d=width, width=width, depth=depth)
  N = nets.n_weights(width, width, depth)
  loss = losses.LossConfig()
  cfg = train.TrainConfig(lr=1e-3, max_steps=steps, stop_at_sat=False,
                          jam_window=10 * steps, chunk_steps=steps, n_log_per_decade=1)
  grid = [(list(range(members)),
           data.sphere(jax.random.key(c), int(round((1.25 + 0.25 * c) * N)), width))
          for c in range(n_cells)]

  def batched():
    return cells.train_cells(grid, net, loss, cfg, group_size=members * n_cells)

  def one_by_one():
    return [train.train_ensemble(s, ds, net, loss, cfg, group_size=members) for s, ds in grid]

  times, first = {}, {}
  for name, fn in (("batched", batched), ("cell_by_cell", one_by_one)):
    t = time.perf_counter()
    fn()  # compile
    first[name] = time.perf_counter() - t
    best = np.inf
    for _ in range(repeats):
      t = time.perf_counter()
      fn()
      best = min(best, time.perf_counter() - t)
    times[name] = best
  ms = n_cells * members * steps
  return {"n_cells": n_cells, "members": members, "steps": steps, "N": N,
          "P": [ds.P for _, ds in grid], "seconds_batched": times["batched"],
          "seconds_cell_by_cell": times["cell_by_cell"],
          "speedup_batched": times["cell_by_cell"] / times["batched"],
          "seconds_first_batched": first["batched"],
          "seconds_first_cell_by_cell": first["cell_by_cell"],
          "speedup_first_batched": first["cell_by_cell"] / first["batched"],
          "member_steps_per_s_batched": ms / times["batched"],
          "member_steps_per_s_cell_by_cell": ms / times["cell_by_cell"]}


def _vmapped_vs_sequential(out: dict, sizes, n_members: int, steps: int,
                           repeats: int, peak: float, quick: bool) -> tuple:
  """Times K members vmapped, one after another and in the library's groups.

  Fills ``out["sizes"]`` and the speedups, and ``flops_fraction_of_matmul``
  against the best matmul so far (re-timed at every size and the best value
  kept, so that a slow moment of a shared machine cannot inflate the fractions).

  Returns:
    ``(rows, peak)``: one table row per size and the best matmul FLOP/s.
  """
  dtype = dtypes.float_dtype()
  seeds = list(range(n_members))
  loss = losses.LossConfig()
  # No stops: every member runs exactly `steps` steps on both paths.
  cfg = train.TrainConfig(lr=1e-3, max_steps=steps, stop_at_sat=False,
                          jam_window=10 * steps, chunk_steps=steps,
                          n_log_per_decade=1)
  rows = []
  for name, P, d, depth, width in sizes:
    net = nets.NetConfig(d=d, width=width, depth=depth)
    N = nets.n_params(net)
    ds = data.sphere(jax.random.key(0), P, d, n_test=0)
    auto = train.default_group_size(n_members, float(P) * N)
    t_vmap = _time_path(seeds, ds, net, loss, cfg, n_members, repeats)
    t_seq = _time_path(seeds, ds, net, loss, cfg, 1, repeats)
    t_lib = (t_vmap if auto == n_members else t_seq if auto == 1 else
             _time_path(seeds, ds, net, loss, cfg, auto, repeats))
    peak = max(peak, matmul_flops(dtype, n=512 if quick else 1024))
    flops = 6.0 * N * P * n_members * steps
    out["sizes"][name] = {"P": P, "d": d, "depth": depth, "width": width, "N": N,
                          "PN": P * N, "seconds_vmapped": t_vmap,
                          "seconds_sequential": t_seq, "seconds_library": t_lib,
                          "library_group_size": auto,
                          "gflops_library": flops / t_lib / 1e9}
    out["speedup_vmapped_vs_sequential"][name] = t_seq / t_vmap
    out["speedup_library_vs_sequential"][name] = t_seq / t_lib
    out["flops_fraction_of_matmul"][name] = flops / t_lib / peak
    rows.append((name, P, N, f"{P * N:.1e}", f"{t_vmap:.3f}", f"{t_seq:.3f}",
                 f"{t_seq / t_vmap:.2f}", auto, f"{t_seq / t_lib:.2f}",
                 f"{flops / t_lib / 1e9:.1f}"))
  return rows, peak


def _print_size_table(out: dict, rows: list, peak: float) -> None:
  """Sets the fractions against the best matmul of the whole run, prints the table."""
  for name in out["sizes"]:
    sz = out["sizes"][name]
    out["flops_fraction_of_matmul"][name] = sz["gflops_library"] * 1e9 / peak
  out["matmul_gflops"] = peak / 1e9
  print(f"dense matmul, best over the run: {peak / 1e9:.1f} GFLOP/s "
        f"(frac_matmul is relative to it)")
  rows = [r + (f"{out['sizes'][r[0]]['gflops_library'] * 1e9 / peak:.2f}",)
          for r in rows]
  header = ("size", "P", "N", "P*N", "t_vmap[s]", "t_seq[s]", "vmap/seq",
            "lib_group", "lib/seq", "lib GFLOP/s", "frac_matmul")
  widths = [max(len(h), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
  fmt = "  ".join(f"{{:>{w}}}" for w in widths)
  print(fmt.format(*header))
  for r in rows:
    print(fmt.format(*r))


def _naive_defaults(sizes, n_members: int, steps: int, quick: bool,
                    full: bool) -> tuple:
  """The default (members per size, step counts) of the naive comparison."""
  if quick:
    return {name: (n_members,) for name, *_ in sizes}, (steps,)
  cpu = jax.default_backend() == "cpu"
  members = ((NAIVE_MEMBERS_CPU if cpu else NAIVE_MEMBERS_ACCEL) if full else
             (DEFAULT_MEMBERS_CPU if cpu else DEFAULT_MEMBERS_ACCEL))
  return members, NAIVE_STEPS


def _paper_scale() -> dict:
  """The paper-scale row of :mod:`lossland.scripts.bench_step`, printed."""
  from lossland.scripts import bench_step
  jax.config.update("jax_enable_x64", True)  # the row has a float64 and a float32 part
  print("paper scale (L = 3, d = h = 51, P = 23562, K = 8): engine and naive "
        "scan, us per member-step", flush=True)
  row = bench_step.paper_row()
  for name, r in row["dtypes"].items():
    v = r["variants"]
    print(f"  {name}: " + ", ".join(f"{k} {x['us_per_member_step']:.1f} "
                                     f"({x['member_steps_per_s']:.0f}/s, floor frac "
                                     f"{x['frac_memory_floor']:.2f})"
                                     for k, x in v.items()), flush=True)
  return row


def run_benchmark(out_dir: str, quick: bool = False, n_members: int = 20,
                  steps: int | None = None, repeats: int = 3,
                  naive_members: dict | None = None,
                  naive_steps: tuple | None = None, full: bool = False,
                  paper: bool | None = None) -> dict:
  """Runs the comparisons and writes ``out_dir/summary.json``.

  The default runs the small and medium sizes (vmapped vs sequential, and
  against the naive scan with K = 20, plus K = 1000 on accelerators) and the
  paper-scale row (:func:`lossland.scripts.bench_step.paper_row`: L = 3,
  d = h = 51, P = 23562, K = 8, float64 and float32, member-steps/s and the
  fraction of the memory floor) and the grid row (:func:`grid_row`: a
  9-cell x 8-member phase grid at N = 300 batched vs cell by cell);
  ``full`` adds the large size and every ensemble size of NAIVE_MEMBERS_*.

  Args:
    out_dir: existing directory.
    quick: small sizes (smoke test); the naive comparison then uses
      ``n_members`` members and ``steps`` steps only.
    full: the long version (all sizes and ensemble sizes).
    paper: run the paper-scale row (default: unless ``quick``).
    n_members, steps, repeats: of the vmapped-vs-sequential comparison.
    naive_members: size name -> ensemble sizes of the naive comparison
      (default: NAIVE_MEMBERS_CPU on CPU, NAIVE_MEMBERS_ACCEL elsewhere).
    naive_steps: step counts of the naive comparison (default NAIVE_STEPS).
  """
  dtype = dtypes.float_dtype()
  sizes = QUICK_SIZES if quick else SIZES if full else DEFAULT_SIZES
  steps = steps or (20 if quick else 100)
  peak = matmul_flops(dtype, n=512 if quick else 1024)
  print(f"backend {jax.default_backend()}, dtype {np.dtype(dtype).name}, "
        f"K = {n_members} members, {steps} steps, dense matmul "
        f"{peak / 1e9:.1f} GFLOP/s")
  out = {"backend": jax.default_backend(), "dtype": np.dtype(dtype).name,
         "n_members": n_members, "steps": steps,
         "matmul_gflops": peak / 1e9, "sizes": {},
         "speedup_vmapped_vs_sequential": {},
         "speedup_library_vs_sequential": {},
         "flops_fraction_of_matmul": {}}
  rows, peak = _vmapped_vs_sequential(out, sizes, n_members, steps, repeats,
                                      peak, quick)
  _print_size_table(out, rows, peak)
  default_members, default_steps = _naive_defaults(sizes, n_members, steps,
                                                   quick, full)
  if naive_members is None:
    naive_members = default_members
  if naive_steps is None:
    naive_steps = default_steps
  print(f"train_ensemble (one group) against a naive jit(vmap(scan(adam))), "
        f"same member-steps, {train.n_devices()} device(s):", flush=True)
  out.update(naive_comparison(sizes, naive_members, naive_steps, repeats))
  out["n_devices"] = train.n_devices()
  g = grid_row(n_cells=3, members=2, steps=5, width=6, repeats=1) if quick else grid_row()
  out["grid"] = g
  print(f"grid of {g['n_cells']} cells x {g['members']} members (N = {g['N']}, "
        f"{g['steps']} steps): batched {g['seconds_batched']:.2f} s, cell by cell "
        f"{g['seconds_cell_by_cell']:.2f} s, speedup {g['speedup_batched']:.2f}; first calls "
        f"(compilation included) {g['seconds_first_batched']:.2f} s and "
        f"{g['seconds_first_cell_by_cell']:.2f} s, speedup {g['speedup_first_batched']:.2f}",
        flush=True)
  if paper if paper is not None else not quick:
    out["paper"] = _paper_scale()
  with open(os.path.join(out_dir, "summary.json"), "w") as fh:
    json.dump(out, fh, indent=2)
  return out
