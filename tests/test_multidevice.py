"""Members sharded over several (forced host) devices give the same numbers.

``--xla_force_host_platform_device_count`` must be set before jax starts, so
the sharded ensemble runs in a subprocess; this process (one CPU device)
trains the same ensemble and compares. On a machine with a GPU this process
trains on its CPU device too (``on_cpu``): the comparison is of sharding, not
of backends.
"""
import os
import subprocess
import sys

import jax
import numpy as np

from lossland import data, losses, nets, train

_SCRIPT = r"""
import sys
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
from lossland import data, losses, nets, train
assert train.n_devices() == 4, train.n_devices()
ds = data.sphere(jax.random.key(3), 30, 5, n_test=10)
net = nets.NetConfig(d=5, width=8, depth=2)
cfg = train.TrainConfig(lr=1e-2, max_steps=300, chunk_steps=100, jam_window=100)
res = train.train_ensemble(range(5), ds, net, losses.LossConfig(), cfg, compact_min_work=0)
assert res.n_devices == 4 and res.group_size == 5
np.savez(sys.argv[1], steps=res.steps, code=res.stop_code, f_test=res.f_test,
         loss=res.history["loss"], final_loss=res.final["loss"],
         w=np.asarray(res.params[-1]["w"]))
"""


def test_sharded_ensemble_equals_single_device(tmp_path, on_cpu):
  out = tmp_path / "sharded.npz"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(out)], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  sharded = np.load(out)
  with on_cpu():
    ds = data.sphere(jax.random.key(3), 30, 5, n_test=10)
    net = nets.NetConfig(d=5, width=8, depth=2)
    cfg = train.TrainConfig(lr=1e-2, max_steps=300, chunk_steps=100, jam_window=100)
    one = train.train_ensemble(range(5), ds, net, losses.LossConfig(), cfg, compact_min_work=0)
  assert one.n_devices == 1
  # several stop reasons, so compaction ran on the sharded group too
  assert len(set(one.stop_reasons)) > 1, one.stop_reasons
  np.testing.assert_array_equal(sharded["steps"], one.steps)
  np.testing.assert_array_equal(sharded["code"], one.stop_code)
  np.testing.assert_allclose(sharded["f_test"], one.f_test, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(sharded["loss"], one.history["loss"], rtol=1e-10, atol=1e-14)
  np.testing.assert_allclose(sharded["final_loss"], one.final["loss"], rtol=1e-10, atol=1e-14)
  np.testing.assert_allclose(sharded["w"], np.asarray(one.params[-1]["w"]), rtol=1e-10, atol=1e-12)


def test_cluster_detection_without_initializing():
  assert not train.cluster_detected({})
  assert not train.cluster_detected({"SLURM_NTASKS": "1", "OMPI_COMM_WORLD_SIZE": "1"})
  assert train.cluster_detected({"SLURM_NTASKS": "4"})
  assert train.cluster_detected({"OMPI_COMM_WORLD_SIZE": "2"})
  assert train.cluster_detected({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
  assert not train.cluster_detected({"SLURM_NTASKS": "many"})
  assert train.maybe_initialize_distributed(env={}) is False
