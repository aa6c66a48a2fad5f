"""A grid of cells in one program (lossland.train.cells): each member equals
the same member trained in its own cell, up to rounding, with the padded
points masked out of every count."""
import jax
import numpy as np
import pytest

from lossland import data, losses, nets, train
from lossland.train import cells


NET = nets.NetConfig(d=5, width=6, depth=2)
LOSS = losses.LossConfig()


def _cells():
  # different P (and test sizes), data seeds and member counts (N = 72)
  return [([0, 1, 2], data.sphere(jax.random.key(1), 30, 5, n_test=12)),
          ([0, 5], data.sphere(jax.random.key(2), 70, 5, n_test=0)),
          ([3, 4, 7, 8], data.sphere(jax.random.key(3), 110, 5, n_test=20))]


def _check_same(r, ref, rtol=1e-7):
  np.testing.assert_array_equal(r.stop_code, ref.stop_code)
  np.testing.assert_array_equal(r.steps, ref.steps)
  assert r.f_train.shape == ref.f_train.shape and r.f_test.shape == ref.f_test.shape
  np.testing.assert_allclose(nets.flatten_members(r.params),
                             nets.flatten_members(ref.params), rtol=rtol, atol=1e-9)
  np.testing.assert_allclose(r.f_train, ref.f_train, rtol=rtol, atol=1e-9)
  np.testing.assert_allclose(r.f_test, ref.f_test, rtol=rtol, atol=1e-9)
  for k in train.MEASUREMENTS:
    np.testing.assert_allclose(r.final[k], ref.final[k], rtol=rtol, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(r.history[k], ref.history[k], rtol=rtol, atol=1e-12,
                               err_msg=k)
  np.testing.assert_array_equal(r.history_running, ref.history_running)
  if ref.history_unsat is not None:
    np.testing.assert_array_equal(r.history_unsat, ref.history_unsat)


@pytest.mark.parametrize("cfg", [
    # lr 0.02: rounding differences stay ~1e-11 over 400 steps (at lr 0.1 Adam
    # amplifies them chaotically to O(1) within 300 steps, in cells and alone)
    train.TrainConfig(lr=0.02, max_steps=400, chunk_steps=64, record_unsat=True),
    # the line search branches on comparisons: rounding grows ~10x per 20
    # evaluations here (1e-13 at 20, 4e-10 at 60, 1e-3 at 120)
    train.TrainConfig(optimizer="lbfgs", lr=1e-2, max_steps=50, jam_window=40),
    train.TrainConfig(optimizer="gradient_flow", lr=0.1, max_steps=80),
    train.TrainConfig(optimizer="fire", lr=0.02, max_steps=100),
], ids=["adam", "lbfgs", "gradient_flow", "fire"])
def test_each_member_equals_its_own_cell(cfg):
  grid = _cells()
  batched = cells.train_cells(grid, NET, LOSS, cfg)
  assert len(batched) == 3
  for (seeds, ds), r in zip(grid, batched):
    ref = train.train_ensemble(seeds, ds, NET, LOSS, cfg)
    _check_same(r, ref)
  if cfg.optimizer == "adam":   # the grid really has both kinds of members
    reasons = {x for r in batched for x in r.stop_reasons}
    assert {"sat", "max_steps"} <= reasons, reasons


def test_padding_never_counts():
  """A cell padded by a much larger one: N_Delta, errors and the loss of the
  member count its own P points (the padded y = 0 points would each count as
  unsatisfied with Delta = epsilon)."""
  cfg = train.TrainConfig(lr=0.1, max_steps=5, stop_at_sat=False, record_unsat=True)
  small = data.sphere(jax.random.key(4), 10, 5, n_test=3)
  big = data.sphere(jax.random.key(5), 200, 5, n_test=50)
  r_small, _ = cells.train_cells([([0], small), ([0], big)], NET, LOSS, cfg)
  assert r_small.history_unsat.shape[-1] == 10
  assert r_small.final["n_delta"][0] <= 10
  np.testing.assert_array_equal(r_small.final["n_delta"],
                                r_small.history_unsat[:, -1].sum(-1))
  ref = train.train_ensemble([0], small, NET, LOSS, cfg)
  _check_same(r_small, ref)
  # the padded stack: zeros and y = 0 after each cell's own points
  st = cells.stack_cells([small, big])
  assert st.x_train.shape == (2, 200, 5) and st.x_test.shape == (2, 50, 5)
  assert not np.asarray(st.y_train[0, 10:]).any() and np.asarray(st.y_train[0, :10]).all()


def test_bad_cells_are_refused():
  a = data.sphere(jax.random.key(0), 10, 5)
  with pytest.raises(ValueError, match="share d"):
    cells.stack_cells([a, data.sphere(jax.random.key(0), 10, 4)])
  with pytest.raises(ValueError, match="label is 0"):
    cells.stack_cells([a._replace(y_train=a.y_train.at[0].set(0))])
  with pytest.raises(ValueError, match="at least one seed"):
    cells.train_cells([([], a)], NET, LOSS, train.TrainConfig(max_steps=3))
  with pytest.raises(ValueError, match="full batch"):
    cells.train_cells([([0], a)], NET, LOSS, train.TrainConfig(max_steps=3, batch_size=4))


def test_a_batched_grid_resumes_bitwise(tmp_path):
  cfg = train.TrainConfig(lr=0.02, max_steps=200, chunk_steps=32)
  grid = _cells()[:2]
  full = cells.train_cells(grid, NET, LOSS, cfg)
  path = str(tmp_path / "ckpt.npz")
  # an interrupted run: stop after the first chunk by raising in progress_fn
  class Stop(Exception):
    pass
  calls = []

  def progress(*a):
    calls.append(a)
    if len(calls) == 3:
      raise Stop
  with pytest.raises(Stop):
    cells.train_cells(grid, NET, LOSS, cfg, checkpoint_path=path, checkpoint_every=0.0,
                      progress_fn=progress)
  resumed = cells.train_cells(grid, NET, LOSS, cfg, checkpoint_path=path)
  for a, b in zip(full, resumed):
    np.testing.assert_array_equal(nets.flatten_members(a.params),
                                  nets.flatten_members(b.params))
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])


def test_a_stage_continues_every_cell_as_alone():
  """continue_cells (the polish of a batched grid) equals continue_stage of
  each cell alone: the same entrants (a cell with none keeps its result), the
  same merged result, steps added, the stage's own record."""
  from lossland.train import protocol
  grid = _cells()
  adam = train.TrainConfig(lr=0.02, max_steps=150, chunk_steps=64)
  first = cells.train_cells(grid, NET, LOSS, adam)
  # a cell of only sat members, so that one cell has no entrant
  easy = data.sphere(jax.random.key(9), 8, 5, n_test=0)
  first.append(cells.train_cells([([0, 1], easy)], NET, LOSS,
                                 train.TrainConfig(lr=0.02, max_steps=400))[0])
  assert set(first[-1].stop_reasons) == {"sat"}
  stage = protocol.Stage(train.TrainConfig(optimizer="lbfgs", lr=1e-2, max_steps=20,
                                           jam_window=40), name="polish")
  datasets = [ds for _, ds in grid] + [easy]
  out = cells.continue_cells(first, stage, datasets, NET, LOSS)
  assert len(out) == 4
  n_entered = 0
  for res, ds, (merged, rec) in zip(first, datasets, out):
    ref, ref_rec = protocol.continue_stage(res, stage, ds, NET, LOSS)
    np.testing.assert_array_equal(rec.entered, ref_rec.entered)
    n_entered += rec.entered.sum()
    _check_same(merged, ref)
    np.testing.assert_array_equal(rec.loss_before, ref_rec.loss_before)
    if ref_rec.result is None:
      assert rec.result is None
    else:
      _check_same(rec.result, ref_rec.result)
  assert out[-1][1].result is None and n_entered >= 2
  with pytest.raises(ValueError, match="results for"):
    cells.continue_cells(first, stage, datasets[:2], NET, LOSS)
