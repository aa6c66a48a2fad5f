"""Bad input to the ensemble script: one table, every row a one-line error.

Each row runs ``python -m lossland.scripts.ensemble`` in a subprocess and
checks: exit status 2, exactly one stderr line, starting with ``error:`` and
naming what is wrong, no traceback, nothing written under --out_dir. The rows
run in parallel (they fail before any training, so each costs about the
interpreter and jax start-up).
"""
import concurrent.futures
import json
import os
import types

import numpy as np
import pytest

import cli_runner

SMALL = ["--P", "20", "--d", "3", "--depth", "1", "--width", "3", "--n_test", "10",
         "--max_steps", "10", "--n_seeds", "2", "--plots=false"]


def _npz(path, **arrays):
  np.savez(path, **arrays)
  return str(path)


def _data_files(tmp):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 4))
  y = np.arange(40) % 10
  files = {}
  good = _npz(tmp / "good.npz", x_train=x, y_train=y)
  raw = open(good, "rb").read()
  (tmp / "truncated.npz").write_bytes(raw[: len(raw) // 2])
  files["truncated"] = str(tmp / "truncated.npz")
  files["string_labels"] = _npz(tmp / "strings.npz", x_train=x,
                                y_train=np.array(["cat", "dog"] * 20))
  files["empty"] = _npz(tmp / "empty.npz")
  files["test_dim"] = _npz(tmp / "testdim.npz", x_train=x, y_train=y,
                           x_test=rng.normal(size=(10, 7)), y_test=y[:10])
  files["one_class"] = _npz(tmp / "oneclass.npz", x_train=x,
                            y_train=np.where(np.arange(40) % 2, 1, 3))
  (tmp / "garbage.npz").write_bytes(b"\x00not a zip file" * 50)
  files["garbage"] = str(tmp / "garbage.npz")
  return files


# (id, extra args, a word the error line must contain)
CASES = [
    ("out_dir_is_file", ["--out_dir", "{file}"], "not a directory"),
    ("out_dir_under_file", ["--out_dir", "{file}/sub"], "not a directory"),
    ("huge_P", ["--P", "1000000000000"], "GiB"),
    ("huge_P_float", ["--P", "1e12"], "--P"),
    ("huge_width", ["--width", "1000000000"], "iB"),
    ("huge_n_seeds", ["--n_seeds", "1000000000"], "GiB"),
    ("huge_depth", ["--depth", "100000"], "--depth"),
    ("alpha_zero", ["--alpha", "0"], "--alpha"),
    ("alpha_nan", ["--alpha", "nan"], "--alpha"),
    ("lr_inf", ["--lr", "inf"], "--lr"),
    ("margin_nan", ["--margin", "nan"], "--margin"),
    ("momentum_nan", ["--optimizer", "momentum", "--momentum", "nan"], "--momentum"),
    ("N_below_smallest_net", ["--N", "3"], "--N"),
    ("width_zero", ["--width", "0"], "--width"),
    ("jam_max_residual_zero", ["--jam_max_residual", "0"], "--jam_max_residual"),
    ("jam_max_residual_nan", ["--jam_max_residual", "nan"], "--jam_max_residual"),
    ("jam_max_residual_minus_inf", ["--jam_max_residual", "-inf"], "--jam_max_residual"),
    ("anneal_levels_decreasing", ["--x64", "--finish", "anneal", "--anneal_levels", "100,10"],
     "--anneal_levels"),
    ("anneal_levels_not_numbers", ["--x64", "--finish", "anneal", "--anneal_levels", "ten"],
     "--anneal_levels"),
    ("anneal_iters_zero", ["--x64", "--finish", "anneal", "--anneal_iters", "0"],
     "--anneal_iters"),
    ("anneal_rounds_zero", ["--x64", "--finish", "anneal", "--anneal_rounds", "0"],
     "--anneal_rounds"),
    ("finish_anneal_without_x64", ["--nox64", "--finish", "anneal"], "--x64"),
    ("finish_decay_negative", ["--x64", "--finish", "decay_newton", "--finish_decay", "1e-4,-1"],
     "--finish_decay"),
    ("finish_decay_not_numbers", ["--x64", "--finish", "decay_newton", "--finish_decay", "small"],
     "--finish_decay"),
    ("finish_from_without_finish", ["--finish_from", "{tmp}"], "--finish_from"),
    ("finish_workers_zero", ["--finish_workers", "0"], "--finish_workers"),
    ("finish_from_missing_run", ["--x64", "--finish", "newton", "--finish_from",
                                 "{tmp}/no_run"], "--finish_from"),
    ("finish_from_not_a_run", ["--x64", "--finish", "newton", "--finish_from", "{tmp}"],
     "--finish_from"),
    ("command_buffers_unknown", ["--command_buffers", "graphs"], "--command_buffers"),
    ("classes_on_synthetic", ["--dataset", "sphere", "--classes", "parity"], "--classes"),
    ("npz_truncated", ["--dataset", "npz", "--data_file", "{truncated}"], "truncated.npz"),
    ("npz_garbage", ["--dataset", "npz", "--data_file", "{garbage}"], "garbage.npz"),
    ("npz_string_labels", ["--dataset", "npz", "--data_file", "{string_labels}"], "strings.npz"),
    ("npz_empty", ["--dataset", "npz", "--data_file", "{empty}"], "empty.npz"),
    ("npz_test_dim", ["--dataset", "npz", "--data_file", "{test_dim}"], "testdim.npz"),
    ("npz_one_class", ["--dataset", "npz", "--data_file", "{one_class}"], "oneclass.npz"),
    ("npz_directory", ["--dataset", "npz", "--data_file", "{tmp}"], "data file"),
]


def _run(args, timeout=120):
  env = dict(os.environ, JAX_PLATFORMS="cpu", LOSSLAND_COMPILATION_CACHE="0")
  return cli_runner.run("lossland.scripts.ensemble", args, env=env, timeout=timeout)


def _compute(tmp):
  """Runs every row (4 at a time): {name: {returncode, stderr, out_dir}}."""
  subs = dict(_data_files(tmp), tmp=str(tmp))
  (tmp / "a_file").write_text("x")
  subs["file"] = str(tmp / "a_file")
  jobs = {}
  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    for name, extra, _ in CASES:
      out_dir = tmp / f"out_{name}"
      args = SMALL + ["--out_dir", str(out_dir)] + [a.format(**subs) for a in extra]
      jobs[name] = (pool.submit(_run, args), out_dir)
    return {name: {"returncode": f.result().returncode, "stderr": f.result().stderr,
                   "out_dir": str(out_dir)} for name, (f, out_dir) in jobs.items()}


@pytest.fixture(scope="session")
def results(run_once):
  """The rows' outcomes, computed once per test session: with pytest-xdist
  the first worker to get here runs them in a folder every worker sees, the
  others wait for its results.json (about 22 interpreter start-ups saved)."""
  def make(root):
    (root / "results.json").write_text(json.dumps(_compute(root)))
  rows = json.loads((run_once("bad_input_rows", make) / "results.json").read_text())
  return {name: (types.SimpleNamespace(returncode=r["returncode"], stderr=r["stderr"]),
                 r["out_dir"]) for name, r in rows.items()}


@pytest.mark.parametrize("name,extra,word", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(results, name, extra, word):
  out, out_dir = results[name]
  err = out.stderr.strip().splitlines()
  assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
  assert len(err) == 1 and err[0].startswith("error: "), out.stderr
  assert "Traceback" not in out.stderr
  assert word in err[0], err[0]
  if os.path.isdir(out_dir):
    assert not any(os.scandir(out_dir)), os.listdir(out_dir)
  else:
    assert not os.path.exists(out_dir) or os.path.isfile(out_dir)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_exits_0_and_lists_the_options(flag):
  out = _run([flag], timeout=60)
  assert out.returncode == 0, out.stderr
  assert "--n_seeds" in out.stdout and "--[no]compilation_cache" in out.stdout
  assert "Train an ensemble" in out.stdout and not out.stderr.strip()
