"""The engine around the training loop: checkpoints, memory plan, stop rule, keys."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lossland import checkpoint, curvature, nets, train


def test_checkpoint_round_trip_with_keys(tmp_path):
  tree = {"a": jnp.arange(6.0).reshape(2, 3), "b": [jnp.int32(7), np.array([True, False])],
          "k": jax.vmap(jax.random.key)(jnp.arange(3))}
  path = str(tmp_path / "c.npz")
  checkpoint.save(path, tree, {"step": 5, "name": "x"})
  back, meta = checkpoint.restore(path, tree)
  assert meta == {"step": 5, "name": "x"} and checkpoint.read_meta(path) == meta
  np.testing.assert_array_equal(back["a"], tree["a"])
  assert back["b"][0].dtype == np.int32 and back["b"][1].dtype == bool
  np.testing.assert_array_equal(jax.random.key_data(back["k"]), jax.random.key_data(tree["k"]))
  # the restored keys draw the same numbers
  np.testing.assert_array_equal(jax.vmap(jax.random.normal)(back["k"]),
                                jax.vmap(jax.random.normal)(tree["k"]))
  assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]
  with pytest.raises(ValueError, match="leaf"):
    checkpoint.restore(path, dict(tree, a=jnp.zeros((3, 2))))
  (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
  with pytest.raises(ValueError, match="unreadable checkpoint"):
    checkpoint.restore(str(tmp_path / "bad.npz"), tree)


NET = nets.NetConfig(d=10, width=100, depth=3)
CFG = train.TrainConfig()


def test_memory_plan_counts_and_group_size():
  plan = train.memory_plan(NET, CFG, P=1000, n_test=500, n_members=50, itemsize=8,
                           backend="gpu", available=10**9)
  N = nets.n_params(NET)
  # at least params, params0, gradient, Adam's two moments and the activations
  assert plan["bytes_per_member"] >= 8 * (5 * N + 3 * 1000 * 100 * 3)
  assert plan["bytes_data"] == 1500 * 11 * 8
  usable = int(train.MEMORY_FRACTION * 10**9)
  expect = (usable - plan["bytes_data"] - plan["bytes_results"]) // plan["bytes_per_member"]
  assert plan["group_size"] == min(50, expect) and 1 <= plan["group_size"] <= 50
  small = train.memory_plan(NET, CFG, 1000, 500, 50, 8, backend="gpu", available=10**12)
  assert small["group_size"] == 50


@pytest.mark.parametrize("kw,match", [
    (dict(P=10**12), "the data need"),
    (dict(width=10**9), "one member needs"),
    (dict(n_members=10**9), "the results of 1000000000 members"),
    (dict(depth=100_000, width=1000), "one member needs"),
])
def test_memory_plan_refuses_what_cannot_fit(kw, match):
  net = dataclasses.replace(NET, **{k: v for k, v in kw.items() if k in ("width", "depth")})
  args = dict(P=1000, n_test=0, n_members=10, itemsize=8)
  args.update({k: v for k, v in kw.items() if k in ("P", "n_members")})
  with pytest.raises(ValueError, match=match) as e:
    train.memory_plan(net, CFG, backend="gpu", available=80 * 2**30, **args)
  msg = str(e.value)
  assert "\n" not in msg and "80.0 GiB" in msg


def test_memory_plan_on_cpu_reads_available_memory(monkeypatch):
  monkeypatch.setattr(curvature, "available_memory_bytes", lambda: 2 * 10**9)
  plan = train.memory_plan(NET, CFG, 100, 0, 4, 8, backend="cpu")
  assert plan["available"] == 2 * 10**9 and plan["group_size"] == 4
  monkeypatch.setattr(curvature, "available_memory_bytes", lambda: None)
  assert train.memory_plan(NET, CFG, 100, 0, 4, 8, backend="cpu")["group_size"] == 4


def test_stop_rule_priorities():
  cfg = train.TrainConfig(max_steps=100, jam_window=50)
  code = lambda **kw: int(train.stop_code(**{**dict(
      t=10, running=True, loss=1.0, loss0=1.0, finite_grad=True, nd=3,
      checked=True, best=1.0, jam_ref=1.0, lr=1e-2, cfg=cfg), **kw}))
  assert code() == train.RUNNING
  assert code(nd=0) == train.SAT
  assert code(t=50) == train.JAMMED                 # stalled window
  assert code(t=50, best=0.5) == train.RUNNING      # the best loss improved
  assert code(t=100) == train.MAX_STEPS             # a window at max_steps
  assert code(t=100, nd=0) == train.SAT
  assert code(loss=np.nan) == train.DIVERGED
  assert code(finite_grad=False, nd=0) == train.DIVERGED
  assert code(loss=2e6) == train.DIVERGED
  assert code(running=False, nd=0) == train.RUNNING  # stopped members keep their code


def test_member_keys_match_the_vmapped_keys():
  seeds = np.array([0, 5, 2**31 - 1])
  keys = train._keys(seeds)
  for s, k in zip(seeds, keys):
    np.testing.assert_array_equal(jax.random.key_data(k),
                                  jax.random.key_data(jax.random.key(int(s))))
