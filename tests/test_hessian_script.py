"""End to end: `python -m lossland.scripts.hessian` on a real tiny ensemble run."""
import functools
import glob
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from lossland import experiment
from lossland import losses

jax.config.update("jax_enable_x64", True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout,
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


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  return _ensemble_run(str(tmp_path_factory.mktemp("runs")))


def _summary(run_dir):
  with open(os.path.join(run_dir, "hessian", "summary.json")) as fh:
    return json.load(fh)


def test_dense_spectra_match_independent_hessian(run_dir):
  out = _run("lossland.scripts.hessian", "--run_dir", run_dir)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "member 2/2" in out.stderr
  files = set(os.listdir(os.path.join(run_dir, "hessian")))
  assert {"spectra.npz", "summary.json", "density_h.png", "density_h0.png",
          "density_hp.png", "hp_rescaled.png"} <= files
  summ = _summary(run_dir)
  assert summ["method"] == "dense" and len(summ["members"]) == 2
  ens = experiment.load_ensemble(run_dir)
  with np.load(os.path.join(run_dir, "hessian", "spectra.npz")) as z:
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


def test_lanczos_agrees_with_dense(run_dir):
  dense = _summary(run_dir) if os.path.isdir(os.path.join(run_dir, "hessian")) else None
  if dense is None:
    out = _run("lossland.scripts.hessian", "--run_dir", run_dir)
    assert out.returncode == 0, out.stderr[-2000:]
    dense = _summary(run_dir)
  with np.load(os.path.join(run_dir, "hessian", "spectra.npz")) as z:
    eig_h = z["eig_h"]
  out = _run("lossland.scripts.hessian", "--run_dir", run_dir, "--method", "lanczos",
             "--lanczos_steps", "50", "--num_probes", "8")
  assert out.returncode == 0, out.stderr[-2000:]
  slq = _summary(run_dir)
  assert slq["method"] == "lanczos"
  n = slq["n_params"]
  for k, (d, s) in enumerate(zip(dense["members"], slq["members"])):
    # The extreme Ritz values of H converge to the dense extremes.
    np.testing.assert_allclose(s["ritz_top_h"][0], eig_h[k].max(),
                               atol=1e-8 * max(abs(eig_h[k]).max(), 1e-300))
    assert s["ritz_top_residual_h"][0] < 1e-6 * max(abs(eig_h[k]).max(), 1e-300) + 1e-300
    # Counts are SLQ estimates: close to the exact ones, not equal.
    for key in ("rank_h0", "n_zero_h"):
      assert abs(s[key] - d[key]) <= 0.15 * n, (key, s[key], d[key])
    assert s["loss"] == d["loss"] and s["n_delta"] == d["n_delta"]


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


@pytest.mark.parametrize("args,match", [
    (["--run_dir", "/nonexistent/run"], "not found"),
    ([], "--run_dir is required"),
    (["--run_dir", "{tmp}", "--method", "magic"], "--method"),
])
def test_bad_input_exit_2(tmp_path, args, match):
  args = [a.replace("{tmp}", str(tmp_path)) for a in args]
  out = _run("lossland.scripts.hessian", *args, timeout=60)
  assert out.returncode == 2
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0]
  assert not os.path.exists(os.path.join(str(tmp_path), "hessian"))


def test_incomplete_run_dir_exit_2(tmp_path):
  """A directory missing arrays.npz: one-line error, nothing written."""
  for name in ("config.json", "metrics.jsonl", "summary.json"):
    (tmp_path / name).write_text("{}\n" if name.endswith("json") else "")
  out = _run("lossland.scripts.hessian", "--run_dir", str(tmp_path), timeout=60)
  assert out.returncode == 2
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and "incomplete" in lines[0]
  assert sorted(os.listdir(tmp_path)) == ["config.json", "metrics.jsonl", "summary.json"]
