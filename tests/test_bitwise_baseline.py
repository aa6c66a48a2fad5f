"""Bitwise baseline for refactors (issue 21, docs/reliability.md).

``test_runs_bitwise_equal_to_baseline`` runs the five small runs of
scripts/compare_runs.py (subprocesses, JAX_PLATFORMS=cpu) and compares the
sha256 digest of every array of their arrays.npz files with
tests/data/bitwise_baseline.json. The digests depend on the jax, jaxlib and
numpy versions and on the CPU, so the test skips (naming the difference and
the command to re-record) when the recorded environment is not the running
one. The other tests check the comparison logic itself on hand-made files and
do not depend on versions.
"""
import importlib.util
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = os.path.join(ROOT, "tests", "data", "bitwise_baseline.json")
BASELINE_REL = "tests/data/bitwise_baseline.json"


def _load_tool():
  spec = importlib.util.spec_from_file_location(
      "compare_runs", os.path.join(ROOT, "scripts", "compare_runs.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


cr = _load_tool()


def _save(path, **arrays):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.savez(path, **arrays)
  return path


def _arrays():
  return {"loss": np.array([0.5, np.nan, 1e-300, -0.0]),
          "steps": np.arange(4, dtype=np.int64),
          "unsat": np.array([[True, False], [False, False]]),
          "empty": np.zeros((0, 3))}


def test_identical_files_equal_nan_equal_nan(tmp_path):
  a = _save(str(tmp_path / "a" / "arrays.npz"), **_arrays())
  b = _save(str(tmp_path / "b" / "arrays.npz"), **_arrays())
  assert cr.compare_npz(a, b) == []
  assert cr.compare_run_dirs(str(tmp_path / "a"), str(tmp_path / "b")) == []
  # NaN against NaN is equal; NaN against a number is not
  x = _arrays()
  x["loss"] = np.array([0.5, 7.0, 1e-300, -0.0])
  diffs = cr.compare_arrays(_arrays(), x)
  assert len(diffs) == 1 and diffs[0].startswith("loss:") and "NaN in one only" in diffs[0]


def test_one_element_differs(tmp_path):
  x = _arrays()
  x["loss"] = np.array([0.5, np.nan, np.nextafter(1e-300, 1.0), -0.0])   # 1 ulp
  a = _save(str(tmp_path / "a" / "arrays.npz"), **_arrays())
  b = _save(str(tmp_path / "b" / "arrays.npz"), **x)
  diffs = cr.compare_npz(a, b)
  assert len(diffs) == 1 and diffs[0].startswith("loss:"), diffs
  assert "1 of 4 differ" in diffs[0] and "max abs diff" in diffs[0]
  x = _arrays()
  x["unsat"] = ~x["unsat"]
  diffs = cr.compare_arrays(_arrays(), x)
  assert diffs == ["unsat: 4 of 4 differ"]
  x = _arrays()
  x["steps"] = x["steps"].copy()
  x["steps"][-1] = 99
  diffs = cr.compare_arrays(_arrays(), x)
  assert len(diffs) == 1 and diffs[0].startswith("steps:") and "max abs diff 96" in diffs[0]
  # -0.0 and 0.0: equal for np.array_equal, not bitwise
  x = _arrays()
  x["loss"] = np.array([0.5, np.nan, 1e-300, 0.0])
  assert cr.compare_arrays(_arrays(), x) == ["loss: sign of zero differs at 1 of 4"]
  assert cr.array_digest(x["loss"]) != cr.array_digest(_arrays()["loss"])
  # any NaN equals any NaN, in the comparison and in the digest
  x = _arrays()
  x["loss"] = x["loss"].copy()
  x["loss"].view(np.uint64)[1] = 0xFFF8000000000123  # another NaN payload
  assert np.isnan(x["loss"][1])
  assert cr.compare_arrays(_arrays(), x) == []
  assert cr.array_digest(x["loss"]) == cr.array_digest(_arrays()["loss"])


def test_missing_key_dtype_shape(tmp_path):
  x = _arrays()
  del x["steps"]
  x["extra"] = np.ones(2)
  diffs = cr.compare_arrays(_arrays(), x)
  assert "steps: only in the reference" in diffs
  assert "extra: only in the new run" in diffs
  assert len(diffs) == 2
  x = _arrays()
  x["steps"] = x["steps"].astype(np.int32)
  assert cr.compare_arrays(_arrays(), x) == ["steps: dtype int64 vs int32"]
  x = _arrays()
  x["loss"] = x["loss"].reshape(2, 2)
  assert cr.compare_arrays(_arrays(), x) == ["loss: shape (4,) vs (2, 2)"]


def test_run_directories_matched_and_digests(tmp_path):
  # run directories named <UTC time>_<hash> (the hash includes --out_dir) match
  _save(str(tmp_path / "a" / "0" / "ensemble" / "20260101T000000000001Z_0123abcd" /
            "arrays.npz"), **_arrays())
  _save(str(tmp_path / "b" / "0" / "ensemble" / "20260102T101010123456Z_89abcdef" /
            "arrays.npz"), **_arrays())
  # hidden folders (staging, checkpoints) are not runs
  _save(str(tmp_path / "b" / "0" / "ensemble" / ".staging.tmp" / "arrays.npz"), x=np.ones(1))
  assert cr.compare_run_dirs(str(tmp_path / "a"), str(tmp_path / "b")) == []
  da, db = cr.run_digests(str(tmp_path / "a")), cr.run_digests(str(tmp_path / "b"))
  assert list(da) == ["0/ensemble/RUN/arrays.npz"] and da == db
  # a file on one side only
  _save(str(tmp_path / "b" / "1" / "landscape" / "20260102T101010123456Z_89abcdef" /
            "arrays.npz"), **_arrays())
  assert cr.compare_run_dirs(str(tmp_path / "a"), str(tmp_path / "b")) == [
      "1/landscape/RUN/arrays.npz: only in the new run"]
  # digest records: a changed array, a missing key, changed commands
  rec = {"runs": {"r": {"commands": [["x"]], "arrays": da}}}
  cur = json.loads(json.dumps(rec))
  assert cr.compare_digests(rec, cur) == {"r": []}
  cur["runs"]["r"]["arrays"]["0/ensemble/RUN/arrays.npz"]["loss"] = "0" * 64
  del cur["runs"]["r"]["arrays"]["0/ensemble/RUN/arrays.npz"]["steps"]
  cur["runs"]["r"]["commands"] = [["y"]]
  diffs = cr.compare_digests(rec, cur)["r"]
  assert "0/ensemble/RUN/arrays.npz: loss: digest differs" in diffs
  assert "0/ensemble/RUN/arrays.npz: steps: only in the record" in diffs
  assert any("commands changed" in d for d in diffs)


def test_report_lines(tmp_path):
  """--ref's report: OK per run, or the run, file and key with the max abs difference."""
  run = "20260101T000000000001Z_0123abcd"
  for side in ("ref", "new"):
    _save(str(tmp_path / side / "same" / "0" / "ensemble" / run / "arrays.npz"), **_arrays())
    x = _arrays()
    if side == "new":
      x["loss"] = np.array([0.5, np.nan, 2.5e-3, -0.0])
    _save(str(tmp_path / side / "changed" / "0" / "ensemble" / run / "arrays.npz"), **x)
  out = io.StringIO()
  t = {"same": 1.0, "changed": 2.0}
  ok = cr.report(str(tmp_path / "ref"), str(tmp_path / "new"), t, t, out=out)
  lines = out.getvalue().splitlines()
  assert not ok
  assert lines[0].startswith("same: OK, 1 arrays.npz, 4 arrays bitwise equal")
  assert lines[1].startswith("changed: DIFFERENT")
  assert lines[2] == "  0/ensemble/RUN/arrays.npz: loss: max abs diff 0.0025, 1 of 4 differ"
  assert lines[-1] == "runs differ"


@pytest.mark.parametrize("args", [["--ref", "no-such-revision-xyz"], ["--record", "x.json",
                                  "--runs", "bogus"], ["--check", "/nonexistent/b.json"],
                                  ["--ref", "HEAD", "--at", "HEAD"], ["--jobs", "1"]])
def test_bad_input_exit_2(args, tmp_path):
  res = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "compare_runs.py"),
                        *args], capture_output=True, text=True, cwd=str(tmp_path))
  assert res.returncode == 2, res.stderr
  assert not os.listdir(tmp_path)


def test_digest_depends_on_dtype_shape_and_bytes():
  x = np.arange(6, dtype=np.float64)
  assert cr.array_digest(x) == cr.array_digest(x.copy())
  assert cr.array_digest(x) != cr.array_digest(x.reshape(2, 3))
  assert cr.array_digest(x) != cr.array_digest(x.astype(np.float32))
  assert cr.array_digest(x.reshape(2, 3).T) == cr.array_digest(np.ascontiguousarray(
      x.reshape(2, 3).T))


def test_baseline_file_matches_the_runs():
  """The committed record covers exactly the runs of compare_runs.RUNS, command for command."""
  rec = cr.load_record(BASELINE)
  assert sorted(rec["runs"]) == sorted(cr.RUNS)
  for name, run in rec["runs"].items():
    assert run["commands"] == cr.RUNS[name], (
        f"{name}: compare_runs.RUNS changed since {BASELINE_REL} was recorded; "
        f"re-record with {cr.record_command(BASELINE_REL)}")
    assert run["arrays"], f"{name}: no arrays.npz recorded"
  keys = [k for run in rec["runs"].values() for f in run["arrays"].values() for k in f]
  assert any(k.startswith("polish_history_") for k in keys)


def test_runs_bitwise_equal_to_baseline(tmp_path):
  rec = cr.load_record(BASELINE)
  diff = cr.environment_differences(rec["environment"], cr.environment())
  if diff:
    pytest.skip(f"{BASELINE_REL} was recorded in another environment ({'; '.join(diff)}); "
                f"re-record with: {cr.record_command(BASELINE_REL)}")
  seconds = cr.run_all(cr.REPO, str(tmp_path), jobs=2)
  current = cr.digest_record(str(tmp_path), seconds)
  problems = [f"{name}: {d}" for name, diffs in cr.compare_digests(rec, current).items()
              for d in diffs]
  assert not problems, (
      f"arrays differ from {BASELINE_REL} (recorded from {rec.get('code')}):\n"
      + "\n".join(problems[:40])
      + "\n(python scripts/compare_runs.py --ref REV shows the max abs differences)")
