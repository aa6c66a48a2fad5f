"""Ensemble jobs that share a network and a protocol, run as one program.

A phase grid trains the same network and protocol on many training sets (P
values, data seeds) with a few members each; run one after another, each job
is a small program that leaves an accelerator idle. :func:`run_ensemble_jobs`
runs such jobs together: every stage of the protocol is one vmapped program
over all the jobs' members (:func:`lossland.train.cells.train_cells`, then
:func:`lossland.train.cells.continue_cells` for the polish), the finish and
everything after it per job. Each job still gets its own run directory,
summary and report, as :func:`lossland.experiments.job.run_ensemble_job`
writes them; each member equals the same member trained in its own job up to
rounding (rounding differences grow along a long chaotic descent, so a
member's last digits, and rarely its class, can differ: docs/engine.md).

Which jobs can share a program (:func:`batch_key`): the same network, loss,
training and polish configs, finish, float64 setting, float32 bulk and group
size, full batch; the data (dataset, P, data seed, n_test, label noise) and
the members (seed, n_seeds) may differ. ``summary.json`` of a batched job
has ``batch``: the number of jobs and members in its program, and its
``wall_seconds`` is the whole program's.
"""
import hashlib
import os
import sys
import time

from lossland import io
from lossland.experiments import job as job_lib

# Options of a job that the jobs of one program need not share.
CELL_OPTIONS = ("dataset", "data_file", "data_dir", "classes", "split", "P", "n_test",
                "noverify_data", "data_seed", "label_noise", "teacher_depth",
                "teacher_width", "seed", "n_seeds", "out_dir", "plots", "resume",
                "checkpoint_every", "finish_workers")


def batch_key(values: dict) -> str | None:
  """What jobs must share to train in one program (a string), or None for a
  job that cannot (mini-batch training samples padded points; ``--finish_from``
  trains nothing).

  Raises:
    JobError: bad options (as the job).
  """
  v = job_lib.validate(values)
  net, loss, cfg = job_lib.configs(v)
  if cfg.batch_size or v["finish_from"] is not None:  # --finish_from trains nothing
    return None
  shared = {k: x for k, x in job_lib.key_values(v).items()
            if k not in CELL_OPTIONS and k not in ("width", "N")}
  return repr((net, loss, cfg, job_lib.polish_config(v, cfg), sorted(shared.items())))


def run_ensemble_jobs(values_list, progress: bool = True, stdout=None,
                      stage_fn=None) -> list:
  """Runs ensemble jobs that share a :func:`batch_key` as one program.

  Args:
    values_list: the jobs' option values (each with its own ``out_dir``).
    progress: one progress bar on stderr for the program.
    stdout: stream of the jobs' reports (default sys.stdout).
    stage_fn: optional ``fn(text)``: what the program is doing, as
      :func:`lossland.experiments.job.run_ensemble_job`'s.

  Returns:
    per job, in order, ``(run_dir, summary)`` or the :class:`JobError` it
    raised after training (e.g. no healthy member); nothing is written for
    such a job.

  Raises:
    JobError: bad options of any job, or jobs that do not share a batch key
      (nothing runs).
  """
  vs = [job_lib.validate(v) for v in values_list]
  if not vs:
    return []
  keys = {batch_key(v) for v in vs}
  if None in keys or len(keys) > 1:
    raise job_lib.JobError("these jobs cannot train in one program: they differ in "
                           "more than data and members, or train on mini-batches")
  out = stdout or sys.stdout
  say = lambda *a: print(*a, file=out, flush=True)
  import jax
  if vs[0]["x64"] and not jax.config.jax_enable_x64:
    raise ValueError("x64=True needs jax.config.update('jax_enable_x64', True) "
                     "before run_ensemble_jobs")
  for v in vs:
    job_lib.check_out_dir(v["out_dir"])
  jobs = [job_lib.prepare_job(v, say) for v in vs]
  _check_batch(vs, jobs)
  from lossland.progress import Progress
  bar = Progress("training", enabled=progress, echo=stage_fn)
  ckpt = _checkpoint_path(vs, say)
  bar.note(f"compiling and running the first chunk of {len(jobs)} jobs in one program...")
  results, polish, cfg2, wall, fins, scales = _train(vs, jobs, ckpt, bar)
  K = sum(len(j.seeds) for j in jobs)
  done = [_write(v, j, r, p, cfg2, wall, f, len(jobs), K, say, sc)
          for v, j, r, p, f, sc in zip(vs, jobs, results, polish, fins, scales)]
  finish_ckpts = [ckpt and _finish_checkpoint_path(ckpt, c) for c in range(len(jobs))]
  from lossland import checkpoint
  for path in (ckpt, ckpt and job_lib.polish_checkpoint_path(ckpt), *finish_ckpts):
    if path:  # with the partial files of killed writers
      checkpoint.remove(path)
  return done


def _finish_checkpoint_path(ckpt: str, c: int) -> str:
  """Job ``c``'s finishing-stage progress file beside the batch's ``ckpt``."""
  return job_lib.finish_checkpoint_path(ckpt)[:-len(".npz")] + f"_{c}.npz"


def _check_batch(vs, jobs):
  """Labels nonzero (0 marks padding) and the whole program's memory."""
  import numpy as np
  for v, j in zip(vs, jobs):
    if np.any(np.asarray(j.ds.y_train) == 0) or np.any(np.asarray(j.ds.y_test) == 0):
      raise job_lib.JobError(f"{v['out_dir']}: a label is 0; jobs in one program need "
                             f"nonzero labels (0 marks padding)")
  P = max(j.ds.P for j in jobs)
  n_test = max(int(j.ds.x_test.shape[0]) for j in jobs)
  K = sum(len(j.seeds) for j in jobs)
  j0 = jobs[0]
  job_lib.check_memory(j0.net, j0.cfg, dict(vs[0], P=P, n_test=n_test, n_seeds=K),
                       np.dtype(j0.ds.x_train.dtype).itemsize)


def _checkpoint_path(vs, say) -> str | None:
  """The program's checkpoint, in the first job's ensemble directory, named by
  all the jobs' options (the same jobs resume it; None with ``resume=False``)."""
  if not all(v["resume"] for v in vs):
    return None
  ident = [job_lib.key_values(v) for v in vs]
  digest = hashlib.sha1(io.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
  where = os.path.join(vs[0]["out_dir"], "ensemble")
  os.makedirs(where, exist_ok=True)
  ckpt = os.path.join(where, f".checkpoint_batch_{digest}.npz")
  if os.path.exists(ckpt):
    say(f"resuming from {ckpt}")
  return ckpt


def _train(vs, jobs, ckpt, bar) -> tuple:
  """Every job's first stage, polish, scaling to sat and finish:
  ``(results, polish infos, cfg2, wall, finish infos, sat scales)``, lists
  over the jobs (:func:`lossland.experiments.job.scale_stage`)."""
  from lossland.train import cells, protocol
  v0, j0 = vs[0], jobs[0]

  def progress_fn(step, max_steps, n_running, n_done, n_total):
    frac = job_lib.work_fraction(step, max_steps, n_running, n_done, n_total)
    bar(frac, 1.0, f"{len(jobs)} jobs: done {n_done}/{n_total} running {n_running} "
        f"step {step}/{max_steps}")

  t0 = time.time()
  cast = (lambda ds: protocol.cast_data(ds, "float32")) if v0["bulk_float32"] else None
  stage1 = [(j.seeds, cast(j.ds) if cast else j.ds) for j in jobs]
  results = cells.train_cells(stage1, j0.net, j0.loss, j0.cfg,
                              group_size=v0["group_size"] or None, progress_fn=progress_fn,
                              checkpoint_path=ckpt, checkpoint_every=v0["checkpoint_every"])
  polish = [None] * len(jobs)
  cfg2 = job_lib.polish_config(v0, j0.cfg)
  if cfg2 is not None:
    bar.note(f"polishing with {cfg2.optimizer}...")
    stage = protocol.Stage(cfg2, entry=job_lib.polish_entry(v0), name="polish")
    merged = cells.continue_cells(results, stage, [j.ds for j in jobs], j0.net, j0.loss,
                                  checkpoint_path=ckpt and job_lib.polish_checkpoint_path(ckpt),
                                  checkpoint_every=v0["checkpoint_every"],
                                  progress_fn=progress_fn)
    polish = [job_lib.polish_info(r, rec, cfg2, j.ds.P)
              for r, (_, rec), j in zip(results, merged, jobs)]
    results = [m for m, _ in merged]
  scales = [None] * len(jobs)
  for c, (v, j) in enumerate(zip(vs, jobs)):
    results[c], scales[c] = job_lib.scale_stage(v, j, results[c], cfg2 or j.cfg,
                                                log_fn=bar.note)
  fins = [None] * len(jobs)
  if v0["finish"] != "none":
    bar.note(f"finishing the jammed members ({v0['finish']})...")
    for c, (v, j) in enumerate(zip(vs, jobs)):
      results[c], fins[c] = job_lib.finish_jammed(
          v, j, results[c], cfg2 or j.cfg, log_fn=bar.note,
          checkpoint_path=ckpt and _finish_checkpoint_path(ckpt, c))
      results[c], scales[c] = job_lib.scale_stage(v, j, results[c], cfg2 or j.cfg,
                                                  scales[c], log_fn=bar.note)
  bar(1, 1, f"{len(jobs)} jobs done")
  bar.close()
  return results, polish, cfg2, time.time() - t0, fins, scales


def _write(v, j, res, polish, cfg2, wall, fin, n_jobs, n_members, say, sat_scales=None):
  """One job's summary, run directory and report; its JobError instead if
  it has no healthy member (nothing written)."""
  try:
    summary = job_lib.job_summary(v, j, res, polish, wall, None, fin, sat_scales)
  except job_lib.JobError as e:
    say(f"{v['out_dir']}: {e}")
    return e
  summary["batch"] = {"jobs": n_jobs, "members": n_members}
  dirs = job_lib.CreatedDirs()
  ok = False
  try:
    dirs.makedirs(v["out_dir"])
    run_dir = job_lib.write_job_run(v, j, res, polish, cfg2, summary)
    ok = True
  finally:
    if not ok:
      dirs.remove_empty()
  job_lib.report(summary, run_dir, say)
  return run_dir, summary
