"""End to end: `python -m lossland.scripts.hessian` on a real tiny ensemble run."""
import functools
import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from lossland import experiment
from lossland import losses

import cli_runner

jax.config.update("jax_enable_x64", True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=300):
  return cli_runner.run(args[0], args[1:], cwd=ROOT, timeout=timeout,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


@functools.lru_cache(maxsize=None)
def _ensemble_run(tmp_root):
  """A real tiny run of the ensemble job: 2 members, N = 55 weights, P = 48."""
  out = _run("lossland.scripts.ensemble", "--n_seeds", "2", "--P", "48", "--d", "5",
             "--depth", "2", "--width", "5", "--max_steps", "1500",
             "--dataset", "sphere", "--plots=false", "--out_dir", tmp_root)
  assert out.returncode == 0, out.stderr[-2000:]
  (run_dir,) = glob.glob(os.path.join(tmp_root, "ensemble", "*"))
  return run_dir


# Per session: a module fixture is rebuilt whenever a worker's tests of
# other modules come in between.
@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
  return _ensemble_run(str(tmp_path_factory.mktemp("runs")))


def _analyses(run_dir):
  """Analysis directories listed in RUN/hessian/index.jsonl, oldest first."""
  with open(os.path.join(run_dir, "hessian", "index.jsonl")) as fh:
    return [os.path.join(run_dir, "hessian", json.loads(l)["dir"]) for l in fh]


def _latest(run_dir):
  return _analyses(run_dir)[-1]


def _summary(run_dir):
  with open(os.path.join(_latest(run_dir), "summary.json")) as fh:
    return json.load(fh)


def test_dense_spectra_match_independent_hessian(run_dir, on_cpu):
  out = _run("lossland.scripts.hessian", "--run_dir", run_dir)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "member 2/2" in out.stderr and "member 2/2" not in out.stdout
  # Results on stdout (table and the analysis directory), progress on stderr.
  assert out.stdout.splitlines()[-1] == _latest(run_dir)
  assert out.stdout.startswith("member seed loss")
  files = set(os.listdir(_latest(run_dir)))
  assert {"spectra.npz", "summary.json", "density_h.png", "density_h0.png",
          "density_hp.png", "hp_rescaled.png"} <= files
  summ = _summary(run_dir)
  assert summ["method"] == "dense" and len(summ["members"]) == 2
  # The independent Hessian on the CPU, as the subprocess (exact N_Delta counts).
  with on_cpu():
    ens = experiment.load_ensemble(run_dir)
    with np.load(os.path.join(_latest(run_dir), "spectra.npz")) as z:
      eig_h, eig_h0, eig_hp = z["eig_h"], z["eig_h0"], z["eig_hp"]
    apply_out = ens.output_fn()
    for k, row in enumerate(summ["members"]):
      for key in ("n_params", "n_delta", "loss", "n_negative_hp", "rank_h0",
                  "n_zero_h", "method", "n_eff"):
        assert key in row
      params, params0 = ens.member(k)
      flat, unravel = ravel_pytree(params)
      x, y = ens.data.x_train, ens.data.y_train
      loss_fn = lambda w: losses.mean_loss(ens.loss, apply_out(unravel(w), params0, x), y)
      h = np.asarray(jax.jit(jax.hessian(loss_fn))(flat))
      exact = np.linalg.eigvalsh(h)
      scale = max(np.abs(exact).max(), 1e-300)
      np.testing.assert_allclose(eig_h[k], exact, atol=1e-10 * scale)
      assert eig_h0[k].min() >= -1e-12 * scale  # H0 is PSD
      np.testing.assert_allclose(row["loss"], float(loss_fn(flat)), rtol=1e-10,
                                 atol=1e-300)
      assert row["n_delta"] == int(jnp.sum(
          ens.loss.epsilon - y * apply_out(params, params0, x) > 0))
      assert row["rank_h0"] <= row["n_delta"] and row["rank_h0_le_n_delta"]
      np.testing.assert_allclose(row["trace_h"], np.trace(h), atol=1e-10 * scale * h.shape[0])
  # Tr(H) = Tr(H0) + Tr(Hp) (eigenvalue sums of independent matrices).
  np.testing.assert_allclose(eig_h.sum(1), eig_h0.sum(1) + eig_hp.sum(1),
                             atol=1e-10 * max(np.abs(eig_h).max(), 1e-300))


def _dense_analysis(run_dir):
  """A dense analysis of both members (the first test's, or a new one)."""
  if os.path.exists(os.path.join(run_dir, "hessian", "index.jsonl")):
    for d in _analyses(run_dir):
      with open(os.path.join(d, "summary.json")) as fh:
        summ = json.load(fh)
      if summ["method"] == "dense" and summ["at"] == "final" and len(summ["members"]) == 2:
        return d, summ
  out = _run("lossland.scripts.hessian", "--run_dir", run_dir)
  assert out.returncode == 0, out.stderr[-2000:]
  return _latest(run_dir), _summary(run_dir)


def test_lanczos_agrees_with_dense(run_dir):
  dense_dir, dense = _dense_analysis(run_dir)
  with np.load(os.path.join(dense_dir, "spectra.npz")) as z:
    eig_h, eig_h0 = z["eig_h"], z["eig_h0"]
  out = _run("lossland.scripts.hessian", "--run_dir", run_dir, "--method", "lanczos",
             "--lanczos_steps", "30", "--num_probes", "8", "--krylov", "slq")
  assert out.returncode == 0, out.stderr[-2000:]
  slq = _summary(run_dir)
  assert slq["method"] == "lanczos" and slq["krylov"] == "slq"
  # Both analyses are kept (nothing overwritten).
  assert dense_dir in _analyses(run_dir) and dense_dir != _latest(run_dir)
  assert os.path.isfile(os.path.join(dense_dir, "summary.json"))
  with np.load(os.path.join(_latest(run_dir), "spectra.npz")) as z:
    slq_eig_h0 = z["eig_h0"]
  for k, (d, s) in enumerate(zip(dense["members"], slq["members"])):
    scale = max(abs(eig_h[k]).max(), 1e-300)
    # The extreme Ritz values of H converge to the dense extremes, with true
    # (not estimated) residuals that are small but printed as what they are.
    np.testing.assert_allclose(s["ritz_top_h"][0], eig_h[k].max(), atol=1e-8 * scale)
    assert 0 < s["ritz_top_residual_h"][0] < 1e-6 * scale
    assert s["lambda_min_h_upper_bound"] >= eig_h[k].min() - 1e-10 * scale
    # Exact at scale: rank(H0), Tr(H0) and the spectrum of H0 from the kernel.
    assert s["rank_h0"] == d["rank_h0"] and "rank_h0" in s["exact"]
    np.testing.assert_allclose(s["trace_h0"], d["trace_h0"], rtol=1e-10)
    np.testing.assert_allclose(slq_eig_h0[k], eig_h0[k], atol=1e-10 * scale)
    assert s["rank_h0_le_n_delta"] is (d["rank_h0"] <= d["n_delta"])
    # Estimates: the dense truth lies within the reported interval.
    for key in ("n_negative_hp", "n_zero_h", "n_negative_h"):
      lo, hi = s[f"{key}_interval"]
      assert key in s["estimated"] and lo <= d[key] <= hi, (key, d[key], lo, hi)
    assert abs(s["trace_h"] - d["trace_h"]) <= 3 * s["trace_h_stderr"] + 1e-10 * scale
    # No definite check from an estimate.
    assert s["stable"] in (False, None) and s["n_negative_hp_le_n_delta"] is None
    if s["stable"] is False:
      assert d["stable"] is False
    assert s["loss"] == d["loss"] and s["n_delta"] == d["n_delta"]
  assert "+-" in out.stdout and "unres" in out.stdout


def test_lanczos_default_is_exact_at_small_n(run_dir):
  """With the default settings at N = 55 <= (4 + 1/2) 100, --method lanczos
  runs Lanczos of dimension N on H and Hp (2 N products, fewer than the 900
  of SLQ): every count and check equals the dense analysis', the table
  prints integers, and nothing is listed as estimated."""
  dense_dir, dense = _dense_analysis(run_dir)
  with np.load(os.path.join(dense_dir, "spectra.npz")) as z:
    eig_h, eig_hp = z["eig_h"], z["eig_hp"]
  out = _run("lossland.scripts.hessian", "--run_dir", run_dir, "--method", "lanczos")
  assert out.returncode == 0, out.stderr[-2000:]
  summ = _summary(run_dir)
  assert summ["method"] == "lanczos" and summ["krylov"] == "full"
  assert "(full Krylov)" in out.stderr and "+-" not in out.stdout
  with np.load(os.path.join(_latest(run_dir), "spectra.npz")) as z:
    full_h, full_hp = z["eig_h"], z["eig_hp"]
  for k, (d, s) in enumerate(zip(dense["members"], summ["members"])):
    for key in ("n_negative_hp", "n_positive_hp", "n_zero_h", "n_negative_h",
                "n_negative_hp_resolved", "stable", "n_negative_hp_le_n_delta",
                "rank_h0", "n_delta"):
      assert s[key] == d[key], (k, key, s[key], d[key])
    for key in ("n_negative_hp", "n_zero_h", "n_negative_h"):
      lo, hi = s[f"{key}_interval"]
      assert lo <= d[key] <= hi
    assert s["estimated"] == [] and s["lanczos_counts"] == "full"
    scale = max(abs(eig_h[k]).max(), 1e-300)
    np.testing.assert_allclose(full_h[k], eig_h[k], atol=1e-12 * scale)
    np.testing.assert_allclose(full_hp[k], eig_hp[k], atol=1e-12 * scale)
    np.testing.assert_allclose(s["trace_h"], d["trace_h"], atol=1e-10 * scale)


def test_at_init(run_dir):
  out = _run("lossland.scripts.hessian", "--run_dir", run_dir, "--at", "init",
             "--members", "0")
  assert out.returncode == 0, out.stderr[-2000:]
  summ = _summary(run_dir)
  assert summ["at"] == "init" and len(summ["members"]) == 1
  row = summ["members"][0]
  # At initialization most points are unsatisfied and H is far from stable.
  assert row["n_delta"] > 0 and row["loss"] > 0.05
  assert not row["stable"] and row["n_negative_hp_le_n_delta"] is None


def _truncated_run(run_dir, tmp):
  """A copy of a real run whose arrays.npz lost its second half."""
  dst = os.path.join(tmp, "run")
  shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns("hessian"))
  path = os.path.join(dst, "arrays.npz")
  size = os.path.getsize(path)
  with open(path, "r+b") as fh:
    fh.truncate(size // 2)
  return dst


def _readonly_dir(tmp):
  path = os.path.join(tmp, "ro")
  os.makedirs(path)
  os.chmod(path, 0o555)
  return path


# (arguments, expected text in the one-line error). {tmp}: an empty temporary
# directory; {file}: a regular file; {run}: a truncated copy of a real run.
BAD_INPUT = [
    (["--run_dir", "/nonexistent/run"], "not found"),
    ([], "--run_dir is required"),
    (["--run_dir", "{tmp}", "--method", "magic"], "--method"),
    (["--run_dir", "{tmp}", "--method", "lanczos", "--krylov", "exact"], "--krylov"),
    (["--run_dir", "{file}"], "not found"),
    (["--run_dir", "{tmp}", "--out_dir", "{file}"], "not a directory"),
    (["--run_dir", "{tmp}", "--out_dir", "{file}/sub"], "not a directory"),
    (["--run_dir", "{tmp}", "--out_dir", "/proc/lossland_hessian"], "not writable"),
    (["--run_dir", "{tmp}", "--out_dir", "{ro}/out"], "not writable"),
    (["--run_dir", "{run}"], "corrupt or truncated"),
    (["--run_dir", "{run}", "--method", "lanczos", "--num_probes", "1"],
     "corrupt or truncated"),
]


@pytest.mark.parametrize("args,match", BAD_INPUT)
def test_bad_input_exit_2(tmp_path, run_dir, args, match):
  tmp = str(tmp_path)
  subs = {"{tmp}": tmp, "{file}": os.path.join(tmp, "a_file")}
  open(subs["{file}"], "w").close()
  if any("{ro}" in a for a in args):
    if os.geteuid() == 0:
      pytest.skip("root writes into read-only directories")
    subs["{ro}"] = _readonly_dir(tmp)
  if any("{run}" in a for a in args):
    subs["{run}"] = _truncated_run(run_dir, tmp)
  for k, v in subs.items():
    args = [a.replace(k, v) for a in args]
  before = sorted(os.listdir(tmp))
  out = _run("lossland.scripts.hessian", *args, timeout=120)
  assert out.returncode == 2, out.stderr[-2000:]
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], lines
  assert "pickle" not in out.stderr.lower() and "Traceback" not in out.stderr
  assert sorted(os.listdir(tmp)) == before
  if "{run}" in subs:
    assert not os.path.exists(os.path.join(subs["{run}"], "hessian"))


def test_never_overwrites_and_concurrent_runs_keep_both(run_dir, tmp_path):
  """Two analyses started together into one --out_dir: both directories are
  complete and listed in index.jsonl; then a third one adds a third."""
  out_dir = str(tmp_path / "h")
  args = [sys.executable, "-m", "lossland.scripts.hessian", "--run_dir", run_dir,
          "--members", "0", "--out_dir", out_dir]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  procs = [subprocess.Popen(args + ["--seed", str(i)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [o[1][-1000:] for o in outs]
  with open(os.path.join(out_dir, "index.jsonl")) as fh:
    index = [json.loads(l) for l in fh]
  dirs = sorted(os.path.join(out_dir, r["dir"]) for r in index)
  assert len(dirs) == 2 and dirs == sorted(o[0].splitlines()[-1] for o in outs)
  for d in dirs:
    assert {"summary.json", "spectra.npz", "density_h.png"} <= set(os.listdir(d))
  first = {d: os.path.getmtime(os.path.join(d, "summary.json")) for d in dirs}
  out = _run("lossland.scripts.hessian", "--run_dir", run_dir, "--members", "1",
             "--out_dir", out_dir)
  assert out.returncode == 0, out.stderr[-2000:]
  subdirs = [e for e in os.listdir(out_dir) if not e.startswith(".") and
             os.path.isdir(os.path.join(out_dir, e))]
  assert len(subdirs) == 3
  assert all(os.path.getmtime(os.path.join(d, "summary.json")) == t
             for d, t in first.items())


def test_incomplete_run_dir_exit_2(tmp_path):
  """A directory missing arrays.npz: one-line error, nothing written."""
  for name in ("config.json", "metrics.jsonl", "summary.json"):
    (tmp_path / name).write_text("{}\n" if name.endswith("json") else "")
  out = _run("lossland.scripts.hessian", "--run_dir", str(tmp_path), timeout=60)
  assert out.returncode == 2
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and "incomplete" in lines[0]
  assert sorted(os.listdir(tmp_path)) == ["config.json", "metrics.jsonl", "summary.json"]
