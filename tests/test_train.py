import dataclasses
import math

import jax
import numpy as np
import pytest

from lossland import data, losses, nets, train

NET = nets.NetConfig(d=6, width=12, depth=2)
LOSS = losses.LossConfig()


@pytest.fixture(scope="module")
def ds():
  return data.sphere(jax.random.key(42), 40, 6, n_test=30)


def test_vmapped_ensemble_equals_loop_over_seeds(ds):
  cfg = train.TrainConfig(lr=1e-2, max_steps=300, chunk_steps=100)
  ens = train.train_ensemble([0, 1, 2, 3], ds, NET, LOSS, cfg)
  for k, seed in enumerate([0, 1, 2, 3]):
    one = train.train_ensemble([seed], ds, NET, LOSS, cfg)
    assert one.steps[0] == ens.steps[k]
    assert one.stop_code[0] == ens.stop_code[k]
    for a, b in zip(jax.tree_util.tree_leaves(one.params), jax.tree_util.tree_leaves(ens.params)):
      np.testing.assert_allclose(a[0], b[k], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(one.history["loss"][0], ens.history["loss"][k], rtol=1e-9)


def test_group_sizes_give_the_same_members(ds):
  cfg = train.TrainConfig(lr=1e-2, max_steps=200, chunk_steps=50)
  a = train.train_ensemble(range(5), ds, NET, LOSS, cfg, group_size=5, compact_min_work=0)
  b = train.train_ensemble(range(5), ds, NET, LOSS, cfg, group_size=2)
  c = train.train_ensemble(range(5), ds, NET, LOSS, cfg, group_size=5, compact=False)
  for other in (b, c):
    np.testing.assert_array_equal(a.steps, other.steps)
    np.testing.assert_allclose(a.f_test, other.f_test, rtol=1e-9, atol=1e-12)


def test_plain_loop_reference(ds):
  # One member against a hand-written full-batch Adam loop (optax.adam).
  import optax
  cfg = train.TrainConfig(lr=3e-3, max_steps=50, stop_at_sat=False)
  res = train.train_ensemble([7], ds, NET, LOSS, cfg)
  init_fn, apply_fn = nets.make_net(NET)
  k_init, _ = jax.random.split(jax.random.key(7))
  params = init_fn(k_init)
  opt = optax.adam(3e-3)
  state = opt.init(params)
  loss = lambda p: losses.mean_loss(LOSS, apply_fn(p, ds.x_train), ds.y_train)
  for _ in range(50):
    g = jax.grad(loss)(params)
    upd, state = opt.update(g, state)
    params = optax.apply_updates(params, upd)
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(res.params)):
    np.testing.assert_allclose(a, b[0], rtol=1e-8, atol=1e-11)
  assert res.stop_reasons == ["max_steps"] and res.steps[0] == 50


def test_wide_net_on_few_points_is_sat():
  ds = data.sphere(jax.random.key(1), 10, 5)
  net = nets.NetConfig(d=5, width=64, depth=2)
  res = train.train_ensemble([0, 1], ds, net, LOSS, train.TrainConfig(lr=1e-2, max_steps=5000))
  assert res.stop_reasons == ["sat", "sat"]
  assert np.all(res.final["loss"] == 0) and np.all(res.final["n_delta"] == 0)
  assert np.all(res.steps < 5000)
  # the member stops exactly when N_delta first hits 0
  hist = res.history["n_delta"][0]
  assert np.all(hist[~np.isnan(hist)] > 0) or hist[~np.isnan(hist)][-1] == 0


def test_tiny_net_on_many_random_points_jams():
  ds = data.sphere(jax.random.key(2), 300, 5)
  net = nets.NetConfig(d=5, width=2, depth=1)  # N = 12 << P
  cfg = train.TrainConfig(lr=1e-2, max_steps=50_000, jam_window=1000, jam_rtol=1e-3)
  res = train.train_ensemble([0, 1], ds, net, LOSS, cfg)
  assert res.stop_reasons == ["jammed", "jammed"]
  assert np.all(res.final["n_delta"] > 0.1 * 12)
  assert np.all(res.steps < 50_000) and np.all(res.steps % 1000 == 0)


def test_huge_learning_rate_diverges(ds):
  cfg = train.TrainConfig(optimizer="sgd", lr=1e8, max_steps=1000)
  res = train.train_ensemble([0, 1], ds, NET, LOSS, cfg)
  assert res.stop_reasons == ["diverged", "diverged"]
  assert np.all(res.steps < 1000)


def test_max_steps(ds):
  cfg = train.TrainConfig(lr=1e-4, max_steps=20)
  res = train.train_ensemble([0], ds, NET, LOSS, cfg)
  assert res.stop_reasons == ["max_steps"] and res.steps[0] == 20


def test_step_schedule_and_minibatch(ds):
  cfg = train.TrainConfig(lr=1e-2, max_steps=300, schedule="step", decay_every=100,
                          decay_factor=0.1, batch_size=10, check_every=10)
  res = train.train_ensemble([0, 1], ds, NET, LOSS, cfg)
  lr = res.history["lr"][0]
  steps = res.history_step
  ok = ~np.isnan(lr)
  expected = 1e-2 * 0.1 ** ((steps[ok] - 1).clip(0) // 100)
  np.testing.assert_allclose(lr[ok][steps[ok] > 1], expected[steps[ok] > 1], rtol=1e-12)
  # mini-batch members differ from each other but are reproducible
  again = train.train_ensemble([0, 1], ds, NET, LOSS, cfg)
  np.testing.assert_array_equal(res.f_test, again.f_test)


def test_plateau_schedule_reduces_lr():
  ds = data.sphere(jax.random.key(2), 300, 5)
  net = nets.NetConfig(d=5, width=2, depth=1)
  cfg = train.TrainConfig(lr=1e-2, schedule="plateau", plateau_patience=200,
                          max_steps=3000, min_lr=1e-4)
  res = train.train_ensemble([0], ds, net, LOSS, cfg)
  lr = res.history["lr"][0]
  assert np.nanmin(lr) < 1e-2


def test_chunk_compiles_once_per_group_size(ds):
  """On the CPU a chunk's length is traced: one program per padded group size."""
  cfg = train.TrainConfig(lr=1e-2, max_steps=400, chunk_steps=100)
  assert not train.static_scans(cfg)
  res = train.train_ensemble(range(4), ds, NET, LOSS, cfg)
  fns = train._compiled(NET, LOSS, cfg, train.n_devices(), False, False)
  n = fns.chunk._cache_size()
  assert n == res.n_compiles >= 1  # one compilation per padded group size
  n_record = fns.record._cache_size()
  train.train_ensemble(range(4), ds, NET, LOSS, cfg)
  assert fns.chunk._cache_size() == n  # the same run compiles nothing new
  assert fns.record._cache_size() == n_record
  train.train_ensemble(range(10, 14), ds, NET, LOSS, cfg)
  # group sizes 4, 2, 1 at most, whatever the lengths between measurements
  assert fns.chunk._cache_size() <= len(train._buckets(4))
  assert fns.record._cache_size() <= len(train._buckets(4))


def test_compaction_only_where_it_pays(ds):
  """The deterministic rule (plan.compaction_pays): rows dropped x steps left
  x P x N against the break-even. A small run keeps its group and compiles
  one program; compacting everywhere visits more group sizes; the members
  are the same up to rounding."""
  from lossland.train import plan
  # 4 rows x min(t, max_steps - t) steps x 1e4 against 4e7
  assert plan.compaction_pays(8, 4, 1000, 5000, 1e4, 4e7)
  assert not plan.compaction_pays(8, 4, 999, 5000, 1e4, 4e7)
  assert plan.compaction_pays(8, 4, 4000, 5000, 1e4, 4e7)
  assert not plan.compaction_pays(8, 4, 4001, 5000, 1e4, 4e7)
  assert not plan.compaction_pays(4, 4, 10 ** 6, 10 ** 9, 1e9, 0)  # nothing to drop
  assert plan.compaction_pays(8, 2, 5000, 5000, 1.0, 0)  # 0: whenever the group shrinks
  assert not plan.compaction_pays(8, 2, 10 ** 6, 10 ** 9, 1e9, math.inf)
  cfg = train.TrainConfig(lr=1e-2, max_steps=400, chunk_steps=50)
  every = train.train_ensemble(range(6), ds, NET, LOSS, cfg, compact_min_work=0)
  assert len(set(every.steps)) > 1, every.steps  # members stop at different steps
  ruled = train.train_ensemble(range(6), ds, NET, LOSS, cfg)  # the CPU's 1e9: never here
  assert ruled.n_compiles == 1 < every.n_compiles
  np.testing.assert_array_equal(ruled.steps, every.steps)
  np.testing.assert_allclose(ruled.f_test, every.f_test, rtol=1e-9, atol=1e-12)


def test_static_scans_compile_per_shape_and_give_the_same_numbers(ds, monkeypatch):
  """Accelerators' scans of known lengths: one program per (group size,
  length), and bitwise the numbers of the CPU's traced-length loop."""
  cfg = train.TrainConfig(lr=1.0131e-2, max_steps=300, chunk_steps=100)
  ref = train.train_ensemble(range(3), ds, NET, LOSS, cfg)
  assert train.static_scans(dataclasses.replace(cfg, scan_unroll=2))
  monkeypatch.setattr(train.ensemble, "static_scans", lambda c: True)
  res = train.train_ensemble(range(3), ds, NET, LOSS, cfg)
  fns = train._compiled(NET, LOSS, cfg, train.n_devices(), False, True)
  assert fns.static and fns.chunk._cache_size() == res.n_compiles > ref.n_compiles
  lengths = {m for i in range(1, 101) for m in train.scan_lengths(i, 100)}
  assert lengths == {1, 8, 64}
  assert res.n_compiles <= len(train._buckets(3)) * len(lengths)
  np.testing.assert_array_equal(res.steps, ref.steps)
  np.testing.assert_array_equal(res.stop_code, ref.stop_code)
  np.testing.assert_array_equal(res.f_test, ref.f_test)
  for k in train.MEASUREMENTS:
    np.testing.assert_array_equal(res.history[k], ref.history[k])


def test_scan_lengths_cover_the_interval():
  for n in (1, 7, 8, 9, 100, 1000, 4097):
    parts = train.scan_lengths(n, 2000)
    assert sum(parts) == n and parts == sorted(parts, reverse=True)
    assert all(p in (1, 8, 64, 512) for p in parts)
  assert train.scan_lengths(100, 10) == [8] * 12 + [1] * 4


def test_a_stop_at_max_steps_is_max_steps_not_jammed():
  # jam_rtol close to 1 makes every jam window "stalled"; a window that ends
  # exactly at max_steps must still report max_steps (issue 10, item 4).
  ds = data.sphere(jax.random.key(2), 60, 5)
  net = nets.NetConfig(d=5, width=2, depth=1)
  cfg = train.TrainConfig(lr=1e-2, max_steps=100, jam_window=100, jam_rtol=0.999)
  res = train.train_ensemble([0, 1], ds, net, LOSS, cfg)
  assert res.stop_reasons == ["max_steps", "max_steps"]
  assert np.all(res.steps == 100)
  # the same window before max_steps is jammed (the rule itself works)
  res = train.train_ensemble([0, 1], ds, net, LOSS, dataclasses.replace(cfg, max_steps=101))
  assert res.stop_reasons == ["jammed", "jammed"] and np.all(res.steps == 100)


def test_same_seed_same_numbers(ds):
  cfg = train.TrainConfig(lr=1e-2, max_steps=100)
  a = train.train_ensemble([5], ds, NET, LOSS, cfg)
  b = train.train_ensemble([5], ds, NET, LOSS, cfg)
  np.testing.assert_array_equal(a.f_train, b.f_train)
  np.testing.assert_array_equal(a.history["loss"], b.history["loss"])


def test_dtype_preserved_without_x64():
  with jax.enable_x64(False):
    ds = data.sphere(jax.random.key(0), 20, 4, n_test=5)
    net = nets.NetConfig(d=4, width=8, depth=1)
    res = train.train_ensemble([0], ds, net, LOSS, train.TrainConfig(max_steps=20))
    assert all(l.dtype == np.float32 for l in jax.tree_util.tree_leaves(res.params))
    assert res.f_test.dtype == np.float32
  ds = data.sphere(jax.random.key(0), 20, 4, n_test=5)
  res = train.train_ensemble([0], ds, net, LOSS, train.TrainConfig(max_steps=20))
  assert all(l.dtype == np.float64 for l in jax.tree_util.tree_leaves(res.params))


def test_measurement_steps_are_log_spaced():
  s = train.measurement_steps(10_000, 10)
  assert s[0] == 0 and s[-1] == 10_000 and np.all(np.diff(s) > 0)
  assert 35 <= len(s) <= 45


@pytest.mark.parametrize("bad", [dict(lr=0.0), dict(max_steps=0), dict(optimizer="newton"),
                                 dict(schedule="cosine"), dict(batch_size=-1),
                                 dict(batch_size=8, check_every=300, jam_window=1000)])
def test_bad_train_configs(bad):
  with pytest.raises(ValueError):
    train.TrainConfig(**bad)


class _Interrupt(Exception):
  pass


def test_interrupted_ensemble_resumes_to_the_same_numbers(ds, tmp_path):
  cfg = train.TrainConfig(lr=1e-2, max_steps=600, chunk_steps=100)
  ref = train.train_ensemble(range(4), ds, NET, LOSS, cfg, group_size=2)
  path = str(tmp_path / "ckpt.npz")
  calls = []
  def bomb(step, *_):
    calls.append(step)
    if len(calls) == 9:  # mid-way through the first group
      raise _Interrupt
  with pytest.raises(_Interrupt):
    train.train_ensemble(range(4), ds, NET, LOSS, cfg, group_size=2,
                         progress_fn=bomb, checkpoint_path=path, checkpoint_every=0)
  import os
  assert os.path.exists(path)
  # a different ensemble ignores the checkpoint
  other = train.train_ensemble(range(1), ds, NET, LOSS, cfg, checkpoint_path=path)
  assert other.steps.shape == (1,)
  res = train.train_ensemble(range(4), ds, NET, LOSS, cfg, group_size=2,
                             checkpoint_path=path, checkpoint_every=0)
  # bitwise the same numbers (README guarantee)
  np.testing.assert_array_equal(res.steps, ref.steps)
  np.testing.assert_array_equal(res.stop_code, ref.stop_code)
  np.testing.assert_array_equal(res.f_test, ref.f_test)
  for k in train.MEASUREMENTS:
    np.testing.assert_array_equal(res.history[k], ref.history[k])
    np.testing.assert_array_equal(res.final[k], ref.final[k])
  for a, b in zip(jax.tree_util.tree_leaves(res.params), jax.tree_util.tree_leaves(ref.params)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree_util.tree_leaves(res.params0), jax.tree_util.tree_leaves(ref.params0)):
    np.testing.assert_array_equal(a, b)
