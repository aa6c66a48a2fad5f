"""Run directories: stale staging folders, nothing half-written, bad-input errors."""
import os
import subprocess
import sys
import time

import pytest

from lossland import io, job
from lossland.scripts import _cli


def test_stale_staging_of_a_dead_process_is_cleaned(tmp_path):
  parent = tmp_path / "ensemble"
  parent.mkdir()
  # A process that is gone: its staging folder is stale.
  p = subprocess.Popen([sys.executable, "-c", "pass"])
  p.wait()
  host = io._host()
  dead = parent / f".20260101T000000Z_abcd.{host}-{p.pid}.xyz.tmp"
  dead.mkdir()
  (dead / "arrays.npz").write_bytes(b"half written")
  # This process (alive), another host (recent), a finished run: all kept.
  alive = parent / f".20260101T000000Z_abcd.{host}-{os.getpid()}.xyz.tmp"
  alive.mkdir()
  other = parent / ".20260101T000000Z_abcd.otherhost-1.xyz.tmp"
  other.mkdir()
  done = parent / "20260101T000000Z_abcd"
  done.mkdir()
  # An old folder of another host or an older name format: stale by age.
  old = parent / ".20250101T000000Z_abcd.q1w2e3.tmp"
  old.mkdir()
  t = time.time() - io.STALE_AGE_SECONDS - 10
  os.utime(old, (t, t))
  with io.new_run(str(tmp_path), "ensemble", {"a": 1}) as w:
    w.write_json("summary.json", {})
    w.save_arrays(x=[1])
    # The writer's own staging folder carries this host and pid.
    assert f"{host}-{os.getpid()}" in os.path.basename(w.path)
  left = sorted(os.listdir(parent))
  assert dead.name not in left and old.name not in left
  assert {alive.name, other.name, done.name, os.path.basename(w.final_path)} <= set(left)


def test_failed_run_leaves_no_folder_it_created(tmp_path):
  with pytest.raises(KeyboardInterrupt):
    with io.new_run(str(tmp_path / "new_root"), "ensemble", {}):
      raise KeyboardInterrupt
  assert not (tmp_path / "new_root" / "ensemble").exists()
  # A folder that existed before is kept.
  (tmp_path / "kept").mkdir()
  with pytest.raises(RuntimeError):
    with io.new_run(str(tmp_path), "kept", {}):
      raise RuntimeError
  assert (tmp_path / "kept").is_dir() and not any((tmp_path / "kept").iterdir())


def test_out_dir_checks(tmp_path, monkeypatch):
  (tmp_path / "f").write_text("x")
  for bad in (tmp_path / "f", tmp_path / "f" / "sub"):
    with pytest.raises(job.JobError, match="not a directory"):
      job.check_out_dir(str(bad))
  job.check_out_dir(str(tmp_path / "new" / "deeper"))  # creatable: fine
  assert not (tmp_path / "new").exists()  # and nothing created
  # Read-only (simulated: the tests may run as root, who can write anywhere).
  real = os.access
  monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(tmp_path) else real(p, m))
  with pytest.raises(job.JobError, match="not writable"):
    job.check_out_dir(str(tmp_path / "new"))


def test_validate_fills_defaults_and_names_the_option():
  v = job.validate({"P": 10, "alpha": 2})
  assert v["P"] == 10 and v["alpha"] == 2.0 and isinstance(v["alpha"], float)
  assert v["n_seeds"] == job.defaults()["n_seeds"] and set(v) == set(job.defaults())
  assert job.validate({"P": 1e3})["P"] == 1000  # an integral float is an int
  for bad, word in [({"nosuch": 1}, "--nosuch"), ({"P": 0}, "--P"), ({"P": 1.5}, "--P"),
                    ({"alpha": 0.0}, "--alpha"), ({"lr": float("nan")}, "--lr"),
                    ({"margin": float("inf")}, "--margin"), ({"x64": 1}, "--x64"),
                    ({"dataset": "cifar"}, "--dataset"), ({"depth": 10**5}, "--depth"),
                    ({"momentum": 1.0}, "--momentum")]:
    with pytest.raises(ValueError, match=word) as e:
      job.validate(bad)
    assert "\n" not in str(e.value) and isinstance(e.value, io.InputError)
  assert job.parse_value("P", "150") == 150 and job.parse_value("bias", "true") is True
  with pytest.raises(job.JobError, match="--P"):
    job.parse_value("P", "1e12")


def test_spec_matches_the_data_sets():
  from lossland import data
  assert job.OPTIONS["dataset"].choices == data.DATASETS
  from lossland import train
  assert job.OPTIONS["optimizer"].choices == train.OPTIMIZERS
  assert job.OPTIONS["schedule"].choices == train.SCHEDULES
  from lossland import nets
  assert job.OPTIONS["init"].choices == nets.INITS


def test_only_errors_raised_on_purpose_count_as_bad_input():
  assert _cli._on_purpose(_cli.UsageError("x")) and _cli._on_purpose(io.RunError("x"))
  assert _cli._on_purpose(job.JobError("x"))
  from lossland import data, nets
  if hasattr(data, "DataError"):
    assert _cli._on_purpose(data.DataError("x"))
  try:
    nets.NetConfig(d=0, width=1, depth=1)
  except ValueError as e:
    assert _cli._on_purpose(e)  # a config's own validation
  try:
    import numpy as np
    np.zeros((2, 3)).reshape(5)
  except ValueError as e:
    assert not _cli._on_purpose(e)  # an internal error keeps its traceback
  assert not _cli._on_purpose(ValueError("raised by hand"))


def test_ctrl_c_during_a_checkpoint_write_is_raised_after_the_file_is_complete(tmp_path, monkeypatch):
  # A SIGINT landing inside np.savez used to leave the zip writer open and turn
  # the interrupt into "ValueError: Can't close the ZIP file ..." (exit 1, not 130).
  import os
  import signal
  import jax.numpy as jnp
  import numpy as np
  from lossland import checkpoint
  real_savez = np.savez

  def savez_interrupted(fh, **arrays):
    os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C in the middle of the write
    real_savez(fh, **arrays)

  monkeypatch.setattr(checkpoint.np, "savez", savez_interrupted)
  path = str(tmp_path / "c.npz")
  tree = {"w": jnp.arange(5.0), "k": jnp.int32(3)}
  before = signal.signal(signal.SIGINT, signal.default_int_handler)
  with pytest.raises(KeyboardInterrupt):
    checkpoint.save(path, tree, meta={"t": 7})
  assert sorted(os.listdir(tmp_path)) == ["c.npz"]   # renamed, no staging file left
  restored, meta = checkpoint.restore(path, tree)
  np.testing.assert_array_equal(restored["w"], np.arange(5.0))
  assert meta["t"] == 7
  assert signal.signal(signal.SIGINT, before) is signal.default_int_handler  # restored


def test_checkpoint_remove_takes_the_partial_files_of_dead_writers(tmp_path):
  """checkpoint.remove: the file, and ``path.<pid>.tmp`` of a process that
  died while writing it (SIGKILL mid-save); a live writer's is kept, and
  other files are not touched."""
  import numpy as np
  from lossland import checkpoint
  path = str(tmp_path / ".checkpoint_x.npz")
  checkpoint.save(path, {"a": np.zeros(3)})
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True).stdout.strip()
  for name in (f".checkpoint_x.npz.{dead}.tmp", f".checkpoint_x.npz.{os.getpid()}.tmp",
               ".checkpoint_y.npz", "keep.txt"):
    (tmp_path / name).write_text("x")
  checkpoint.remove(path)
  assert sorted(os.listdir(tmp_path)) == sorted(
      [f".checkpoint_x.npz.{os.getpid()}.tmp", ".checkpoint_y.npz", "keep.txt"])
  checkpoint.remove(path)   # nothing left to remove: no error
