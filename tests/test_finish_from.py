"""``--finish_from``: a finish continued from a finished run (job and phase study)."""
import os

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

jax.config.update("jax_enable_x64", True)

from lossland import checkpoint, experiment, io  # noqa: E402
from lossland.experiments import finish_from, job  # noqa: E402
from lossland.optim import kink_newton  # noqa: E402

# A one-unit tanh net on random labels (N = 6, P = 40), stopped by its step
# budget away from a minimum: the Newton finish balances it in ~40 iterations
# (tests/test_kink_newton.py), so 2 leave every member still descending.
BASE = dict(dataset="sphere", P=40, d=5, depth=1, width=1, activation="tanh", n_seeds=3,
            optimizer="adam", lr=1e-2, max_steps=200, polish="lbfgs", polish_steps=30,
            polish_jam_window=10, finish="newton", finish_iters=2, plots=False)
QUIET = dict(progress=False, stdout=open(os.devnull, "w"))


def _run(tmp_path, name, **kw):
  return job.run_ensemble_job(dict(BASE, out_dir=str(tmp_path / name), **kw), **QUIET)


@pytest.fixture(scope="module")
def short(tmp_path_factory):
  """A run whose finish ran out of its 2 iterations on every member."""
  run_dir, summary = _run(tmp_path_factory.mktemp("short"), "a")
  assert [m["finish_reason"] for m in summary["members"]] == ["max_iter"] * 3
  return run_dir, summary


def test_the_continuation_is_the_finish_from_the_runs_end(short, tmp_path):
  """Each continued member ends where kink_newton.finish from RUN's params
  does, for the same iterations; the counters add up, r_sub before the
  finish is RUN's, and the histories, stop reasons and polish are RUN's."""
  run_dir, before = short
  cont_dir, after = _run(tmp_path, "b", finish_iters=60, finish_from=run_dir)
  prev, now = experiment.load_ensemble(run_dir), experiment.load_ensemble(cont_dir)
  x, y = prev.data.x_train, prev.data.y_train
  for k, (m0, m1) in enumerate(zip(before["members"], after["members"])):
    params, _ = prev.member(k)
    want = kink_newton.finish(prev.net, params, x, y, prev.loss, tol=1e-10, max_iter=60)
    got, _ = now.member(k)
    np.testing.assert_array_equal(ravel_pytree(got)[0], ravel_pytree(want.params)[0])
    assert m1["finish_reason"] == want.reason == "converged"
    assert m1["finish_iterations"] == m0["finish_iterations"] + want.n_iter
    assert m1["finish_restarts"] == m0["finish_restarts"] + want.n_restarts
    assert m1["force_residual_before_finish"] == m0["force_residual_before_finish"]
    assert m1["loss_before_finish"] == m0["loss_before_finish"]
    assert m1["finish_seconds"] > m0["finish_seconds"]
    assert m1["force_residual"] == pytest.approx(want.record.force_residual, rel=1e-6)
    assert m1["class"] == "jammed" and m0["class"] != "jammed"
    for key in ("stop_reason", "steps", "polished", "polish_steps", "loss_before_polish",
                "stop_before_polish"):
      assert m1[key] == m0[key], key
  assert after["finish_from"] == run_dir
  assert after["wall_seconds"] > before["wall_seconds"]
  a, b = io.load_run(run_dir).arrays, io.load_run(cont_dir).arrays
  kept = [k for k in a if k.startswith(("history_", "polish_")) or k in (
      "params_init", "stop_code", "steps", "seeds", "x_train", "y_train", "polished")]
  assert "polish_history_loss" in kept and "history_unsat" not in a
  for k in kept:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert set(a) == set(b)


def test_a_member_at_a_minimum_is_not_continued_again(short, tmp_path):
  """Continuing a run whose members all ended at minima changes nothing."""
  done_dir, done = _run(tmp_path, "b", finish_iters=60, finish_from=short[0])
  again_dir, again = _run(tmp_path, "c", finish_iters=60, finish_from=done_dir)
  np.testing.assert_array_equal(io.load_run(done_dir).arrays["params_final"],
                                io.load_run(again_dir).arrays["params_final"])
  assert again["members"] == done["members"]


def test_continuing_a_run_without_a_finish_equals_a_run_with_it(short, tmp_path):
  """RUN read back (members, polish, histories) is the run itself: the
  whole finish from it equals the job that trains and finishes at once."""
  bare_dir, _ = _run(tmp_path, "bare", finish="none", finish_iters=400)
  cont_dir, cont = _run(tmp_path, "cont", finish_iters=60, finish_from=bare_dir)
  once_dir, once = _run(tmp_path, "once", finish_iters=60)
  a, b = io.load_run(cont_dir).arrays, io.load_run(once_dir).arrays
  assert set(a) == set(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  clean = lambda s: [{k: v for k, v in m.items() if k != "finish_seconds"}
                     for m in s["members"]]
  assert clean(cont) == clean(once)
  assert "finish_from" not in once and cont["finish_from"] == bare_dir


@pytest.mark.parametrize("change,word", [
    (dict(lr=2e-2), "--lr"),
    (dict(n_seeds=2), "seeds"),
    (dict(finish="anneal_newton"), "same --finish"),
    (dict(finish="none"), "give --finish"),
    (dict(finish_from="nowhere"), "not found"),
], ids=["other_lr", "other_seeds", "other_finish", "no_finish", "missing"])
def test_a_run_of_other_options_is_refused_and_nothing_written(short, tmp_path, change, word):
  kw = dict(finish_from=short[0], finish_iters=60)
  kw.update(change)
  if kw["finish_from"] == "nowhere":
    kw["finish_from"] = str(tmp_path / "nowhere")
  with pytest.raises(job.JobError, match=word):
    _run(tmp_path, "out", **kw)
  assert not os.path.exists(tmp_path / "out") or not os.listdir(tmp_path / "out")


def test_a_data_file_that_changed_since_the_run_is_refused(tmp_path):
  """Same options, other numbers in the file: the data are compared."""
  rng = np.random.default_rng(0)
  path = tmp_path / "data.npz"
  np.savez(path, x_train=rng.normal(size=(30, 5)), y_train=np.arange(30) % 2)
  kw = dict(BASE, dataset="npz", data_file=str(path), P=30)
  run_dir, _ = job.run_ensemble_job(dict(kw, out_dir=str(tmp_path / "a")), **QUIET)
  np.savez(path, x_train=rng.normal(size=(30, 5)), y_train=np.arange(30) % 2)
  with pytest.raises(job.JobError, match="x_train differs"):
    job.run_ensemble_job(dict(kw, out_dir=str(tmp_path / "b"), finish_from=run_dir), **QUIET)
  assert not os.path.exists(tmp_path / "b")


def test_which_members_continue():
  """Table-driven: after a run without a finish every entrant (None); else
  those that entered and did not end at a minimum."""
  nan = float("nan")

  def prev(rows):
    fin = {f: [] for f in finish_from.FIELDS}
    for entered, converged, reason, gain in rows:
      for f, x in zip(("entered", "converged", "reason", "descent_gain"),
                      (entered, converged, reason, gain)):
        fin[f].append(x)
    return finish_from.Previous("RUN", None, None, fin, 1.0)

  assert finish_from.continued(finish_from.Previous("RUN", None, None, None, 1)) is None
  rows = [(False, False, "", nan),            # never entered: sat, dead points
          (True, True, "converged", 0.0),     # a minimum
          (True, True, "converged", -1e-8),   # balanced, the probe still descends
          (True, False, "max_iter", -1e-5),   # out of iterations
          (True, False, "stuck", 0.0)]        # above the target, the probe finds nothing
  assert finish_from.continued(prev(rows)) == [2, 3, 4]
  p = finish_from.Previous("RUN", None, None, None, 1)
  assert finish_from.method_now(p, "anneal_newton") == "anneal_newton"
  p.finish = {}
  assert finish_from.method_now(p, "anneal_newton") == "newton"
  assert finish_from.method_now(p, "decay_newton") == "newton"  # its last stage, on the loss
  assert finish_from.method_now(p, "anneal") == "anneal"


def test_phase_finish_from_continues_each_cell(short, tmp_path, monkeypatch):
  """A study continued cell by cell: each cell's run continues the matching
  cell of the first study; a cell the first study lacks runs whole; the
  studies' directories may be given relative to the working directory."""
  from lossland.experiments import phase_study, sweep
  from lossland.experiments.options import OptionError
  cell_job = {k: v for k, v in BASE.items()
              if k not in ("dataset", "P", "d", "depth", "width", "n_seeds", "plots")}
  base = dict(depths=(1,), widths=(1,), d=5, n_seeds=2, rounds=0, n_boot=10, plots=False)
  first = phase_study.PhaseConfig(p_over_n=(4.0,), out_dir=str(tmp_path / "a"),
                                  job=cell_job, **base)
  phase_study.run(first, log_fn=lambda m: None)
  lines = []
  second = phase_study.PhaseConfig(p_over_n=(4.0, 5.0), out_dir=str(tmp_path / "b"),
                                   finish_from=str(tmp_path / "a"),
                                   job=dict(cell_job, finish_iters=60), **base)
  phase_study.run(second, log_fn=lines.append)
  assert any("1 of 2 cells are not in that study" in ln for ln in lines)
  a = {r["flags"]["P"]: r for r in sweep.read_cells(str(tmp_path / "a" / "sweep"))}
  b = {r["flags"]["P"]: r for r in sweep.read_cells(str(tmp_path / "b" / "sweep"))}
  assert sorted(a) == [24] and sorted(b) == [24, 30]
  assert b[24]["flags"]["finish_from"] == os.path.abspath(
      os.path.join(tmp_path, "a", "sweep", a[24]["run_dir"]))
  assert b[30]["flags"].get("finish_from") is None
  monkeypatch.chdir(tmp_path)  # relative out_dirs (once joined twice: not found)
  rel = phase_study.PhaseConfig(p_over_n=(4.0,), out_dir="e", finish_from="a",
                                job=dict(cell_job, finish_iters=1), **base)
  phase_study.run(rel, log_fn=lines.append)
  e = sweep.read_cells(os.path.join("e", "sweep"))
  assert e[0]["flags"]["finish_from"] == b[24]["flags"]["finish_from"]
  for m0, m1 in zip(a[24]["summary"]["members"], b[24]["summary"]["members"]):
    if m0.get("finished"):
      assert m1["finish_iterations"] > m0["finish_iterations"]
  with pytest.raises(OptionError, match="another --out_dir"):
    phase_study.PhaseConfig(p_over_n=(4.0,), out_dir=str(tmp_path / "a"),
                            finish_from=str(tmp_path / "a"), job=cell_job, **base)
  with pytest.raises(OptionError, match="give --finish"):
    phase_study.PhaseConfig(p_over_n=(4.0,), out_dir=str(tmp_path / "c"),
                            finish_from=str(tmp_path / "a"),
                            job=dict(cell_job, finish="none"), **base)
  with pytest.raises(io.InputError, match="no study"):
    phase_study.run(phase_study.PhaseConfig(p_over_n=(4.0,), out_dir=str(tmp_path / "d"),
                                            finish_from=str(tmp_path / "c"), job=cell_job,
                                            **base), log_fn=lambda m: None)


def _stage(tmp_path):
  """A run without a finish read back as its finishing stage would see it:
  ``(run directory, prepared job, EnsembleResult, finish_members's
  positional args)``."""
  run_dir, _ = _run(tmp_path, "bare", finish="none", finish_iters=400)
  v = job.validate(dict(BASE, out_dir=str(tmp_path / "x"), finish_iters=60,
                        finish_from=run_dir))
  j = job.prepare_job(v, lambda *a: None)
  res = finish_from.load(v, j).res
  return run_dir, j, res, (res, j.ds, j.net, j.loss, j.cfg)


class _Killed(Exception):
  pass


def _killed_and_resumed(monkeypatch, args, kw, ckpt, when) -> tuple:
  """finish_members(*args, **kw) killed at the snapshot (one every
  iteration) where member 1's recorded progress first satisfies ``when``,
  then run again: ``(metadata of the checkpoint it left, member 1's
  recorded params there, (res, info) of the resumed stage, the keyword
  arguments of each kink_newton.finish call it made, recorded on)``."""
  from lossland.train import finish as finish_lib
  snapshot = finish_lib._Progress.snapshot

  def killing(self, i, *a):
    snapshot(self, i, *a)
    if i == 1 and when(self.meta["running"].get("1", {})):
      raise _Killed
  monkeypatch.setattr(finish_lib._Progress, "snapshot", killing)
  with pytest.raises(_Killed):
    finish_lib.finish_members(*args, **kw, checkpoint_path=ckpt, checkpoint_every=0.0)
  monkeypatch.setattr(finish_lib._Progress, "snapshot", snapshot)
  meta = checkpoint.read_meta(ckpt)
  flat = checkpoint.restore(ckpt, finish_lib._Progress(None, 0, np.zeros((3, 6)), "").flat)[0]
  calls, real = [], kink_newton.finish
  monkeypatch.setattr(kink_newton, "finish", lambda *a, **k: calls.append(k) or real(*a, **k))
  out = finish_lib.finish_members(*args, **kw, checkpoint_path=ckpt, checkpoint_every=0.0)
  return meta, flat["running"][1], out, calls


def test_an_interrupted_finish_resumes_from_its_checkpoint(tmp_path, monkeypatch):
  """The stage killed inside member 1's Newton finish (a snapshot every
  iteration): run again, member 0 is read back, member 1 goes on from its
  last iterate (the finish from there for the iterations left, counters
  added), member 2 runs as it would have; a checkpoint of another stage is
  ignored; the job leaves no checkpoint behind."""
  from lossland.train import finish as finish_lib
  run_dir, j, res, args = _stage(tmp_path)
  kw = dict(tol=1e-10, max_iter=60)
  ref, ref_info = finish_lib.finish_members(*args, **kw)
  ckpt = str(tmp_path / "finish.npz")
  real = kink_newton.finish
  meta, flat1, (out, info), calls = _killed_and_resumed(
      monkeypatch, args, kw, ckpt, lambda cur: cur.get("it", 0) >= 5)
  assert sorted(meta["done"]) == ["0"] and sorted(meta["running"]) == ["1"]
  it = meta["running"]["1"]["it"]
  assert [c["max_iter"] for c in calls] == [60 - it, 60]   # members 1 and 2 only
  flat_of = lambda r: np.stack([ravel_pytree(jax.tree_util.tree_map(lambda a: a[k], r.params))[0]
                                for k in range(3)])
  got, want = flat_of(out), flat_of(ref)
  np.testing.assert_array_equal(got[[0, 2]], want[[0, 2]])
  unravel = ravel_pytree(jax.tree_util.tree_map(lambda a: a[1], res.params))[1]
  x, y = j.ds.x_train, j.ds.y_train
  cont = real(j.net, unravel(flat1), x, y, j.loss, tol=1e-10, max_iter=60 - it)
  np.testing.assert_array_equal(got[1], ravel_pytree(cont.params)[0])
  assert info.n_iter[1] == it + cont.n_iter and info.converged[1]
  assert info.residual_before[1] == ref_info.residual_before[1]
  for f in ("n_iter", "reason", "residual_after", "converged"):
    assert getattr(info, f)[0] == getattr(ref_info, f)[0]
    assert getattr(info, f)[2] == getattr(ref_info, f)[2]
  calls.clear()   # another stage (max_iter 61): the file is not read
  finish_lib.finish_members(*args, tol=1e-10, max_iter=61, checkpoint_path=ckpt)
  assert len(calls) == 3
  run2, _ = _run(tmp_path, "job", finish_iters=60, finish_from=run_dir)
  left = [n for n in os.listdir(tmp_path / "job" / "ensemble") if n.startswith(".")]
  assert left == []


def test_a_job_killed_in_its_finish_resumes_there(tmp_path):
  """SIGKILL inside the Newton finish of two members run side by side
  (--finish_workers 2; a snapshot every iteration); the same command again
  retrains to the same state, finds the finish's checkpoint and goes on from
  each member's last iterate: each member's finish runs at most its 300
  iterations in all, not 300 after the kill."""
  import signal
  import subprocess
  import sys
  import time
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "lossland.scripts.ensemble", "--dataset", "sphere", "--P",
         "200", "--d", "5", "--depth", "1", "--width", "6", "--activation", "tanh",
         "--n_seeds", "2", "--optimizer", "adam", "--lr", "1e-2", "--max_steps", "300",
         "--finish", "newton", "--finish_iters", "300", "--checkpoint_every", "0",
         "--finish_workers", "2", "--plots=false", "--out_dir", str(out)]
  env = dict(os.environ, JAX_PLATFORMS="cpu", LOSSLAND_CACHE_DIR=str(tmp_path / "cache"))

  def in_finish():
    ens = out / "ensemble"
    for n in (os.listdir(ens) if ens.exists() else []):
      if n.endswith("_finish.npz"):
        try:
          running = checkpoint.read_meta(str(ens / n))["running"]
        except ValueError:  # being replaced
          continue
        if any(c["it"] >= 20 for c in running.values()):
          return {int(i): c["it"] for i, c in running.items()}
    return None

  p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
  t0, cur = time.time(), None
  while cur is None and p.poll() is None and time.time() - t0 < 240:
    cur = in_finish()
    time.sleep(0.005)
  p.send_signal(signal.SIGKILL)
  p.communicate()
  assert cur is not None, "the job ended before its finish was caught"
  r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "finish: resuming from" in r.stderr
  assert "resumed at iteration" in r.stderr
  runs = [n for n in os.listdir(out / "ensemble") if not n.startswith(".")]
  assert len(runs) == 1 and not [n for n in os.listdir(out / "ensemble") if n.startswith(".")]
  s = io.load_run(str(out / "ensemble" / runs[0])).summary
  # the budget holds in all, not from the resume: a member that ran out
  # used exactly 300 iterations, the one in progress at the kill at least
  # the iterations it had done then (its path after the resume differs
  # from an uninterrupted run's: it may converge)
  for k, m in enumerate(s["members"]):
    assert m["finished"] and m["finish_iterations"] <= 300
    assert m["finish_reason"] != "max_iter" or m["finish_iterations"] == 300
    if k in cur:
      assert m["finish_iterations"] >= cur[k]


def test_members_finished_side_by_side_equal_one_at_a_time(tmp_path, monkeypatch):
  """finish_members(workers=3): the three entrants' finishes run at the same
  time (seen inside kink_newton.finish), and every member's params, outputs,
  final measurements and finish fields equal those of one at a time,
  bitwise (seconds aside); the host's BLAS limit is back afterwards. A
  failure in one member reaches the caller and stops the others at their
  next iteration."""
  import threading
  import time
  from threadpoolctl import threadpool_info
  from lossland.train import finish as finish_lib
  _, j, res, args = _stage(tmp_path)
  ref, ref_info = finish_lib.finish_members(*args, tol=1e-10, max_iter=60)
  real = kink_newton.finish
  lock, now, peak = threading.Lock(), [0], [0]

  def counting(*a, **k):
    with lock:
      now[0] += 1
      peak[0] = max(peak[0], now[0])
    try:
      time.sleep(0.2)  # so that the three overlap even where one finish is quick
      return real(*a, **k)
    finally:
      with lock:
        now[0] -= 1
  blas = lambda: sorted((d["filepath"], d["num_threads"]) for d in threadpool_info())
  before = blas()
  monkeypatch.setattr(kink_newton, "finish", counting)
  out, info = finish_lib.finish_members(*args, tol=1e-10, max_iter=60, workers=3)
  assert peak[0] == 3 and blas() == before
  assert sum(ref_info.entered) == 3
  for a, b in zip(jax.tree_util.tree_leaves(out.params), jax.tree_util.tree_leaves(ref.params)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(out.f_train, ref.f_train)
  for m in ref.final:
    np.testing.assert_array_equal(out.final[m], ref.final[m])
  for f in ref_info._fields:
    if f != "seconds":
      np.testing.assert_array_equal(np.asarray(getattr(info, f)),
                                    np.asarray(getattr(ref_info, f)), err_msg=f)
  calls = []

  def failing(*a, **k):
    with lock:
      calls.append(k["max_iter"])
      first = len(calls) == 1
    if first:
      time.sleep(0.5)
      raise RuntimeError("member failed")
    for it in range(1, 3000):  # a finish of 30 s that snapshots every iteration
      k["snapshot_fn"](lambda: a[1], it, 0, 1.0)
      time.sleep(0.01)
    return real(*a, **k)
  monkeypatch.setattr(kink_newton, "finish", failing)
  t0, n_threads = time.time(), threading.active_count()
  with pytest.raises(RuntimeError, match="member failed"):
    finish_lib.finish_members(*args, tol=1e-10, max_iter=60, workers=3)
  assert len(calls) == 3 and time.time() - t0 < 10
  assert threading.active_count() == n_threads and blas() == before


def test_decay_newton_is_the_finish_on_each_decay_then_on_the_loss(tmp_path, monkeypatch):
  """--finish decay_newton: each entrant's result is kink_newton.finish on
  loss + mu |w|^2 / 2 for each decay in turn, then on the loss alone, each
  from the last one's result; its reason, r_sub and iterations are those of
  that chain (r_sub at entry: the loss's); decays must be positive."""
  from lossland import nets, stationarity
  from lossland.train import finish as finish_lib
  _, j, res, args = _stage(tmp_path)
  calls = []
  real = kink_newton.finish
  monkeypatch.setattr(kink_newton, "finish", lambda *a, **k: calls.append(k) or real(*a, **k))
  out, info = finish_lib.finish_members(*args, tol=1e-10, max_iter=60, method="decay_newton",
                                        decays=(1e-2, 1e-3))
  entered = [k for k in range(3) if info.entered[k]]
  assert entered
  assert [c["weight_decay"] for c in calls] == [1e-2, 1e-3, 0.0] * len(entered)
  x, y = j.ds.x_train, j.ds.y_train
  apply_fn = nets.cached_apply_fn(j.net, x.dtype)
  for k in entered:
    p = jax.tree_util.tree_map(lambda a: a[k], res.params)  # tanh: no rescaling to balance
    r0 = stationarity.stationarity(j.net, apply_fn, p, x, y, j.loss).force_residual
    n = 0
    for mu in (1e-2, 1e-3, 0.0):
      o = real(j.net, p, x, y, j.loss, tol=1e-10, max_iter=60, weight_decay=mu)
      p, n = o.params, n + o.n_iter
    got = jax.tree_util.tree_map(lambda a: a[k], out.params)
    np.testing.assert_array_equal(ravel_pytree(got)[0], ravel_pytree(p)[0])
    assert (info.reason[k], info.n_iter[k]) == (o.reason, n)
    assert info.residual_after[k] == o.record.force_residual and info.converged[k]
    assert info.residual_before[k] == r0
  with pytest.raises(ValueError, match="decays must be positive"):
    finish_lib.finish_members(*args, tol=1e-10, method="decay_newton", decays=(0.0,))


def test_an_interrupted_decay_newton_resumes_in_its_stage(tmp_path, monkeypatch):
  """Killed inside member 1's last stage (on the loss): run again, member 1
  goes on in that stage from its last iterate for the iterations left (its
  decay stage not run again), member 2 runs both stages."""
  _, j, res, args = _stage(tmp_path)
  kw = dict(tol=1e-10, max_iter=60, method="decay_newton", decays=(1e-2,))
  ckpt = str(tmp_path / "finish.npz")
  real = kink_newton.finish
  meta, flat1, (out, info), calls = _killed_and_resumed(
      monkeypatch, args, kw, ckpt, lambda cur: cur.get("stage") == 1 and cur.get("it", 0) >= 2)
  cur = meta["running"]["1"]
  assert sorted(meta["done"]) == ["0"] and cur["stage"] == 1
  assert [(c["weight_decay"], c["max_iter"]) for c in calls] == [
      (0.0, 60 - cur["it"]), (1e-2, 60), (0.0, 60)]
  unravel = ravel_pytree(jax.tree_util.tree_map(lambda a: a[1], res.params))[1]
  cont = real(j.net, unravel(flat1), j.ds.x_train, j.ds.y_train, j.loss,
              tol=1e-10, max_iter=60 - cur["it"])
  got = ravel_pytree(jax.tree_util.tree_map(lambda a: a[1], out.params))[0]
  np.testing.assert_array_equal(got, ravel_pytree(cont.params)[0])
  assert info.n_iter[1] == cur["n_iter"] + cont.n_iter  # the decay stage's and this stage's
  assert info.residual_before[1] == cur["r0"]
