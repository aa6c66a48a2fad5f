"""The benchmark entry point: dispatch, bad input, and a tiny ensemble run."""
import json
import os
import subprocess
import sys

import numpy as np

from lossland.scripts import bench_ensemble


def _bench(args):
  return subprocess.run([sys.executable, "-m", "lossland.scripts.bench"] + args,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_unknown_benchmark_and_missing_out_dir_exit_2(tmp_path):
  for args in (["nosuch", "--out_dir", str(tmp_path / "x")], ["ensemble"], []):
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
