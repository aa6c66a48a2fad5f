"""Protocols of stages (lossland.train.protocol): who enters a stage, what it
continues from, how results merge; the ensemble job's polish is stage 2."""
import jax
import numpy as np
import pytest

from lossland import data, losses, nets, train
from lossland.train import protocol


@pytest.fixture(scope="module")
def setup():
  # N = 72, P = 30: after 300 Adam steps two of six members are sat
  net = nets.NetConfig(d=5, width=6, depth=2)
  ds = data.sphere(jax.random.key(3), 30, 5, n_test=10)
  return net, ds, losses.LossConfig()


def _stages():
  adam = protocol.Stage(train.TrainConfig(lr=0.1, max_steps=300, chunk_steps=64), name="adam")
  fire = protocol.Stage(train.TrainConfig(optimizer="fire", lr=1e-2, max_steps=60),
                        entry=("max_steps",), name="fire")
  lbfgs = protocol.Stage(train.TrainConfig(optimizer="lbfgs", lr=1e-3, max_steps=80,
                                           jam_window=40), name="lbfgs")
  return adam, fire, lbfgs


def test_three_stages_enter_continue_and_merge(setup):
  net, ds, loss = setup
  adam, fire, lbfgs = _stages()
  seeds = [0, 1, 2, 3, 4, 5]
  out = protocol.run_protocol(protocol.chain(adam, fire, lbfgs), seeds, ds, net, loss)
  r1, r2, r3 = (rec for rec in out.stages)
  assert r1.entered.all() and r1.result is not None
  reasons1 = r1.result.stop_reasons
  assert set(reasons1) <= {"sat", "max_steps", "jammed"}
  np.testing.assert_array_equal(r2.entered, [r == "max_steps" for r in reasons1])
  assert r2.entered.any() and not r2.entered.all(), reasons1  # a real mix
  # stage 2 continues each entrant from its stage-1 params, params0 kept:
  # the same as that member continued alone (member k = seed k alone)
  k = int(np.flatnonzero(r2.entered)[0])
  one = lambda tree, i: jax.tree_util.tree_map(lambda a: np.asarray(a)[i:i + 1], tree)
  alone = train.train_ensemble([seeds[k]], ds, net, loss, fire.config,
                               start=(one(r1.result.params, k), one(r1.result.params0, k)))
  j = int(np.sum(r2.entered[:k]))
  np.testing.assert_allclose(nets.flatten_members(alone.params)[0],
                             nets.flatten_members(r2.result.params)[j], rtol=1e-9, atol=1e-12)
  np.testing.assert_array_equal(r2.steps_before, r1.result.steps)
  # stage 3 takes what stage 2 left continuable; the sat members of stage 1
  # never moved again
  after2 = [train.STOP_REASONS[c] for c in r3.stop_code_before]
  np.testing.assert_array_equal(r3.entered, [r in ("jammed", "max_steps") for r in after2])
  final = out.final
  for i, r in enumerate(reasons1):
    if r == "sat":
      assert final.stop_reasons[i] == "sat"
      np.testing.assert_array_equal(nets.flatten_members(final.params)[i],
                                    nets.flatten_members(r1.result.params)[i])
      assert final.steps[i] == r1.result.steps[i]
  # steps add up over the stages a member ran
  total = np.asarray(r1.result.steps, np.int64).copy()
  for rec in (r2, r3):
    if rec.result is not None:
      total[rec.entered] += rec.result.steps
  np.testing.assert_array_equal(final.steps, total)
  # params0 is every member's own initial network throughout
  np.testing.assert_array_equal(nets.flatten_members(final.params0),
                                nets.flatten_members(r1.result.params0))


def test_a_stage_nobody_enters_changes_nothing(setup):
  net, ds, loss = setup
  adam, _, lbfgs = _stages()
  res = train.train_ensemble([0, 1], ds, net, loss, adam.config)
  stage = protocol.Stage(lbfgs.config, entry=("diverged",))
  merged, rec = protocol.continue_stage(res, stage, ds, net, loss)
  assert merged is res and rec.result is None and not rec.entered.any()


def test_bad_stages_are_refused():
  cfg = train.TrainConfig()
  with pytest.raises(ValueError, match="unknown entry"):
    protocol.Stage(cfg, entry=("stalled",))
  with pytest.raises(ValueError, match="unknown entry"):
    protocol.Stage(cfg, entry=("running",))
  with pytest.raises(ValueError, match="one or more Stage"):
    protocol.chain()
  with pytest.raises(ValueError, match="one or more Stage"):
    protocol.chain(cfg)


def test_a_float32_stage_then_a_float64_stage(setup):
  net, ds, loss = setup
  adam, _, lbfgs = _stages()
  bulk = protocol.Stage(adam.config, dtype="float32")
  finish = protocol.Stage(lbfgs.config, entry=("sat", "jammed", "max_steps"), dtype="float64")
  out = protocol.run_protocol(protocol.chain(bulk, finish), [0, 1, 2], ds, net, loss)
  r1, r2 = out.stages
  assert r1.result.f_train.dtype == np.float32
  assert nets.flatten_members(r1.result.params).dtype == np.float32
  assert r2.entered.all()
  final = out.final
  assert final.f_train.dtype == np.float64
  assert nets.flatten_members(final.params).dtype == np.float64
  assert nets.flatten_members(final.params0).dtype == np.float64
  # params0 is the float32 init, widened exactly
  np.testing.assert_array_equal(nets.flatten_members(final.params0),
                                nets.flatten_members(r1.result.params0).astype(np.float64))
  with pytest.raises(ValueError, match="dtype"):
    protocol.Stage(adam.config, dtype="bfloat16")
