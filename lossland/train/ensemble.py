"""The host-side driver: groups of vmapped members, chunks, compaction, resume.

:func:`train_ensemble` (package docstring, :mod:`lossland.train`). Its state is
a small pytree on the device(s): the running :class:`Group` and the
ensemble's :class:`Results`; one device-to-host transfer per chunk.
"""
import dataclasses
import functools
import hashlib
import os
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lossland import checkpoint as ckpt_lib
from lossland import data as data_lib
from lossland import losses
from lossland import nets
from lossland.train.plan import (COMPACT_MIN_WORK, compaction_pays, default_group_size,
                                 memory_plan, n_devices)
from lossland.train.stop import MAX_STEPS, RUNNING, STOP_REASONS
from lossland.train.trainer import (MEASUREMENTS, TrainConfig, Trainer, TrainState,
                                    _make_trainer, measurement_steps)

# Static scans have lengths SCAN_BASE**i (i >= 0, at most chunk_steps): an
# interval of n steps is cut into at most (SCAN_BASE - 1) * log_base(n) scans.
SCAN_BASE = 8


def static_scans(cfg: TrainConfig) -> bool:
  """Whether the driver's chunks are scans of known lengths or one while loop.

  Known lengths (powers of :data:`SCAN_BASE`, :func:`scan_lengths`) cost one
  compilation per (group size, length), and buy what a known trip count
  gives: the unrolling of ``scan_unroll`` and, on GPUs, a loop that XLA runs
  without reading its condition back to the host at every step. On the CPU
  the loop runs on the host either way and nothing is unrolled (``UNROLL``),
  so the driver passes the length as a traced int32 there: one program per
  group size, the same steps in the same order (the same numbers, bitwise;
  tests/test_train.py). A ``scan_unroll`` above 1 asks for static scans.
  """
  return jax.default_backend() != "cpu" or cfg.scan_unroll > 1


def scan_lengths(n: int, max_len: int, base: int = SCAN_BASE) -> list:
  """Cuts n steps into scans of lengths base**i <= max_len, longest first."""
  top = 1
  while top * base <= max_len:
    top *= base
  out = []
  while n > 0:
    while top > n:
      top //= base
    out.append(top)
    n -= top
  return out


def _buckets(group: int, multiple: int = 1) -> list:
  """Padded group sizes: multiple * 2^i below ``group`` (rounded up), and it."""
  top = -(-group // multiple) * multiple
  sizes = {top}
  b = multiple
  while b < top:
    sizes.add(b)
    b *= 2
  return sorted(sizes)


class EnsembleResult(NamedTuple):
  """What :func:`train_ensemble` returns (host numpy arrays).

  Attributes:
    seeds: [K].
    params, params0: final / initial params pytrees with a leading [K] axis.
    stop_code: [K] int, index into STOP_REASONS.
    steps: [K] int, the step at which each member stopped.
    final: dict name -> [K] final measurements (MEASUREMENTS).
    history_step: [M] measurement steps.
    history: dict name -> [K, M], NaN where the member was not running.
    f_train, f_test: [K, P], [K, n_test] final outputs.
    group_size: members vmapped together.
    n_compiles: number of distinct chunk programs run: (group size, scan
      length) pairs with static scans, group sizes otherwise (:func:`static_scans`)
      compiled.
    n_devices: local devices the members were sharded over.
    history_running: [K, M] bool, the member was running at that step.
    history_unsat: [K, M, P] bool, Delta_mu > 0 at that step (False where
      not running), or None unless ``TrainConfig.record_unsat``.
  """
  seeds: np.ndarray
  params: Any
  params0: Any
  stop_code: np.ndarray
  steps: np.ndarray
  final: dict
  history_step: np.ndarray
  history: dict
  f_train: np.ndarray
  f_test: np.ndarray
  group_size: int
  n_compiles: int
  n_devices: int = 1
  history_running: np.ndarray | None = None
  history_unsat: np.ndarray | None = None

  @property
  def stop_reasons(self) -> list:
    return [STOP_REASONS[int(c)] for c in self.stop_code]


class Group(NamedTuple):
  """The running group of the driver, on device (leading axis [G]).

  Attributes:
    state: the members' TrainState.
    member: [G] int32 index into the ensemble; K for padding rows.
    done: [G] bool, the member's stop has been recorded.
    hist: name -> [G, M] measurements at the measurement steps (NaN: not
      running).
    final: name -> [G] measurements at the end of the chunk where it stopped.
    unsat: [G, M, ceil(P / 8)] uint8, packed Delta > 0 ([G, 0, 0] if off).
  """
  state: TrainState
  member: jax.Array
  done: jax.Array
  hist: dict
  final: dict
  unsat: jax.Array


class Results(NamedTuple):
  """Per-member results of the whole ensemble, on device (leading axis [K])."""
  params: Any
  params0: Any
  code: jax.Array
  steps: jax.Array
  hist: dict
  final: dict
  unsat: jax.Array


def _results_of(group: Group) -> Results:
  s = group.state
  return Results(s.params, s.params0, s.code, s.stop_step, group.hist,
                 group.final, group.unsat)


class _Fns(NamedTuple):
  trainer: Trainer
  init_group: Callable   # (keys [G], member [G], done [G], data, M) -> Group
  chunk: Callable        # (state, member, data, t0, n) -> state
  record: Callable       # (group, data, j) -> (group, n_running)
  compact: Callable      # (results, group, size) -> (results, group)
  finish: Callable       # (results, group, data) -> (results, (f_train, f_test))
  empty: Callable        # (group, K) -> Results of K members
  mesh: Any
  static: bool           # chunk's n is a static int (else a traced int32)


@functools.lru_cache(maxsize=32)
def _compiled(net_cfg, loss_cfg, cfg, n_dev: int = 1, masked: bool = False,
              static: bool = True) -> _Fns:
  """The jitted, vmapped functions of the driver, built once per config.

  jax caches compilations per function object; building the closures once
  per (hashable) config makes repeated ensembles (tests, sweeps, benchmarks)
  reuse them instead of recompiling.

  ``masked``: the members train on data of their own (a grid of cells,
  :mod:`lossland.train.cells`). ``data`` is then ``(stacked, member_cell)``:
  a Dataset with a leading cell axis, padded with y = 0 points, and [K] the
  cell of each member; every function gathers the rows it needs.

  ``static``: ``chunk``'s length ``n`` is a static int (one program per
  length) or a traced int32 (one program for all, :func:`static_scans`).
  """
  trainer, measure = _make_trainer(net_cfg, loss_cfg, cfg, masked)
  mesh, constrain = _row_sharding(n_dev)
  member_rows = functools.partial(_member_rows, masked=masked)
  init_group, chunk, record = _group_fns(trainer, measure, cfg, member_rows, constrain)
  compact, finish, empty = _results_fns(trainer, member_rows, constrain)
  # Donating the driver's state lets accelerators update it in place; the
  # CPU client cannot use donations (it would only warn).
  cpu = jax.default_backend() == "cpu"
  donate = lambda *i: () if cpu else i
  return _Fns(
      trainer=trainer,
      init_group=jax.jit(init_group, static_argnums=4),
      chunk=jax.jit(chunk, static_argnums=4 if static else (), donate_argnums=donate(0)),
      record=jax.jit(record, donate_argnums=donate(0)),
      # compact returns a smaller group and finish none: only the results
      # buffer can be reused (donating the group would only warn).
      compact=jax.jit(compact, static_argnums=2, donate_argnums=donate(0)),
      finish=jax.jit(finish, donate_argnums=donate(0)),
      empty=jax.jit(empty, static_argnums=1), mesh=mesh, static=static)


def _row_sharding(n_dev: int):
  """(mesh, constrain): members' rows split over ``n_dev`` local devices.

  ``constrain(tree)`` pins a tree with a leading member axis to that split
  inside jit (the identity on one device, where ``mesh`` is None).
  """
  if n_dev <= 1:
    return None, lambda tree: tree
  mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()[:n_dev]), ("m",))
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("m"))
  return mesh, lambda tree: jax.lax.with_sharding_constraint(tree, rows)


def _member_rows(data, member, masked: bool):
  """(the data of these rows, their vmap axis): ``data`` itself and None
  unless ``masked``, else each row's cell gathered from the stack."""
  if not masked:
    return data, None
  stacked, member_cell = data
  cell = member_cell[jnp.clip(member, 0, member_cell.shape[0] - 1)]
  return jax.tree_util.tree_map(lambda a: a[cell], stacked), 0


def _group_fns(trainer: Trainer, measure: Callable, cfg, member_rows: Callable,
               constrain: Callable):
  """The running group's functions (unjitted): (init_group, chunk, record)."""

  def init_group(keys, member, done, data, M, start=None):
    data, ax = member_rows(data, member)
    state = jax.vmap(trainer.init_fn, in_axes=(0, ax, 0))(keys, data, start)
    G = member.shape[0]
    dtype = data.x_train.dtype
    # Padding rows are born stopped and recorded: computed, never reported.
    state = state._replace(code=jnp.where(done, MAX_STEPS, state.code).astype(jnp.int32))
    nan = jnp.full((G,), jnp.nan, dtype)
    n_bytes = -(-data.x_train.shape[-2] // 8) if cfg.record_unsat else 0
    return constrain(Group(
        state=state, member=member, done=done,
        hist={m: jnp.full((G, M), jnp.nan, dtype) for m in MEASUREMENTS},
        final={m: nan for m in MEASUREMENTS},
        unsat=jnp.zeros((G, M if cfg.record_unsat else 0, n_bytes), jnp.uint8)))

  def chunk(state, member, data, t0, n):
    data, ax = member_rows(data, member)
    return jax.vmap(functools.partial(trainer.chunk_fn, n=n),
                    in_axes=(0, ax, None))(state, data, t0)

  def record(group: Group, data, j):
    """Measures every row; running rows write column j, new stops their finals."""
    data, ax = member_rows(data, group.member)
    meas, unsat = jax.vmap(measure, in_axes=(0, ax))(group.state, data)
    s = group.state
    dtype = data.x_train.dtype
    meas = {k: v.astype(dtype) for k, v in meas.items()}
    running = s.code == RUNNING
    newly = ~running & ~group.done
    M = group.hist["loss"].shape[1]
    col = (jnp.arange(M) == j)[None, :] & running[:, None]
    hist = {k: jnp.where(col, meas[k][:, None], group.hist[k]) for k in MEASUREMENTS}
    # The loss and N_Delta on which the stop was decided (a re-measure can
    # differ in the last bit for Delta ~ 1e-17, see BUILD_NOTES).
    stop_meas = dict(meas, loss=s.loss.astype(dtype), n_delta=s.n_delta.astype(dtype))
    final = {k: jnp.where(newly, stop_meas[k], group.final[k]) for k in MEASUREMENTS}
    packed = group.unsat
    if cfg.record_unsat:
      bits = jnp.packbits(unsat, axis=-1)                    # [G, nbytes]
      packed = jnp.where(col[:, :, None], bits[:, None, :], group.unsat)
    n_running = jnp.sum(running & (group.member != _MEMBER_SENTINEL))
    return (Group(s, group.member, group.done | newly, hist, final, packed),
            n_running)

  return init_group, chunk, record


def _results_fns(trainer: Trainer, member_rows: Callable, constrain: Callable):
  """The ensemble's results' functions (unjitted): (compact, finish, empty)."""

  def scatter(results: Results, group: Group, rows_mask):
    K = results.code.shape[0]
    idx = jnp.where(rows_mask & (group.member < K), group.member, K)
    return jax.tree_util.tree_map(
        lambda r, g: r.at[idx].set(g.astype(r.dtype), mode="drop"),
        results, _results_of(group))

  def compact(results: Results, group: Group, size: int):
    results = scatter(results, group, group.done)
    live = (group.state.code == RUNNING) & ~group.done
    order = jnp.argsort(jnp.where(live, 0, 1), stable=True)[:size]
    group = jax.tree_util.tree_map(lambda a: a[order], group)
    return results, constrain(group)

  def finish(results: Results, group: Group, data):
    """Stores every row of a finished group; the final outputs of all members."""
    results = scatter(results, group, jnp.ones_like(group.done))
    data, ax = member_rows(data, jnp.arange(results.code.shape[0]))
    return results, jax.vmap(trainer.outputs_fn, in_axes=(0, 0, ax))(
        results.params, results.params0, data)

  def empty(group: Group, K: int) -> Results:
    """K rows shaped like one row of the group: NaN floats, zero ints."""
    return jax.tree_util.tree_map(
        lambda a: (jnp.full((K,) + a.shape[1:], jnp.nan, a.dtype)
                   if jnp.issubdtype(a.dtype, jnp.floating)
                   else jnp.zeros((K,) + a.shape[1:], a.dtype)), _results_of(group))

  return compact, finish, empty


# Member index of padding rows: larger than any ensemble (int32).
_MEMBER_SENTINEL = np.iinfo(np.int32).max


def _fingerprint(seeds, data, net_cfg, loss_cfg, cfg, group_size, min_work, n_dev,
                 start=None):
  h = hashlib.sha1()
  h.update(repr(("engine-2", seeds.tolist(), net_cfg, loss_cfg, _cfg_repr(cfg), group_size,
                 min_work, n_dev, str(jax.tree_util.tree_leaves(data)[0].dtype))).encode())
  # the data's arrays (Dataset fields; for a grid of cells also the member -> cell map)
  for a in jax.tree_util.tree_leaves(data):
    h.update(np.ascontiguousarray(np.asarray(a)).tobytes())
  for a in jax.tree_util.tree_leaves(start):
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


# TrainConfig fields added after checkpoints were written: left out of the
# fingerprint at their defaults, so that those checkpoints still resume.
_LATE_FIELDS = ("wgrad_split", "pad_to", "scan_unroll")


class _Raw(str):
  def __repr__(self):
    return str(self)


def _cfg_repr(cfg: TrainConfig):
  """repr(cfg) as it was before the fields of _LATE_FIELDS existed, when they
  are at their defaults (dataclasses' own repr format otherwise)."""
  parts = [f"{f.name}={getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg)
           if not (f.name in _LATE_FIELDS and getattr(cfg, f.name) == f.default)]
  return _Raw(f"{type(cfg).__qualname__}({', '.join(parts)})")


def _keys(seeds: np.ndarray):
  """[n] PRNG keys, key k = jax.random.key(seeds[k]), without a Python loop."""
  info = np.iinfo(np.int32)
  if seeds.size and (seeds.min() < info.min or seeds.max() > info.max):
    return jnp.stack([jax.random.key(int(s)) for s in seeds])  # rare: huge seeds
  return _vmapped_keys(jnp.asarray(seeds, jnp.int32))


_vmapped_keys = jax.jit(jax.vmap(jax.random.key))


def train_ensemble(seeds: Sequence[int], data: data_lib.Dataset,
                   net_cfg: nets.NetConfig, loss_cfg: losses.LossConfig,
                   cfg: TrainConfig, group_size: int | None = None,
                   progress_fn: Callable | None = None,
                   compact: bool = True,
                   compact_min_work: float | None = None,
                   checkpoint_path: str | None = None,
                   checkpoint_every: float = 60.0,
                   start=None, member_cell=None) -> EnsembleResult:
  """Trains one network per seed; members are vmapped in groups.

  Args:
    seeds: member seeds; member k's init and mini-batch keys come from
      ``jax.random.key(seeds[k])`` only.
    data: the Dataset (its dtype sets the params' dtype).
    net_cfg, loss_cfg, cfg: what to train and how.
    group_size: members per vmapped group; None picks the smaller of
      :func:`default_group_size` and what :func:`memory_plan` lets fit.
    progress_fn: called after each chunk as ``progress_fn(step, max_steps,
      n_running, n_done, n_members)``.
    compact: drop stopped members between chunks (padded to bucket sizes)
      when it pays (:func:`lossland.train.plan.compaction_pays`).
    compact_min_work: the multiply-adds (rows dropped x steps left x P x N)
      a compaction must save; None: the backend's
      :data:`lossland.train.plan.COMPACT_MIN_WORK`; 0: compact whenever the
      group can shrink.
    checkpoint_path: if given, the driver's whole state (the running group and
      the results so far, PRNG keys included) is saved there atomically
      (:mod:`lossland.checkpoint`) at chunk boundaries at most every
      ``checkpoint_every`` seconds, and a matching checkpoint found there at
      the start is resumed from. A checkpoint of a different ensemble (other
      seeds, data, configs, group size or device count) is ignored. The
      caller removes the file when the job is complete. A resumed ensemble
      gives bitwise the same numbers as an uninterrupted one.
    start: optional ``(params, params0)``, pytrees with a leading [K] axis
      (e.g. an earlier result's ``params`` and ``params0``): member k starts
      from ``params[k]`` (``params0[k]`` is its initial network for
      ``subtract_init`` and ``w_dist``) instead of its seed's init; its seed
      still gives its mini-batch key. Used to polish a run with another
      optimizer (the ensemble job's ``polish``).
    member_cell: [K] ints, for :func:`lossland.train.cells.train_cells`:
      ``data`` is then a stack of cells' data sets (leading cell axis,
      padded with y = 0 points) and member k trains on cell
      ``member_cell[k]``; outputs and the unsatisfied record keep the
      padded length.

  Returns:
    An :class:`EnsembleResult`.
  """
  ens = _setup(seeds, data, net_cfg, loss_cfg, cfg, group_size, start, member_cell)
  min_work = _min_work(compact, compact_min_work)
  K, G_max = len(ens.seeds), ens.buckets[-1]
  shapes_seen = set()
  first = _new_group(ens, 0, G_max)  # also the template of the results
  results = ens.place_all(ens.fns.empty(first, K))
  start_g0, resume = 0, None
  saver = _Saver(checkpoint_path, checkpoint_every)
  if checkpoint_path:
    saver.fingerprint = _fingerprint(ens.seeds, ens.data, net_cfg, loss_cfg, cfg,
                                     ens.group_size, min_work, ens.n_dev, ens.start)
    results, start_g0, resume = _resume(ens, saver, results)

  done_before = start_g0
  for g0 in range(start_g0, K, ens.group_size):
    n_real = min(ens.group_size, K - g0)
    if resume is not None:
      (group, t), resume = resume, None
    elif g0 == 0 and first is not None:
      group, t, first = first, 0, None
    else:
      G = G_max if n_real == ens.group_size else min(b for b in ens.buckets if b >= n_real)
      group, t = _new_group(ens, g0, G), 0
    results, group = _run_group(ens, results, group, t, g0, done_before + n_real,
                                progress_fn, min_work, saver, shapes_seen)
    results, outputs = ens.fns.finish(results, group, ens.data)
    done_before += n_real
    if checkpoint_path and g0 + ens.group_size < K:
      saver.save({"results": results}, g0=g0 + ens.group_size, t=0, G=0)
  return _assemble(ens, results, outputs, len(shapes_seen))


def _min_work(compact: bool, compact_min_work: float | None) -> float | None:
  """The compaction break-even of a run (None: never compact)."""
  if not compact:
    return None
  if compact_min_work is None:
    return COMPACT_MIN_WORK.get(jax.default_backend(), COMPACT_MIN_WORK["gpu"])
  return float(compact_min_work)


class _Ensemble(NamedTuple):
  """What stays fixed while one ensemble trains (built by :func:`_setup`)."""
  fns: _Fns
  cfg: TrainConfig
  seeds: np.ndarray        # [K] int64
  data: Any                # placed; (data, member_cell) for a grid of cells
  start: Any               # host (params, params0) with a leading [K] axis, or None
  group_size: int
  buckets: list            # padded group sizes (:func:`_buckets`)
  sched: np.ndarray        # [M] measurement steps
  sched_index: dict        # measurement step -> its column
  bounds: list             # chunk boundaries: measurement steps and chunk_steps multiples
  work: float              # multiply-adds per member-step (P x N, or batch x N)
  n_dev: int
  P: int
  place_rows: Callable     # host tree with a leading member axis -> device(s)
  place_all: Callable      # host tree -> device(s), replicated


def _setup(seeds, data, net_cfg, loss_cfg, cfg, group_size, start,
           member_cell) -> _Ensemble:
  """Checks :func:`train_ensemble`'s arguments; its groups, schedule and placement."""
  seeds = np.asarray(seeds, np.int64).reshape(-1)
  K = len(seeds)
  if K == 0:
    raise ValueError("need at least one seed")
  n_dev = n_devices()
  masked = member_cell is not None
  if masked and cfg.batch_size:
    raise ValueError("cells of different P train full batch only (batch_size=0)")
  fns = _compiled(net_cfg, loss_cfg, cfg, n_dev, masked, static_scans(cfg))
  dtype = data.x_train.dtype
  P, n_test = data.x_train.shape[-2], data.x_test.shape[-2]
  if group_size is None:
    plan = memory_plan(net_cfg, cfg, P, n_test, K, np.dtype(dtype).itemsize)
    group_size = min(default_group_size(K, float(P) * nets.n_params(net_cfg)),
                     plan["group_size"])
  group_size = max(1, min(int(group_size), K))

  sched = measurement_steps(cfg.max_steps, cfg.n_log_per_decade)
  sched_index = {int(s): i for i, s in enumerate(sched)}
  bounds = sorted(set(int(s) for s in sched)
                  | set(range(0, cfg.max_steps + 1, cfg.chunk_steps))
                  | {cfg.max_steps + 1})

  place_rows, place_all = _placements(fns.mesh, n_dev)
  data = place_all(data)
  if masked:
    data = (data, place_all(jnp.asarray(np.asarray(member_cell), jnp.int32)))

  if start is not None:
    start = jax.tree_util.tree_map(lambda a: np.asarray(a, dtype), tuple(start))
    if any(a.shape[0] != K for a in jax.tree_util.tree_leaves(start)):
      raise ValueError(f"start must have a leading axis of {K} members")
  return _Ensemble(fns=fns, cfg=cfg, seeds=seeds, data=data, start=start,
                   group_size=group_size, buckets=_buckets(group_size, n_dev),
                   sched=sched, sched_index=sched_index, bounds=bounds, n_dev=n_dev,
                   work=float(cfg.batch_size or P) * nets.n_params(net_cfg),
                   P=P, place_rows=place_rows, place_all=place_all)


def _placements(mesh, n_dev: int):
  """(place_rows, place_all): device_put split over the mesh's member axis /
  replicated on every device (plain device_put on one device)."""
  if n_dev > 1:
    shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("m"))
    repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    place_rows = lambda tree: jax.device_put(tree, shard)
    place_all = lambda tree: jax.device_put(tree, repl)
  else:
    place_rows = place_all = lambda tree: jax.device_put(tree)
  return place_rows, place_all


def _start_rows(ens: _Ensemble, rows):
  """The start params of these member rows, placed (None without a start)."""
  if ens.start is None:
    return None
  return ens.place_rows(jax.tree_util.tree_map(lambda a: jnp.asarray(a[rows]), ens.start))


def _new_group(ens: _Ensemble, first: int, G: int) -> Group:
  """The group of members first, first + 1, ... (at most group_size), padded to G rows."""
  K = len(ens.seeds)
  members = np.arange(first, min(first + ens.group_size, K))
  pad = G - len(members)
  member = np.concatenate([members, np.full(pad, _MEMBER_SENTINEL)]).astype(np.int32)
  done = np.arange(G) >= len(members)
  row_seeds = np.concatenate([ens.seeds[members], np.full(pad, ens.seeds[members[0]])])
  rows = np.concatenate([members, np.full(pad, members[0])])
  keys = ens.place_rows(_keys(row_seeds))
  return ens.fns.init_group(keys, ens.place_rows(jnp.asarray(member)),
                            ens.place_rows(jnp.asarray(done)), ens.data,
                            len(ens.sched), _start_rows(ens, rows))


def _group_shape(ens: _Ensemble, G: int) -> Group:
  """A group of G rows: the shapes and dtypes a checkpoint's group restores into."""
  return ens.fns.init_group(_keys(np.zeros(G, np.int64)),
                            jnp.zeros(G, jnp.int32), jnp.zeros(G, bool), ens.data,
                            len(ens.sched), _start_rows(ens, np.zeros(G, np.int64)))


class _Saver:
  """The driver's checkpoint file: where, whose (fingerprint), when last written."""

  def __init__(self, path: str | None, every: float):
    self.path, self.every = path, every
    self.fingerprint, self.last_save = None, time.time()

  def due(self) -> bool:
    return bool(self.path) and time.time() - self.last_save >= self.every

  def save(self, tree, **meta):
    _write_checkpoint(self.path, self.fingerprint, tree, **meta)
    self.last_save = time.time()


def _resume(ens: _Ensemble, saver: _Saver, results: Results):
  """(results, first group to run, (group, t) or None) from a matching
  checkpoint; ``results`` and a fresh start if there is none."""
  meta = _read_checkpoint(saver.path, saver.fingerprint)
  if meta is None:
    return results, 0, None
  G = int(meta["G"])
  like = {"results": results}
  if G:
    like["group"] = _group_shape(ens, G)
  tree, _ = ckpt_lib.restore(saver.path, like)
  results = ens.place_all(tree["results"])
  resume = (ens.place_rows(tree["group"]), int(meta["t"])) if G else None
  return results, int(meta["g0"]), resume


def _run_group(ens: _Ensemble, results: Results, group: Group, t: int, g0: int,
               n_done_after: int, progress_fn, min_work: float | None, saver: _Saver,
               shapes_seen: set):
  """Trains one group from step t until its members stop or max_steps.

  Chunk by chunk: the scans up to the next boundary, a record, progress,
  compaction of stopped rows into ``results`` where
  :func:`~lossland.train.plan.compaction_pays` with ``min_work`` (None:
  never) and the timed checkpoint. ``n_done_after``: members done once this
  group is. Adds each (rows, scan
  length) run to ``shapes_seen``.

  Returns:
    (results, group); the group's rows still to be stored (``fns.finish``).
  """
  fns, cfg, data = ens.fns, ens.cfg, ens.data
  K, M = len(ens.seeds), len(ens.sched)
  for b in ens.bounds[1:]:
    if b <= t:
      continue
    G = int(group.member.shape[0])
    state = group.state
    if fns.static:
      for n in scan_lengths(b - t, cfg.chunk_steps):
        shapes_seen.add((G, n))
        state = fns.chunk(state, group.member, data, jnp.int32(t), n)
        t += n
    else:
      shapes_seen.add((G,))
      while t < b:
        n = min(b - t, cfg.chunk_steps)
        state = fns.chunk(state, group.member, data, jnp.int32(t), jnp.int32(n))
        t += n
    j = ens.sched_index.get(b, M) if b <= cfg.max_steps else M
    group, n_running = fns.record(group._replace(state=state), data, jnp.int32(j))
    n_running = int(n_running)  # the one device -> host transfer of a chunk
    if progress_fn is not None:
      progress_fn(min(t, cfg.max_steps), cfg.max_steps, n_running,
                  n_done_after - n_running, K)
    if n_running == 0:
      break
    if min_work is not None:
      size = min(s for s in ens.buckets if s >= n_running)
      if compaction_pays(G, size, t, cfg.max_steps, ens.work, min_work):
        results, group = fns.compact(results, group, size)
    if saver.due():
      saver.save({"results": results, "group": group},
                 g0=g0, t=t, G=int(group.member.shape[0]))
  return results, group


def _assemble(ens: _Ensemble, results: Results, outputs, n_compiles: int) -> EnsembleResult:
  """The host-side :class:`EnsembleResult` of the finished ensemble."""
  res, (f_train, f_test) = jax.device_get((results, outputs))
  history = {k: np.asarray(v, np.float64) for k, v in res.hist.items()}
  final = {k: np.asarray(v, np.float64) for k, v in res.final.items()}
  running = ~np.isnan(history["loss"])
  unsat = None
  if ens.cfg.record_unsat:
    unsat = np.unpackbits(np.asarray(res.unsat), axis=-1,
                          count=ens.P).astype(bool)
    unsat &= running[:, :, None]
  return EnsembleResult(
      seeds=ens.seeds, params=res.params, params0=res.params0,
      stop_code=np.asarray(res.code, np.int64), steps=np.asarray(res.steps, np.int64),
      final=final, history_step=ens.sched, history=history,
      f_train=np.asarray(f_train), f_test=np.asarray(f_test),
      group_size=ens.group_size, n_compiles=n_compiles, n_devices=ens.n_dev,
      history_running=running, history_unsat=unsat)


def _write_checkpoint(path, fingerprint, tree, **meta):
  ckpt_lib.save(path, tree, dict(meta, fingerprint=fingerprint))


def _read_checkpoint(path, fingerprint):
  """The meta of a matching checkpoint at ``path``, or None."""
  if not os.path.isfile(path):
    return None
  meta = ckpt_lib.read_meta(path)
  if meta.get("fingerprint") != fingerprint:
    return None
  return meta

