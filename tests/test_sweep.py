"""Sweeps: grids, shards, cells.jsonl, restarts after SIGKILL, shared directories."""
import fcntl
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from lossland import io
from lossland import sweep

import cli_runner


# -- a fake ensemble job: writes a run directory the way io.new_run does -----

def _fake_validate(values):
  return dict({"P": 10, "width": 3, "x64": True, "out_dir": "runs"}, **values)


def _write_run(cell_out_dir, values):
  """A complete run directory (staged, renamed into place), as the job does."""
  parent = os.path.join(cell_out_dir, "ensemble")
  os.makedirs(parent, exist_ok=True)
  name = f"{time.time_ns()}_{os.getpid()}"
  staging = os.path.join(parent, f".{name}.x.tmp")
  os.makedirs(staging)
  summary = {"P": values["P"], "score": values["P"] * values["width"]}
  with open(os.path.join(staging, "summary.json"), "w") as fh:
    json.dump(summary, fh)
  os.rename(staging, os.path.join(parent, name))
  return os.path.join(parent, name), summary


class FakeJob:
  def __init__(self):
    self.calls = []

  def __call__(self, values):
    self.calls.append(values)
    return _write_run(values["out_dir"], values)


def _lines(out_dir):
  with open(os.path.join(out_dir, "cells.jsonl")) as fh:
    return [json.loads(l) for l in fh.read().splitlines()]


def _run_dirs(out_dir, cid):
  d = os.path.join(out_dir, "cells", cid, "ensemble")
  return [n for n in os.listdir(d) if not n.startswith(".")]


GRID = sweep.expand_grid({"width": 3}, {"P": [10, 20, 30], "width": [2, 4]})


# -- pure functions ---------------------------------------------------------

def test_expand_grid_is_the_product_in_a_fixed_order():
  cells = sweep.expand_grid({"depth": 2, "P": 1}, {"P": [10, 20], "width": [3, 6, 9]})
  expected = [{"depth": 2, "P": p, "width": w} for p in (10, 20) for w in (3, 6, 9)]
  assert cells == expected
  assert sweep.expand_grid({"a": 1}, {}) == [{"a": 1}]
  with pytest.raises(ValueError):
    sweep.expand_grid({}, {"P": []})


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_shards_are_disjoint_and_cover_the_grid(n):
  cells = list(range(17))
  parts = [sweep.shard(cells, i, n) for i in range(n)]
  assert sorted(itertools.chain(*parts)) == cells
  assert sum(map(len, parts)) == len(cells)
  assert max(map(len, parts)) - min(map(len, parts)) <= 1
  for bad in [(n, n), (-1, n), (0, 0)]:
    with pytest.raises(ValueError):
      sweep.shard(cells, *bad)


def test_cell_id_is_stable_and_ignores_output_options():
  a = {"P": 10, "width": 3, "lr": 0.01, "out_dir": "x", "plots": True}
  b = {"plots": False, "out_dir": "y", "lr": 0.01, "width": 3, "P": 10}
  assert sweep.cell_id(a) == sweep.cell_id(b)
  assert len(sweep.cell_id(a)) == 12
  assert sweep.cell_id(a) != sweep.cell_id(dict(a, P=11))
  assert sweep.cell_id(a) != sweep.cell_id(dict(a, lr=0.02))
  # Options at the job's default are left out: ids survive new options.
  from lossland import job
  v = job.validate({"dataset": "sphere", "P": 40})
  assert sweep.identity(v) == {"dataset": "sphere", "P": 40}
  assert sweep.cell_id(v) == sweep.cell_id(job.validate({"dataset": "sphere", "P": 40, "lr": 1e-2}))
  assert sweep.cell_id(v) == sweep.cell_id(job.validate({"dataset": "sphere", "P": 40.0}))
  assert sweep.identity(dict(v, new_option=3), dict(job.defaults(), new_option=3)) == \
      sweep.identity(v)
  # Pinned: sweeps started with this version must resume with later ones.
  assert sweep.cell_id(v) == "568f0164d210"
  # the sweep (job-agnostic, so it keeps its own list) and the job's
  # checkpoint ignore the same options, e.g. --finish_workers
  assert set(sweep.IGNORED_OPTIONS) == set(job.NON_KEY_OPTIONS)
  assert sweep.cell_id(dict(v, finish_workers=4)) == sweep.cell_id(v)


def test_a_changed_default_is_refused_not_mixed_in(tmp_path, monkeypatch):
  from lossland import job
  out = str(tmp_path)
  cells = [{"dataset": "sphere", "P": 40}]
  sweep.run_sweep(cells, out, run_cell_fn=FakeJob(), validate_fn=job.validate, progress=False)
  id0 = sweep.cell_id(job.validate(cells[0]))
  # The job's default lr changes: the same cell id now means other numbers.
  new_defaults = dict(job.defaults(), lr=0.02)
  monkeypatch.setattr(sweep, "_job_defaults", lambda: new_defaults)
  validate = lambda c: dict(job.validate(c), lr=0.02)
  assert sweep.cell_id(validate(cells[0])) == id0
  job2 = FakeJob()
  with pytest.raises(io.InputError, match="lr=0.01 there, 0.02 now"):
    sweep.run_sweep(cells, out, run_cell_fn=job2, validate_fn=validate, progress=False)
  assert job2.calls == []


# -- the engine with a fake job ----------------------------------------------

def test_one_line_per_cell_and_a_restart_runs_nothing(tmp_path):
  out = str(tmp_path)
  job = FakeJob()
  recs = sweep.run_sweep(GRID, out, run_cell_fn=job, validate_fn=_fake_validate,
                         progress=False)
  assert len(job.calls) == 6
  assert [r["flags"]["P"] for r in recs] == [10, 10, 20, 20, 30, 30]
  assert [r["summary"]["score"] for r in recs] == [c["P"] * c["width"] for c in GRID]
  lines = _lines(out)
  assert len(lines) == 6 and len({l["cell_id"] for l in lines}) == 6
  for r in recs:
    assert os.path.isfile(os.path.join(r["run_dir"], "summary.json"))
    assert r["flags"]["out_dir"] == os.path.join(out, "cells", r["cell_id"])
    assert _run_dirs(out, r["cell_id"]) == [os.path.basename(r["run_dir"])]
  # Restart: everything is skipped.
  job2 = FakeJob()
  again = sweep.run_sweep(GRID, out, run_cell_fn=job2, validate_fn=_fake_validate,
                          progress=False)
  assert job2.calls == [] and again == recs and len(_lines(out)) == 6
  # More cells on the same directory (adaptive refinement): only the new ones run.
  more = GRID + [{"P": 15, "width": 2}, {"P": 10, "width": 2}]
  recs3 = sweep.run_sweep(more, out, run_cell_fn=job2, validate_fn=_fake_validate,
                          progress=False)
  assert [c["P"] for c in job2.calls] == [15]
  assert len(recs3) == 8 and len(_lines(out)) == 7
  assert sweep.read_cells(out) == recs + [recs3[6]]


def test_the_sweep_line_shows_what_a_running_cell_is_doing(tmp_path, capsys):
  """A run function that takes ``stage_fn`` (as the default one, which hands
  it to the ensemble job) gets one that writes on the sweep's line, with the
  cell's id and label; one that does not is called as before."""
  seen = []

  class StagedJob(FakeJob):
    takes_stage_fn = True

    def __call__(self, values, stage_fn=None):
      stage_fn("training 50% step 10/20")
      seen.append(values["P"])
      return super().__call__(values)

  recs = sweep.run_sweep(GRID[:2], str(tmp_path), run_cell_fn=StagedJob(),
                         validate_fn=_fake_validate, progress=True)
  err = capsys.readouterr().err
  for r in recs:
    assert f"cell {r['cell_id']} (" in err and "): training 50% step 10/20" in err
  assert seen == [10, 10]
  assert sweep._default_run_cell.takes_stage_fn and sweep._default_run_batch.takes_stage_fn
  plain = FakeJob()   # no stage_fn argument
  sweep.run_sweep(GRID[2:3], str(tmp_path), run_cell_fn=plain, validate_fn=_fake_validate,
                  progress=True)
  assert len(plain.calls) == 1


def test_shards_into_one_directory_cover_the_grid(tmp_path):
  out = str(tmp_path)
  job = FakeJob()
  got = []
  for i in range(3):
    got += sweep.run_sweep(GRID, out, shard=(i, 3), run_cell_fn=job,
                           validate_fn=_fake_validate, progress=False)
  assert len(job.calls) == 6 and len(_lines(out)) == 6
  assert sorted(r["cell_id"] for r in got) == sorted(r["cell_id"] for r in sweep.read_cells(out))
  with pytest.raises(ValueError, match="shard"):
    sweep.run_sweep(GRID, out, shard=(3, 2), run_cell_fn=job, validate_fn=_fake_validate)


def test_torn_last_line_is_ignored_and_cut_by_the_next_writer(tmp_path):
  out = str(tmp_path)
  job = FakeJob()
  sweep.run_sweep(GRID[:2], out, run_cell_fn=job, validate_fn=_fake_validate, progress=False)
  path = tmp_path / "cells.jsonl"
  whole = path.read_bytes()
  torn = json.dumps({"cell_id": "deadbeef0000", "flags": {}, "summary": {"a": 1}})[:25]
  path.write_bytes(whole + torn.encode())
  first = [json.loads(l) for l in whole.decode().splitlines()]
  assert [r["cell_id"] for r in sweep.read_cells(out)] == [l["cell_id"] for l in first]
  sweep.run_sweep(GRID[:3], out, run_cell_fn=job, validate_fn=_fake_validate, progress=False)
  lines = _lines(out)   # every line parses: the torn one was cut off
  assert len(lines) == 3 and len(job.calls) == 3
  assert path.read_bytes().startswith(whole)


def test_a_cell_killed_after_its_run_directory_is_adopted(tmp_path):
  out = str(tmp_path)
  cid = sweep.cell_id(_fake_validate(GRID[1]))

  def dies_after_rename(values):
    if values["out_dir"].endswith(cid):
      _write_run(values["out_dir"], values)
      raise KeyboardInterrupt  # killed before the jsonl line
    return _write_run(values["out_dir"], values)

  with pytest.raises(KeyboardInterrupt):
    sweep.run_sweep(GRID, out, run_cell_fn=dies_after_rename,
                    validate_fn=_fake_validate, progress=False)
  assert len(_lines(out)) == 1 and len(_run_dirs(out, cid)) == 1
  existing = _run_dirs(out, cid)[0]
  job = FakeJob()
  recs = sweep.run_sweep(GRID, out, run_cell_fn=job, validate_fn=_fake_validate,
                         progress=False)
  assert cid not in [sweep.cell_id(_fake_validate(c)) for c in job.calls]
  assert len(job.calls) == 4  # cells 2..5; cell 0 was recorded, cell 1 adopted
  assert os.path.basename(recs[1]["run_dir"]) == existing
  assert recs[1]["summary"]["score"] == 10 * 4
  assert _run_dirs(out, cid) == [existing] and len(_lines(out)) == 6


def test_an_interrupted_cell_is_resumed_with_its_checkpoint(tmp_path):
  out = str(tmp_path)
  seen = []

  def interrupted(values):
    ens = os.path.join(values["out_dir"], "ensemble")
    os.makedirs(os.path.join(ens, ".20260101_x.abc.tmp"))   # a killed staging dir
    with open(os.path.join(ens, ".checkpoint_abc.npz"), "w") as fh:
      fh.write("state")
    raise KeyboardInterrupt

  def resumes(values):
    ens = os.path.join(values["out_dir"], "ensemble")
    seen.append(sorted(os.listdir(ens)))
    return _write_run(values["out_dir"], values)

  with pytest.raises(KeyboardInterrupt):
    sweep.run_sweep(GRID[:1], out, run_cell_fn=interrupted, validate_fn=_fake_validate,
                    progress=False)
  sweep.run_sweep(GRID[:1], out, run_cell_fn=resumes, validate_fn=_fake_validate,
                  progress=False)
  # The job found its checkpoint (kept) but not the dead staging directory,
  # and the checkpoint is gone once the cell is recorded.
  assert seen == [[".checkpoint_abc.npz"]]
  cid = sweep.cell_id(_fake_validate(GRID[0]))
  assert os.listdir(os.path.join(out, "cells", cid, "ensemble")) == _run_dirs(out, cid)


def test_failed_cells_do_not_stop_the_others_and_are_retried(tmp_path):
  out = str(tmp_path)

  def fails_at_30(values):
    if values["P"] == 30:
      raise io.InputError("every member diverged")
    return _write_run(values["out_dir"], values)

  with pytest.raises(sweep.CellsFailed, match="2 cell.*every member diverged") as e:
    sweep.run_sweep(GRID, out, run_cell_fn=fails_at_30, validate_fn=_fake_validate,
                    progress=False)
  assert len(e.value.records) == 4 and len(_lines(out)) == 4
  job = FakeJob()
  sweep.run_sweep(GRID, out, run_cell_fn=job, validate_fn=_fake_validate, progress=False)
  assert [c["P"] for c in job.calls] == [30, 30]


def test_a_cell_held_by_another_process_is_skipped_and_done_later(tmp_path):
  out = str(tmp_path)
  cid = sweep.cell_id(_fake_validate(GRID[0]))
  os.makedirs(tmp_path / "cells" / cid)
  lock = open(tmp_path / "cells" / cid / ".lock", "w")
  fcntl.flock(lock, fcntl.LOCK_EX)   # another open file: conflicts like another process
  job = FakeJob()
  done = []

  def on_done(rec, how):
    assert how == "ran"
    done.append(rec["cell_id"])
    if len(done) == 5:
      lock.close()   # the other process finishes without completing the cell

  recs = sweep.run_sweep(GRID, out, run_cell_fn=job, validate_fn=_fake_validate,
                         progress=False, poll_seconds=0.01, on_cell_done=on_done)
  assert [sweep.cell_id(_fake_validate(c)) for c in job.calls][-1] == cid
  assert len(job.calls) == 6 and done[-1] == cid
  assert [r["cell_id"] for r in recs][0] == cid and len(_lines(out)) == 6


_WORKER = textwrap.dedent("""
  import json, os, sys, time
  sys.path.insert(0, {tests!r})
  from lossland import sweep
  import test_sweep as t
  out, log = sys.argv[1], sys.argv[2]
  def job(values):
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, (json.dumps([os.getpid(), values["P"], values["width"]]) + "\\n").encode())
    os.close(fd)
    time.sleep(0.15)
    return t._write_run(values["out_dir"], values)
  cells = sweep.expand_grid({{}}, {{"P": [1, 2, 3, 4, 5], "width": [1, 2]}})
  sweep.run_sweep(cells, out, run_cell_fn=job, validate_fn=t._fake_validate,
                  progress=True, poll_seconds=0.05)
""")


def test_two_concurrent_sweeps_run_each_cell_once(tmp_path):
  script = tmp_path / "worker.py"
  script.write_text(_WORKER.format(tests=os.path.dirname(__file__)))
  out, log = tmp_path / "sweep", tmp_path / "calls.log"
  procs = [subprocess.Popen([sys.executable, str(script), str(out), str(log)],
                            stderr=subprocess.PIPE, text=True) for _ in range(2)]
  errs = [p.communicate(timeout=120)[1] for p in procs]
  assert all(p.returncode == 0 for p in procs), errs
  calls = [json.loads(l) for l in log.read_text().splitlines()]
  assert sorted((p, w) for _, p, w in calls) == [(p, w) for p in range(1, 6) for w in (1, 2)]
  assert len({pid for pid, _, _ in calls}) == 2, "both processes should have worked"
  lines = _lines(str(out))
  assert len(lines) == 10 and len({l["cell_id"] for l in lines}) == 10
  for l in lines:
    assert len(_run_dirs(str(out), l["cell_id"])) == 1
  assert "10/10 cells" in errs[0] + errs[1]


# -- the script ---------------------------------------------------------------

def _env(tmp_path):
  # A private compilation cache: restarts reuse what the first process compiled.
  return dict(os.environ, JAX_PLATFORMS="cpu", LOSSLAND_CACHE_DIR=str(tmp_path / "jaxcache"))


def _script(args, tmp_path, **kw):
  return cli_runner.run("lossland.scripts.sweep", args, env=_env(tmp_path), timeout=300, **kw)


TINY = ["--dataset", "sphere", "--P", "40", "--d", "5", "--depth", "2", "--width", "3",
        "--n_test", "20", "--n_seeds", "2", "--plots=false"]


def test_split_grid_argv_parses_comma_lists_with_the_job_types():
  from lossland import job
  split = lambda argv: sweep.split_grid_argv(argv, job.SPEC)
  axes, rest = split(
      ["prog", "--P", "150,300", "--width=6,12", "-depth", "2", "--out_dir", "d",
       "--nobias", "--lr", "1e-2,0.1", "--x64", "--activation", "relu,tanh", "--report"])
  assert axes == {"P": [150, 300], "width": [6, 12], "depth": [2], "bias": [False],
                  "lr": [0.01, 0.1], "x64": [True], "activation": ["relu", "tanh"]}
  assert rest == ["prog", "--out_dir", "d", "--report"]
  for bad, msg in [(["--P", "1,,2"], "empty"), (["--P", "1,x"], "expected int"),
                   (["--P="], "empty"), (["--x64", "true,false"], "x64 cannot"),
                   (["--activation", "relu,cube"], "must be one of"),
                   (["--P", "1", "--P", "2"], "twice"), (["--P", "3,3"], "twice"),
                   (["--P"], "needs a value")]:
    with pytest.raises(ValueError, match=msg):
      split(["prog"] + bad)


@pytest.mark.parametrize("bad", [["--P", "20,x"], ["--nosuchflag", "3"], ["--shard", "3/2"]])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, bad):
  out = _script(["--out_dir", str(tmp_path / "s")] + TINY + bad, tmp_path)
  assert out.returncode == 2, out.stderr
  err = out.stderr.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error:"), out.stderr
  assert not (tmp_path / "s").exists()


def test_dry_run_lists_the_grid_and_writes_nothing(tmp_path):
  args = ["--dataset", "sphere", "--d", "5", "--width", "3", "--n_seeds", "2"]
  out = _script(["--out_dir", str(tmp_path / "s"), "--shard", "1/2", "--dry_run"] + args
                + ["--P", "20,40,80", "--depth", "2,3"], tmp_path)
  assert out.returncode == 0, out.stderr
  rows = [l for l in out.stdout.splitlines() if "depth=" in l]
  # the product in command-line order, the last option fastest; shard 1/2 = cells 1, 3, 5
  cells = [(int(p), int(d)) for p, d in (re.search(r"P=(\d+) depth=(\d+)", r).groups() for r in rows)]
  assert cells == [(p, d) for p in (20, 40, 80) for d in (2, 3)]
  assert [(" * " in r) for r in rows] == [False, True] * 3
  assert all(r.rstrip().endswith("todo") for r in rows)
  ids = [r.split()[1] for r in rows]
  assert len(set(ids)) == 6 and all(re.fullmatch(r"[0-9a-f]{12}", c) for c in ids)
  assert "6 cells; 3 in shard 1/2" in out.stdout
  assert not (tmp_path / "s").exists()


def _wait_for(cond, proc, timeout=240.0, dt=0.02):
  t0 = time.time()
  while time.time() - t0 < timeout:
    got = cond()
    if got or proc.poll() is not None:
      return got
    time.sleep(dt)
  raise AssertionError("timed out")


def test_sweep_survives_sigkill_and_records_every_cell_once(tmp_path):
  out = tmp_path / "s"
  # Cells differ by seed only: one compilation; 1000 steps of a jammed net
  # (P/N = 1.5, jam_window 2000 > max_steps) in chunks of 16 with a checkpoint after each chunk.
  cmd = [sys.executable, "-m", "lossland.scripts.sweep", "--out_dir", str(out)] + TINY + [
      "--seed", "0,2,4", "--max_steps", "400", "--chunk_steps", "16",
      "--checkpoint_every", "0", "--poll_seconds", "0.1"]
  jsonl = out / "cells.jsonl"
  n_lines = lambda: len(jsonl.read_text().splitlines()) if jsonl.exists() else 0

  def in_flight_checkpoint():
    done = {l["cell_id"] for l in _lines(str(out))} if jsonl.exists() else set()
    for cid in (os.listdir(out / "cells") if (out / "cells").exists() else []):
      ens = out / "cells" / cid / "ensemble"
      if cid not in done and ens.exists() and any(
          n.startswith(".checkpoint_") and n.endswith(".npz") for n in os.listdir(ens)):
        return cid
    return None

  def start():
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(tmp_path))

  # 1: killed right after the first cell's line appears.
  p = start()
  assert _wait_for(lambda: n_lines() >= 1, p), p.communicate()
  p.send_signal(signal.SIGKILL)
  p.wait()
  # 2: killed in the middle of a cell, once its checkpoint exists.
  p = start()
  killed_cell = _wait_for(in_flight_checkpoint, p, dt=0.005)
  p.send_signal(signal.SIGKILL)
  p.wait()
  # Restart until done.
  logs = []
  for _ in range(3):
    p = start()
    stdout, stderr = p.communicate(timeout=300)
    logs.append(stderr)
    if p.returncode == 0:
      break
  assert p.returncode == 0, logs
  lines = _lines(str(out))
  assert sorted(l["flags"]["seed"] for l in lines) == [0, 2, 4]
  assert len({l["cell_id"] for l in lines}) == 3
  for l in lines:
    ens = out / "cells" / l["cell_id"] / "ensemble"
    assert _run_dirs(str(out), l["cell_id"]) == [os.path.basename(l["run_dir"])]
    assert not [n for n in os.listdir(ens) if n.startswith(".")], os.listdir(ens)
    s = json.loads((ens / os.path.basename(l["run_dir"]) / "summary.json").read_text())
    assert l["summary"] == s and [m["seed"] for m in s["members"]] == [
        l["flags"]["seed"], l["flags"]["seed"] + 1]
  if killed_cell:  # the restart resumed the killed cell from its checkpoint
    assert f"running cell {killed_cell}" in logs[0] and "from its checkpoint" in logs[0], logs[0]


def _summary_job(values):
  """A fake job with a realistic summary: k of 3 healthy members sat, one diverged."""
  k = (values["P"] // 10 + values["depth"]) % 4
  classes = ["sat"] * k + ["jammed"] * (3 - k) + ["diverged"]
  n_w = values["width"] * 10 * values["depth"]
  members = [{"seed": s, "class": c, "n_delta_over_n": 0.0 if c == "sat" else 0.25,
              "test_error": 0.5} for s, c in enumerate(classes)]
  summary = {"members": members, "n_members": 4, "n_healthy": 3,
             "member_class_counts": {c: classes.count(c) for c in set(classes)},
             "n_jammed_nd_over_0.1N": 3 - k, "mean_test_error": 0.1 * k,
             "ensemble_test_error": 0.05 * k, "n_weights": n_w, "P": values["P"],
             "wall_seconds": 1.0}
  parent = os.path.join(values["out_dir"], "ensemble", "run")
  os.makedirs(parent)
  with open(os.path.join(parent, "summary.json"), "w") as fh:
    json.dump(summary, fh)
  return parent, summary


def test_report_prints_a_table_and_writes_figures(tmp_path):
  from lossland import job
  out = tmp_path / "s"
  cells = sweep.expand_grid({"dataset": "sphere"}, {"P": [10, 20, 40], "depth": [2, 3]})
  recs = sweep.run_sweep(cells, str(out), run_cell_fn=_summary_job,
                         validate_fn=job.validate, progress=False)
  assert sweep.report_axes(recs) == ("P/N", ["depth"])
  assert sweep.report_axes(recs, "N") == ("N", ["P", "depth"])
  assert sweep.report_axes(recs, "depth") == ("depth", ["P"])
  res = _script(["--out_dir", str(out), "--report"], tmp_path)
  assert res.returncode == 0, res.stderr
  rows = {l.split()[0]: l.split() for l in res.stdout.splitlines()
          if re.match(r"[0-9a-f]{12} ", l)}
  assert len(rows) == 6
  header = res.stdout.splitlines()[0].split()
  col = lambda name, r: r[header.index(name)]
  for r in recs:
    k = (r["flags"]["P"] // 10 + r["flags"]["depth"]) % 4
    row = rows[r["cell_id"]]
    assert float(col("frac_sat", row)) == pytest.approx(k / 3, abs=1e-3)
    assert float(col("N_delta/N", row)) == pytest.approx(0.25 * (3 - k) / 3, abs=1e-4)
    n_w = r["flags"]["width"] * 10 * r["flags"]["depth"]
    assert float(col("P/N", row)) == pytest.approx(r["flags"]["P"] / n_w, rel=1e-2)
    assert col("healthy", row) == "3/4"
  assert "one line per depth" in res.stdout
  for m in sweep.METRICS:
    assert (out / f"report_{m}.png").read_bytes()[:4] == b"\x89PNG"
  # A report on a directory without cells is an error.
  res = _script(["--out_dir", str(tmp_path / "empty"), "--report"], tmp_path)
  assert res.returncode == 2 and res.stderr.startswith("error: no completed cells")


def test_report_series_are_the_numbers_of_the_figures():
  """Hand-made records: one line per depth, points sorted by P/N, values from
  each summary; a string-valued x keeps the record order as categories."""
  recs = []
  for P, depth, data in ((40, 2, "sphere"), (10, 2, "teacher"), (20, 3, "sphere"),
                         (10, 3, "teacher")):
    k = P // 10  # members sat out of 4
    recs.append({"cell_id": f"{P}_{depth}", "flags": {"P": P, "depth": depth, "dataset": data,
                                                      "out_dir": "ignored"},
                 "summary": {"members": [{"class": "sat" if i < k else "jammed",
                                          "n_delta_over_n": 0.0 if i < k else 0.5}
                                         for i in range(4)],
                             "member_class_counts": {"sat": k, "jammed": 4 - k},
                             "n_weights": 10 * depth, "P": P}})
  s = sweep.report_series(recs, metrics=("frac_sat", "n_delta_over_n"))
  assert (s["x"], s["line_keys"], s["numeric"]) == ("P/N", ["depth", "dataset"], True)
  assert s["x_values"] == [2.0, 0.5, 20 / 30, 10 / 30]
  lines = s["metrics"]["frac_sat"]["lines"]
  assert lines == {"depth=2, dataset=sphere": [(2.0, 1.0)],
                   "depth=2, dataset=teacher": [(0.5, 0.25)],
                   "depth=3, dataset=sphere": [(20 / 30, 0.5)],
                   "depth=3, dataset=teacher": [(10 / 30, 0.25)]}
  assert s["metrics"]["n_delta_over_n"]["title"] == sweep.METRICS["n_delta_over_n"]
  s = sweep.report_series(recs, x="P", metrics=("n_delta_over_n",))
  assert s["line_keys"] == ["depth", "dataset"]
  s = sweep.report_series(recs, x="depth", metrics=("frac_sat",))
  assert s["numeric"] and s["line_keys"] == ["P", "dataset"]
  assert s["metrics"]["frac_sat"]["lines"]["P=10, dataset=teacher"] == [(2.0, 0.25), (3.0, 0.25)]
  s = sweep.report_series(recs, x="dataset", metrics=("frac_sat",))
  assert not s["numeric"] and s["x_values"] == ["sphere", "teacher", "sphere", "teacher"]
  assert s["metrics"]["frac_sat"]["lines"]["P=10, depth=2"] == [("teacher", 0.25)]


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_a_long_sweep_does_not_pile_up_compiled_programs(tmp_path):
  """Each cell's compiled programs are dropped after it (sweep.release_compiled):
  without that, every cell of a new shape added ~1500 memory mappings and a
  long phase search hit vm.max_map_count (LLVM 'Unable to allocate section
  memory'). Here 3 cells of different P in one process: the mappings after
  the last cell stay near those after the first (without the release they
  grow by ~3000 over the two later cells)."""
  code = textwrap.dedent(f"""
      import json, jax
      jax.config.update("jax_enable_x64", True)
      from lossland import sweep
      counts = []
      def on_done(rec, how):
        counts.append(sum(1 for _ in open("/proc/self/maps")))
      cells = [dict(dataset="sphere", P=P, d=4, depth=2, width=4, n_seeds=2, max_steps=200,
                    polish="lbfgs", polish_steps=50, n_test=0, plots=False, x64=True)
               for P in (30, 36, 42)]
      sweep.run_sweep(cells, {str(tmp_path / "sw")!r}, progress=False, on_cell_done=on_done)
      print(json.dumps(counts))
      """)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                     env=env, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  counts = json.loads(r.stdout.strip().splitlines()[-1])
  assert len(counts) == 3
  # without release_compiled: about +1500 per cell (+3000 over two cells)
  assert counts[-1] - counts[0] < 1000, counts


# -- cells batched into one program (batch_cells) ------------------------------

class FakeBatch:
  """A batched run: the groups it was given; a cell with P = 30 fails."""
  def __init__(self):
    self.groups = []

  def __call__(self, values_list):
    self.groups.append([(v["P"], v["width"]) for v in values_list])
    return [io.InputError("no healthy member") if v["P"] == 30 else
            _write_run(v["out_dir"], v) for v in values_list]


def test_batched_cells_run_by_key_each_with_its_own_line(tmp_path):
  out = str(tmp_path)
  job, fake = FakeJob(), FakeBatch()
  key = lambda v: v["width"] if v["width"] != 4 else None   # width 4: never batched
  kw = dict(run_cell_fn=job, validate_fn=_fake_validate, progress=False,
            batch_cells=True, run_batch_fn=fake, batch_key_fn=key)
  with pytest.raises(sweep.CellsFailed) as e:
    sweep.run_sweep(GRID, out, **kw)
  # width 2: one program of its three cells; width 4: each cell alone
  assert fake.groups == [[(10, 2), (20, 2), (30, 2)]]
  assert sorted((v["P"], v["width"]) for v in job.calls) == [(10, 4), (20, 4), (30, 4)]
  assert [v["P"] for v, _ in e.value.failures] == [30]
  lines = _lines(out)
  assert len(lines) == 5 and len({l["cell_id"] for l in lines}) == 5
  for l in lines:
    assert len(_run_dirs(out, l["cell_id"])) == 1
    assert l["run_dir"].startswith(os.path.join("cells", l["cell_id"]))
  # the restart reruns only the failed cell, alone (a group of one)
  recs = sweep.run_sweep(GRID, out, **dict(kw, run_batch_fn=lambda vs: [
      _write_run(v["out_dir"], v) for v in vs]))
  assert len(recs) == 6 and len(_lines(out)) == 6
  assert [v["P"] for v in job.calls[3:]] == [30]
  with pytest.raises(ValueError, match="run_batch_fn"):
    sweep.run_sweep(GRID, out, run_cell_fn=job, validate_fn=_fake_validate,
                    batch_cells=True)


def test_a_batch_leaves_cells_held_by_another_process(tmp_path):
  out = str(tmp_path)
  held = sweep.cell_id(_fake_validate(GRID[2]))     # P = 20, width 2
  os.makedirs(tmp_path / "cells" / held)
  lock = open(tmp_path / "cells" / held / ".lock", "w")
  fcntl.flock(lock, fcntl.LOCK_EX)
  groups = []

  def run_batch(values_list):
    groups.append(sorted((v["P"], v["width"]) for v in values_list))
    if len(groups) == 2:
      lock.close()
    return [_write_run(v["out_dir"], v) for v in values_list]

  sweep.run_sweep(GRID, out, run_cell_fn=FakeJob(), validate_fn=_fake_validate,
                  progress=False, poll_seconds=0.01, batch_cells=True,
                  run_batch_fn=run_batch, batch_key_fn=lambda v: v["width"])
  assert groups == [[(10, 2), (30, 2)], [(10, 4), (20, 4), (30, 4)]]
  assert len(_lines(out)) == 6   # the held cell ran alone once released


def test_a_batched_sweep_equals_the_cell_by_cell_sweep(tmp_path):
  import numpy as np
  base = dict(dataset="sphere", d=4, depth=2, width=5, n_test=0, max_steps=200, lr=0.02,
              jam_window=100, n_seeds=2, plots=False, polish="lbfgs", polish_steps=10,
              polish_jam_window=40)
  cells = sweep.expand_grid(base, {"P": [20, 45, 80]})
  a = sweep.run_sweep(cells, str(tmp_path / "a"), progress=False)
  b = sweep.run_sweep(cells, str(tmp_path / "b"), progress=False, batch_cells=True)
  assert [r["cell_id"] for r in a] == [r["cell_id"] for r in b]
  for ra, rb in zip(a, b):
    assert rb["summary"]["batch"] == {"jobs": 3, "members": 6}
    assert [m["class"] for m in ra["summary"]["members"]] == \
        [m["class"] for m in rb["summary"]["members"]]
    ea, eb = io.load_run(ra["run_dir"]).arrays, io.load_run(rb["run_dir"]).arrays
    np.testing.assert_allclose(eb["f_train"], ea["f_train"], rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(eb["y_train"], ea["y_train"])
  again = sweep.run_sweep(cells, str(tmp_path / "b"), progress=False, batch_cells=True)
  assert [r["run_dir"] for r in again] == [r["run_dir"] for r in b]


def test_a_killed_batch_resumes_in_a_copied_directory(tmp_path):
  """--batch_cells: killed once the program's checkpoint exists, the sweep
  directory copied elsewhere (another machine) resumes there, and its cells
  equal those of an uninterrupted batched sweep bitwise."""
  import shutil
  import numpy as np
  args = TINY + ["--seed", "0,2,4", "--max_steps", "400", "--chunk_steps", "16",
                 "--checkpoint_every", "0", "--batch_cells"]
  cmd = lambda out: [sys.executable, "-m", "lossland.scripts.sweep", "--out_dir", str(out)] + args
  env = _env(tmp_path)
  ref = subprocess.run(cmd(tmp_path / "ref"), capture_output=True, text=True, env=env,
                       timeout=300)
  assert ref.returncode == 0, ref.stderr[-2000:]
  first = tmp_path / "first"

  def batch_checkpoint():
    for root, _, files in os.walk(first / "cells"):
      if any(f.startswith(".checkpoint_batch_") and f.endswith(".npz") for f in files):
        return True
    return False
  p = subprocess.Popen(cmd(first), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env=env)
  assert _wait_for(batch_checkpoint, p, dt=0.005), p.communicate()
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert not (first / "cells.jsonl").exists()
  moved = tmp_path / "elsewhere" / "copy"
  shutil.copytree(first, moved)
  shutil.rmtree(first)
  r = subprocess.run(cmd(moved), capture_output=True, text=True, env=env, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "3 cells in one program from its checkpoint" in r.stderr, r.stderr[-2000:]
  got, want = _lines(str(moved)), _lines(str(tmp_path / "ref"))
  assert sorted(l["cell_id"] for l in got) == sorted(l["cell_id"] for l in want)
  want = {l["cell_id"]: l for l in want}
  for l in got:
    a = io.load_run(os.path.join(str(moved), l["run_dir"])).arrays
    b = io.load_run(os.path.join(str(tmp_path / "ref"), want[l["cell_id"]]["run_dir"])).arrays
    np.testing.assert_array_equal(a["params_final"], b["params_final"])
    np.testing.assert_array_equal(a["history_loss"], b["history_loss"])
    assert l["summary"]["batch"] == {"jobs": 3, "members": 6}
