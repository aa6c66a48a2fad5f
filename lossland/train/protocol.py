"""Training protocols: a chain of stages, each a minimizer with its own stop rule.

A :class:`Stage` is a :class:`~lossland.train.trainer.TrainConfig` (the
minimizer, its stop rule and its budget) and the stop reasons of the
previous stage that continue into it (``entry``). A protocol is a tuple of
stages, ``chain(adam_stage, lbfgs_stage)``: "Adam with step decays, then
L-BFGS from every member that did not reach sat" is two stages, and a third
phase of training is one more stage, not a new code path.

Stages are sequenced on the host, member by member: every member runs the
first stage; a member whose stop reason is in the next stage's ``entry``
continues from its final params (its initial params kept as ``params0``,
its seed giving the same keys) under that stage's config; the others keep
their result. Members thus enter a stage at different times and with
different histories, and each stage is an ordinary resumable
:func:`~lossland.train.ensemble.train_ensemble` call (bitwise resume holds
per stage). optax's ``chain`` composes transformations within a step and
its ``join_schedules`` switches at fixed steps; here the switch is per member
and decided by its stop reason.

:func:`continue_stage` runs one stage after an existing result (the
ensemble job's ``polish`` is its second stage); :func:`run_protocol` runs a
whole chain. Every stage's own histories are in its :class:`StageRecord`.
"""
import dataclasses
from typing import Callable, NamedTuple, Optional

import jax
import numpy as np

from lossland.train.ensemble import EnsembleResult, train_ensemble
from lossland.train.stop import STOP_REASONS
from lossland.train.trainer import TrainConfig

# Stop reasons after which a member may continue: it neither reached sat nor
# diverged.
CONTINUABLE = ("jammed", "max_steps")


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage of a protocol.

  Attributes:
    config: the stage's TrainConfig (minimizer, stop rule, max_steps, ...).
    entry: stop reasons of the previous stage that continue into this one
      (ignored for the first stage, which every member runs).
    name: a label for reports (e.g. "adam", "polish").
    dtype: None (the data's), or "float32" / "float64": the stage trains on
      the data cast to it, from params cast to it (a float32 bulk, then a
      float64 finish: docs/engine.md). Merged results take the wider dtype.
  """
  config: TrainConfig
  entry: tuple = CONTINUABLE
  name: str = ""
  dtype: Optional[str] = None

  def __post_init__(self):
    bad = [r for r in self.entry if r not in STOP_REASONS or r == "running"]
    if bad:
      raise ValueError(f"unknown entry stop reasons {bad}; choose from "
                       f"{[r for r in STOP_REASONS if r != 'running']}")
    if self.dtype not in (None, "float32", "float64"):
      raise ValueError(f"dtype must be None, 'float32' or 'float64', got {self.dtype!r}")


def cast_data(data, dtype):
  """The data set with its float arrays in ``dtype`` (None: unchanged)."""
  if dtype is None:
    return data
  return jax.tree_util.tree_map(
      lambda a: a.astype(dtype) if np.issubdtype(a.dtype, np.floating) else a, data)


def chain(*stages: Stage) -> tuple:
  """The protocol of ``stages``, in order."""
  if not stages or not all(isinstance(s, Stage) for s in stages):
    raise ValueError("chain needs one or more Stage values")
  return tuple(stages)


class StageRecord(NamedTuple):
  """What one stage did, over all K members of the ensemble.

  Attributes:
    stage: the :class:`Stage`.
    entered: [K] bool, the members that ran this stage.
    result: this stage's own :class:`EnsembleResult` for the entrants, in
      member order (None if no member entered).
    steps_before, stop_code_before, loss_before: [K] the members' ``steps``,
      ``stop_code`` and final loss before the stage.
  """
  stage: Stage
  entered: np.ndarray
  result: Optional[EnsembleResult]
  steps_before: np.ndarray
  stop_code_before: np.ndarray
  loss_before: np.ndarray


class ProtocolResult(NamedTuple):
  """``final``: the merged result (every member's last stage); ``stages``:
  one :class:`StageRecord` per stage run."""
  final: EnsembleResult
  stages: tuple


def continue_stage(res: EnsembleResult, stage: Stage, data, net, loss,
                   checkpoint_path: str | None = None,
                   checkpoint_every: float = 60.0,
                   progress_fn: Callable | None = None) -> tuple:
  """Runs ``stage`` for the members of ``res`` whose stop reason is in its entry.

  Each entrant k restarts from its final params (``params0`` kept) under its
  seed; the stage's stop reason, final measurements, outputs and params
  replace the earlier ones and its steps are added to ``steps``. The
  histories of ``res`` stay as they are; the stage's own are in the record.
  (:func:`lossland.train.cells.continue_cells` does the same for a grid of
  cells in one program.)

  Returns:
    ``(merged, record)``: the merged :class:`EnsembleResult` and the
    :class:`StageRecord`.
  """
  entered, before = entrants(res, stage)
  idx = np.flatnonzero(entered)
  if idx.size == 0:
    return res, StageRecord(stage, entered, None, **before)
  r2 = train_ensemble(np.asarray(res.seeds)[idx], cast_data(data, stage.dtype),
                      net, loss, stage.config, start=start_of(res, idx),
                      checkpoint_path=checkpoint_path,
                      checkpoint_every=checkpoint_every, progress_fn=progress_fn)
  return merge_stage(res, stage, entered, r2, before)


def entrants(res: EnsembleResult, stage: Stage) -> tuple:
  """``(entered, before)``: [K] bool, the members of ``res`` whose stop reason
  is in ``stage.entry``, and their steps, stop codes and final loss before it
  (the :class:`StageRecord` fields ``*_before``)."""
  entered = np.array([r in stage.entry for r in res.stop_reasons], bool)
  before = dict(steps_before=np.asarray(res.steps, np.int64).copy(),
                stop_code_before=np.asarray(res.stop_code, np.int64).copy(),
                loss_before=np.asarray(res.final["loss"], np.float64).copy())
  return entered, before


def start_of(res: EnsembleResult, idx) -> tuple:
  """``(params, params0)`` of members ``idx``: the ``start`` of their next stage."""
  take = lambda tree: jax.tree_util.tree_map(lambda a: np.asarray(a)[idx], tree)
  return take(res.params), take(res.params0)


def merge_stage(res: EnsembleResult, stage: Stage, entered, r2: EnsembleResult,
                before: dict) -> tuple:
  """``(merged, record)``: ``res`` with the entrants' results ``r2`` (in member
  order) in place of theirs (steps added), and the :class:`StageRecord`."""
  idx = np.flatnonzero(entered)
  K = len(entered)

  def put(a, b):
    b = np.asarray(b)
    a = np.array(a, dtype=np.result_type(np.asarray(a).dtype, b.dtype), copy=True)
    a[idx] = b
    return a

  merged = res._replace(
      params=jax.tree_util.tree_map(put, res.params, r2.params),
      params0=jax.tree_util.tree_map(put, res.params0, r2.params0),
      stop_code=put(res.stop_code, r2.stop_code),
      steps=put(res.steps, np.asarray(res.steps)[idx] + r2.steps),
      final={m: put(res.final[m], r2.final[m]) for m in res.final},
      f_train=put(res.f_train, r2.f_train), f_test=put(res.f_test, r2.f_test))
  assert len(merged.stop_code) == K
  return merged, StageRecord(stage, entered, r2, **before)


def run_protocol(protocol: tuple, seeds, data, net, loss,
                 checkpoint_path_fn: Callable | None = None,
                 checkpoint_every: float = 60.0,
                 progress_fn: Callable | None = None,
                 on_stage: Callable | None = None,
                 group_size: int | None = None) -> ProtocolResult:
  """Trains ``seeds`` through every stage of ``protocol``.

  Args:
    protocol: a tuple of :class:`Stage` (:func:`chain`).
    seeds, data, net, loss: as :func:`train_ensemble`.
    checkpoint_path_fn: ``i -> path or None``, the checkpoint of stage i.
    checkpoint_every, progress_fn: as :func:`train_ensemble`.
    on_stage: called as ``on_stage(i, stage)`` before stage i starts.
    group_size: members per vmapped group in the first stage.

  Returns:
    A :class:`ProtocolResult`.
  """
  protocol = chain(*protocol)
  path = checkpoint_path_fn or (lambda i: None)
  if on_stage:
    on_stage(0, protocol[0])
  res = train_ensemble(seeds, cast_data(data, protocol[0].dtype), net, loss,
                       protocol[0].config,
                       group_size=group_size, progress_fn=progress_fn,
                       checkpoint_path=path(0), checkpoint_every=checkpoint_every)
  K = len(res.stop_code)
  records = [StageRecord(protocol[0], np.ones(K, bool), res,
                         np.zeros(K, np.int64), np.zeros(K, np.int64),
                         np.full(K, np.nan))]
  for i, stage in enumerate(protocol[1:], start=1):
    if on_stage:
      on_stage(i, stage)
    res, rec = continue_stage(res, stage, data, net, loss, checkpoint_path=path(i),
                              checkpoint_every=checkpoint_every,
                              progress_fn=progress_fn)
    records.append(rec)
  return ProtocolResult(res, tuple(records))
