"""Benchmark of the curvature operators, Lanczos, and the dense/Lanczos crossover.

    python -m lossland.scripts.bench hessian --out_dir DIR [--quick]

(dispatched by ``lossland.scripts.bench`` to :func:`run_benchmark`). Measures, in
one process and side by side:

1. the time of one H v, H0 v, Hp v (and all three at once) relative to one
   gradient on the same network and data (expectation: a small constant, ~2-4);
2. the time of 100 Lanczos steps on H at N ~ 1e5 (full reorthogonalization on
   and off), compile time apart;
3. the N at which 100 Lanczos steps (+ the tridiagonal eigenproblem) become
   cheaper than the dense path (build H from N products + eigvalsh);
4. one member's whole analysis (``curvature.spectra``) at N = 420, P = 1000
   (issue 19): dense against the Lanczos path counting exactly (``krylov
   "full"``: Lanczos runs of dimension N on H and Hp) and by SLQ (4 probes x
   100 steps), with the number of operator products of each.

All timings: jitted functions, compile excluded (reported apart), median of
repeats, ``block_until_ready``. float64 is switched on here (a script).
"""
import os
import platform
import time


def _time(fn, *args, repeats=5, min_time=0.2):
  """(compile+first call seconds, median seconds per call)."""
  import jax
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  times = []
  start = time.perf_counter()
  while len(times) < repeats or (time.perf_counter() - start < min_time
                                 and len(times) < 50):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  times.sort()
  return first, times[len(times) // 2]


def _problem(d, width, depth, P, seed=0):
  import jax
  from lossland import curvature as cv
  from lossland import data
  from lossland import losses
  from lossland import nets
  cfg = nets.NetConfig(d=d, width=width, depth=depth)
  init_fn, apply_fn = nets.make_net(cfg)
  params = init_fn(jax.random.key(seed))
  ds = data.sphere(jax.random.key(seed + 1), P, d)
  batch = cv.examples(ds.x_train, ds.y_train)
  fns = cv.curvature_fns(apply_fn, losses.LossConfig())
  return cfg, params, batch, fns, nets.n_params(cfg)


def _bench_products(quick: bool) -> dict:
  """1. One H v, H0 v, Hp v and split product relative to one gradient."""
  import jax
  from jax.flatten_util import ravel_pytree
  d, width, depth, P = (20, 64, 3, 256) if quick else (30, 100, 3, 1000)
  cfg, params, batch, fns, n = _problem(d, width, depth, P)
  v = jax.random.normal(jax.random.key(2), (n,))
  vt = ravel_pytree(params)[1](v)
  fn = {
      "grad": jax.jit(lambda p, b: fns.grad(p, b)),
      "hvp": jax.jit(lambda p, b, v: fns.hvp(p, b, v)),
      "h0vp": jax.jit(lambda p, b, v: fns.h0vp(p, b, v)),
      "hpvp": jax.jit(lambda p, b, v: fns.hpvp(p, b, v)),
      "split_vp": jax.jit(lambda p, b, v: fns.split_vp(p, b, v)),
  }
  t = {}
  for name, f in fn.items():
    args = (params, batch) if name == "grad" else (params, batch, vt)
    t[name] = _time(f, *args)
  g = t["grad"][1]
  return {"products": {"N": n, "P": P, "d": d, "width": width, "depth": depth,
                       "seconds": {k: v[1] for k, v in t.items()},
                       "compile_seconds": {k: v[0] for k, v in t.items()}},
          "hvp_over_grad": t["hvp"][1] / g,
          "h0v_over_grad": t["h0vp"][1] / g,
          "hpv_over_grad": t["hpvp"][1] / g,
          "split_over_grad": t["split_vp"][1] / g}


def _bench_lanczos(quick: bool) -> dict:
  """2. 100 Lanczos steps on H at N ~ 1e5, full reorthogonalization on and off."""
  import jax
  from lossland import curvature as cv
  from lossland import lanczos as lz
  d2, w2, depth2, P2, steps = ((20, 90, 3, 256, 20) if quick
                               else (30, 215, 3, 1000, 100))
  cfg2, params2, batch2, fns2, n2 = _problem(d2, w2, depth2, P2)
  v0 = jax.random.normal(jax.random.key(3), (n2,))
  lres = {}
  for reorth in (True, False):
    run = jax.jit(lambda p, b, v0, reorth=reorth: lz.lanczos(
        cv.flat_matvec(fns2.hvp, p, b), v0, steps, reorthogonalize=reorth).alpha)
    first, sec = _time(run, params2, batch2, v0, repeats=1, min_time=0.0)
    lres["reorth" if reorth else "no_reorth"] = {"seconds": sec,
                                                 "compile_plus_first": first}
  hv2 = jax.jit(lambda p, b, v: fns2.hvp(p, b, v))
  _, t_hv2 = _time(hv2, params2, batch2, v0)
  return {"N": n2, "P": P2, "width": w2, "depth": depth2, "steps": steps,
          "hvp_seconds": t_hv2, **lres}


def _crossover_grid(quick: bool) -> tuple:
  """(widths, d, depth, P, Lanczos steps) of the dense/Lanczos crossover."""
  widths = (4, 8, 16, 24) if quick else (4, 6, 8, 12, 16, 24, 32, 48)
  return (widths,) + ((10, 2, 128, 30) if quick else (10, 2, 256, 100))


def _bench_crossover(quick: bool) -> dict:
  """3. Dense vs Lanczos (same d, depth, P; the width varies)."""
  import jax
  import jax.numpy as jnp
  from lossland import curvature as cv
  from lossland import lanczos as lz
  widths, d3, depth3, P3, m3 = _crossover_grid(quick)
  rows = []
  for w in widths:
    _, p3, b3, f3, n3 = _problem(d3, w, depth3, P3)
    dense = jax.jit(lambda p, b: jnp.linalg.eigvalsh(
        cv.dense_operator(cv.flat_matvec(f3.hvp, p, b), n3, jnp.float64)))
    m = min(m3, n3)
    lan = jax.jit(lambda p, b, v0: lz.ritz(lz.lanczos(
        cv.flat_matvec(f3.hvp, p, b), v0, m))[0])
    td = _time(dense, p3, b3, repeats=1, min_time=0.0)
    tl = _time(lan, p3, b3, jnp.ones(n3), repeats=3, min_time=0.0)
    rows.append({"N": n3, "width": w, "dense_seconds": td[1],
                 "lanczos_seconds": tl[1], "lanczos_steps": m})
  # First N > m (below it Lanczos is itself a full decomposition) from which
  # Lanczos is faster at every larger N of the grid.
  cross = None
  for r in reversed(rows):
    if r["N"] <= r["lanczos_steps"] or r["lanczos_seconds"] >= r["dense_seconds"]:
      break
    cross = r["N"]
  return {"P": P3, "d": d3, "depth": depth3, "rows": rows,
          "lanczos_faster_from_N": cross}


def _bench_counts(quick: bool) -> dict:
  """4. ``curvature.spectra`` of one member: dense, Lanczos "full", Lanczos "slq"."""
  import jax
  from lossland import curvature as cv
  d, width, depth, P = (5, 4, 2, 100) if quick else (10, 12, 3, 1000)
  _, params, batch, fns, n = _problem(d, width, depth, P)
  one = jax.tree_util.tree_map(lambda a: a[None], params)
  steps, probes, top = min(100, n), 4, 5
  cfgs = {"dense": cv.SpectraConfig("dense", n_eff=False),
          "lanczos_full": cv.SpectraConfig("lanczos", n_eff=False, krylov="full"),
          "lanczos_slq": cv.SpectraConfig("lanczos", n_eff=False, krylov="slq",
                                          num_steps=steps, num_probes=probes)}
  products = {"dense": 3 * n,  # N columns of split_vp: H, H0 and Hp products
              "lanczos_full": 2 * n + 5 * cv.N_CHECK + 2 * top,
              "lanczos_slq": (2 * probes + 1) * steps + 2 * top}
  rows = {}
  for name, cfg in cfgs.items():
    run = lambda cfg=cfg: cv.spectra(fns, one, batch, cfg,
                                     key=jax.random.key(0)).rows[0]["loss"]
    first, sec = _time(run, repeats=3, min_time=0.0)
    rows[name] = {"seconds": sec, "compile_plus_first": first,
                  "products": products[name]}
  return {"N": n, "P": P, "d": d, "width": width, "depth": depth, "rows": rows}


def _table(out: dict, quick: bool, backend: str) -> list:
  """The printed summary of the three measurements, one string per line."""
  prod, lan, cross = out["products"], out["lanczos"], out["crossover"]
  sec = prod["seconds"]
  lines = [f"products at N={prod['N']}, P={prod['P']} (float64, {backend}):",
           f"  {'op':10s} {'ms':>9s} {'/grad':>7s}"]
  for k in sec:
    lines.append(f"  {k:10s} {1e3 * sec[k]:9.3f} {sec[k] / sec['grad']:7.2f}")
  lines.append(f"lanczos {lan['steps']} steps on H at N={lan['N']}, P={lan['P']}: "
               f"{lan['reorth']['seconds']:.2f} s with full reorthogonalization, "
               f"{lan['no_reorth']['seconds']:.2f} s without "
               f"(one H v: {1e3 * lan['hvp_seconds']:.1f} ms; compile+first "
               f"{lan['reorth']['compile_plus_first']:.1f} s)")
  lines.append(f"dense (N H v + eigvalsh) vs Lanczos ({_crossover_grid(quick)[-1]} "
               f"steps), P={cross['P']}:")
  lines.append(f"  {'N':>6s} {'dense s':>9s} {'lanczos s':>10s}")
  for r in cross["rows"]:
    lines.append(f"  {r['N']:6d} {r['dense_seconds']:9.3f} {r['lanczos_seconds']:10.3f}")
  lines.append(f"  Lanczos faster from N = {cross['lanczos_faster_from_N']}")
  counts = out.get("counts")
  if counts:
    lines.append(f"one member's spectra() at N={counts['N']}, P={counts['P']} "
                 f"(compile excluded):")
    for name, r in counts["rows"].items():
      lines.append(f"  {name:13s} {r['seconds']:8.3f} s  {r['products']:6d} products "
                   f"(compile+first {r['compile_plus_first']:.1f} s)")
  return lines


def run_benchmark(out_dir: str, quick: bool = False) -> dict:
  """Runs the benchmark, prints a table, writes ``out_dir/summary.json``."""
  import jax
  jax.config.update("jax_enable_x64", True)

  os.makedirs(out_dir, exist_ok=True)
  out = {"quick": quick, "dtype": "float64", "backend": jax.default_backend(),
         "devices": [str(d) for d in jax.devices()],
         "cpu_count": os.cpu_count(), "platform": platform.platform(),
         "jax": jax.__version__,
         # OpenBLAS threads spin badly on a loaded machine (eigvalsh of an
         # 840 x 840 matrix: 5 s multi-threaded vs 0.1 s single-threaded).
         "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS")}

  from lossland.scripts._cli import Progress, write_summary
  bar = Progress('bench hessian')
  bar(0, 4, 'products vs one gradient (compiling)')
  out.update(_bench_products(quick))
  bar(1, 4, 'Lanczos at N ~ 1e5')
  out["lanczos"] = _bench_lanczos(quick)
  bar(2, 4, 'dense vs Lanczos crossover')
  out["crossover"] = _bench_crossover(quick)
  bar(3, 4, 'dense vs exact and SLQ Lanczos counts')
  out["counts"] = _bench_counts(quick)
  bar(4, 4, 'done')
  bar.close()
  lines = _table(out, quick, jax.default_backend())
  return write_summary(out_dir, out, lines)


if __name__ == "__main__":
  import argparse
  ap = argparse.ArgumentParser()
  ap.add_argument("--out_dir", required=True)
  ap.add_argument("--quick", action="store_true")
  a = ap.parse_args()
  run_benchmark(a.out_dir, a.quick)
