"""Ensemble-job options: label noise, and the polish stage's histories in arrays.npz."""
import io as stdio
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from lossland import data, io, job, sweep, train

import cli_runner

TINY = dict(dataset="digits", P=40, d=4, n_test=30, depth=1, width=3, n_seeds=2,
            max_steps=20, plots=False, resume=False)


def _run(tmp_path, **values):
  run_dir, summary = job.run_ensemble_job(dict(TINY, out_dir=str(tmp_path), **values),
                                          progress=False, stdout=stdio.StringIO())
  return io.load_run(run_dir).arrays, summary


def test_label_noise_flips_the_old_routes_training_labels_and_only_those(tmp_path):
  a, s = _run(tmp_path, label_noise=0.25, data_seed=3)
  clean = data.digits(40, 4, 30)
  flipped = a["y_train"] != np.asarray(clean.y_train)
  assert flipped.sum() == 10 == s["n_labels_flipped"]  # round(0.25 * 40)
  assert s["label_noise"] == 0.25
  np.testing.assert_array_equal(a["label_flipped"], flipped)
  np.testing.assert_array_equal(a["y_test"], clean.y_test)  # test labels clean
  np.testing.assert_array_equal(a["x_train"], clean.x_train)
  # the route the generalization script took before: make_dataset with the
  # noise, written to a prepared npz that the job read back (dataset=npz)
  path = str(tmp_path / "prepared.npz")
  data.save_prepared_npz(data.make_dataset("digits", 40, 4, 30, key=jax.random.key(3),
                                           label_noise=0.25), path)
  np.testing.assert_array_equal(a["y_train"], data.from_npz(path, 40, 4, 30).y_train)
  # another data seed flips other points
  other = job.flipped_labels(job.validate(dict(TINY, label_noise=0.25, data_seed=4)), 40)
  assert other.sum() == 10 and (other != flipped).any()
  # no noise, no polish: neither key (nor a polish key) is written
  a0, s0 = _run(tmp_path / "clean")
  assert s0["label_noise"] == 0.0 and s0["n_labels_flipped"] == 0
  assert not [k for k in a0 if k.startswith("polish") or k == "label_flipped"]
  np.testing.assert_array_equal(a0["y_train"], clean.y_train)


def test_label_noise_on_synthetic_data_keeps_the_draw_and_is_a_sweep_axis():
  v = job.validate(dict(TINY, dataset="sphere", P=50, label_noise=0.1, data_seed=2))
  noisy = job.make_data(v, np.float64)
  clean = job.make_data(dict(v, label_noise=0.0), np.float64)
  np.testing.assert_array_equal(noisy.x_train, clean.x_train)  # own key stream
  np.testing.assert_array_equal(noisy.y_test, clean.y_test)
  mask = np.asarray(noisy.y_train != clean.y_train)
  assert mask.sum() == 5
  np.testing.assert_array_equal(mask, job.flipped_labels(v, 50))
  # the option at 0 leaves sweep cell ids and checkpoint digests as before it existed
  base = job.validate(dict(TINY))
  assert sweep.cell_id(base) == sweep.cell_id(dict(base, label_noise=0.0))
  assert sweep.cell_id(base) != sweep.cell_id(dict(base, label_noise=0.1))
  assert "label_noise" not in job.key_values(base)
  assert job.key_values(dict(base, label_noise=0.1))["label_noise"] == 0.1
  assert job.parse_value("label_noise", "0.05") == 0.05
  for bad in (0.5, -0.01, 1.0):
    with pytest.raises(job.JobError, match="--label_noise"):
      job.validate(dict(TINY, label_noise=bad))


@pytest.mark.parametrize("bad", ["0.5", "-0.1"])
def test_bad_label_noise_exits_2_and_writes_nothing(tmp_path, bad):
  r = cli_runner.run("lossland.scripts.ensemble", ["--out_dir", str(tmp_path), "--label_noise",
                     bad, "--P", "30", "--d", "4"], timeout=300,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert r.returncode == 2, r.stderr
  err = r.stderr.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: --label_noise"), r.stderr
  assert not os.listdir(tmp_path)


def test_polish_histories_are_saved_under_their_own_keys(tmp_path):
  # 20 Adam steps leave every member unsat: all are polished, for 30
  # evaluations (fewer than the 500 of the polish's jamming window)
  a, s = _run(tmp_path, polish="lbfgs", polish_steps=30, record_unsat=True)
  K, P = 2, 40
  sched = train.measurement_steps(30)
  M2 = len(sched)
  np.testing.assert_array_equal(a["polish_history_step"], sched)
  for m in train.MEASUREMENTS:
    assert a[f"polish_history_{m}"].shape == (K, M2)
  assert a["polish_history_running"].shape == (K, M2)
  assert a["polish_history_unsat"].shape == (K, M2, P)
  assert a["polish_history_unsat"].dtype == bool
  members = s["members"]
  np.testing.assert_array_equal(a["polished"], [m["polished"] for m in members])
  np.testing.assert_array_equal(a["polish_steps"], [m["polish_steps"] for m in members])
  np.testing.assert_array_equal(a["steps"], a["steps_before_polish"] + a["polish_steps"])
  assert [train.STOP_REASONS[c] for c in a["stop_code_before_polish"]] == [
      m["stop_before_polish"] for m in members]
  # the existing keys are the first stage's histories, unchanged in shape
  assert a["history_loss"].shape == (K, len(train.measurement_steps(20)))
  assert a["polished"].all()
  run = a["polish_history_running"]
  np.testing.assert_array_equal(run, np.isfinite(a["polish_history_loss"]))
  np.testing.assert_array_equal(a["polish_history_unsat"].sum(-1)[run],
                                a["polish_history_n_delta"][run])
  assert not a["polish_history_unsat"][~run].any()
  for k, m in enumerate(members):
    loss = a["polish_history_loss"][k][run[k]]
    # L-BFGS accepts only descent, from where Adam stopped. The history is a
    # re-measure: bitwise the stop's loss on the CPU, within rounding on a GPU
    # (an H200 gave 1 ulp above loss_before_polish at the first point).
    ulp = 0.0 if jax.default_backend() == "cpu" else 1e-13
    assert np.all(np.diff(loss) <= ulp * loss[:-1])
    assert loss[0] <= m["loss_before_polish"] * (1 + ulp)
    assert a["final_loss"][k] == m["loss"]
    if m["stop_reason"] == "max_steps":  # its stop is the grid's last point
      assert run[k, -1] and abs(loss[-1] - m["loss"]) <= ulp * m["loss"]
      assert m["polish_steps"] == 30
    else:
      assert m["polish_steps"] <= 30 and loss[-1] >= a["final_loss"][k] * (1 - ulp)


def test_summary_classes_use_the_nets_dead_points():
  """job._dead_points: per member nets.dead_points on the training set; None
  for networks where dead points are not defined (tanh)."""
  import types
  import jax
  from lossland import job, nets
  cfg = nets.NetConfig(d=3, width=2, depth=2, bias=True)
  init_fn, _ = nets.make_net(cfg)
  params = jax.vmap(init_fn)(jax.random.split(jax.random.key(0), 3))
  x = jax.random.normal(jax.random.key(1), (50, 3))
  res = types.SimpleNamespace(params=params)
  ds = types.SimpleNamespace(x_train=x)
  got = job._dead_points(cfg, res, ds)
  assert got.shape == (3, 50) and got.any()   # width 2: many inputs kill a layer
  for k in range(3):
    pk = jax.tree.map(lambda a: a[k], params)
    np.testing.assert_array_equal(got[k], np.asarray(nets.dead_points(cfg, pk, x)))
  assert job._dead_points(nets.NetConfig(d=3, width=2, depth=2, activation="tanh"),
                          res, ds) is None


def test_bulk_float32_trains_in_float32_then_finishes_every_member_in_float64(tmp_path):
  """bulk_float32: the Adam stage sees float32 data and params; the polish
  re-evaluates every member (sat ones too) in float64, so a member is sat
  only if it is sat in float64; the results are float64."""
  kw = dict(dataset="sphere", P=24, d=5, width=6, depth=2, n_test=0, n_seeds=4,
            max_steps=600, lr=0.1, polish="lbfgs", polish_steps=40, polish_jam_window=20)
  a, s = _run(tmp_path / "bulk", bulk_float32=True, **kw)
  a64, s64 = _run(tmp_path / "f64", **kw)
  assert a["params_final"].dtype == np.float64 == a["f_train"].dtype
  assert a["params_init"].dtype == np.float64
  reasons1 = [m["stop_before_polish"] for m in s["members"]]
  assert "sat" in reasons1, reasons1                      # a sat member in float32 ...
  np.testing.assert_array_equal(a["polished"],             # ... is re-evaluated too
                                [r != "diverged" for r in reasons1])
  for m, n in zip(s["members"], a["polish_steps"]):
    if m["stop_before_polish"] == "sat" and m["stop_reason"] == "sat":
      assert n == 0                                       # sat in float64 at once
  # the same class as all-float64 on this easy cell
  assert [m["class"] for m in s["members"]] == [m["class"] for m in s64["members"]]
  # the float32 stage really ran in float32: its losses differ from float64's
  assert not np.array_equal(a["history_loss"], a64["history_loss"])


def test_bulk_float32_needs_x64_and_a_polish():
  for bad in (dict(polish="none"), dict(polish="lbfgs", x64=False)):
    with pytest.raises(job.JobError, match="--bulk_float32"):
      job.validate(dict(TINY, bulk_float32=True, **bad))
  base = job.validate(dict(TINY))
  assert sweep.cell_id(base) == sweep.cell_id(dict(base, bulk_float32=False))
  assert "bulk_float32" not in job.key_values(base)


def test_bulk_validation_script_refuses_bad_grids(tmp_path):
  script = os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts",
                        "validate_bulk_float32.py")
  for bad in (["--depths", "2,3", "--widths", "4"], ["--p_over_n", "x"], ["--n_seeds", "0"]):
    r = subprocess.run([sys.executable, script, "--out", str(tmp_path / "v.json"), *bad],
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "v.json").exists()
