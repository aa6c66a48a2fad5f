"""Benchmark of the Newton finish's derivatives (issue 20).

    python -m lossland.scripts.bench finish --out_dir DIR [--quick]

(dispatched by ``lossland.scripts.bench`` to :func:`run_benchmark`). Each
iteration of :func:`lossland.optim.kink_newton.finish` needs the frozen
loss's dense Hessian, the Jacobian of the kink pre-activations and, with the
hinge model, the margins' Jacobian. Ours: the Hessian and the margins'
Jacobian layer by layer (:mod:`lossland.frozen_derivs`), the kink rows
by reverse mode. The reference: ``jax.hessian`` and ``jax.jacfwd``, as the
finish computed them before (``layerwise=False``). Both run side by side on
the same states: one net of the cpu preset's shape (L = 2, d = 4, h = 16 with
biases, P = 2 N) at ``n_states`` perturbations of one random init, with a
loose kink tolerance so that the finish holds tens of kink pairs, as on the
finished members. Reported per state: the seconds of one call of the parts
(median of 5, after a compiling call), the largest difference of the
Hessians, and a whole finish of ``n_iter`` iterations with each (seconds
of its second run, so that neither pays for compiling; final loss); then the
ratios of the medians.

The same again for the smooth control's finish (``scripts/decay_control.py``):
the net with softplus units at the same states, the finish on the loss plus
``decay`` |w|^2 / 2, whose Hessian carries the activation's phi'' term
(:func:`lossland.frozen_derivs.curvature_hessian`); keys ``smooth_*``.
"""
import os
import platform
import time

import numpy as np


def _parts_seconds(kn, cfg, loss, w, fr, x, y, layerwise, repeat=5, decay=0.0):
  """(median seconds of one _active_parts call, its Hessian)."""
  import jax.numpy as jnp
  z_scale = [np.ones(p.shape[1]) for p in fr.pattern]
  s_real = np.full(fr.real.size, 0.5)
  call = lambda: kn._active_parts(cfg, loss, jnp.asarray(w), fr, s_real, x, y, 0.0, z_scale,
                                  decay=decay, layerwise=layerwise)
  out = call()
  times = []
  for _ in range(repeat):
    t = time.perf_counter()
    out = call()
    times.append(time.perf_counter() - t)
  return float(np.median(times)), out[1]


def _rows(kn, cfg, apply_fn, states, x, y, loss, bar, n_iter, kink_rtol, decay, done=0,
          total=None):
  """One row per state: parts and finish, layer by layer and by the reference
  (the finish's loss is the hinge's, without the decay); ``done`` of
  ``total`` states are on the progress bar before these."""
  from jax.flatten_util import ravel_pytree
  from lossland import losses
  hinge = lambda p: float(0.5 * np.sum(np.maximum(np.asarray(
      losses.margins(apply_fn(p, x), y, loss.epsilon)), 0) ** 2))
  rows = []
  for i, p in enumerate(states):
    bar(done + i, total or len(states), f"{cfg.activation} state {i}")
    st = kn._Search(cfg, p, x, y, loss, None, kink_rtol, 1e-9, 3)
    fr = kn._frozen(st.pattern, kn._kink_idx(st.kinks), x.shape[0])
    w = ravel_pytree(p)[0]
    ours_s, H = _parts_seconds(kn, cfg, loss, w, fr, x, y, True, decay=decay)
    ref_s, H_ref = _parts_seconds(kn, cfg, loss, w, fr, x, y, False, decay=decay)
    row = {"n_kink_pairs": int(fr.real.size), "parts_seconds": ours_s,
           "parts_seconds_reference": ref_s,
           "hessian_max_rel_difference": float(np.max(np.abs(H - H_ref))
                                               / np.max(np.abs(H_ref)))}
    for name, layerwise in (("", True), ("_reference", False)):
      run = lambda: kn.finish(cfg, p, x, y, loss, tol=1e-10, max_iter=n_iter,
                              kink_rtol=kink_rtol, layerwise=layerwise, weight_decay=decay)
      run()  # compiles what this finish meets (each kink bucket is a program)
      t = time.perf_counter()
      out = run()
      row["finish_seconds" + name] = time.perf_counter() - t
      row["finish_loss" + name] = hinge(out.params)
      row["finish_iterations" + name] = out.n_iter
    rows.append(row)
  return rows


def _medians(rows, prefix=""):
  med = lambda key: float(np.median([r[key] for r in rows[1:] or rows]))
  out = {prefix + k: med(k) for k in ("parts_seconds", "parts_seconds_reference",
                                      "finish_seconds", "finish_seconds_reference")}
  out[prefix + "max_hessian_rel_difference"] = max(r["hessian_max_rel_difference"]
                                                   for r in rows)
  out[prefix + "max_finish_loss_rel_difference"] = max(
      abs(r["finish_loss"] - r["finish_loss_reference"]) / r["finish_loss_reference"]
      for r in rows)
  out[prefix + "parts_speedup"] = (out[prefix + "parts_seconds_reference"]
                                   / out[prefix + "parts_seconds"])
  out[prefix + "finish_speedup"] = (out[prefix + "finish_seconds_reference"]
                                    / out[prefix + "finish_seconds"])
  return out


def _table(rows, out, prefix=""):
  lines = [f"  {'state':>5s} {'pairs':>6s} {'parts s':>8s} {'ref s':>8s} {'|dH|/|H|':>9s} "
           f"{'finish s':>9s} {'ref s':>8s} {'loss':>12s} {'ref loss':>12s}"]
  for i, r in enumerate(rows):
    lines.append(
        f"  {i:5d} {r['n_kink_pairs']:6d} {r['parts_seconds']:8.4f} "
        f"{r['parts_seconds_reference']:8.4f} {r['hessian_max_rel_difference']:9.1e} "
        f"{r['finish_seconds']:9.2f} {r['finish_seconds_reference']:8.2f} "
        f"{r['finish_loss']:12.6f} {r['finish_loss_reference']:12.6f}")
  lines.append(f"  medians{' after the first state' if len(rows) > 1 else ''}: parts "
               f"{out[prefix + 'parts_seconds']:.4f} s against "
               f"{out[prefix + 'parts_seconds_reference']:.4f} s "
               f"(x{out[prefix + 'parts_speedup']:.1f}); finish "
               f"{out[prefix + 'finish_seconds']:.2f} s against "
               f"{out[prefix + 'finish_seconds_reference']:.2f} s "
               f"(x{out[prefix + 'finish_speedup']:.1f})")
  return lines


def run_benchmark(out_dir: str, quick: bool = False, n_states: int = 4,
                  n_iter: int = 30, kink_rtol: float = 3e-3, decay: float = 1e-4) -> dict:
  """Runs the benchmark, prints a table, writes ``out_dir/summary.json``."""
  import jax
  jax.config.update("jax_enable_x64", True)
  from lossland.optim import kink_newton as kn
  from lossland.scripts._cli import Progress, write_summary
  from lossland.scripts.bench_stationarity import preset_states

  if quick:
    n_states, n_iter = min(n_states, 2), min(n_iter, 5)
  cfg, apply_fn, states, x, y, loss, shape = preset_states(quick, n_states)
  bar, total = Progress("bench finish"), 2 * len(states)
  rows = _rows(kn, cfg, apply_fn, states, x, y, loss, bar, n_iter, kink_rtol, 0.0,
               total=total)
  scfg, s_apply, s_states = preset_states(quick, n_states, "softplus")[:3]
  s_rows = _rows(kn, scfg, s_apply, s_states, x, y, loss, bar, n_iter, kink_rtol, decay,
                 done=len(states), total=total)
  bar(total, total, "done")
  bar.close()
  out = {"quick": quick, "kink_rtol": kink_rtol, "n_iter": n_iter, **shape, "rows": rows,
         **_medians(rows), "smooth_activation": "softplus", "smooth_weight_decay": decay,
         "smooth_rows": s_rows, **_medians(s_rows, "smooth_"),
         "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
         "platform": platform.platform(), "jax": jax.__version__}
  lines = [f"the finish's parts of one net, N={shape['N']}, P={shape['P']} (L={shape['depth']}, "
           f"h={shape['width']}, biases), {len(rows)} states, kink_rtol {kink_rtol:g}, "
           f"finishes of {n_iter} iterations:", *_table(rows, out),
           f"the same states with softplus units, the loss plus {decay:g} |w|^2 / 2 "
           f"(no kinks; the Hessian with phi''):", *_table(s_rows, out, "smooth_")]
  return write_summary(out_dir, out, lines)
