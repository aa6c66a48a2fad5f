"""--command_buffers (lossland.xla_options): the XLA flag it sets, in the
environment XLA reads at start-up, and that a script runs with each mode."""
import json
import os
import subprocess
import sys

import pytest

from lossland import xla_options

FLAG = "--xla_gpu_enable_command_buffer"


def test_modes_set_one_flag_and_keep_the_others():
  env = {"XLA_FLAGS": "--xla_backend_optimization_level=0 " + FLAG + "=FUSION"}
  assert xla_options.set_command_buffers("xla", env) is None
  assert env["XLA_FLAGS"] == "--xla_backend_optimization_level=0 " + FLAG + "=FUSION"
  assert xla_options.set_command_buffers("scan", env) == (
      "--xla_backend_optimization_level=0 " + FLAG + "=+WHILE,+CONDITIONAL")
  assert xla_options.set_command_buffers("off", env) == (
      "--xla_backend_optimization_level=0 " + FLAG + "=")
  empty = {}
  assert xla_options.set_command_buffers("scan", empty) == FLAG + "=+WHILE,+CONDITIONAL"
  with pytest.raises(ValueError, match="command buffers"):
    xla_options.set_command_buffers("graphs", {})


def test_too_late_once_the_backend_started():
  import jax.numpy as jnp
  jnp.ones(1).block_until_ready()  # this process's backend is up
  assert xla_options.backend_started()
  before = os.environ.get("XLA_FLAGS")
  with pytest.raises(RuntimeError, match="already started"):
    xla_options.set_command_buffers("scan")
  assert os.environ.get("XLA_FLAGS") == before
  assert xla_options.set_command_buffers("xla") is None  # nothing to set: fine


@pytest.mark.parametrize("mode", ["off", "scan"])
def test_a_script_runs_with_the_mode_and_records_the_flag(tmp_path, mode):
  """XLA parses the flag when the backend starts (an invalid value aborts the
  process), so a finished run shows it was read; config.json records it."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "lossland.scripts.ensemble", "--command_buffers",
                      mode, "--n_seeds", "2", "--max_steps", "20", "--plots=false",
                      "--out_dir", str(tmp_path)], env=env, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  (run,) = (tmp_path / "ensemble").iterdir()
  flags = json.loads((run / "config.json").read_text())["environment"]["xla_flags"]
  assert flags.split()[-1] == f"{FLAG}={xla_options.COMMAND_BUFFERS[mode]}"
  # the caller's own flags stay in front
  assert flags.startswith(os.environ.get("XLA_FLAGS", "").strip())
