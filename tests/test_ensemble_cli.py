"""The main job end to end, through its command line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lossland import experiment, io

TINY = ["--P", "30", "--d", "5", "--depth", "2", "--width", "6", "--n_test", "40",
        "--max_steps", "300", "--n_seeds", "3", "--plots=false"]


def run_cli(args, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "lossland.scripts.ensemble",
                         "--out_dir", str(tmp_path)] + args,
                        capture_output=True, text=True, env=env, timeout=600)


def test_cli_writes_a_complete_run_directory(tmp_path):
  out = run_cli(TINY + ["--plots"], tmp_path)
  assert out.returncode == 0, out.stderr
  runs = os.listdir(tmp_path / "ensemble")
  assert len(runs) == 1 and not runs[0].startswith(".")
  run_dir = tmp_path / "ensemble" / runs[0]
  for f in io.REQUIRED_FILES + ("training.png", "test_errors.png", "delta_distribution.png"):
    assert (run_dir / f).is_file(), f
  summary = json.loads((run_dir / "summary.json").read_text())
  for key in ("members", "mean_test_error", "ensemble_test_error", "output_variance",
              "wall_seconds"):
    assert key in summary
  assert [m["seed"] for m in summary["members"]] == [0, 1, 2]
  for m in summary["members"]:
    assert set(m) >= {"seed", "stop_reason", "steps", "loss", "n_delta", "train_error",
                      "test_error"}
  config = json.loads((run_dir / "config.json").read_text())
  assert config["flags"]["P"] == 30 and config["environment"]["x64"] is True
  assert "jax" in config["environment"] and "git_revision" in config["environment"]
  lines = (run_dir / "metrics.jsonl").read_text().splitlines()
  assert sum(json.loads(l).get("final", False) for l in lines) == 3
  assert "run directory:" in out.stdout and "ensemble (mean output) test error" in out.stdout
  # The run loads back, and the stored outputs are those of the stored params.
  ens = experiment.load_ensemble(str(run_dir))
  assert ens.n_members == 3
  fn = ens.output_fn()
  p, p0 = ens.member(1)
  np.testing.assert_allclose(fn(p, p0, ens.data.x_test),
                             np.load(run_dir / "arrays.npz")["f_test"][1], rtol=1e-10)
  # The summary's numbers are those of the stored outputs.
  from lossland import observables
  s = observables.ensemble_summary(np.load(run_dir / "arrays.npz")["f_test"], ens.data.y_test)
  assert s["ensemble_test_error"] == pytest.approx(summary["ensemble_test_error"])


@pytest.mark.parametrize("bad", [
    ["--P", "0"], ["--P", "-5"], ["--dataset", "cifar"], ["--width", "0"],
    ["--P", "1700", "--n_test", "200"], ["--n_seeds", "0"], ["--lr", "-1"],
    ["--optimizer", "lbfgs"], ["--depth", "0"], ["--dataset", "npz"],
    ["--dataset", "npz", "--data_file", "/nonexistent.npz"], ["--max_steps", "abc"],
    ["--nosuchflag"], ["stray_argument"],
])
def test_bad_flags_exit_2_and_write_nothing(tmp_path, bad):
  out = run_cli(TINY + bad, tmp_path)
  assert out.returncode == 2, (out.returncode, out.stderr)
  err = out.stderr.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error:"), out.stderr
  assert not (tmp_path / "ensemble").exists() or not os.listdir(tmp_path / "ensemble")


def test_all_members_diverging_is_an_error(tmp_path):
  out = run_cli(TINY + ["--optimizer", "sgd", "--lr", "1e8"], tmp_path)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1].startswith("error: every member diverged")
  # Nothing half-written: not even an empty <out_dir>/ensemble (nor the checkpoint).
  assert not (tmp_path / "ensemble").exists()
