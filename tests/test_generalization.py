import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lossland import generalization


def test_n_star_interpolates_in_log_n():
  assert generalization.n_star([10, 100, 1000], [0.0, 0.0, 1.0]) == pytest.approx(
      np.sqrt(100 * 1000))
  assert generalization.n_star([100, 10, 1000], [0.25, 0.0, 0.75]) == pytest.approx(
      np.sqrt(100 * 1000))
  assert generalization.n_star([10, 100], [1.0, 1.0]) is None
  assert generalization.n_star([10, 100], [0.0, 0.2]) is None


def test_summarize_fits_known_power_laws_above_n_star():
  rng = np.random.default_rng(0)
  rows = []
  for i, N in enumerate([50, 100, 200, 400, 800, 1600, 3200]):
    noise = lambda: float(np.exp(0.02 * rng.normal()))
    rows.append({"N": N, "width": i + 1, "mean_test_error": 0.1 + N ** -0.5 * noise(),
                 "sem_test_error": 0.01, "ensemble_test_error": 0.1,
                 "output_variance": 3 * N ** -0.5 * noise(),
                 "ntk_fluctuation": N ** -0.25 * noise(),
                 "ntk_drift": 2 * N ** -0.5 * noise(),
                 "frac_sat": 0.0 if N < 200 else 1.0, "early_stop_test_error": 0.1})
  # below N* a different law that must be left out of the fits
  rows[0]["output_variance"] = 1e-6
  s = generalization.summarize(rows, {"kernel_test_error": 0.1}, n_boot=200)
  assert s["n_star"] == pytest.approx(np.sqrt(100 * 200))
  assert [r["N"] for r in s["per_n"]] == sorted(r["N"] for r in rows)
  for key, expected in (("output_variance", -0.5), ("ntk_fluctuation", -0.25),
                        ("ntk_drift", -0.5), ("test_error_excess", -0.5)):
    fit = s["fits"][key]
    assert fit["exponent"] == pytest.approx(expected, abs=0.05), key
    assert fit["ci"][0] - 0.02 <= expected <= fit["ci"][1] + 0.02, key
    assert fit["ci"][1] - fit["ci"][0] < 0.2, key


def _run(tmp_path, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "lossland.scripts.generalization",
                         f"--out_dir={tmp_path}", *args], capture_output=True,
                        text=True, env=env, timeout=600)


def test_script_end_to_end_tiny_grid(tmp_path):
  r = _run(tmp_path, "--preset=none", "--dataset=sphere", "--P=16", "--d=3",
           "--n_test=16", "--depth=1", "--widths=2,8", "--n_seeds=2",
           "--max_steps=100", "--n_ntk=4", "--n_boot=20", "--plots=false")
  assert r.returncode == 0, r.stderr[-2000:]
  root = tmp_path / "generalization"
  (run,) = os.listdir(root)
  s = json.load(open(root / run / "summary.json"))
  assert [row["N"] for row in s["per_n"]] == [2 * 3 + 2, 8 * 3 + 8]
  for row in s["per_n"]:
    assert set(generalization.PER_N_KEYS) <= set(row)
    assert 0 <= row["mean_test_error"] <= 1 and row["ntk_fluctuation"] > 0
  assert set(s["fits"]) == {"output_variance", "ntk_fluctuation", "ntk_drift",
                            "test_error_excess"}
  assert 0 <= s["kernel_test_error"] <= 1


@pytest.mark.parametrize("args", [["--widths=0,4"], ["--n_seeds=1"], ["--P=-3"],
                                  ["--preset=huge"], ["--widths=a,b"], ["extra"]])
def test_bad_flags_exit_2_and_write_nothing(tmp_path, args):
  r = _run(tmp_path, *args)
  assert r.returncode == 2, r.stderr
  assert r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1
  assert not os.listdir(tmp_path)
