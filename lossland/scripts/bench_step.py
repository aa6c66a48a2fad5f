"""Benchmark and profile of one training step at the papers' scale.

    python -m lossland.scripts.bench step --out_dir DIR [--quick]

The papers' networks: L = 3 hidden layers, d = h = 51 (N = 7854 weights),
P = 23562 sphere points (P/N = 3), K = 8 members vmapped, in float64 and in
float32 (one process: x64 is switched on and every array has its dtype set).
``--quick`` shrinks it to L = 2, d = h = 16, P = 2048, K = 4.

For each dtype it times, best of ``repeats`` after a warm-up (compilation
not timed):

* ``forward``: the K members' training loss, jit(vmap(loss)).
* ``act_grad``: the gradient with respect to the inputs only: forward plus
  every activation gradient (XLA drops the weight gradients).
* ``grad``: the gradient with respect to the weights (forward, activation
  gradients and weight gradients); ``grad - act_grad`` is the cost of the
  weight gradients (plus the first layer's activation gradient, which only
  ``act_grad`` computes).
* ``engine``: member-steps of :func:`lossland.train.train_ensemble` (Adam, stop
  rules and measurements as in a real run, stops disabled; one group of K).
* ``naive``: a plain jit(vmap(scan(optax.adam))) of the same net, loss, data
  (_bench_common.naive_runner), also with the scan unrolled 4 times, and
  ``naive_flat``: params and Adam moments as one flat [N] buffer per member
  (one update kernel).

``grad`` and ``engine`` for each variant of VARIANTS: TrainConfig's engine
fields ``wgrad_split`` (split-K weight gradients over n chunks of the points,
:func:`lossland.nets.split_k_matmul`), ``pad_to`` (widths padded with zero
units to a multiple of n) and ``scan_unroll``; ``grad[base,highest]`` is the
float32 gradient at 'highest' matmul precision (GPUs may use TF32 by default;
``f32_grad_rel_error_vs_f64`` gives both gradients' errors).

Limits it reports, measured in the same process: the device's copy
bandwidth (a large x + 1, bytes read plus written) and a dense matmul's
FLOP/s; the *memory floor* of a member-step, the bytes of an unfused
per-layer program over that bandwidth: 9 passes over a [P, h] array per
hidden layer (forward: z written and read; backward: the incoming gradient
read, z read, dz written, dz read for dW and for dx, a_{l-1} read, the
outgoing gradient written), and ``frac_memory_floor`` = floor / measured time
per member-step. FLOPs are 6 N P per member-step.

The optimized HLO of the engine's chunk and of ``grad`` is summarized (how
many fusions, which dots became cuBLAS calls or Triton GEMM fusions) in
``summary.json["hlo"]``, and written whole to ``DIR/hlo_*.txt``.
"""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from lossland import data, losses, nets, train
from lossland.scripts import _bench_common as common

# (depth, d = width, P, K)
PAPER = (3, 51, 23562, 8)
QUICK = (2, 16, 2048, 4)
# TrainConfig engine fields of the timed variants; the first is the baseline.
VARIANTS = ({}, {"wgrad_split": 64}, {"pad_to": 8}, {"wgrad_split": 64, "pad_to": 8},
            {"scan_unroll": 1}, {"scan_unroll": 1, "wgrad_split": 64, "pad_to": 8})
QUICK_VARIANTS = ({}, {"wgrad_split": 8, "pad_to": 8}, {"scan_unroll": 2})
PASSES_PER_LAYER = 9


def copy_bandwidth(n_bytes: int, repeats: int = 5) -> float:
  """Bytes/s of x + 1 over a float32 array of n_bytes (read + write counted)."""
  x = jnp.arange(n_bytes // 4, dtype=jnp.float32)
  t = common.best_time(jax.jit(lambda a: a + 1), x, repeats=repeats)
  return 2 * x.size * 4 / t


def hlo_summary(text: str) -> dict:
  """Counts in an optimized HLO module's text: fusions, cuBLAS/Triton dots."""
  lines = [l for l in text.splitlines() if " = " in l]
  count = lambda op: sum(1 for l in lines if f" {op}(" in l.split(" = ", 1)[1])
  custom = re.findall(r'custom_call_target="([^"]+)"', text)
  targets = {}
  for c in custom:
    targets[c] = targets.get(c, 0) + 1
  return {
      "n_fusion": count("fusion"),
      "n_triton_gemm": len(re.findall(r'"kind":"__triton_gemm"|__triton_gemm', text)),
      "n_triton_any": len(re.findall(r"__triton", text)),
      "n_dot": count("dot"),
      "custom_call_targets": targets,
      "n_while": count("while"),
  }


def flat_naive_runner(net, loss, steps, lr, dtype):
  """jit(vmap(run)) with params and Adam moments as one flat [N] buffer."""
  init_net, apply_fn = nets.make_net(net)

  def run(key, x, y):
    k_init, _ = jax.random.split(key)
    p0 = jax.tree_util.tree_map(lambda a: a.astype(dtype), init_net(k_init))
    w, unravel = ravel_pytree(p0)
    loss_fn = lambda v: losses.mean_loss(loss, apply_fn(unravel(v), x), y)
    b1, b2, eps = 0.9, 0.999, 1e-8

    def body(carry, t):
      w, m, v = carry
      g = jax.grad(loss_fn)(w)
      m = b1 * m + (1 - b1) * g
      v = b2 * v + (1 - b2) * g * g
      tt = (t + 1).astype(dtype)
      mh, vh = m / (1 - b1 ** tt), v / (1 - b2 ** tt)
      return (w - lr * mh / (jnp.sqrt(vh) + eps), m, v), None

    z = jnp.zeros_like(w)
    (w, _, _), _ = jax.lax.scan(body, (w, z, z), jnp.arange(steps))
    return w

  return jax.jit(jax.vmap(run, in_axes=(0, None, None)))


def variant_name(v: dict) -> str:
  """'base' or e.g. 'split64+pad8+unroll1' for a dict of TrainConfig fields."""
  short = {"wgrad_split": "split", "pad_to": "pad", "scan_unroll": "unroll"}
  return "+".join(f"{short[k]}{v[k]}" for k in short if v.get(k)) or "base"


def _f32_precision_check(lfn, params, x, repeats):
  """Seconds of the float32 gradient at 'highest' matmul precision, and the
  relative errors of the default and 'highest' gradients against float64."""
  up = lambda t: jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), t)
  grad = jax.vmap(jax.grad(lfn), in_axes=(0, None))
  g_ref = ravel_pytree(jax.jit(grad)(up(params), x.astype(jnp.float64)))[0]
  rel = lambda g: float(jnp.linalg.norm(ravel_pytree(g)[0] - g_ref) / jnp.linalg.norm(g_ref))
  # jax caches a trace per precision setting: each call inside its context
  errors = {"default": rel(jax.jit(grad)(params, x))}
  with jax.default_matmul_precision("highest"):
    g_hi = jax.jit(grad)
    errors["highest"] = rel(g_hi(params, x))
    t_hi = common.best_time(g_hi, params, x, repeats=repeats)
  return t_hi, errors


def _write_hlo(out, out_dir, tag, text):
  out["hlo"][tag] = hlo_summary(text)
  if out_dir:
    with open(os.path.join(out_dir, f"hlo_{tag}.txt"), "w") as fh:
      fh.write(text)


def _profile_dtype(dtype, depth, width, P, K, variants, steps, repeats, out_dir,
                   bandwidth, lean=False):
  """Times of every part and variant (module docstring); ``lean``: the
  engine variants and the naive scan only (no forward/gradient split, HLO,
  unrolled or flat naive scans, precision check)."""
  itemsize = np.dtype(dtype).itemsize
  net = nets.NetConfig(d=width, width=width, depth=depth)
  N = nets.n_params(net)
  loss = losses.LossConfig()
  ds = data.sphere(jax.random.key(0), P, width, n_test=0, dtype=dtype)
  keys = jax.vmap(jax.random.key)(jnp.arange(K))
  init_net, _ = nets.make_net(net, dtype=dtype)
  params = jax.vmap(init_net)(keys)
  flops = 6.0 * N * P
  floor_s = PASSES_PER_LAYER * depth * P * width * itemsize / bandwidth
  name = np.dtype(dtype).name
  out = {"N": N, "P": P, "K": K, "depth": depth, "width": width,
         "memory_floor_us_per_member_step": floor_s * 1e6,
         "member_steps_per_s_at_floor": 1.0 / floor_s, "variants": {}, "hlo": {}}
  times = {}
  for i, var in enumerate(variants):
    vname = variant_name(var)
    if not var.get("scan_unroll") and not lean:   # the unroll changes the engine only
      _, apply_fn = nets.make_net(net, dtype=dtype,
                                  wgrad_split=var.get("wgrad_split", 0),
                                  pad_to=var.get("pad_to", 0))
      lfn = lambda p, x, f=apply_fn: losses.mean_loss(loss, f(p, x), ds.y_train)
      grad = jax.jit(jax.vmap(jax.grad(lfn), in_axes=(0, None)))
      if i == 0:
        fwd = jax.jit(jax.vmap(lfn, in_axes=(0, None)))
        act = jax.jit(jax.vmap(jax.grad(lfn, argnums=1), in_axes=(0, None)))
        times["forward"] = common.best_time(fwd, params, ds.x_train, repeats=repeats)
        times["act_grad"] = common.best_time(act, params, ds.x_train, repeats=repeats)
      times[f"grad[{vname}]"] = common.best_time(grad, params, ds.x_train, repeats=repeats)
      _write_hlo(out, out_dir if i == 0 else None, f"grad_{vname}_{name}",
                 grad.lower(params, ds.x_train).compile().as_text())
      if i == 0 and dtype == jnp.float32:
        t_hi, out["f32_grad_rel_error_vs_f64"] = _f32_precision_check(
            lfn, params, ds.x_train, repeats)
        times["grad[base,highest]"] = t_hi
    cfg = train.TrainConfig(lr=1e-3, max_steps=steps, stop_at_sat=False,
                            jam_window=10 * steps, chunk_steps=steps,
                            n_log_per_decade=1, **var)
    times[f"engine[{vname}]"] = common._time_path(
        list(range(K)), ds, net, loss, cfg, K, repeats) / steps
    if i == 0 and lean:
      naive = common.naive_runner(net, loss, steps, 1e-3, dtype)
      times["naive"] = common.best_time(naive, keys, ds.x_train, ds.y_train, repeats=repeats) / steps
    elif i == 0:
      fns = train._compiled(net, loss, cfg)
      group = fns.init_group(keys, jnp.arange(K, dtype=jnp.int32),
                             jnp.zeros(K, bool), ds, 2)
      _write_hlo(out, out_dir, f"chunk8_{name}",
                 fns.chunk.lower(group.state, group.member, ds, jnp.int32(0), 8).compile().as_text())
      naive = common.naive_runner(net, loss, steps, 1e-3, dtype)
      times["naive"] = common.best_time(naive, keys, ds.x_train, ds.y_train, repeats=repeats) / steps
      naive4 = common.naive_runner(net, loss, steps, 1e-3, dtype, unroll=4)
      times["naive[unroll4]"] = common.best_time(naive4, keys, ds.x_train, ds.y_train,
                                      repeats=repeats) / steps
      flat = flat_naive_runner(net, loss, steps, 1e-3, dtype)
      times["naive_flat"] = common.best_time(flat, keys, ds.x_train, ds.y_train,
                                  repeats=repeats) / steps
  rows = []
  for part, t in times.items():
    us = t / K * 1e6
    rec = {"seconds_per_step": t, "us_per_member_step": us,
           "member_steps_per_s": 1e6 / us}
    if part not in ("forward", "act_grad"):
      rec["tflops"] = flops / (us * 1e-6) / 1e12
      rec["frac_memory_floor"] = floor_s / (us * 1e-6)
    out["variants"][part] = rec
    rows.append((name, part, f"{us:.1f}", f"{1e6 / us:.0f}",
                 f"{rec.get('tflops', float('nan')):.2f}",
                 f"{rec.get('frac_memory_floor', float('nan')):.2f}"))
  base = out["variants"].get("engine[base]")
  if base and "naive" in out["variants"]:
    out["engine_over_naive"] = (base["us_per_member_step"] /
                                out["variants"]["naive"]["us_per_member_step"])
  return out, rows


PAPER_ROW_VARIANTS = ({}, {"wgrad_split": 64, "pad_to": 8})


def paper_row(quick: bool = False, dtypes=None, steps: int | None = None,
              repeats: int | None = None) -> dict:
  """The paper-scale row of ``bench ensemble``: engine (XLA's layout and the
  fastest H200 layout) and the naive scan, member-steps/s and the fraction
  of the memory floor, in float64 and float32 (x64 must be on for float64).

  40 steps, best of 3 on accelerators; 3 steps, one run on the CPU (a
  paper-scale member-step costs about 1 GFLOP there).
  """
  depth, width, P, K = QUICK if quick else PAPER
  cpu = jax.default_backend() == "cpu"
  steps = steps or (3 if cpu or quick else 40)
  repeats = repeats or (1 if cpu or quick else 3)
  if dtypes is None:
    dtypes = ((jnp.float64,) if jax.config.jax_enable_x64 else ()) + (jnp.float32,)
  bandwidth = copy_bandwidth((64 if cpu or quick else 1024) * 2 ** 20)
  out = {"depth": depth, "width": width, "P": P, "K": K, "steps": steps,
         "copy_bandwidth_gbs": bandwidth / 1e9, "dtypes": {}}
  for dtype in dtypes:
    res, _ = _profile_dtype(dtype, depth, width, P, K, PAPER_ROW_VARIANTS, steps,
                            repeats, None, bandwidth, lean=True)
    out["dtypes"][np.dtype(dtype).name] = {
        k: res[k] for k in ("N", "memory_floor_us_per_member_step",
                            "member_steps_per_s_at_floor", "variants", "engine_over_naive")}
  return out


def run_benchmark(out_dir: str, quick: bool = False, steps: int | None = None,
                  repeats: int = 3, dtypes=None, variants=None) -> dict:
  """Profiles the step in float64 and float32; writes ``out_dir/summary.json``."""
  if not jax.config.jax_enable_x64:
    jax.config.update("jax_enable_x64", True)
  depth, width, P, K = QUICK if quick else PAPER
  variants = tuple(variants or (QUICK_VARIANTS if quick else VARIANTS))
  steps = steps or (5 if quick else 40)
  dtypes = dtypes or (jnp.float64, jnp.float32)
  cpu = jax.default_backend() == "cpu"
  bandwidth = copy_bandwidth((64 if cpu or quick else 1024) * 2 ** 20)
  out = {"backend": jax.default_backend(), "device": str(jax.devices()[0]),
         "copy_bandwidth_gbs": bandwidth / 1e9, "steps": steps,
         "passes_per_layer": PASSES_PER_LAYER, "dtypes": {}}
  print(f"backend {out['backend']} ({out['device']}), copy bandwidth "
        f"{bandwidth / 1e9:.0f} GB/s; L = {depth}, d = h = {width}, P = {P}, "
        f"K = {K}, {steps} engine steps", flush=True)
  all_rows = []
  for dtype in dtypes:
    name = np.dtype(dtype).name
    res, rows = _profile_dtype(dtype, depth, width, P, K, variants, steps, repeats,
                               out_dir, bandwidth)
    res["matmul_tflops"] = common.matmul_flops(dtype, n=512 if quick else 4096) / 1e12
    out["dtypes"][name] = res
    all_rows += rows
    print(f"{name}: N = {res['N']}, memory floor "
          f"{res['memory_floor_us_per_member_step']:.1f} us per member-step "
          f"({res['member_steps_per_s_at_floor']:.0f}/s), dense matmul "
          f"{res['matmul_tflops']:.2f} TFLOP/s; HLO {json.dumps(res['hlo'])}; "
          f"f32 grad error {res.get('f32_grad_rel_error_vs_f64')}",
          flush=True)
  header = ("dtype", "part", "us/member-step", "member-steps/s", "TFLOP/s",
            "frac_floor")
  widths = [max(len(h), *(len(str(r[i])) for r in all_rows)) for i, h in enumerate(header)]
  fmt = "  ".join(f"{{:>{w}}}" for w in widths)
  print(fmt.format(*header))
  for r in all_rows:
    print(fmt.format(*r))
  with open(os.path.join(out_dir, "summary.json"), "w") as fh:
    json.dump(out, fh, indent=2)
  return out
