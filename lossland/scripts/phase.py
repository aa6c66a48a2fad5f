r"""Jamming phase diagram on random data (1809.09349): P*(N) per depth, N_Delta/N jump, theta, gamma.

    python -m lossland.scripts.phase --preset cpu
    python -m lossland.scripts.phase --preset gpu --out_dir runs/phase_gpu     # one GPU
    python -m lossland.scripts.phase --preset paper --out_dir runs/phase_paper [--shard 0/4]
    python -m lossland.scripts.phase --preset cpu --sizes 300,600   # finite-size check

For each depth L a network of fixed width (N weights) is trained on P random
points for a grid of P/N (ensembles of ``--n_seeds`` members, one sweep cell
each); the grid is then extended until the transition is bracketed and bisected
(``--rounds``), and the fraction sat / (sat + jammed) is fitted by a logistic
curve (lossland.fits.fit_threshold: maximum likelihood, profile-likelihood
CI). Limbo, dead, stalled and not-converged members are counted, never as
jammed. The cells live under ``<out_dir>/sweep`` (lossland.sweep: a second
invocation with the same out_dir skips finished cells; ``--shard I/N`` runs
the I-th part of the initial grid only, no bisection, and a final unsharded
invocation bisects and analyses). The result is a run directory
``<out_dir>/phase/<UTC time>_<hash>/`` with summary.json (per_depth,
depth_spread, theta, theta_ci, gamma, gamma_ci, ...) and figures.

``--workers N`` runs the cells of each batch (the initial grid, each round's
new cells) in N processes on the same sweep directory (N - 1 subprocesses
plus this one; each cell runs once, in whichever process takes its lock
first, with the same seeds, so the records are those of ``--workers 1``).

Presets (the flags given explicitly override them):

* ``cpu``: sphere data, L = 2, 3, 4 with d = h = 12, 10, 9 (N = 300, 310,
  333), P/N in {1.25, 1.75, 2.25} then 2 bisection rounds, 6 members, Adam
  lr 1e-2 divided by 10 every 20k steps down to 1e-4, at most 60k steps
  (hand-over at 1e-4 once the best loss gains < 0.1% in 2000 steps), then
  an L-BFGS polish of every member not sat (at most 50k evaluations; jammed
  when the best loss gains < 1e-6 in 1000 evaluations or the line search
  finds no descent), 2 workers (6 min 15 s wall on an idle 2-core machine
  with a warm compilation cache, docs/jamming.md).
* ``paper``: L = 2, d = h = 62 (N = 7750); L = 3, d = h = 51 (N = 7854);
  L = 5, d = h = 40 (N = 8040); P/N 2.0 to 4.0 by 0.25; 8 members; Adam
  lr 1e-4 divided by 10 every 250k steps, 2M steps (the authors' adam0).
* ``gpu``: the paper's three nets (N = 7750, 7854, 8040) with the cpu
  preset's protocol (Adam 1e-2 with decays, 60k steps, then the L-BFGS
  polish), P/N in {2.5, 3.0, 3.5} then 2 bisection rounds, 8 members, and
  the engine layout measured fastest on an H200 (``wgrad_split=64``,
  ``pad_to=8``: 168 us per member-step in float64 at L = 3, docs/engine.md).
  Not yet run: from that step cost a cell takes about 1.5 min of Adam plus
  up to about as long of polish, so the 15 to 21 cells of a run take about
  30 to 50 min, run one after another (cells are not yet batched into one
  program, issue 18 item 2).
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

from absl import flags

from lossland.scripts import _cli

PRESETS = {
    # docs/jamming.md: fixed step decays (a plateau schedule decayed the lr of
    # slowly descending L = 3 members early and stopped them jammed); a stall
    # at a large lr is Adam's noise floor, so members stop jammed only at the
    # last lr level (train.final_lr_level).
    # Adam hands over to an L-BFGS polish (job option polish) once it stalls
    # at its last lr level: per gradient evaluation L-BFGS descends much
    # faster there (docs/jamming.md, the probes).
    "cpu": dict(depths=[2, 3, 4], widths=[12, 10, 9], p_over_n=[1.25, 1.75, 2.25],
                rounds=2, n_seeds=6, max_steps=60_000, lr=1e-2, schedule="step",
                decay_every=20_000, decay_factor=0.1, min_lr=1e-4,
                jam_window=2000, jam_rtol=1e-3, jam_after_decays=True,
                optimizer="adam", polish="lbfgs", polish_steps=50_000,
                polish_jam_window=1000, polish_jam_rtol=1e-6),
    # the paper's nets at the cpu preset's protocol, with the fastest engine
    # layout of the H200 profile (docs/engine.md); not yet run
    "gpu": dict(depths=[2, 3, 5], widths=[62, 51, 40], p_over_n=[2.5, 3.0, 3.5],
                rounds=2, n_seeds=8, max_steps=60_000, lr=1e-2, schedule="step",
                decay_every=20_000, decay_factor=0.1, min_lr=1e-4,
                jam_window=2000, jam_rtol=1e-3, jam_after_decays=True,
                optimizer="adam", polish="lbfgs", polish_steps=50_000,
                polish_jam_window=1000, polish_jam_rtol=1e-6,
                wgrad_split=64, pad_to=8),
    "paper": dict(depths=[2, 3, 5], widths=[62, 51, 40],
                  p_over_n=[2.0, 2.25, 2.5, 2.75, 3.0, 3.25, 3.5, 3.75, 4.0],
                  rounds=2, n_seeds=8, max_steps=2_000_000, lr=1e-4,
                  schedule="step", jam_window=100_000, jam_after_decays=True,
                  optimizer="adam"),
}

# Job options of the --net choices (docs/jamming.md, "The authors' networks").
NETS = {
    "default": {},
    "authors": dict(parametrization="standard", init="orthogonal_gain1",
                    normalize_activation=False, bias=True),
}

_PRESET = flags.DEFINE_enum("preset", None, list(PRESETS), "Preset grid (flags override).")
_DEPTHS = flags.DEFINE_list("depths", None, "Depths L (hidden layers).")
_WIDTHS = flags.DEFINE_list("widths", None, "Width h per depth (d = h unless --d).")
_N = flags.DEFINE_list("N", None, "Target weight count per depth (sets the width; instead of --widths).")
_SIZES = flags.DEFINE_list(
    "sizes", None, "Finite-size check: target weight counts N; the whole search runs at "
    "each (d = h per depth, or --d), one phase run directory per size, plus a phase_sizes "
    "run directory with P*/N and the depth spread vs N (instead of --N / --widths).")
_D = flags.DEFINE_integer("d", None, "Input dimension (default: d = h per depth).")
_P_OVER_N = flags.DEFINE_list("p_over_n", None, "Initial grid of P/N.")
_ROUNDS = flags.DEFINE_integer("rounds", None, "Bracketing/bisection rounds after the grid.")
_N_SEEDS = flags.DEFINE_integer("n_seeds", None, "Members per cell.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of member 0.")
_DATASET = flags.DEFINE_enum("dataset", "sphere", ["sphere", "digits", "mnist", "fashion_mnist", "cifar10", "npz"],
                             "Training data.")
_DATA_FILE = flags.DEFINE_string("data_file", None, "--dataset npz file.")
_OPTIMIZER = flags.DEFINE_string("optimizer", None, "Optimizer of the ensemble job.")
_LR = flags.DEFINE_float("lr", None, "Learning rate.")
_SCHEDULE = flags.DEFINE_string("schedule", None, "Learning-rate schedule.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", None, "Maximum steps per member.")
_JAM_WINDOW = flags.DEFINE_integer("jam_window", None, "Jamming rule window (steps).")
_DECAY_EVERY = flags.DEFINE_integer("decay_every", None, "Steps between lr decays (--schedule step; default: the job's, 250k).")
_DECAY_FACTOR = flags.DEFINE_float("decay_factor", None, "lr decay factor (step and plateau schedules; default: the job's, 0.1).")
_PATIENCE = flags.DEFINE_integer("plateau_patience", None, "Steps per plateau test (--schedule plateau; default: the job's, 1000).")
_MIN_LR = flags.DEFINE_float("min_lr", None, "lr floor; with --schedule plateau a member can stop jammed only at this lr (default: the job's, 1e-7).")
_JAM_AFTER = flags.DEFINE_boolean("jam_after_decays", None, "With --schedule step, stop jammed only at the last lr level (default: on in the presets).")
_JAM_RTOL = flags.DEFINE_float("jam_rtol", None, "Jamming rule: relative decrease of the best loss over a window below which it stops (default: the job's, 1e-3).")
_POLISH = flags.DEFINE_enum("polish", None, ["none", "lbfgs"], "Continue every member that did not stop sat with this optimizer (default: lbfgs in the cpu preset, else none).")
_POLISH_STEPS = flags.DEFINE_integer("polish_steps", None, "Most gradient evaluations of the polish (default: the preset's or the job's).")
_POLISH_WINDOW = flags.DEFINE_integer("polish_jam_window", None, "Polish: jamming-rule window in evaluations (default: the preset's or the job's).")
_POLISH_RTOL = flags.DEFINE_float("polish_jam_rtol", None, "Polish: jamming-rule relative decrease (default: the preset's or the job's).")
_NET = flags.DEFINE_enum(
    "net", None, ["default", "authors"],
    "Network: default (lossland's: NTK parametrization, ReLU*sqrt2, no biases, normal init) or "
    "authors (nn_jamming's: standard parametrization, plain ReLU, biases zero at init, "
    "orthogonal gain 1; nets.authors_net). Default: the preset's, else default.")
_BIAS = flags.DEFINE_boolean("bias", None, "Trainable biases, zero at init (overrides --net).")
_X64 = flags.DEFINE_boolean("x64", True, "float64 (recommended near jamming).")
_WGRAD = flags.DEFINE_integer("wgrad_split", None, "Engine: split-K weight gradients over this many chunks (job option wgrad_split; default: the preset's, else 0).")
_PAD_TO = flags.DEFINE_integer("pad_to", None, "Engine: pad widths to a multiple of this inside the step (job option pad_to; default: the preset's, else 0).")
_BULK32 = flags.DEFINE_boolean("bulk_float32", None, "Train each cell's first stage in float32 and its polish in float64 (job option bulk_float32; default: the job's, off).")
_OUT_DIR = flags.DEFINE_string("out_dir", "runs/phase_run", "Sweep cells and the phase run directory go here.")
_SHARD = flags.DEFINE_string("shard", "0/1", "I/N: run the I-th of N parts of the initial grid only.")
_N_BOOT = flags.DEFINE_integer("n_boot", 500, "Bootstrap replicates of the exponent fits.")
_PLOTS = flags.DEFINE_boolean("plots", True, "Write PNG figures.")
_WORKERS = flags.DEFINE_integer(
    "workers", None, "Processes that run the cells of each batch (the initial grid, each "
    "bisection round's new cells) concurrently; default 1, with --preset cpu on a CPU "
    "min(2, cpu count). The results do not depend on it. On a GPU the workers share the "
    "device: start with XLA_PYTHON_CLIENT_PREALLOCATE=false.")


def _ints(name, vals):
  try:
    out = [int(v) for v in vals]
  except ValueError:
    raise _cli.UsageError(f"--{name} must be integers, got {','.join(vals)}") from None
  if any(v <= 0 for v in out):
    raise _cli.UsageError(f"--{name} must be positive, got {','.join(vals)}")
  return out


def _settings():
  p = dict(PRESETS[_PRESET.value]) if _PRESET.value else {}
  depths = _ints("depths", _DEPTHS.value) if _DEPTHS.value else p.get("depths")
  if not depths:
    raise _cli.UsageError("give --preset or --depths")
  sizes = None
  if _SIZES.value:
    if _N.value or _WIDTHS.value:
      raise _cli.UsageError("--sizes replaces --N and --widths; give one of them")
    sizes = sorted(set(_ints("sizes", _SIZES.value)))
  if sizes:
    widths = _widths_for_n(sizes[0], depths)
  elif _N.value:
    ns = _ints("N", _N.value)
    if len(ns) == 1:
      ns = ns * len(depths)
    if len(ns) != len(depths):
      raise _cli.UsageError(f"--N needs 1 or {len(depths)} values, got {len(ns)}")
    widths = [_widths_for_n(n, [L])[0] for n, L in zip(ns, depths)]
  elif _WIDTHS.value:
    widths = _ints("widths", _WIDTHS.value)
    if len(widths) == 1:
      widths = widths * len(depths)
  else:
    widths = p.get("widths")
  if not widths or len(widths) != len(depths):
    raise _cli.UsageError(f"need one width per depth ({len(depths)}): --widths or --N")
  try:
    x = [float(v) for v in (_P_OVER_N.value or p.get("p_over_n") or [])]
  except ValueError:
    raise _cli.UsageError(f"--p_over_n must be numbers, got {','.join(_P_OVER_N.value)}") from None
  if not x or any(v <= 0 for v in x):
    raise _cli.UsageError("--p_over_n needs positive values")
  try:
    i, n = (int(t) for t in _SHARD.value.split("/"))
    if not (n >= 1 and 0 <= i < n):
      raise ValueError
  except ValueError:
    raise _cli.UsageError(f"--shard must be I/N with 0 <= I < N, got {_SHARD.value}") from None
  def pick(fl, key, default):
    if fl.value is not None:
      return fl.value
    return p[key] if key in p else default

  s = {"depths": depths, "widths": widths, "sizes": sizes, "p_over_n": x, "shard": (i, n),
       "net": pick(_NET, "net", "default"),
       "rounds": pick(_ROUNDS, "rounds", 2), "n_seeds": pick(_N_SEEDS, "n_seeds", 8),
       "max_steps": pick(_MAX_STEPS, "max_steps", 20_000), "lr": pick(_LR, "lr", 1e-2),
       "schedule": pick(_SCHEDULE, "schedule", "constant"),
       "jam_window": pick(_JAM_WINDOW, "jam_window", 2000),
       "optimizer": pick(_OPTIMIZER, "optimizer", "adam")}
  # Optional schedule settings: unset (None) means the ensemble job's default.
  for fl, key in ((_DECAY_EVERY, "decay_every"), (_DECAY_FACTOR, "decay_factor"),
                  (_PATIENCE, "plateau_patience"), (_MIN_LR, "min_lr"),
                  (_JAM_RTOL, "jam_rtol"), (_JAM_AFTER, "jam_after_decays"),
                  (_POLISH, "polish"), (_POLISH_STEPS, "polish_steps"),
                  (_POLISH_WINDOW, "polish_jam_window"), (_POLISH_RTOL, "polish_jam_rtol"),
                  (_BULK32, "bulk_float32"), (_WGRAD, "wgrad_split"), (_PAD_TO, "pad_to")):
    s[key] = pick(fl, key, None)
  s["bias"] = pick(_BIAS, "bias", None)
  for k in ("rounds",):
    if s[k] < 0:
      raise _cli.UsageError(f"--{k} must be >= 0, got {s[k]}")
  for k in ("n_seeds", "max_steps", "jam_window"):
    if s[k] <= 0:
      raise _cli.UsageError(f"--{k} must be positive, got {s[k]}")
  if _N_BOOT.value < 0:
    raise _cli.UsageError(f"--n_boot must be >= 0, got {_N_BOOT.value}")
  if s["lr"] <= 0:
    raise _cli.UsageError(f"--lr must be positive, got {s['lr']}")
  if _WORKERS.value is not None:
    s["workers"] = _WORKERS.value
  else:
    import jax
    # Several processes on one accelerator would each preallocate its memory.
    on_cpu = jax.default_backend() == "cpu"
    s["workers"] = min(2, os.cpu_count() or 1) if _PRESET.value == "cpu" and on_cpu else 1
  if s["workers"] <= 0:
    raise _cli.UsageError(f"--workers must be positive, got {s['workers']}")
  return s


# A worker process: reads {"cells", "sweep_dir", "x64"} as JSON on stdin and
# runs every cell that no other process holds (sweep.run_sweep's per-cell
# flock), then exits; it exits at once when its parent dies.
_WORKER_CODE = "from lossland.scripts import phase; phase._worker()"


def _worker():
  """Entry of a worker process (see :func:`_run_parallel`)."""
  parent = os.getppid()

  def watch():
    while os.getppid() == parent:
      time.sleep(1.0)
    os._exit(1)
  threading.Thread(target=watch, daemon=True).start()
  spec = json.load(sys.stdin)
  from lossland.scripts import _cli as cli
  cli.enable_compilation_cache()
  import jax
  jax.config.update("jax_enable_x64", bool(spec["x64"]))
  from lossland import sweep
  sweep.run_sweep(spec["cells"], spec["sweep_dir"], progress=False)


def _run_parallel(cells, sweep_dir, n_workers, x64, say, run_sweep):
  """Runs ``cells`` in ``n_workers`` processes; returns their records in order.

  Workers 1..n-1 are subprocesses running ``sweep.run_sweep`` on all cells;
  the per-cell lock makes each cell run exactly once, taken by whichever
  process is free first (every cell's seeds come from its options, so the
  results are those of one process). This process then runs
  ``run_sweep(cells)`` itself: it runs what no worker holds, waits for the
  cells the workers hold, and reruns anything a failed worker left. A
  worker's failure is reported as one line; any exit (Ctrl-C included) of
  this process kills the workers.
  """
  n_sub = min(n_workers, len(cells)) - 1
  procs = []
  try:
    for _ in range(n_sub):
      err = tempfile.TemporaryFile(mode="w+")
      # On an accelerator the processes share one device: no preallocation in
      # the workers (start the parent with XLA_PYTHON_CLIENT_PREALLOCATE=false too).
      env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE=os.environ.get(
          "XLA_PYTHON_CLIENT_PREALLOCATE", "false"))
      proc = subprocess.Popen([sys.executable, "-c", _WORKER_CODE], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=err, text=True, env=env)
      procs.append((proc, err))
      proc.stdin.write(json.dumps({"cells": cells, "sweep_dir": sweep_dir, "x64": x64}))
      proc.stdin.close()
    out = run_sweep(cells)
    for k, (proc, err) in enumerate(procs):
      if proc.wait() != 0:
        err.seek(0)
        lines = [l for l in err.read().splitlines() if l.strip()]
        say(f"worker {k + 1} failed (exit {proc.returncode}): "
            f"{lines[-1] if lines else 'no message'}; its cells ran here")
    return out
  finally:
    for proc, err in procs:
      if proc.poll() is None:
        proc.terminate()
        try:
          proc.wait(10)
        except subprocess.TimeoutExpired:
          proc.kill()
          proc.wait()
      err.close()


def _widths_for_n(n_target, depths):
  """Per depth, the width whose N is nearest n_target (d = h, or --d)."""
  from lossland import nets
  if _D.value:
    return [nets.width_for_n(n_target, _D.value, L) for L in depths]
  return [_d_eq_h(n_target, L) for L in depths]


def _d_eq_h(n_target, depth):
  # d = h: N = L h^2 + h
  from lossland import nets
  return min(range(1, 2000), key=lambda h: abs(nets.n_weights(h, h, depth) - n_target))


def main(argv):
  if len(argv) > 1:
    raise _cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  s = _settings()
  import jax
  jax.config.update("jax_enable_x64", bool(_X64.value))
  from lossland import io, phase
  from lossland.plots import phase as phase_plots

  sizes = s["sizes"] or [None]
  widths_per_size = [s["widths"] if n is None else _widths_for_n(n, s["depths"])
                     for n in sizes]
  # Validate every cell of every size before anything runs (bad options exit 2).
  groups_per_size = [_groups(s, w) for w in widths_per_size]
  results = []
  for n_target, groups in zip(sizes, groups_per_size):
    if n_target is not None:
      print(f"size N ~ {n_target}: widths {[g['width'] for g in groups]}", file=sys.stderr,
            flush=True)
    out = _run_size(s, groups)
    if out is None:  # a shard: no analysis
      continue
    results.append(out)
  if s["shard"][1] > 1:
    print(f"shard {s['shard'][0]}/{s['shard'][1]} done; run again without --shard "
          f"(same --out_dir) to bisect and analyse")
    return
  if len(sizes) > 1:
    fs = phase.finite_size([r for r, _ in results])
    fs["run_dirs"] = [p for _, p in results]
    flags_dict = {f.name: f.value
                  for f in flags.FLAGS.get_key_flags_for_module(sys.modules[__name__])}
    with io.new_run(_OUT_DIR.value, "phase_sizes", flags_dict) as w:
      if _PLOTS.value:
        fs["figure"] = os.path.basename(
            phase_plots.plot_finite_size(fs, os.path.join(w.path, "p_star_vs_n.png")))
      w.write_json("summary.json", fs)
    fmt = lambda v: "None" if v is None else f"{v:.3f}"
    print("finite size: N " + ", ".join(f"{n:.0f}" for n in fs["sizes"]) +
          "; depth spread " + ", ".join(fmt(v) for v in fs["depth_spread"]) +
          f"; slope of log spread vs log N {fmt(fs['spread_slope'])}")
    print(f"run directory: {w.final_path}")


def _groups(s, widths):
  """The cell template of every depth at these widths, validated."""
  from lossland import job, nets
  groups = []
  for L, h in zip(s["depths"], widths):
    d = _D.value or h
    base = {"dataset": _DATASET.value, "d": d, "depth": L, "width": h,
            "n_seeds": s["n_seeds"], "seed": _SEED.value,
            "max_steps": s["max_steps"], "lr": s["lr"],
            "schedule": s["schedule"], "optimizer": s["optimizer"],
            "jam_window": s["jam_window"], "x64": bool(_X64.value),
            **{k: s[k] for k in ("decay_every", "decay_factor", "plateau_patience",
                                 "min_lr", "jam_rtol", "jam_after_decays", "polish",
                                 "polish_steps", "polish_jam_window", "polish_jam_rtol",
                                 "bulk_float32", "wgrad_split", "pad_to")
               if s[k] is not None},
            "plots": False,
            # which points are unsatisfied at each measurement: avalanches
            "record_unsat": True}
    base.update(NETS[s["net"]])
    if s["bias"] is not None:
      base["bias"] = bool(s["bias"])
    if _DATASET.value == "sphere":
      base["n_test"] = 0
    if _DATA_FILE.value:
      base["data_file"] = _DATA_FILE.value
    base["_N"] = nets.n_weights(d, h, L)
    groups.append(base)
  try:
    for g in groups:
      job.configs(job.validate(dict({k: v for k, v in g.items() if not k.startswith("_")},
                                    P=100)))
  except ValueError as e:
    raise _cli.UsageError(str(e)) from None
  return groups


def _run_size(s, groups):
  """Transition search, analysis and the phase run directory of one size.

  Returns ``(result, run_dir)``, or None when only a shard ran.
  """
  from lossland import io, phase, sweep
  from lossland.plots import phase as phase_plots
  sweep_dir = os.path.join(_OUT_DIR.value, "sweep")
  i, n = s["shard"]
  say = lambda m: print(m, file=sys.stderr, flush=True)

  def run_cells(cells):
    cells = sweep.shard(cells, i, n)
    run = lambda cs: sweep.run_sweep(cs, sweep_dir, progress=True)
    if s["workers"] == 1:
      return run(cells)
    return _run_parallel(cells, sweep_dir, s["workers"], bool(_X64.value), say, run)

  rounds = s["rounds"] if n == 1 else 0
  per_group = phase.search_transition(groups, s["p_over_n"], run_cells,
                                      n_rounds=rounds, log_fn=say)
  if n > 1:
    return None
  result = phase.analyze({L: recs for L, recs in zip(s["depths"], per_group)},
                         n_boot=_N_BOOT.value)
  samples = result.pop("_samples")
  result["settings"] = {k: v for k, v in s.items() if k != "shard"}
  result["settings"]["widths"] = [g["width"] for g in groups]
  result["preset"] = _PRESET.value
  result["sweep_dir"] = sweep_dir
  flags_dict = {f.name: f.value for f in flags.FLAGS.get_key_flags_for_module(sys.modules[__name__])}
  with io.new_run(_OUT_DIR.value, "phase", flags_dict) as w:
    w.log([{"depth": L, **c} for L, v in result["per_depth"].items() for c in v["cells"]])
    w.save_arrays(delta_positive=samples["positive"], delta_negative=samples["negative"],
                  avalanche_sizes=samples["avalanche_sizes"])
    if _PLOTS.value:
      result["figures"] = phase_plots.plot_all({**result, "_samples": samples}, w.path)
    w.write_json("summary.json", result)
  fmt = lambda v: "None" if v is None else f"{v:.3f}"
  for L, v in result["per_depth"].items():
    lo, hi = v["p_star_ci"]
    print(f"L={L} h={v['width']} N={v['N']}: P*/N = {fmt(v['p_star_over_n'])} "
          f"[{fmt(lo)}, {fmt(hi)}], N_Delta/N at jamming {fmt(v['nd_over_n_at_jamming'])}, "
          f"classes {v['counts']}")
  print(f"depth spread {fmt(result['depth_spread'])}")
  print(f"theta {fmt(result['theta'])} {[fmt(c) for c in result['theta_ci']]}, "
        f"gamma {fmt(result['gamma'])} {[fmt(c) for c in result['gamma_ci']]}")
  print(f"run directory: {w.final_path}")
  return result, w.final_path


if __name__ == "__main__":
  _cli.run(main)
