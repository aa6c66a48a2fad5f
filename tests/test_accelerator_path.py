"""The accelerator-only code paths, run on the CPU (docs/reliability.md,
"GPU readiness audit").

On a GPU, lossland.train donates the driver's buffers to its jitted calls,
unrolls the step scan (``UNROLL``), vmaps the whole ensemble
(``default_group_size``) and plans with the device's memory; none of that runs
in a CPU-only suite. jax's CPU client honours donation, so answering "gpu" from
``jax.default_backend()`` while the arrays stay on the CPU runs those paths
here: a donated buffer that is used again, or donated twice, raises.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lossland import curvature, data, losses, nets, train

NET = nets.NetConfig(d=6, width=12, depth=2)
LOSS = losses.LossConfig()
# An lr no other test uses: train._compiled caches per config, not per backend.
# Scans of 1 and 8 steps only: few compilations (they are most of the time).
CFG = train.TrainConfig(lr=1.0123e-2, max_steps=600, chunk_steps=8)


@pytest.fixture(scope="module")
def ds():
  return data.sphere(jax.random.key(42), 40, 6, n_test=30)


class _Interrupt(Exception):
  pass


def test_gpu_path_donates_and_keeps_the_guarantees(ds, tmp_path, monkeypatch):
  real_backend = jax.default_backend()  # on a GPU machine this test runs on the GPU
  train._compiled.cache_clear()
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert train.default_group_size(5, 1e12) == 5  # the accelerator rule
  plan = train.memory_plan(NET, CFG, 40, 30, 3, 8)
  assert plan["backend"] == "gpu" and plan["group_size"] == 3
  if real_backend == "cpu":
    assert plan["available"] is None  # no GPU to ask
  # The chunk really donates (else this test would not test the GPU path).
  fns = train._compiled(NET, LOSS, CFG, train.n_devices())
  group = fns.init_group(train._keys(np.arange(2)), jnp.arange(2, dtype=jnp.int32),
                         jnp.zeros(2, bool), ds, 5)
  state = group.state
  fns.chunk(state, group.member, ds, jnp.int32(0), 8)
  assert jax.tree_util.tree_leaves(state.params)[0].is_deleted()

  # Interrupted mid-way and resumed from the checkpoint: bitwise the same
  # numbers. Members stop at different steps, so compact and finish (which
  # donate too) run.
  ref = train.train_ensemble(range(3), ds, NET, LOSS, CFG, group_size=2,
                             compact_min_work=0)
  assert len(set(ref.steps)) > 1, ref.steps
  path = str(tmp_path / "ckpt.npz")
  calls = []

  def bomb(step, *_):
    calls.append(step)
    if len(calls) == 30:  # in the first group
      raise _Interrupt

  with pytest.raises(_Interrupt):
    train.train_ensemble(range(3), ds, NET, LOSS, CFG, group_size=2, progress_fn=bomb,
                         compact_min_work=0,
                         checkpoint_path=path, checkpoint_every=0)
  res = train.train_ensemble(range(3), ds, NET, LOSS, CFG, group_size=2, compact_min_work=0,
                             checkpoint_path=path, checkpoint_every=0)
  np.testing.assert_array_equal(res.steps, ref.steps)
  np.testing.assert_array_equal(res.f_test, ref.f_test)
  for k in train.MEASUREMENTS:
    np.testing.assert_array_equal(res.history[k], ref.history[k])
  # Member 1 alone is member 1 of the group.
  one = train.train_ensemble([1], ds, NET, LOSS, CFG)
  assert one.steps[0] == ref.steps[1]
  np.testing.assert_allclose(one.f_test[0], ref.f_test[1], rtol=1e-9, atol=1e-12)

  monkeypatch.undo()
  train._compiled.cache_clear()


class _Device:
  def __init__(self, stats):
    self._stats = stats

  def memory_stats(self):
    return self._stats


def test_array_memory_is_the_devices_on_an_accelerator(monkeypatch):
  monkeypatch.setattr(curvature, "available_memory_bytes", lambda: 12345)
  assert curvature.array_memory_bytes("cpu") == 12345  # the host's, on CPU
  stats = {"bytes_limit": 80 * 2**30, "bytes_in_use": 2**30}
  monkeypatch.setattr(jax, "local_devices", lambda backend=None: [_Device(stats)])
  assert curvature.array_memory_bytes("gpu") == 79 * 2**30
  # Dense N = 45000 in float64 needs 5 N^2 8 bytes = 75.4 GiB, more than 0.8 of
  # the device's 79 GiB: refused with the device's number, whatever the host has.
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  with pytest.raises(MemoryError, match="only 79.0 GiB"):
    curvature.check_dense_memory(45_000, np.float64)
  assert curvature.choose_method("auto", 45_000, np.float64, dense_max_n=10**6) == "lanczos"
  monkeypatch.setattr(jax, "local_devices", lambda backend=None: [_Device(None)])
  assert curvature.array_memory_bytes("gpu") is None
  curvature.check_dense_memory(45_000, np.float64)  # unknown: not refused
