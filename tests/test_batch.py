"""Ensemble jobs in one program (lossland.experiments.batch): each job's run
directory holds what the job alone writes, up to rounding."""
import io as stdio
import os

import numpy as np
import pytest

from lossland import io, job
from lossland.experiments import batch

# a phase cell's protocol in miniature: Adam, then the L-BFGS polish of every
# member that did not reach sat, unsatisfied sets recorded
BASE = dict(dataset="sphere", d=4, depth=2, width=6, n_test=0, max_steps=300, lr=0.02,
            jam_window=100, polish="lbfgs", polish_steps=15, polish_jam_window=40,
            record_unsat=True, plots=False, resume=True)
CELLS = [dict(P=30, n_seeds=2), dict(P=70, n_seeds=3, data_seed=1),
         dict(P=110, n_seeds=2, seed=5)]

_ARRAYS = ("params_final", "f_train", "history_loss", "history_n_delta", "final_loss",
           "polish_history_loss")


def _quiet():
  return stdio.StringIO()


def test_jobs_in_one_program_equal_each_job_alone(tmp_path):
  vals = [dict(BASE, **c, out_dir=str(tmp_path / f"b{i}")) for i, c in enumerate(CELLS)]
  out = batch.run_ensemble_jobs(vals, progress=False, stdout=_quiet())
  assert len(out) == 3
  classes = set()
  for i, (c, (run_dir, summary)) in enumerate(zip(CELLS, out)):
    ref_dir, ref = job.run_ensemble_job(dict(BASE, **c, out_dir=str(tmp_path / f"a{i}")),
                                        progress=False, stdout=_quiet())
    assert summary["batch"] == {"jobs": 3, "members": 7}
    assert "batch" not in ref
    assert [m["class"] for m in summary["members"]] == [m["class"] for m in ref["members"]]
    assert [m["stop_reason"] for m in summary["members"]] == \
        [m["stop_reason"] for m in ref["members"]]
    classes |= {m["class"] for m in ref["members"]}
    a, b = io.load_run(run_dir).arrays, io.load_run(ref_dir).arrays
    assert set(a) == set(b)
    for k in _ARRAYS:
      if k in b:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-9, err_msg=k)
    for k in ("x_train", "y_train", "history_unsat", "seeds"):
      if k in b:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # the program's checkpoints are gone, the run directory is complete
    assert not [f for f in os.listdir(os.path.dirname(run_dir)) if f.startswith(".")]
  assert len(classes) >= 2, classes   # sat and not sat: the polish ran on some


def test_batch_keys():
  key = batch.batch_key
  assert key(dict(BASE, P=30)) == key(dict(BASE, P=90, seed=3, n_seeds=7, data_seed=2,
                                             out_dir="elsewhere"))
  assert key(dict(BASE, P=30)) != key(dict(BASE, P=30, lr=0.01))
  assert key(dict(BASE, P=30)) != key(dict(BASE, P=30, width=7))
  assert key(dict(BASE, P=30)) != key(dict(BASE, P=30, polish_steps=16))
  assert key(dict(BASE, P=30, batch_size=10, polish="none")) is None  # mini-batches: never


def test_jobs_that_cannot_share_a_program_are_refused(tmp_path):
  vals = [dict(BASE, P=30, out_dir=str(tmp_path / "a")),
          dict(BASE, P=30, lr=0.01, out_dir=str(tmp_path / "b"))]
  with pytest.raises(job.JobError, match="one program"):
    batch.run_ensemble_jobs(vals, progress=False, stdout=_quiet())
  with pytest.raises(job.JobError):
    batch.run_ensemble_jobs([dict(BASE, P=-3, out_dir=str(tmp_path / "c"))],
                            progress=False, stdout=_quiet())
  assert not os.listdir(tmp_path)   # nothing written


def test_a_job_without_a_healthy_member_fails_alone(tmp_path, monkeypatch):
  """A job that raises after training (e.g. every member diverged) comes back
  as its JobError with nothing written; the other jobs are written."""
  real = job.job_summary

  def summary(v, *a, **kw):
    if v["out_dir"].endswith("b1"):
      raise job.JobError("every member diverged")
    return real(v, *a, **kw)
  monkeypatch.setattr(job, "job_summary", summary)
  vals = [dict(BASE, **c, polish="none", out_dir=str(tmp_path / f"b{i}"))
          for i, c in enumerate(CELLS)]
  out = batch.run_ensemble_jobs(vals, progress=False, stdout=_quiet())
  assert isinstance(out[1], job.JobError) and "diverged" in str(out[1])
  assert not os.path.exists(tmp_path / "b1" / "ensemble") or not [
      n for n in os.listdir(tmp_path / "b1" / "ensemble") if not n.startswith(".")]
  for i in (0, 2):
    run_dir, summary = out[i]
    assert os.path.isdir(run_dir) and summary["batch"]["jobs"] == 3
  # the program's checkpoint is gone (it lay in the first job's directory)
  assert not [n for n in os.listdir(tmp_path / "b0" / "ensemble") if n.startswith(".")]
