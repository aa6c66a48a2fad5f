"""A grid of cells in one program: cells that share an architecture and a
training config but differ in their data (P, data seed) and members.

A phase grid trains the same network on P = 1.25 N, 1.75 N, ... with a few
members each: run one after another, each cell is a small program that
leaves an accelerator idle. :func:`train_cells` trains all of them as one
ensemble: every cell's training (and test) set is padded to the largest P
with points of label y = 0, the cells are stacked on a leading axis, and
each member gathers its own cell's rows. The loss, N_Delta, errors and
outputs count the real points only (y != 0; a padded point has zero loss,
gradient and output), so a member trained here equals the same member
trained in its own cell up to rounding (the mean over P real points becomes
a masked sum divided by P, and batched products round differently). The
results come back per cell, trimmed to the cell's own P and n_test.

Full batch only (a mini-batch would sample padded points).
"""
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from lossland import data as data_lib
from lossland.train.ensemble import EnsembleResult, train_ensemble


def stack_cells(datasets: Sequence[data_lib.Dataset]) -> data_lib.Dataset:
  """The data sets padded to the largest P and n_test (y = 0, x = 0) and stacked.

  Raises:
    ValueError: different input dimensions or dtypes, or a label 0 among
      the real points (0 marks padding).
  """
  if not datasets:
    raise ValueError("need at least one cell")
  d = {int(ds.x_train.shape[-1]) for ds in datasets}
  dt = {np.dtype(ds.x_train.dtype) for ds in datasets}
  if len(d) != 1 or len(dt) != 1:
    raise ValueError(f"cells must share d and dtype, got d {sorted(d)}, "
                     f"dtypes {sorted(str(t) for t in dt)}")
  for ds in datasets:
    if bool(jnp.any(ds.y_train == 0)) or bool(jnp.any(ds.y_test == 0)):
      raise ValueError("a label is 0: labels must be nonzero (0 marks padding)")
  P = max(ds.x_train.shape[0] for ds in datasets)
  T = max(ds.x_test.shape[0] for ds in datasets)

  def pad(a, n):
    a = np.asarray(a)
    return np.pad(a, [(0, n - a.shape[0])] + [(0, 0)] * (a.ndim - 1))

  fields = [(P, "x_train"), (P, "y_train"), (T, "x_test"), (T, "y_test")]
  return data_lib.Dataset(*(jnp.asarray(np.stack([pad(getattr(ds, f), n) for ds in datasets]))
                            for n, f in fields))


def train_cells(cells: Sequence[tuple], net_cfg, loss_cfg, cfg, **kwargs) -> list:
  """Trains every cell's members as one vmapped ensemble.

  Args:
    cells: ``[(seeds, Dataset), ...]``; member seeds as in
      :func:`~lossland.train.ensemble.train_ensemble` (a seed may repeat
      across cells: each member is its cell's).
    net_cfg, loss_cfg, cfg: shared by every cell (cfg full batch).
    **kwargs: passed to ``train_ensemble`` (group_size, progress_fn,
      checkpoint_path, checkpoint_every, compact, and ``start=(params,
      params0)`` with a leading axis over all cells' members in order, to
      continue them, e.g. an L-BFGS polish after Adam).

  Returns:
    One :class:`EnsembleResult` per cell, as ``train_ensemble(seeds, data,
    ...)`` of that cell would return it (f_train [K_c, P_c], f_test
    [K_c, n_test_c], history_unsat [K_c, M, P_c]).
  """
  seeds = [np.asarray(s, np.int64).reshape(-1) for s, _ in cells]
  if any(s.size == 0 for s in seeds):
    raise ValueError("every cell needs at least one seed")
  stacked = stack_cells([ds for _, ds in cells])
  member_cell = np.concatenate([np.full(s.size, c) for c, s in enumerate(seeds)])
  res = train_ensemble(np.concatenate(seeds), stacked, net_cfg, loss_cfg, cfg,
                       member_cell=member_cell, **kwargs)
  return _split(res, seeds, [ds for _, ds in cells])


def continue_cells(results: Sequence[EnsembleResult], stage, datasets: Sequence,
                   net_cfg, loss_cfg, **kwargs) -> list:
  """:func:`lossland.train.protocol.continue_stage` for a grid of cells in one
  program: the entrants of every cell's result continue together.

  Args:
    results: one :class:`EnsembleResult` per cell (e.g. from
      :func:`train_cells`).
    stage: the :class:`lossland.train.protocol.Stage` (its config full batch).
    datasets: the cells' data sets, in the order of ``results``.
    net_cfg, loss_cfg: shared by every cell.
    **kwargs: passed to ``train_ensemble`` (checkpoint_path,
      checkpoint_every, progress_fn, group_size).

  Returns:
    ``[(merged, record)]`` per cell, as ``continue_stage`` of that cell
    alone would return them (up to rounding).
  """
  from lossland.train import protocol
  if len(results) != len(datasets):
    raise ValueError(f"{len(results)} results for {len(datasets)} data sets")
  ents = [protocol.entrants(r, stage) for r in results]
  live = [c for c, (e, _) in enumerate(ents) if e.any()]
  out = [(r, protocol.StageRecord(stage, e, None, **b)) for r, (e, b) in zip(results, ents)]
  if not live:
    return out
  idx = {c: np.flatnonzero(ents[c][0]) for c in live}
  starts = [protocol.start_of(results[c], idx[c]) for c in live]
  import jax
  cat = lambda *trees: jax.tree_util.tree_map(lambda *a: np.concatenate(a), *trees)
  start = (cat(*(s[0] for s in starts)), cat(*(s[1] for s in starts)))
  r2s = train_cells([(np.asarray(results[c].seeds)[idx[c]],
                      protocol.cast_data(datasets[c], stage.dtype)) for c in live],
                    net_cfg, loss_cfg, stage.config, start=start, **kwargs)
  for c, r2 in zip(live, r2s):
    out[c] = protocol.merge_stage(results[c], stage, ents[c][0], r2, ents[c][1])
  return out


def _split(res: EnsembleResult, seeds: Sequence, datasets: Sequence) -> list:
  """The stacked result ``res`` as one result per cell, trimmed to its P and n_test."""
  out, k0 = [], 0
  for s, ds in zip(seeds, datasets):
    sl = slice(k0, k0 + s.size)
    P, T = ds.x_train.shape[0], ds.x_test.shape[0]
    take = lambda tree: _tree_rows(tree, sl)
    out.append(EnsembleResult(
        seeds=s, params=take(res.params), params0=take(res.params0),
        stop_code=res.stop_code[sl], steps=res.steps[sl],
        final={k: v[sl] for k, v in res.final.items()},
        history_step=res.history_step,
        history={k: v[sl] for k, v in res.history.items()},
        f_train=res.f_train[sl, :P], f_test=res.f_test[sl, :T],
        group_size=res.group_size, n_compiles=res.n_compiles,
        n_devices=res.n_devices, history_running=res.history_running[sl],
        history_unsat=(None if res.history_unsat is None
                       else res.history_unsat[sl, :, :P])))
    k0 += s.size
  return out


def _tree_rows(tree, sl):
  import jax
  return jax.tree_util.tree_map(lambda a: np.asarray(a)[sl], tree)
