"""Benchmark of the force-balance certificate r_sub (issue 20).

    python -m lossland.scripts.bench stationarity --out_dir DIR [--quick]

(dispatched by ``lossland.scripts.bench`` to :func:`run_benchmark`). The
certificate :func:`lossland.stationarity.stationarity` runs for every member
that stops with loss > 0, after the anneal, and at each test of the Newton
finish. Its parts are module-level jits: the residual's two sums (one
program per net, the per-point gradients chunk by chunk under ``lax.map``)
and the slope gradient and slope Jacobian of padded kink indices. The
reference is the same computation as it was before: the two sums eagerly
(``jax.grad`` traced anew at every call) and a fresh ``jax.jit`` of a
closure over the kink pairs for the slopes (so every call compiles). Both run, side by side, on the same states: one net of the
cpu preset's shape (L = 2, d = 4, h = 16 with biases, P = 2 N) at
``n_states`` perturbations of one random init, whose pre-activations within
``kink_rtol`` of 0 count as kink pairs (a loose tolerance, so that each state
has tens of them, as the finished members have). Reported: the seconds per
call of each (median over the states after the first), the first call of
ours (it compiles), their ratio, and the largest difference of the r_sub
values (the two must agree to rounding). Then the slope Jacobian dg/ds
alone, warm, on the same states: ours (one point's pass per kink pair)
against ``jax.jacfwd`` of the gradient over all P points, jitted once at
module level (the certificate's Jacobian before the twenty-first session),
and their largest difference.
"""
import functools
import os
import platform
import time

import numpy as np


def _naive_r_sub(cfg, apply_fn, params, x, y, loss, kink_rtol):
  """r_sub as computed before the module-level jits: the residual's sums
  eagerly, and a fresh closure, jitted per call, for the slope gradient and
  for its Jacobian."""
  import jax
  import jax.numpy as jnp
  from jax.flatten_util import ravel_pytree
  from lossland import nets
  from lossland import stationarity as st
  delta, dell = st._point_forces(apply_fn, params, x, y, loss)
  unsat = np.asarray(delta > 0)
  grad_f = jax.vmap(lambda xi: ravel_pytree(jax.grad(
      lambda p: apply_fn(p, xi[None])[0])(params))[0])
  den = 0.0
  for i in range(0, x.shape[0], 256):
    norms = jnp.linalg.norm(grad_f(x[i:i + 256]), axis=-1)
    den += float(jnp.sum(jnp.abs(dell[i:i + 256]) * norms))
  g = float(jnp.linalg.norm(st._loss_grad(apply_fn, params, x, y, loss)))
  kinks = st.kink_pairs(cfg, params, x, unsat, kink_rtol)
  where = [np.nonzero(k) for k in kinks]
  offsets = np.cumsum([0] + [len(w[0]) for w in where])

  def grad_at(s):
    slopes = [jnp.zeros(k.shape, s.dtype).at[w].set(s[offsets[i]:offsets[i + 1]])
              for i, (k, w) in enumerate(zip(kinks, where))]
    fn = lambda p, xx: nets.apply_with_kink_slopes(cfg, p, xx, kinks, slopes)
    return st._loss_grad(fn, params, x, y, loss)
  grad_at = jax.jit(grad_at)
  exact = bool(sum(k.sum(-1) for k in kinks).max() <= 1)
  zs = nets.preactivations(cfg, params, x)[:-1]
  s0 = jnp.concatenate([(z[np.nonzero(k)] > 0).astype(x.dtype) for z, k in zip(zs, kinks)])
  _, gs = st._min_norm_slopes(grad_at, jax.jit(jax.jacfwd(grad_at)), s0, exact)
  return min(float(np.linalg.norm(gs)) / den, g / den), int(offsets[-1])


@functools.cache
def _jacfwd_slope_jac():
  """The certificate's slope Jacobian before the twenty-first session,
  jitted once: ``jax.jacfwd`` of the slope gradient over all P points."""
  import jax
  from lossland import stationarity as st

  def jac(cfg, loss, w, s_pad, x, y, off, kinks, pts, units):
    return jax.jacfwd(lambda s: st._slope_grad(cfg, loss, w, s, x, y, off, kinks, pts,
                                               units))(s_pad)
  return jax.jit(jac, static_argnums=(0, 1))


def _jacobians(cfg, apply_fn, params, x, y, loss, kink_rtol):
  """(seconds ours, seconds jacfwd, max |difference|, max |entry|) of the
  slope Jacobian at the state's kink pairs (slopes 1/2), each timed on its
  second call (the first compiles)."""
  import jax.numpy as jnp
  from jax.flatten_util import ravel_pytree
  from lossland import stationarity as st
  delta, _ = st._point_forces(apply_fn, params, x, y, loss)
  kinks = st.kink_pairs(cfg, params, x, np.asarray(delta > 0), kink_rtol)
  pk = st.padded_kinks([np.nonzero(k) for k in kinks], x.shape[0])
  args = (ravel_pytree(params)[0], jnp.full(pk.pad, 0.5, x.dtype), x, y,
          jnp.zeros((), x.dtype), [jnp.asarray(k) for k in kinks], pk.pts, pk.units)
  out = []
  for fn in (st._SLOPE_JAC, _jacfwd_slope_jac()):
    np.asarray(fn(cfg, loss, *args))
    t0 = time.perf_counter()
    out.append((np.asarray(fn(cfg, loss, *args)), time.perf_counter() - t0))
  (a, ta), (b, tb) = out
  return ta, tb, float(np.abs(a - b).max()), float(np.abs(b).max())


def preset_states(quick: bool, n_states: int, activation: str = "relu"):
  """(cfg, apply_fn, [params], x, y, loss) of the benchmark's net and states."""
  import jax
  import jax.numpy as jnp
  from jax.flatten_util import ravel_pytree
  from lossland import data, losses, nets
  cfg = nets.NetConfig(d=4, width=8 if quick else 16, depth=2, bias=True, activation=activation)
  init_fn, apply_fn = nets.make_net(cfg)
  p0 = init_fn(jax.random.key(0))
  w0, unravel = ravel_pytree(p0)
  P = 2 * nets.n_params(cfg)
  ds = data.sphere(jax.random.key(1), P, cfg.d, n_test=0)
  keys = jax.random.split(jax.random.key(2), n_states)
  states = [unravel(w0 + 0.05 * jax.random.normal(k, w0.shape, w0.dtype)) for k in keys]
  return cfg, apply_fn, states, ds.x_train, ds.y_train, losses.LossConfig(), \
      {"N": nets.n_params(cfg), "P": P, "d": cfg.d, "width": cfg.width, "depth": cfg.depth,
       "bias": cfg.bias, "dtype": str(jnp.asarray(w0).dtype)}


def run_benchmark(out_dir: str, quick: bool = False, n_states: int = 6,
                  kink_rtol: float = 3e-3) -> dict:
  """Runs the benchmark, prints a table, writes ``out_dir/summary.json``."""
  import jax
  jax.config.update("jax_enable_x64", True)
  from lossland import stationarity as st
  from lossland.scripts._cli import Progress, write_summary

  cfg, apply_fn, states, x, y, loss, shape = preset_states(quick, n_states)
  bar = Progress("bench stationarity")
  rows = []
  for i, p in enumerate(states):
    bar(i, len(states), f"state {i}")
    t0 = time.perf_counter()
    ours = st.stationarity(cfg, apply_fn, p, x, y, loss, kink_rtol=kink_rtol)
    t1 = time.perf_counter()
    ref, n_kink = _naive_r_sub(cfg, apply_fn, p, x, y, loss, kink_rtol)
    t2 = time.perf_counter()
    jac, jac_ref, jac_diff, jac_max = _jacobians(cfg, apply_fn, p, x, y, loss, kink_rtol)
    rows.append({"n_kink": ours.n_kink, "n_kink_reference": n_kink, "exact": ours.exact,
                 "n_unsat": ours.n_unsat, "r_sub": ours.force_residual,
                 "r_sub_reference": ref, "seconds": t1 - t0, "seconds_reference": t2 - t1,
                 "jacobian_seconds": jac, "jacobian_seconds_jacfwd": jac_ref,
                 "jacobian_max_abs_difference": jac_diff, "jacobian_max_abs": jac_max})
  bar(len(states), len(states), "done")
  bar.close()
  warm = rows[1:]
  ours_s = float(np.median([r["seconds"] for r in warm]))
  ref_s = float(np.median([r["seconds_reference"] for r in warm]))
  jac_s = float(np.median([r["jacobian_seconds"] for r in rows]))
  jac_ref_s = float(np.median([r["jacobian_seconds_jacfwd"] for r in rows]))
  out = {"quick": quick, "kink_rtol": kink_rtol, **shape, "rows": rows,
         "seconds_per_call": ours_s, "seconds_per_call_reference": ref_s,
         "seconds_first_call": rows[0]["seconds"],
         "speedup": ref_s / ours_s,
         "max_abs_r_sub_difference": float(max(abs(r["r_sub"] - r["r_sub_reference"])
                                               for r in rows)),
         "jacobian_seconds": jac_s, "jacobian_seconds_jacfwd": jac_ref_s,
         "jacobian_speedup": jac_ref_s / jac_s,
         "jacobian_max_rel_difference": float(max(r["jacobian_max_abs_difference"]
                                                  / r["jacobian_max_abs"] for r in rows)),
         "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
         "platform": platform.platform(), "jax": jax.__version__}
  lines = [f"r_sub of one net, N={shape['N']}, P={shape['P']} (L={shape['depth']}, "
           f"h={shape['width']}, biases), {len(rows)} states, kink_rtol {kink_rtol:g}:",
           f"  {'state':>5s} {'kinks':>6s} {'exact':>6s} {'ours s':>8s} {'fresh-jit s':>12s} "
           f"{'r_sub':>10s}"]
  for i, r in enumerate(rows):
    lines.append(f"  {i:5d} {r['n_kink']:6d} {str(r['exact']):>6s} {r['seconds']:8.3f} "
                 f"{r['seconds_reference']:12.3f} {r['r_sub']:10.3e}")
  lines.append(f"  per call after the first: {ours_s:.3f} s against {ref_s:.3f} s "
               f"(x{out['speedup']:.1f}); r_sub agree to "
               f"{out['max_abs_r_sub_difference']:.1e}")
  lines.append(f"  slope Jacobian dg/ds (median, warm): {jac_s:.4f} s against jax.jacfwd over "
               f"all points {jac_ref_s:.4f} s (x{out['jacobian_speedup']:.1f}); they agree to "
               f"{out['jacobian_max_rel_difference']:.1e} relative")
  return write_summary(out_dir, out, lines)
