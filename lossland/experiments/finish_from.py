"""``--finish_from RUN``: the finishing stage continued from a finished run.

A Newton finish that runs out of iterations leaves a member still
descending (docs/jamming.md: at N ~ 600 a deep state takes more than 6000
iterations). Running the job again with a larger ``--finish_iters`` trains
every member again; this continues instead. The members, their data, their
stop reasons, histories and polish are read from RUN (an ensemble run
directory of the same options); the finish runs ``--finish_iters`` more
iterations on the members whose finish there did not end at a minimum
(:func:`continued`), from their final params; the run written is RUN with
those members replaced, as if one longer finish had run: per member the
iterations, restarts, anneal rounds and seconds add up, r_sub and the loss
before the finish are RUN's, everything else is measured at the end.

The stages RUN's finish already ran are not repeated except its last: with
``--finish anneal_newton`` or ``decay_newton`` the continuation is the Newton
finish (on the loss) alone. A run without a finish (``--finish none``) gets
the whole finish.

Not the same numbers as one run with the summed iterations: the trust
region's radius and the finish's restarts start afresh (docs/jamming.md,
"continuing a finish").
"""
import math
import os
from typing import Callable

import numpy as np

from lossland import io, observables
from lossland.experiments import job

# Options that may differ from RUN's: the finish's own (what to continue
# and how), the classification, the scaling to sat after the finish (a run
# without it continued with it scales the members it leaves classifying
# every point), and those that do not change the numbers.
FREE_OPTIONS = ("finish", "finish_iters", "finish_tol", "finish_model", "finish_from",
                "jam_max_residual", "anneal_levels", "anneal_iters", "anneal_rounds",
                "finish_decay", "scale_to_sat")

# The per-member lists of the finishing stage (job.finish_jammed's dict).
FIELDS = ("entered", *job.FINISH_ROW_KEYS)


class Previous:
  """What the continuation takes from RUN.

  Attributes:
    path: RUN.
    res: its members as a :class:`lossland.train.EnsembleResult` (params,
      stop reasons, final measurements, histories and outputs at its end).
    polish: the job's polish dict (``job.run_polish``'s) or None.
    finish: the finishing stage's per-member lists (:data:`FIELDS`) or None
      where RUN ran no finish.
    wall: RUN's wall seconds.
    sat_scales: [K] the factors of RUN's scaling to sat (``--scale_to_sat``;
      nan where not scaled), or None where RUN ran without it.
  """

  def __init__(self, path, res, polish, finish, wall, sat_scales=None):
    self.path, self.res, self.polish, self.finish, self.wall = path, res, polish, finish, wall
    self.sat_scales = sat_scales


def _error(msg):
  return job.JobError(f"--finish_from: {msg}")


def check_options(v: dict, flags: dict, path: str):
  """RUN's options must equal ``v`` except :data:`FREE_OPTIONS` and those
  that do not change the numbers (else JobError naming the first)."""
  known = {k: x for k, x in flags.items() if k in job.OPTIONS}
  try:
    recorded = job.key_values(job.validate(known))
  except ValueError as e:
    raise _error(f"{path} has options this job rejects ({e})") from None
  now = job.key_values(v)
  for k in sorted(set(recorded) | set(now)):
    if k in FREE_OPTIONS:
      continue
    a, b = recorded.get(k, job.LATER_OPTIONS.get(k)), now.get(k, job.LATER_OPTIONS.get(k))
    if io.dumps(a, sort_keys=True) != io.dumps(b, sort_keys=True):
      raise _error(f"{path} ran with --{k}={a!r}, this job has {b!r}: continue a run of "
                   "the same options")
  before = known.get("finish", "none")
  if before not in ("none", v["finish"]):
    raise _error(f"{path} ran --finish {before}; continue it with the same --finish")


def _polish(run) -> dict | None:
  """The job's polish dict, read back from RUN's summary and arrays."""
  members = run.summary["members"]
  if not members or "polished" not in members[0]:
    return None
  keys = ("polished", "polish_steps", "steps_before_polish", "stop_code_before_polish")
  return {"polished": [bool(m["polished"]) for m in members],
          "polish_steps": [int(m["polish_steps"]) for m in members],
          "loss_before": [float(m["loss_before_polish"]) for m in members],
          "stop_before": [m["stop_before_polish"] for m in members],
          "arrays": {k: a for k, a in run.arrays.items()
                     if k.startswith("polish_") or k in keys}}


def _finish(members) -> dict | None:
  """RUN's finishing stage as per-member lists (:data:`FIELDS`)."""
  if not any("finished" in m for m in members):
    return None
  out = {f: [] for f in FIELDS}
  for m in members:
    out["entered"].append(bool(m.get("finished")))
    for f, key in job.FINISH_ROW_KEYS.items():
      x = m.get(key) if m.get("finished") else None
      if x is None:  # not entered, or a number JSON could not hold
        x = 0 if f in job.FINISH_COUNTS else "" if f == "reason" else (
            False if f == "converged" else 0.0 if f == "seconds" else float("nan"))
      out[f].append(x)
  return out


def load(v: dict, job) -> Previous:
  """RUN (``v["finish_from"]``), checked against this job and read back.

  Args:
    v: the job's validated options.
    job: its :class:`lossland.experiments.job.Job` (configs, data, seeds).

  Raises:
    JobError: RUN is missing, incomplete, not an ensemble run, or ran with
      other options, seeds or data.
  """
  import jax
  from lossland import nets, train
  path = v["finish_from"]
  try:
    run = io.load_run(path)
  except io.RunError as e:
    raise _error(str(e)) from None
  if run.config.get("script") != "ensemble" or "flags" not in run.config:
    raise _error(f"{path} is not an ensemble run")
  check_options(v, run.config["flags"], path)
  a = run.arrays
  need = ("seeds", "params_final", "params_init", "x_train", "y_train", "x_test", "y_test",
          "f_train", "f_test", "stop_code", "steps", "history_step",
          *(f"{p}_{m}" for m in train.MEASUREMENTS for p in ("final", "history")))
  missing = [k for k in need if k not in a]
  if missing:
    raise _error(f"incomplete run directory {path}: arrays.npz lacks {', '.join(missing)}")
  if [int(s) for s in a["seeds"]] != list(job.seeds):
    raise _error(f"{path} has seeds {[int(s) for s in a['seeds']]}, this job "
                 f"{list(job.seeds)}")
  for k in ("x_train", "y_train", "x_test", "y_test"):
    mine = np.asarray(getattr(job.ds, k))
    if a[k].shape != mine.shape or not np.array_equal(a[k], mine):
      raise _error(f"{path}'s {k} differs from this job's data (another data file?)")
  dtype = np.asarray(job.ds.x_train).dtype
  n = nets.n_params(job.net)
  if a["params_final"].shape != (len(job.seeds), n) or a["params_final"].dtype != dtype:
    raise _error(f"{path}'s params are {a['params_final'].dtype} "
                 f"{a['params_final'].shape}, this job's {np.dtype(dtype)} "
                 f"({len(job.seeds)}, {n})")
  unravel = jax.vmap(nets.unravel_fn(job.net, dtype))
  to_tree = lambda flat: jax.tree_util.tree_map(np.asarray, unravel(flat))
  summary = run.summary
  res = train.EnsembleResult(
      seeds=a["seeds"], params=to_tree(a["params_final"]), params0=to_tree(a["params_init"]),
      stop_code=a["stop_code"], steps=a["steps"],
      final={m: np.array(a[f"final_{m}"]) for m in train.MEASUREMENTS},
      history_step=a["history_step"],
      history={m: a[f"history_{m}"] for m in train.MEASUREMENTS},
      f_train=a["f_train"], f_test=a["f_test"], group_size=int(summary.get("group_size", 0)),
      n_compiles=0, n_devices=int(summary.get("n_devices", 1)),
      history_running=a.get("history_running"), history_unsat=a.get("history_unsat"))
  scales = None
  if any("sat_scale" in m for m in summary["members"]):
    scales = [float("nan") if m.get("sat_scale") is None else float(m["sat_scale"])
              for m in summary["members"]]
  return Previous(path, res, _polish(run), _finish(summary["members"]),
                  float(summary["wall_seconds"]), scales)


def method_now(prev: Previous, method: str) -> str:
  """The finish this run continues with: the whole ``method`` after a run
  without a finish, else the last stage of RUN's (the Newton finish where
  it has one)."""
  if prev.finish is None:
    return method
  return "newton" if method in ("newton", "anneal_newton", "decay_newton") else method


def continued(prev: Previous) -> list | None:
  """Members that the continuation enters: None (every member that stopped
  jammed or ran out of steps, the finish's own rule) after a run without a
  finish; else those that entered RUN's finish and did not end at a minimum
  there (r_sub above ``--finish_tol``, or still descending:
  :func:`lossland.observables.still_descending`)."""
  if prev.finish is None:
    return None
  f = prev.finish
  return [k for k in range(len(f["entered"])) if f["entered"][k] and (
      not f["converged"][k] or observables.still_descending(
          {"finish_reason": f["reason"][k], "descent_gain": f["descent_gain"][k]}))]


def merge(prev: Previous, now: dict) -> dict:
  """The finish of RUN and of this run as one (per-member lists of
  :data:`FIELDS`): where a member entered both, iterations, restarts,
  anneal rounds and seconds add up and r_sub and the loss before the finish
  are RUN's; the rest is this run's."""
  if prev.finish is None:
    return now
  out = {f: list(prev.finish[f]) for f in FIELDS}
  for k, entered in enumerate(now["entered"]):
    if not entered:
      continue
    for f in FIELDS:
      if f in ("iterations", "restarts", "rounds", "seconds"):
        out[f][k] = prev.finish[f][k] + now[f][k]
      elif f in ("residual_before", "loss_before") and prev.finish["entered"][k] \
          and math.isfinite(prev.finish[f][k]):
        out[f][k] = prev.finish[f][k]
      else:
        out[f][k] = now[f][k]
  return out


def _cell_key(values: dict) -> str:
  """A cell's identity (``sweep.identity`` of its validated options) without
  :data:`FREE_OPTIONS`: equal for a cell and its continuation."""
  from lossland.experiments import sweep
  ident = sweep.identity(job.validate(values))
  return io.dumps({k: x for k, x in ident.items() if k not in FREE_OPTIONS}, sort_keys=True)


def study_runs(out_dir: str) -> dict:
  """The finished cells of the study in ``out_dir`` (its ``sweep``
  directory, :mod:`lossland.experiments.sweep`): ``{cell key: run dir}``.

  Raises:
    io.InputError: no sweep there, or a cell recorded twice.
  """
  from lossland.experiments import sweep
  sweep_dir = os.path.join(out_dir, "sweep")
  if not os.path.isfile(os.path.join(sweep_dir, sweep.CELLS_FILE)):
    raise io.InputError(f"--finish_from: no study in {out_dir} "
                        f"({os.path.join(sweep_dir, sweep.CELLS_FILE)} not found)")
  out = {}
  for rec in sweep.read_cells(sweep_dir):
    flags = {k: x for k, x in rec["flags"].items() if k in job.OPTIONS}
    key = _cell_key(flags)
    if key in out:
      raise io.InputError(f"--finish_from: {out_dir} has two cells of the same options "
                          f"(cell {rec['cell_id']}): continue one study at a time")
    out[key] = os.path.abspath(rec["run_dir"])  # read_cells joined it with sweep_dir
  return out


def continuing(run_cells: Callable, runs: dict, log_fn: Callable | None = None) -> Callable:
  """``run_cells`` (``fn(cells) -> records``) where each cell that matches
  one of ``runs`` (:func:`study_runs`) continues its finish: the job's
  ``finish_from`` set to that run; the other cells run whole."""
  def run(cells):
    out, n = [], 0
    for c in cells:
      run_dir = runs.get(_cell_key(c))
      n += run_dir is not None
      out.append(c if run_dir is None else dict(c, finish_from=run_dir))
    if log_fn and n < len(cells):
      log_fn(f"--finish_from: {len(cells) - n} of {len(cells)} cells are not in that study: "
             "they run whole")
    return run_cells(out)
  return run
