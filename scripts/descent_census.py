"""The descent probe on every finished member of phase studies (or sweeps).

    python scripts/descent_census.py STUDY_DIR [STUDY_DIR ...]

Every cell's run of each STUDY_DIR (a phase study's ``sweep/cells.jsonl``,
a sweep's ``cells.jsonl``, or STUDY_DIR itself if it is an ensemble run) is
loaded; for each member that entered a finishing stage and ends with
unsatisfied points, :func:`lossland.optim.kink_newton.descent_probe` runs at
its stored state. Prints one JSON line per member: the run, N, P, depth, the
member, its class (``lossland.phase.member_class``, today's rules), the
finish's reason, r_sub, the probe's gain, step and line, the model's
lambda_min / lambda_max and the restoration's gain. Used to choose
``lossland.observables.DESCENT_RTOL`` (docs/jamming.md, fourteenth session). Writes
nothing; a run that cannot be loaded is reported on stderr and skipped,
and the exit status is then 2 (also for a directory without runs).
"""
import json
import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

from lossland import experiment, io, phase  # noqa: E402
from lossland.experiments import sweep  # noqa: E402
from lossland.optim import kink_newton  # noqa: E402


def runs_below(root: str) -> list:
  """The ensemble run directories of a phase study (its sweep/), a sweep or
  one run."""
  if os.path.isfile(os.path.join(root, "summary.json")):
    return [root]
  for sweep_dir in (os.path.join(root, "sweep"), root):
    if os.path.isfile(os.path.join(sweep_dir, sweep.CELLS_FILE)):
      return [r["run_dir"] for r in sweep.read_cells(sweep_dir)]
  return []


def probe_run(run: str, members=None):
  """Yields one dict per finished member of ``run`` with N_Delta > 0."""
  ens = experiment.load_ensemble(run)
  if ens.subtract_init:
    raise io.RunError(f"{run}: subtract_init runs are not supported")
  x, y = ens.data.x_train, ens.data.y_train
  for k, m in enumerate(ens.summary["members"]):
    if not m.get("finished") or not m.get("n_delta") or (members and k not in members):
      continue
    params = jax.tree_util.tree_map(lambda a, k=k: a[k], ens.params)
    t0 = time.time()
    pr = kink_newton.descent_probe(ens.net, params, x, y, ens.loss)
    yield dict(run=run, N=int(ens.summary["n_weights"]), P=int(x.shape[0]),
               depth=ens.net.depth, member=k, member_class=phase.member_class(m),
               finish_reason=m.get("finish_reason"), r_sub=m.get("force_residual"),
               gain=pr.gain, step=pr.step, line=pr.line, n_trials=pr.n_trials,
               min_curvature=pr.min_curvature, restore_gain=pr.restore_gain,
               seconds=round(time.time() - t0, 1))


def main(argv):
  if len(argv) < 2:
    print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
    return 2
  runs = [r for root in argv[1:] for r in runs_below(root)]
  if not runs:
    print(f"descent_census: no ensemble runs below {' '.join(argv[1:])}", file=sys.stderr)
    return 2
  status = 0
  for run in runs:  # a broken run is reported and skipped; exit status 2 at the end
    try:
      for row in probe_run(run):
        print(json.dumps(row), flush=True)
    except io.RunError as e:
      print(f"descent_census: {e}", file=sys.stderr)
      status = 2
  return status


if __name__ == "__main__":
  sys.exit(main(sys.argv))
