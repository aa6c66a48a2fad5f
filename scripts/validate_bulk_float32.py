"""Validates the float32 bulk + float64 finish (job option bulk_float32) on phase cells.

    python scripts/validate_bulk_float32.py --out runs/bulk32/validation.json \
        [--depths 2,3 --widths 12,10 --p_over_n 1.75,2.25,2.75 --n_seeds 6]

Each cell (sphere data, d = h, the phase cpu preset's protocol: Adam 1e-2
divided by 10 every 2e4 steps to 1e-4, at most 6e4 steps, then the L-BFGS
polish) is trained twice by the ensemble job with the same seeds: all in
float64, and with the Adam stage in float32 and the polish in float64. The
script compares every member's class (observables.member_classes: sat,
jammed, ...) and, per cell, the mean N_Delta/N of the members jammed in both
runs. Criteria of issue 18 item 3: the same class for at least 95 % of the
members, and |mean N_Delta/N (bulk) - mean N_Delta/N (float64)| <= 0.02 in
every cell. Prints a table, writes the per-member comparison as JSON, exits 0
if both criteria hold, 1 if not, 2 on bad input.

The control: the all-float64 run again with ``pad_to=8`` (the same function
and training, with sums in another order: rounding differences only). Its
agreement with the float64 run is what rounding alone does to the classes
near the transition, where trajectories are chaotic; the float32 bulk can
only be judged against it.
"""
import argparse
import json
import os
import sys
import tempfile
import time


def _ints(text):
  return [int(x) for x in text.split(",") if x]


def _floats(text):
  return [float(x) for x in text.split(",") if x]


def run_cell(depth, width, p_over_n, n_seeds, bulk, out_dir, max_steps=None, pad_to=0):
  from lossland import nets
  from lossland.experiments import job
  from lossland.configs import phase as presets
  p = presets.cpu().job
  N = nets.n_weights(width, width, depth)
  v = job.defaults()
  v.update(dataset="sphere", d=width, width=width, depth=depth,
           P=int(round(p_over_n * N)), n_test=0, n_seeds=n_seeds, seed=0,
           max_steps=max_steps or p["max_steps"], lr=p["lr"], schedule=p["schedule"],
           decay_every=p["decay_every"], decay_factor=p["decay_factor"],
           min_lr=p["min_lr"], jam_window=p["jam_window"], jam_rtol=p["jam_rtol"],
           jam_after_decays=p["jam_after_decays"], optimizer=p["optimizer"],
           polish=p["polish"], polish_steps=p["polish_steps"],
           polish_jam_window=p["polish_jam_window"],
           polish_jam_rtol=p["polish_jam_rtol"], x64=True, plots=False,
           resume=False, out_dir=out_dir, bulk_float32=bulk, pad_to=pad_to)
  from lossland.experiments import sweep
  t = time.time()
  try:
    with open(os.devnull, "w") as null:
      _, summary = job.run_ensemble_job(job.validate(v), progress=False, stdout=null)
  finally:
    # each cell compiles its own programs: drop them, as the sweep engine does
    # (vm.max_map_count, lossland.sweep.release_compiled)
    sweep.release_compiled()
  return summary, time.time() - t, N


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", required=True, help="JSON file to write")
  ap.add_argument("--depths", default="2,3")
  ap.add_argument("--widths", default="12,10")
  ap.add_argument("--p_over_n", default="1.75,2.25,2.75")
  ap.add_argument("--n_seeds", type=int, default=6)
  ap.add_argument("--max_steps", type=int, default=None,
                  help="Adam steps (default: the cpu preset's 60000)")
  a = ap.parse_args(argv)
  try:
    depths, widths, xs = _ints(a.depths), _ints(a.widths), _floats(a.p_over_n)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if len(depths) != len(widths) or not xs or a.n_seeds <= 0:
    print("error: --depths and --widths need the same length, --p_over_n and "
          "--n_seeds must be non-empty/positive", file=sys.stderr)
    return 2
  import jax
  jax.config.update("jax_enable_x64", True)
  cells, n_same, n_all, worst, n_same_ctl = [], 0, 0, 0.0, 0
  print(f"{'L':>2} {'h':>3} {'P/N':>5} {'same class':>10} {'control':>7} {'nd/N f64':>9} "
        f"{'nd/N bulk':>9} {'t f64[s]':>8} {'t bulk[s]':>9}", flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    for L, h in zip(depths, widths):
      for x in xs:
        ref, t_ref, N = run_cell(L, h, x, a.n_seeds, False, os.path.join(tmp, "f64"),
                                 a.max_steps)
        blk, t_blk, _ = run_cell(L, h, x, a.n_seeds, True, os.path.join(tmp, "bulk"),
                                 a.max_steps)
        ctl, _, _ = run_cell(L, h, x, a.n_seeds, False, os.path.join(tmp, "ctl"),
                             a.max_steps, pad_to=8)
        pairs = list(zip(ref["members"], blk["members"]))
        same = [m0["class"] == m1["class"] for m0, m1 in pairs]
        same_ctl = [m0["class"] == m1["class"] for m0, m1 in zip(ref["members"], ctl["members"])]
        n_same_ctl += sum(same_ctl)
        both = [(m0["n_delta_over_n"], m1["n_delta_over_n"]) for m0, m1 in pairs
                if m0["class"] == m1["class"] == "jammed"]
        nd0 = sum(b[0] for b in both) / len(both) if both else None
        nd1 = sum(b[1] for b in both) / len(both) if both else None
        if both:
          worst = max(worst, abs(nd1 - nd0))
        n_same += sum(same)
        n_all += len(same)
        cells.append({"depth": L, "width": h, "N": N, "p_over_n": x,
                      "classes_f64": [m["class"] for m in ref["members"]],
                      "classes_bulk": [m["class"] for m in blk["members"]],
                      "classes_control": [m["class"] for m in ctl["members"]],
                      "n_delta_over_n_f64": [m["n_delta_over_n"] for m in ref["members"]],
                      "n_delta_over_n_bulk": [m["n_delta_over_n"] for m in blk["members"]],
                      "steps_f64": [m["steps"] for m in ref["members"]],
                      "steps_bulk": [m["steps"] for m in blk["members"]],
                      "mean_nd_over_n_jammed_f64": nd0, "mean_nd_over_n_jammed_bulk": nd1,
                      "seconds_f64": t_ref, "seconds_bulk": t_blk})
        fmt = lambda z: "   -" if z is None else f"{z:.3f}"
        print(f"{L:>2} {h:>3} {x:>5.2f} {sum(same):>4}/{len(same):<5} "
              f"{sum(same_ctl):>3}/{len(same_ctl):<3} {fmt(nd0):>9} "
              f"{fmt(nd1):>9} {t_ref:>8.1f} {t_blk:>9.1f}", flush=True)
  frac = n_same / n_all
  ok = frac >= 0.95 and worst <= 0.02
  out = {"cells": cells, "fraction_same_class": frac,
         "fraction_same_class_control": n_same_ctl / n_all,
         "max_abs_diff_mean_nd_over_n_jammed": worst, "passed": ok,
         "criteria": "same class >= 95 % of members; |mean nd/N diff| <= 0.02 per cell"}
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  with open(a.out, "w") as fh:
    json.dump(out, fh, indent=2)
  print(f"control (float64 with pad_to=8, rounding only): {n_same_ctl}/{n_all} same class")
  print(f"same class: {n_same}/{n_all} = {frac:.3f}; largest |mean nd/N diff| "
        f"{worst:.4f}; {'PASSED' if ok else 'FAILED'}; {a.out}")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
