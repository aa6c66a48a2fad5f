#!/usr/bin/env python
"""Cross-check lossland.ntk against neural-tangents (agreement, speed, memory).

neural-tangents needs an older jax, so it lives in its own virtual environment
(/work/shared/reference/peer_venvs.md) and runs as a subprocess of this script
(the same file, ``--side nt``), which must not import lossland. Inputs and
parameters travel as .npz files.

    .venv/bin/python scripts/compare_neural_tangents.py \
        --nt_python /work/peer_venvs/nt/bin/python --out /tmp/ntcmp \
        --P 1000 2000 5000 --emp_P 1000 2000

The nets of ``nets.make_net`` (NTK parametrization, ReLU normalized by sqrt(2),
no bias) are ``stax.serial(Dense(h, W_std=1), Relu(), [Dense(h, W_std=sqrt(2)),
Relu()] * (L - 1), Dense(1, W_std=sqrt(2)))``, with the same weight arrays.

Timings: best of ``--repeat`` calls of the jitted function after one warm-up
call (compilation excluded, reported separately); memory: XLA's compiled
temporary buffer size (``memory_analysis().temp_size_in_bytes``) where the
backend reports it.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np


def _timed(fn, args, repeat):
  import jax
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  t_compile = time.perf_counter() - t0
  try:
    mem = compiled.memory_analysis()
    temp = int(mem.temp_size_in_bytes) if mem is not None else None
  except Exception:  # backend without memory analysis
    temp = None
  out = jax.block_until_ready(compiled(*args))
  best = math.inf
  for _ in range(repeat):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    best = min(best, time.perf_counter() - t0)
  return np.asarray(out), {"seconds": best, "compile_seconds": t_compile,
                           "temp_bytes": temp}


def _inputs(P, d, seed, dtype):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(P, d))
  x = x / np.linalg.norm(x, axis=1, keepdims=True) * math.sqrt(d)
  return x.astype(dtype)


def lossland_side(a):
  import jax
  jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
  from lossland import nets, ntk

  os.makedirs(a.out, exist_ok=True)
  res = {"agreement": {}, "timing": []}
  # --- agreement, float64
  cfg = nets.NetConfig(d=a.d, width=a.width, depth=a.depth)
  params = nets.make_net(cfg)[0](jax.random.key(0))
  x = _inputs(a.P_agree, a.d, 1, np.float64)
  arrays = {"x": x, "depth": a.depth, "width": a.width}
  for i, layer in enumerate(params):
    arrays[f"w{i}"] = np.asarray(layer["w"])
  ours = {"nngp": np.asarray(ntk.kernel_fn(cfg)(jnp.asarray(x), jnp.asarray(x))["nngp"]),
          "ntk_inf": np.asarray(ntk.kernel_fn(cfg)(jnp.asarray(x), jnp.asarray(x))["ntk"])}
  for impl in ("structured", "vp", "jacobian"):
    ours[f"emp_{impl}"] = np.asarray(jax.jit(ntk.empirical_ntk_fn(cfg, impl))(
        params, jnp.asarray(x), jnp.asarray(x)))
  np.savez(os.path.join(a.out, "agree_in.npz"), **arrays)

  # --- timing, float32 (both libraries in one process each, same inputs)
  dt = np.float32
  with jax.enable_x64(False):
    for P in a.P:
      x = _inputs(P, a.d, 2, dt)
      kfn = ntk.kernel_fn(cfg)
      _, t = _timed(lambda x: kfn(x, x)["ntk"], (jnp.asarray(x),), a.repeat)
      res["timing"].append({"lib": "lossland", "what": "kernel_fn ntk", "P": P, **t})
      print("lossland kernel_fn", P, t, flush=True)
    cfg32 = cfg
    p32 = nets.make_net(cfg32, dtype=jnp.float32)[0](jax.random.key(0))
    for P in a.emp_P:
      x = jnp.asarray(_inputs(P, a.d, 2, dt))
      for impl in a.impls:
        if impl == "jacobian" and P * nets.n_params(cfg) * 4 > a.max_jacobian_bytes:
          continue
        f = ntk.empirical_ntk_fn(cfg32, impl, chunk_size=a.chunk)
        _, t = _timed(lambda p, x: f(p, x, x), (p32, x), a.repeat)
        res["timing"].append({"lib": "lossland", "what": f"empirical {impl}", "P": P,
                              "width": a.width, **t})
        print("lossland empirical", impl, P, t, flush=True)

  # --- neural-tangents in its own venv
  cmd = [a.nt_python, os.path.abspath(__file__), "--side", "nt", "--out", a.out,
         "--d", str(a.d), "--width", str(a.width), "--depth", str(a.depth),
         "--repeat", str(a.repeat), "--max_jacobian_bytes", str(a.max_jacobian_bytes),
         "--P", *map(str, a.P), "--emp_P", *map(str, a.emp_P), "--impls", *a.impls]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  subprocess.run(cmd, check=True, env=env)
  with np.load(os.path.join(a.out, "nt_out.npz")) as z:
    theirs = {k: z[k] for k in z.files}
  with open(os.path.join(a.out, "nt_timing.json")) as fh:
    res["timing"] += json.load(fh)

  rel = lambda u, v: float(np.linalg.norm(u - v) / np.linalg.norm(v))
  maxabs = lambda u, v: float(np.max(np.abs(u - v)))
  res["agreement"] = {
      "P": a.P_agree, "d": a.d, "width": a.width, "depth": a.depth,
      "nngp_rel": rel(ours["nngp"], theirs["nngp"]),
      "nngp_maxabs": maxabs(ours["nngp"], theirs["nngp"]),
      "ntk_inf_rel": rel(ours["ntk_inf"], theirs["ntk_inf"]),
      "ntk_inf_maxabs": maxabs(ours["ntk_inf"], theirs["ntk_inf"]),
      **{f"empirical_{impl}_vs_nt_rel": rel(ours[f"emp_{impl}"], theirs["emp"])
         for impl in ("structured", "vp", "jacobian")},
      "empirical_vs_nt_maxabs": maxabs(ours["emp_structured"], theirs["emp"]),
      "empirical_vs_infinite_rel": rel(ours["emp_structured"], ours["ntk_inf"]),
  }
  with open(os.path.join(a.out, "comparison.json"), "w") as fh:
    json.dump(res, fh, indent=1)
  print(json.dumps(res["agreement"], indent=1))
  print(f"{'lib':>10} {'what':>24} {'P':>6} {'seconds':>9} {'compile':>8} {'temp MB':>8}")
  for r in res["timing"]:
    if r["seconds"] is None:
      print(f"{r['lib']:>10} {r['what']:>24} {r['P']:>6}   failed: {r['error'][:60]}")
      continue
    mb = "-" if r["temp_bytes"] is None else f"{r['temp_bytes'] / 2**20:.0f}"
    print(f"{r['lib']:>10} {r['what']:>24} {r['P']:>6} {r['seconds']:9.3f} "
          f"{r['compile_seconds']:8.2f} {mb:>8}")


def nt_side(a):
  import jax
  jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp
  import neural_tangents as nt
  from neural_tangents import stax

  z = np.load(os.path.join(a.out, "agree_in.npz"))
  depth, width = int(z["depth"]), int(z["width"])
  layers = [stax.Dense(width, W_std=1.0, parameterization="ntk"), stax.Relu()]
  for _ in range(depth - 1):
    layers += [stax.Dense(width, W_std=math.sqrt(2), parameterization="ntk"), stax.Relu()]
  layers += [stax.Dense(1, W_std=math.sqrt(2), parameterization="ntk")]
  _, apply_fn, kernel_fn = stax.serial(*layers)
  params = []
  for i in range(depth + 1):
    params.append((jnp.asarray(z[f"w{i}"]), None))
    if i < depth:
      params.append(())
  x = jnp.asarray(z["x"])
  k = kernel_fn(x, x, ("nngp", "ntk"))
  emp = nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,))(x, x, params)
  np.savez(os.path.join(a.out, "nt_out.npz"), nngp=np.asarray(k.nngp),
           ntk_inf=np.asarray(k.ntk), emp=np.asarray(emp))

  timing = []
  jax.config.update("jax_enable_x64", False)
  p32 = jax.tree_util.tree_map(lambda w: jnp.asarray(w, jnp.float32), params)
  n_params = sum(int(np.prod(w.shape)) for w, _ in params[::2])
  for P in a.P:
    x = jnp.asarray(_inputs(P, a.d, 2, np.float32))
    _, t = _timed(lambda x: kernel_fn(x, x, "ntk"), (x,), a.repeat)
    timing.append({"lib": "neural-tangents", "what": "kernel_fn ntk", "P": P, **t})
    print("nt kernel_fn", P, t, flush=True)
  impls = {"jacobian": nt.NtkImplementation.JACOBIAN_CONTRACTION,
           "vp": nt.NtkImplementation.NTK_VECTOR_PRODUCTS,
           "structured": nt.NtkImplementation.STRUCTURED_DERIVATIVES}
  for P in a.emp_P:
    x = jnp.asarray(_inputs(P, a.d, 2, np.float32))
    for name, impl in impls.items():
      if name not in a.impls:
        continue
      if name == "jacobian" and P * n_params * 4 > a.max_jacobian_bytes:
        continue
      f = nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), implementation=impl)
      try:
        _, t = _timed(lambda p, x: f(x, x, p), (p32, x), a.repeat)
      except Exception as e:  # e.g. STRUCTURED_DERIVATIVES with jax 0.4.30
        timing.append({"lib": "neural-tangents", "what": f"empirical {name}", "P": P,
                       "width": width, "seconds": None, "compile_seconds": None,
                       "temp_bytes": None, "error": f"{type(e).__name__}: {e}"[:200]})
        print("nt empirical", name, P, "failed:", type(e).__name__, e, flush=True)
        continue
      timing.append({"lib": "neural-tangents", "what": f"empirical {name}", "P": P,
                     "width": width, **t})
      print("nt empirical", name, P, t, flush=True)
  with open(os.path.join(a.out, "nt_timing.json"), "w") as fh:
    json.dump(timing, fh)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--side", choices=["lossland", "nt"], default="lossland")
  ap.add_argument("--nt_python", default="/work/peer_venvs/nt/bin/python")
  ap.add_argument("--out", required=True)
  ap.add_argument("--d", type=int, default=10)
  ap.add_argument("--width", type=int, default=128)
  ap.add_argument("--depth", type=int, default=3)
  ap.add_argument("--P_agree", type=int, default=64)
  ap.add_argument("--P", type=int, nargs="*", default=[1000, 2000, 5000])
  ap.add_argument("--emp_P", type=int, nargs="*", default=[1000, 2000])
  ap.add_argument("--impls", nargs="+", choices=["structured", "vp", "jacobian"],
                  default=["structured", "vp", "jacobian"],
                  help="Empirical-NTK implementations to time (both libraries).")
  ap.add_argument("--chunk", type=int, default=256)
  ap.add_argument("--repeat", type=int, default=3)
  ap.add_argument("--max_jacobian_bytes", type=float, default=2e9)
  a = ap.parse_args()
  (nt_side if a.side == "nt" else lossland_side)(a)


if __name__ == "__main__":
  main()
