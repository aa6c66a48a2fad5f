"""The main job end to end, through its command line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lossland import experiment, io

import cli_runner

TINY = ["--P", "30", "--d", "5", "--depth", "2", "--width", "6", "--n_test", "40",
        "--max_steps", "300", "--n_seeds", "3", "--plots=false"]


def run_cli(args, tmp_path, **env_extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", **env_extra)
  return cli_runner.run("lossland.scripts.ensemble", ["--out_dir", str(tmp_path)] + args,
                        env=env, timeout=600)


def test_cli_writes_a_complete_run_directory(tmp_path, on_cpu):
  cache = tmp_path.parent / (tmp_path.name + "_cache")
  out = run_cli(TINY + ["--plots"], tmp_path, LOSSLAND_CACHE_DIR=str(cache))
  assert out.returncode == 0, out.stderr
  assert any(cache.iterdir()), "the persistent compilation cache was not written"
  assert "compiling" in out.stderr
  runs = os.listdir(tmp_path / "ensemble")
  assert len(runs) == 1 and not runs[0].startswith(".")
  run_dir = tmp_path / "ensemble" / runs[0]
  for f in io.REQUIRED_FILES + ("training.png", "test_errors.png", "delta_distribution.png"):
    assert (run_dir / f).is_file(), f
  summary = json.loads((run_dir / "summary.json").read_text())
  for key in ("members", "mean_test_error", "ensemble_test_error", "output_variance",
              "wall_seconds", "member_class_counts", "n_healthy", "diverged_seeds",
              "dead_seeds"):
    assert key in summary
  import jax
  # The subprocess runs on the CPU (JAX_PLATFORMS=cpu), whatever this machine has.
  assert summary["n_devices"] == len(jax.devices("cpu")) and summary["backend"] == "cpu"
  assert [m["seed"] for m in summary["members"]] == [0, 1, 2]
  for m in summary["members"]:
    assert set(m) >= {"seed", "stop_reason", "steps", "loss", "n_delta", "train_error",
                      "test_error", "class"}
  config = json.loads((run_dir / "config.json").read_text())
  assert config["flags"]["P"] == 30 and config["environment"]["x64"] is True
  assert "jax" in config["environment"] and "git_revision" in config["environment"]
  lines = (run_dir / "metrics.jsonl").read_text().splitlines()
  assert sum(json.loads(l).get("final", False) for l in lines) == 3
  assert "run directory:" in out.stdout and "ensemble (mean output) test error" in out.stdout
  # The run loads back, and the stored outputs are those of the stored params
  # (recomputed on the CPU, as the subprocess computed them).
  with on_cpu():
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
    ["--optimizer", "newton"], ["--depth", "0"], ["--dataset", "npz"],
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
  cache = tmp_path.parent / (tmp_path.name + "_cache")
  out = run_cli(TINY + ["--optimizer", "sgd", "--lr", "1e8", "--nocompilation_cache"],
                tmp_path, LOSSLAND_CACHE_DIR=str(cache))
  assert not cache.exists()  # --nocompilation_cache
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1].startswith("error: every member diverged")
  # Nothing half-written: not even an empty <out_dir>/ensemble (nor the checkpoint).
  assert not (tmp_path / "ensemble").exists()


def test_n_is_rounded_to_a_width_and_said(tmp_path):
  out = run_cli(TINY + ["--N", "400", "--d", "5", "--depth", "2", "--max_steps", "1",
                        "--n_seeds", "1"], tmp_path)
  assert out.returncode == 0, out.stderr
  # d=5, depth 2: N(h) = h^2 + 6h; N(17) = 391, N(18) = 432: 391 is the nearest.
  assert "N = 400 is not reachable" in out.stdout and "width 17, N = 391" in out.stdout


def test_ctrl_c_prints_one_line_keeps_the_checkpoint_and_resumes(tmp_path):
  import signal
  import time
  args = [sys.executable, "-m", "lossland.scripts.ensemble", "--out_dir", str(tmp_path),
          "--dataset", "sphere", "--P", "64", "--d", "4", "--depth", "1", "--width", "2",
          "--n_test", "8", "--n_seeds", "2", "--max_steps", "1000000", "--chunk_steps", "100",
          "--jam_window", "1000000", "--checkpoint_every", "0", "--plots=false"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")

  def start_and_interrupt(wait_for):
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
    t0 = time.time()
    while not wait_for() and time.time() - t0 < 120 and p.poll() is None:
      time.sleep(0.2)
    assert p.poll() is None, p.communicate()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    return p.returncode, out, err

  ens = tmp_path / "ensemble"
  ckpts = lambda: [f for f in os.listdir(ens) if f.startswith(".checkpoint_") and f.endswith(".npz")] if ens.is_dir() else []
  rc, out, err = start_and_interrupt(lambda: bool(ckpts()))
  assert rc == 130, err
  assert "Traceback" not in err
  assert err.strip().splitlines()[-1] == "interrupted; run the same command to resume"
  assert len(ckpts()) == 1  # kept for the resume
  assert [f for f in os.listdir(ens) if not f.startswith(".")] == []  # no run directory
  # The same command resumes from it.
  mtime = os.path.getmtime(ens / ckpts()[0])
  rc, out, err = start_and_interrupt(lambda: os.path.getmtime(ens / ckpts()[0]) > mtime)
  assert rc == 130 and "resuming from" in out, (out, err)


@pytest.mark.parametrize("lr, want", [(12.0, {"dead", "limbo"}),
                                      (30.0, {"diverged", "dead", "dead_points"})])
def test_diverged_and_dead_members_are_left_out_of_the_numbers(tmp_path, lr, want):
  """sgd at lr 12 or 30 on the tiny problem: members die (f = 0), diverge
  (outputs ~1e8 or non-finite) or keep unsatisfied dead points. The headline
  numbers must be those of the healthy members only, recomputed here with
  plain loops from arrays.npz (NaN when none is healthy: a result, not an
  error, unless every member diverged or died)."""
  import io as _io
  from lossland import job
  stdout = _io.StringIO()
  run_dir, s = job.run_ensemble_job(
      dict(P=30, d=5, depth=2, width=6, n_test=40, max_steps=300, n_seeds=6,
           optimizer="sgd", lr=lr, out_dir=str(tmp_path), resume=False, plots=True),
      progress=False, stdout=stdout)
  classes = [m["class"] for m in s["members"]]
  assert set(classes) == want, classes
  assert s["diverged_seeds"] == [m["seed"] for m in s["members"] if m["class"] == "diverged"]
  assert s["dead_seeds"] == [m["seed"] for m in s["members"] if m["class"] == "dead"]
  assert s["dead_point_seeds"] == [m["seed"] for m in s["members"]
                                   if m["class"] == "dead_points"]
  unhealthy = ("diverged", "dead", "dead_points")
  assert s["n_healthy"] == sum(c not in unhealthy for c in classes)
  for m in s["members"]:  # a dead_points member has an unsatisfied dead point
    assert (m["class"] == "dead_points") <= (m["n_dead_points"] > 0)
  assert sum(s["member_class_counts"].values()) == 6
  a = np.load(os.path.join(run_dir, "arrays.npz"))
  f, y = a["f_test"], a["y_test"]
  for k, c in enumerate(classes):
    if c == "dead":
      assert np.all(a["f_train"][k] == 0)
    if c == "diverged":
      assert a["stop_code"][k] == 4 or not np.all(np.isfinite(a["f_train"][k]))
  healthy = [k for k, c in enumerate(classes) if c not in unhealthy]
  n = len(y)
  if not healthy:
    for key in ("mean_test_error", "ensemble_test_error", "output_variance",
                "mean_train_error", "mean_loss"):
      assert np.isnan(s[key]), key
    assert "healthy members: 0/6" in stdout.getvalue()
    return
  errs = [sum(y[i] * f[k, i] <= 0 for i in range(n)) / n for k in healthy]
  assert s["mean_test_error"] == pytest.approx(np.mean(errs))
  fbar = [sum(f[k, i] for k in healthy) / len(healthy) for i in range(n)]
  assert s["ensemble_test_error"] == pytest.approx(
      sum(y[i] * fbar[i] <= 0 for i in range(n)) / n)
  if len(healthy) > 1:
    var = np.mean([sum((f[k, i] - fbar[i]) ** 2 for k in healthy) / (len(healthy) - 1)
                   for i in range(n)])
    assert s["output_variance"] == pytest.approx(var)
  else:
    assert s["output_variance"] is None or np.isnan(s["output_variance"])
  assert s["mean_train_error"] == pytest.approx(
      np.mean([s["members"][k]["train_error"] for k in healthy]))
  # The table names the classes; the figures were drawn despite non-finite outputs.
  assert "dead" in stdout.getvalue() and "healthy members:" in stdout.getvalue()
  for png in ("training.png", "test_errors.png", "delta_distribution.png"):
    assert os.path.isfile(os.path.join(run_dir, png))
  on_disk = json.loads(open(os.path.join(run_dir, "summary.json")).read())
  assert on_disk["diverged_seeds"] == s["diverged_seeds"]


def test_authors_net_and_unsat_history_through_the_cli(tmp_path):
  # --init orthogonal_gain1 --nonormalize_activation: the authors' forward pass;
  # --record_unsat: which points are unsatisfied at every measurement (avalanches).
  out = run_cli(TINY + ["--dataset", "sphere", "--record_unsat",
                        "--init", "orthogonal_gain1", "--nonormalize_activation"],
                tmp_path)
  assert out.returncode == 0, out.stderr
  run_dir = tmp_path / "ensemble" / os.listdir(tmp_path / "ensemble")[0]
  ens = experiment.load_ensemble(str(run_dir))
  assert ens.net.init == "orthogonal_gain1" and not ens.net.normalize_activation
  a = io.load_run(str(run_dir)).arrays
  K, M = a["history_loss"].shape
  assert a["history_unsat"].shape == (K, M, 30) and a["history_unsat"].dtype == bool
  # the recorded sets count N_Delta wherever the member was running
  run = a["history_running"]
  np.testing.assert_array_equal(a["history_unsat"].sum(-1)[run],
                                a["history_n_delta"][run])
  assert not a["history_unsat"][~run].any()
