"""The benchmark entry point: dispatch, bad input, and a tiny ensemble run."""
import json
import os

import numpy as np
import pytest

from lossland.scripts import bench_ensemble

import cli_runner


def _bench(args):
  return cli_runner.run("lossland.scripts.bench", args, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_unknown_benchmark_and_missing_out_dir_exit_2(tmp_path):
  for args in (["nosuch", "--out_dir", str(tmp_path / "x")], ["ensemble"], [],
               ["hessian", "--full", "--out_dir", str(tmp_path / "x")]):
    out = _bench(args)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().startswith("error:") and len(out.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "x").exists()


def test_tiny_ensemble_benchmark(tmp_path):
  s = bench_ensemble.run_benchmark(str(tmp_path), quick=True, n_members=3, steps=3, repeats=1)
  on_disk = json.loads((tmp_path / "summary.json").read_text())
  assert set(on_disk["speedup_vmapped_vs_sequential"]) == {"small", "medium", "large"}
  for name in ("small", "medium", "large"):
    assert s["speedup_vmapped_vs_sequential"][name] > 0
    assert 0 < s["flops_fraction_of_matmul"][name] < 10
    assert s["sizes"][name]["N"] > 0
  # the naive reference, same member-steps, as a flat dict
  assert set(on_disk["lib_over_naive_time"]) == {f"{n}_K3_s3" for n in ("small", "medium", "large")}
  for case, ratio in s["lib_over_naive_time"].items():
    assert ratio > 0
    np.testing.assert_allclose(
        ratio, s["naive_member_steps_per_s"][case] / s["lib_member_steps_per_s"][case], rtol=1e-9)
  assert on_disk["n_devices"] >= 1
  g = on_disk["grid"]   # the batched grid row, tiny here: 3 cells x 2 members
  assert g["n_cells"] == 3 and len(g["P"]) == 3 and g["P"][0] < g["P"][-1]
  np.testing.assert_allclose(g["speedup_batched"],
                             g["seconds_cell_by_cell"] / g["seconds_batched"])
  np.testing.assert_allclose(g["speedup_first_batched"],
                             g["seconds_first_cell_by_cell"] / g["seconds_first_batched"])
  assert g["seconds_first_batched"] >= g["seconds_batched"]   # compiles, then runs
  assert "paper" not in on_disk  # the quick run skips the paper-scale row


def test_tiny_step_profile(tmp_path):
  import jax.numpy as jnp
  from lossland.scripts import bench_step
  s = bench_step.run_benchmark(str(tmp_path), quick=True, steps=2, repeats=1,
                               dtypes=(jnp.float64,), variants=({},))
  on_disk = json.loads((tmp_path / "summary.json").read_text())
  res = on_disk["dtypes"]["float64"]
  # (the layout variants' rows: test_paper_row_of_the_ensemble_benchmark)
  assert set(res["variants"]) == {
      "forward", "act_grad", "grad[base]", "engine[base]", "naive", "naive[unroll4]",
      "naive_flat"}
  for part, rec in res["variants"].items():
    np.testing.assert_allclose(rec["member_steps_per_s"] * rec["us_per_member_step"], 1e6)
    np.testing.assert_allclose(rec["seconds_per_step"] / res["K"] * 1e6,
                               rec["us_per_member_step"])
  # the floor: 9 passes over a [P, h] float64 array per hidden layer
  np.testing.assert_allclose(
      res["memory_floor_us_per_member_step"] * 1e-6 * on_disk["copy_bandwidth_gbs"] * 1e9,
      9 * res["depth"] * res["P"] * res["width"] * 8)
  assert res["hlo"]["grad_base_float64"]["n_dot"] >= 2 * res["depth"] + 1
  assert res["hlo"]["chunk8_float64"]["n_while"] >= 1
  assert (tmp_path / "hlo_grad_base_float64.txt").exists()
  assert s["dtypes"]["float64"]["engine_over_naive"] > 0
  assert bench_step.variant_name({"scan_unroll": 1, "wgrad_split": 64}) == "split64+unroll1"


def test_paper_row_of_the_ensemble_benchmark():
  import jax.numpy as jnp
  from lossland.scripts import bench_step
  row = bench_step.paper_row(quick=True, dtypes=(jnp.float64, jnp.float32), steps=2)
  assert set(row["dtypes"]) == {"float64", "float32"}
  for r in row["dtypes"].values():
    assert set(r["variants"]) == {"engine[base]", "engine[split64+pad8]", "naive"}
    for rec in r["variants"].values():
      np.testing.assert_allclose(rec["frac_memory_floor"],
                                 r["memory_floor_us_per_member_step"] / rec["us_per_member_step"])
    np.testing.assert_allclose(r["engine_over_naive"],
                               r["variants"]["engine[base]"]["us_per_member_step"]
                               / r["variants"]["naive"]["us_per_member_step"])
  # float32's floor is half float64's (bytes per element)
  np.testing.assert_allclose(row["dtypes"]["float32"]["memory_floor_us_per_member_step"] * 2,
                             row["dtypes"]["float64"]["memory_floor_us_per_member_step"])


def test_tiny_stationarity_benchmark(tmp_path):
  """The certificate's benchmark: ours and the reference (eager sums, fresh jits) give the
  same r_sub on every state, the slope Jacobians agree, and the ratios are
  those of the medians."""
  from lossland.scripts import bench_stationarity
  s = bench_stationarity.run_benchmark(str(tmp_path), quick=True, n_states=3)
  on_disk = json.loads((tmp_path / "summary.json").read_text())
  assert len(on_disk["rows"]) == 3
  for r in s["rows"]:
    assert r["n_kink"] == r["n_kink_reference"] > 0 and r["n_unsat"] > 0
    assert r["r_sub"] == pytest.approx(r["r_sub_reference"], rel=1e-10)
  np.testing.assert_allclose(s["speedup"],
                             s["seconds_per_call_reference"] / s["seconds_per_call"])
  assert s["max_abs_r_sub_difference"] <= 1e-10 * max(r["r_sub"] for r in s["rows"])
  # the slope Jacobian, one point per pair, is jax.jacfwd's over all points
  assert all(r["jacobian_max_abs"] > 0 for r in s["rows"])
  assert s["jacobian_max_rel_difference"] <= 1e-12
  np.testing.assert_allclose(s["jacobian_speedup"],
                             s["jacobian_seconds_jacfwd"] / s["jacobian_seconds"])


def test_tiny_finish_benchmark(tmp_path):
  """The finish's benchmark: the layer-wise Hessian equals jax.hessian's to
  rounding on every state, both finishes reach the same loss, and the ratios
  are those of the medians; for the ReLU net and the smooth one."""
  from lossland.scripts import bench_finish
  s = bench_finish.run_benchmark(str(tmp_path), quick=True, n_states=2, n_iter=3)
  on_disk = json.loads((tmp_path / "summary.json").read_text())
  assert len(on_disk["rows"]) == 2
  for r in s["rows"]:
    assert r["n_kink_pairs"] > 0 and r["finish_iterations"] == r["finish_iterations_reference"]
    assert r["hessian_max_rel_difference"] <= 1e-12
    assert r["finish_loss"] == pytest.approx(r["finish_loss_reference"], rel=1e-9)
  np.testing.assert_allclose(s["parts_speedup"],
                             s["parts_seconds_reference"] / s["parts_seconds"])
  np.testing.assert_allclose(s["finish_speedup"],
                             s["finish_seconds_reference"] / s["finish_seconds"])
  # the smooth finish (softplus, with weight decay): no kink pairs, the same checks
  assert s["smooth_activation"] == "softplus" and len(on_disk["smooth_rows"]) == 2
  for r in s["smooth_rows"]:
    assert r["n_kink_pairs"] == 0 and r["finish_iterations"] == r["finish_iterations_reference"]
    assert r["hessian_max_rel_difference"] <= 1e-12
    assert r["finish_loss"] == pytest.approx(r["finish_loss_reference"], rel=1e-9)
  np.testing.assert_allclose(s["smooth_parts_speedup"],
                             s["smooth_parts_seconds_reference"] / s["smooth_parts_seconds"])
