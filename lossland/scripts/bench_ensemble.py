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
"""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from lossland import data, losses, nets, train

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


def matmul_flops(dtype, n: int = 1024, repeats: int = 5) -> float:
  """FLOP/s of a dense n x n matmul (2 n^3 FLOPs), best of ``repeats``."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  best = np.inf
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


def _time_path(seeds, ds, net, loss, cfg, group_size, repeats):
  train.train_ensemble(seeds, ds, net, loss, cfg, group_size=group_size)  # compile
  best = np.inf
  for _ in range(repeats):
    t = time.perf_counter()
    res = train.train_ensemble(seeds, ds, net, loss, cfg, group_size=group_size)
    best = min(best, time.perf_counter() - t)
  assert np.all(res.steps == cfg.max_steps), "every member must run all steps"
  return best


def run_benchmark(out_dir: str, quick: bool = False, n_members: int = 20,
                  steps: int | None = None, repeats: int = 3) -> dict:
  dtype = jnp.zeros(()).dtype
  sizes = QUICK_SIZES if quick else SIZES
  steps = steps or (20 if quick else 100)
  seeds = list(range(n_members))
  loss = losses.LossConfig()
  # No stops: every member runs exactly `steps` steps on both paths.
  cfg = train.TrainConfig(lr=1e-3, max_steps=steps, stop_at_sat=False,
                          jam_window=10 * steps, chunk_steps=steps,
                          n_log_per_decade=1)
  peak = matmul_flops(dtype, n=512 if quick else 1024)
  print(f"backend {jax.default_backend()}, dtype {np.dtype(dtype).name}, "
        f"K = {n_members} members, {steps} steps, dense matmul "
        f"{peak / 1e9:.1f} GFLOP/s")
  rows, out = [], {"backend": jax.default_backend(), "dtype": np.dtype(dtype).name,
                   "n_members": n_members, "steps": steps,
                   "matmul_gflops": peak / 1e9, "sizes": {},
                   "speedup_vmapped_vs_sequential": {},
                   "speedup_library_vs_sequential": {},
                   "flops_fraction_of_matmul": {}}
  for name, P, d, depth, width in sizes:
    net = nets.NetConfig(d=d, width=width, depth=depth)
    N = nets.n_params(net)
    ds = data.sphere(jax.random.key(0), P, d, n_test=0)
    auto = train.default_group_size(n_members, float(P) * N)
    t_vmap = _time_path(seeds, ds, net, loss, cfg, n_members, repeats)
    t_seq = _time_path(seeds, ds, net, loss, cfg, 1, repeats)
    t_lib = (t_vmap if auto == n_members else t_seq if auto == 1 else
             _time_path(seeds, ds, net, loss, cfg, auto, repeats))
    # The matmul reference is re-timed at every size and the best value kept,
    # so a slow moment of a shared machine cannot inflate the fractions.
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
  # Fractions against the best matmul seen in the whole run.
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
  with open(os.path.join(out_dir, "summary.json"), "w") as fh:
    json.dump(out, fh, indent=2)
  return out
