"""The one training loop of lossland: chunked, jitted, vmapped, per-member stops.

Structure (CONVENTIONS.md):

* :func:`make_trainer` returns pure functions for **one** network: ``init_fn``,
  ``chunk_fn`` (a ``lax.fori_loop`` over a run of steps, no host sync inside),
  ``measure_fn`` and ``outputs_fn``. They are written per member.
* :func:`train_ensemble` is the host-side driver: it ``jax.vmap``s those
  functions over the members of a group, jits them once per padded group size,
  runs chunks between log-spaced measurement steps, and between chunks drops
  the members that have stopped (re-padding to a few bucket sizes so that
  recompilations stay few).

Every member carries its own **stop reason** (:data:`STOP_REASONS`):

* ``sat``: N_Delta = 0, all constraints satisfied (for the hinge losses the loss
  is exactly 0). Checked on the full training set at every step (full batch)
  or every ``check_every`` steps (mini-batch).
* ``jammed``: N_Delta > 0 and the loss has stalled: the best loss seen so far
  decreased by less than a fraction ``jam_rtol`` over the last ``jam_window``
  steps (with the plateau schedule, only once the learning rate has reached
  ``min_lr``). Using the running best makes the rule insensitive to Adam's
  oscillations.
* ``max_steps``: ``max_steps`` updates done.
* ``diverged``: a non-finite loss or gradient, or a loss above
  ``divergence_factor * max(loss at step 0, 1)``.

Step t evaluates the loss and gradient at params_t, decides whether the member
stops at t (then params_t are final and ``steps = t``), else updates to
params_{t+1}. A member is fully determined by its seed: member k of a vmapped
ensemble equals the same code run with seed k alone.
"""
import dataclasses
import functools
import hashlib
import math
import os
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from lossland import data as data_lib
from lossland import losses
from lossland import nets

STOP_REASONS = ("running", "sat", "jammed", "max_steps", "diverged")
RUNNING, SAT, JAMMED, MAX_STEPS, DIVERGED = range(5)

OPTIMIZERS = ("adam", "sgd", "momentum")
SCHEDULES = ("constant", "step", "plateau")
MEASUREMENTS = ("loss", "n_delta", "max_delta", "train_error", "test_error",
                "f2_train", "f2_test", "w_dist", "lr")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How to train (hashable, jit-static).

  Attributes:
    optimizer: "adam" (default, as the authors), "sgd" or "momentum".
    lr: initial learning rate.
    momentum: momentum coefficient (optimizer="momentum").
    schedule: "constant"; "step" (multiply by ``decay_factor`` every
      ``decay_every`` steps: the authors' "divide by 10 every 250k steps");
      "plateau" (multiply by ``decay_factor`` when the best loss improved by
      less than ``plateau_rtol`` over ``plateau_patience`` steps).
    decay_every, decay_factor, plateau_patience, plateau_rtol, min_lr: see above.
    max_steps: maximum number of updates.
    batch_size: 0 for full batch, else mini-batch size (sampled without
      replacement from ``fold_in(k_train, step)``).
    check_every: with mini-batches, evaluate the full training set (and the
      stop rules) every this many steps.
    subtract_init: train f(w) - f(w0) (1906.08034).
    stop_at_sat: stop a member as soon as N_Delta = 0.
    jam_window, jam_rtol: the jamming rule (module docstring).
    divergence_factor: loss blow-up factor that counts as divergence.
    chunk_steps: most steps per jitted chunk (bounds the time between host
      syncs; measurements add boundaries at log-spaced steps).
    n_log_per_decade: measurement steps per decade.
  """
  optimizer: str = "adam"
  lr: float = 1e-2
  momentum: float = 0.9
  schedule: str = "constant"
  decay_every: int = 250_000
  decay_factor: float = 0.1
  plateau_patience: int = 1000
  plateau_rtol: float = 1e-3
  min_lr: float = 1e-7
  max_steps: int = 10_000
  batch_size: int = 0
  check_every: int = 100
  subtract_init: bool = False
  stop_at_sat: bool = True
  jam_window: int = 2000
  jam_rtol: float = 1e-3
  divergence_factor: float = 1e6
  chunk_steps: int = 2000
  n_log_per_decade: int = 10

  def __post_init__(self):
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"unknown optimizer {self.optimizer!r}; choose from {OPTIMIZERS}")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"unknown schedule {self.schedule!r}; choose from {SCHEDULES}")
    if not (self.lr > 0 and math.isfinite(self.lr)):
      raise ValueError(f"lr must be positive and finite, got {self.lr}")
    for name in ("max_steps", "decay_every", "plateau_patience", "check_every",
                 "jam_window", "chunk_steps", "n_log_per_decade"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
    if self.batch_size < 0:
      raise ValueError(f"batch_size must be >= 0, got {self.batch_size}")
    if self.batch_size and (self.jam_window % self.check_every or
                            self.plateau_patience % self.check_every):
      raise ValueError("with mini-batches, jam_window and plateau_patience must "
                       "be multiples of check_every (the stop rules only see "
                       "full-set checks)")
    if not 0 < self.decay_factor <= 1:
      raise ValueError(f"decay_factor must be in (0, 1], got {self.decay_factor}")


class TrainState(NamedTuple):
  """State of one member (arrays only; add a leading axis for an ensemble)."""
  params: Any
  params0: Any
  opt_state: Any
  lr: jax.Array         # current learning rate
  code: jax.Array       # int32 stop reason (index into STOP_REASONS)
  stop_step: jax.Array  # int32: last evaluated step; the stop step once stopped
  loss: jax.Array       # full-batch loss at the last check
  n_delta: jax.Array    # int32 N_Delta at the last check
  loss0: jax.Array      # loss at step 0 (divergence reference)
  best: jax.Array       # best loss seen so far
  jam_ref: jax.Array    # best loss at the start of the current jam window
  plateau_ref: jax.Array
  key: jax.Array        # k_train (mini-batches)


class Trainer(NamedTuple):
  """Pure per-member functions returned by :func:`make_trainer`."""
  init_fn: Callable      # (key, data) -> TrainState
  chunk_fn: Callable     # (state, data, t0, n) -> state: steps t0 .. t0+n-1
  measure_fn: Callable   # (state, data) -> dict of scalars (MEASUREMENTS)
  outputs_fn: Callable   # (params, params0, data) -> (f_train [P], f_test [n_test])
  loss_fn: Callable      # (params, params0, x, y) -> (loss, n_delta)


def member_keys(seed: int) -> tuple:
  """Named streams of a member: (k_init, k_train) from ``jax.random.key(seed)``."""
  k_init, k_train = jax.random.split(jax.random.key(seed))
  return k_init, k_train


def _base_tx(cfg: TrainConfig) -> optax.GradientTransformation:
  # The learning rate lives in TrainState (per member, schedulable), so the
  # optax transformation is the lr-free direction.
  if cfg.optimizer == "adam":
    return optax.scale_by_adam()
  if cfg.optimizer == "momentum":
    return optax.trace(decay=cfg.momentum)
  return optax.identity()


def make_trainer(net_cfg: nets.NetConfig, loss_cfg: losses.LossConfig,
                 cfg: TrainConfig) -> Trainer:
  """Builds the per-member training functions.

  Args:
    net_cfg: the network.
    loss_cfg: the per-example loss and margin epsilon.
    cfg: the training configuration.

  Returns:
    A :class:`Trainer`. ``chunk_fn(state, data, t0, n)`` has unbatched ``t0``
    and ``n``: vmap it with ``in_axes=(0, None, None, None)``.
  """
  init_net, apply_fn = nets.make_net(net_cfg)
  f_fn = nets.output_fn(apply_fn, cfg.subtract_init)
  ell, eps = loss_cfg.fn, loss_cfg.epsilon
  tx = _base_tx(cfg)

  def loss_fn(params, params0, x, y):
    delta = eps - y * f_fn(params, params0, x)
    return jnp.mean(ell(delta)), jnp.sum(delta > 0).astype(jnp.int32)

  def init_fn(key, data: data_lib.Dataset) -> TrainState:
    k_init, k_train = jax.random.split(key)
    dtype = data.x_train.dtype
    params = jax.tree_util.tree_map(lambda a: a.astype(dtype), init_net(k_init))
    zero = jnp.zeros((), dtype)
    inf = jnp.full((), jnp.inf, dtype)
    return TrainState(
        params=params, params0=params, opt_state=tx.init(params),
        lr=jnp.asarray(cfg.lr, dtype), code=jnp.int32(RUNNING),
        stop_step=jnp.int32(0), loss=zero, n_delta=jnp.int32(0), loss0=zero,
        best=inf, jam_ref=inf, plateau_ref=inf, key=k_train)

  full_batch = cfg.batch_size == 0

  def grad_and_check(s: TrainState, t, data):
    x, y = data.x_train, data.y_train
    if full_batch:
      (loss, nd), g = jax.value_and_grad(loss_fn, has_aux=True)(
          s.params, s.params0, x, y)
      return g, loss, nd, True
    P = x.shape[0]
    idx = jax.random.choice(jax.random.fold_in(s.key, t), P,
                            (min(cfg.batch_size, P),), replace=False)
    g, _ = jax.grad(loss_fn, has_aux=True)(s.params, s.params0, x[idx], y[idx])
    checked = (t % cfg.check_every) == 0
    loss, nd = jax.lax.cond(checked,
                            lambda: loss_fn(s.params, s.params0, x, y),
                            lambda: (s.loss, s.n_delta))
    return g, loss, nd, checked

  def step(t, s: TrainState, data) -> TrainState:
    running = s.code == RUNNING
    g, loss, nd, checked = grad_and_check(s, t, data)
    loss0 = jnp.where(t == 0, loss, s.loss0)
    finite_g = jnp.all(jnp.asarray(
        [jnp.all(jnp.isfinite(l)) for l in jax.tree_util.tree_leaves(g)]))
    diverged = (~jnp.isfinite(loss) | ~finite_g |
                (loss > cfg.divergence_factor * jnp.maximum(loss0, 1.0)))
    best = jnp.where(checked, jnp.minimum(s.best, loss), s.best)
    sat = (nd == 0) & checked & cfg.stop_at_sat
    window = checked & (t > 0) & (t % cfg.jam_window == 0)
    lr_floor = (s.lr <= cfg.min_lr) if cfg.schedule == "plateau" else True
    stalled = (window & (nd > 0) & lr_floor &
               (best > (1.0 - cfg.jam_rtol) * s.jam_ref))
    jam_ref = jnp.where(window | (t == 0), best, s.jam_ref)
    at_max = t >= cfg.max_steps
    code = jnp.select([diverged, sat, stalled, at_max],
                      [DIVERGED, SAT, JAMMED, MAX_STEPS], RUNNING).astype(jnp.int32)
    code = jnp.where(running, code, s.code)
    update = running & (code == RUNNING)

    # learning rate for this step
    lr, plateau_ref = s.lr, s.plateau_ref
    if cfg.schedule == "step":
      lr = jnp.maximum(cfg.lr * cfg.decay_factor ** (t // cfg.decay_every),
                       cfg.min_lr).astype(s.lr.dtype)
    elif cfg.schedule == "plateau":
      boundary = checked & (t > 0) & (t % cfg.plateau_patience == 0)
      no_gain = best > (1.0 - cfg.plateau_rtol) * s.plateau_ref
      lr = jnp.where(boundary & no_gain,
                     jnp.maximum(s.lr * cfg.decay_factor, cfg.min_lr), s.lr)
      plateau_ref = jnp.where(boundary | (t == 0), best, s.plateau_ref)

    direction, opt_state = tx.update(g, s.opt_state, s.params)
    new_params = jax.tree_util.tree_map(lambda p, u: p - lr * u, s.params, direction)
    keep = lambda new, old: jax.tree_util.tree_map(
        lambda a, b: jnp.where(update, a, b), new, old)
    return TrainState(
        params=keep(new_params, s.params), params0=s.params0,
        opt_state=keep(opt_state, s.opt_state),
        lr=jnp.where(update, lr, s.lr), code=code,
        stop_step=jnp.where(running, t, s.stop_step).astype(jnp.int32),
        loss=jnp.where(running, loss, s.loss),
        n_delta=jnp.where(running, nd, s.n_delta),
        loss0=jnp.where(running, loss0, s.loss0),
        best=jnp.where(running, best, s.best),
        jam_ref=jnp.where(running, jam_ref, s.jam_ref),
        plateau_ref=jnp.where(running, plateau_ref, s.plateau_ref),
        key=s.key)

  def chunk_fn(state: TrainState, data, t0, n) -> TrainState:
    return jax.lax.fori_loop(t0, t0 + n, lambda t, s: step(t, s, data), state)

  def outputs_fn(params, params0, data):
    return f_fn(params, params0, data.x_train), f_fn(params, params0, data.x_test)

  def measure_fn(state: TrainState, data) -> dict:
    f_tr, f_te = outputs_fn(state.params, state.params0, data)
    delta = eps - data.y_train * f_tr
    nan = jnp.full((), jnp.nan, f_tr.dtype)
    has_test = data.x_test.shape[0] > 0
    sq = lambda t: sum(jnp.sum(jnp.square(a)) for a in jax.tree_util.tree_leaves(t))
    return {
        "loss": jnp.mean(ell(delta)),
        "n_delta": jnp.sum(delta > 0).astype(jnp.int32),
        # The largest Delta tells a jammed member (Delta = O(1)) from one stuck
        # with a few points at rounding level (Delta ~ 1e-16 epsilon).
        "max_delta": jnp.max(delta),
        "train_error": jnp.mean((data.y_train * f_tr <= 0).astype(f_tr.dtype)),
        "test_error": (jnp.mean((data.y_test * f_te <= 0).astype(f_te.dtype))
                       if has_test else nan),
        "f2_train": jnp.mean(f_tr ** 2),
        "f2_test": jnp.mean(f_te ** 2) if has_test else nan,
        "w_dist": jnp.sqrt(sq(jax.tree_util.tree_map(
            lambda a, b: a - b, state.params, state.params0))),
        "lr": state.lr,
    }

  return Trainer(init_fn, chunk_fn, measure_fn, outputs_fn, loss_fn)


def measurement_steps(max_steps: int, n_per_decade: int = 10) -> np.ndarray:
  """Log-spaced integer steps 0, 1, 2, ... up to and including ``max_steps``."""
  n = int(np.ceil(np.log10(max(max_steps, 1)) * n_per_decade)) + 1
  steps = np.unique(np.round(np.logspace(0, np.log10(max(max_steps, 1)), n)))
  return np.unique(np.concatenate([[0], steps, [max_steps]]).astype(np.int64))


def _buckets(group: int) -> list:
  sizes = {group}
  b = 1
  while b < group:
    sizes.add(b)
    b *= 2
  return sorted(sizes)


def default_group_size(n_members: int, work_per_member_step: float,
                       backend: str | None = None) -> int:
  """How many members to vmap together (the rest run group after group).

  On accelerators the whole ensemble is one vmapped program. On CPU, batching
  pays off only while a member's step is small: past ~3e6 multiply-adds per
  member-step (P times N) one member already keeps the cores busy, and the
  batched matmuls of a vmap are slower than plain ones (BUILD_NOTES.md,
  benchmark "ensemble").
  """
  backend = backend or jax.default_backend()
  if backend != "cpu" or work_per_member_step < CPU_VMAP_WORK_LIMIT:
    return n_members
  return 1


CPU_VMAP_WORK_LIMIT = 3e6


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
    n_compiles: number of distinct chunk shapes compiled.
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

  @property
  def stop_reasons(self) -> list:
    return [STOP_REASONS[int(c)] for c in self.stop_code]


def _take(tree, idx):
  return jax.tree_util.tree_map(lambda a: a[idx], tree)


def _fingerprint(seeds, data, net_cfg, loss_cfg, cfg, group_size, compact):
  h = hashlib.sha1()
  h.update(repr((seeds.tolist(), net_cfg, loss_cfg, cfg, group_size, compact,
                 str(data.x_train.dtype))).encode())
  for a in data:
    h.update(np.ascontiguousarray(np.asarray(a)).tobytes())
  return h.hexdigest()


def _flat_members(trees, like):
  n = ravel_pytree(like)[0].shape[0]
  out = np.zeros((len(trees), n), np.asarray(ravel_pytree(like)[0]).dtype)
  has = np.zeros((len(trees),), bool)
  for m, tree in enumerate(trees):
    if tree is not None:
      out[m] = np.asarray(ravel_pytree(tree)[0])
      has[m] = True
  return out, has


def _is_key(leaf):
  return jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key)


def _write_checkpoint(path, fingerprint, g0, rows, t, state, history, final,
                      stop_code, steps, init_states, final_states):
  like = next(x for x in init_states if x is not None)
  init_flat, has_init = _flat_members(init_states, like)
  final_flat, has_final = _flat_members(final_states, like)
  arrays = {"fingerprint": np.asarray(fingerprint), "g0": np.asarray(g0),
            "rows": np.asarray(rows, np.int64), "t": np.asarray(t),
            "stop_code": stop_code, "steps": steps, "init_flat": init_flat,
            "has_init": has_init, "final_flat": final_flat,
            "has_final": has_final}
  for k in MEASUREMENTS:
    arrays[f"history_{k}"] = history[k]
    arrays[f"final_{k}"] = final[k]
  if state is not None:
    for i, leaf in enumerate(jax.tree_util.tree_leaves(state)):
      arrays[f"state_{i}"] = np.asarray(
          jax.random.key_data(leaf) if _is_key(leaf) else leaf)
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "wb") as fh:
    np.savez(fh, **arrays)
  os.replace(tmp, path)


def _read_checkpoint(path, fingerprint):
  if not os.path.isfile(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as z:
      ckpt = {k: z[k] for k in z.files}
  except (OSError, ValueError, EOFError) as e:
    raise ValueError(f"unreadable checkpoint {path}: {e}") from e
  if str(ckpt.get("fingerprint")) != fingerprint:
    return None
  return ckpt


def _restore_state(template, ckpt):
  leaves, treedef = jax.tree_util.tree_flatten(template)
  new = []
  for i, leaf in enumerate(leaves):
    a = jnp.asarray(ckpt[f"state_{i}"])
    new.append(jax.random.wrap_key_data(a) if _is_key(leaf) else a.astype(leaf.dtype))
  return jax.tree_util.tree_unflatten(treedef, new)


@functools.lru_cache(maxsize=32)
def _compiled(net_cfg, loss_cfg, cfg):
  """The jitted, vmapped functions of the driver, built once per config.

  jax caches compilations per function object; building the closures once
  per (hashable) config makes repeated ensembles (tests, sweeps, benchmarks)
  reuse them instead of recompiling.
  """
  trainer = make_trainer(net_cfg, loss_cfg, cfg)
  init_all = jax.jit(jax.vmap(trainer.init_fn, in_axes=(0, None)))

  def run_and_measure(state, data, t0, n):
    state = jax.vmap(trainer.chunk_fn, in_axes=(0, None, None, None))(
        state, data, t0, n)
    return state, jax.vmap(trainer.measure_fn, in_axes=(0, None))(state, data)

  outs = jax.jit(jax.vmap(trainer.outputs_fn, in_axes=(0, 0, None)))
  return trainer, init_all, jax.jit(run_and_measure), outs


def train_ensemble(seeds: Sequence[int], data: data_lib.Dataset,
                   net_cfg: nets.NetConfig, loss_cfg: losses.LossConfig,
                   cfg: TrainConfig, group_size: int | None = None,
                   progress_fn: Callable | None = None,
                   compact: bool = True,
                   checkpoint_path: str | None = None,
                   checkpoint_every: float = 60.0) -> EnsembleResult:
  """Trains one network per seed; members are vmapped in groups.

  Args:
    seeds: member seeds; member k's init and mini-batch keys come from
      ``jax.random.key(seeds[k])`` only.
    data: the Dataset (its dtype sets the params' dtype).
    net_cfg, loss_cfg, cfg: what to train and how.
    group_size: members per vmapped group; None picks
      :func:`default_group_size`.
    progress_fn: called after each chunk as ``progress_fn(step, max_steps,
      n_running, n_done, n_members)``.
    compact: drop stopped members between chunks (padded to bucket sizes).
    checkpoint_path: if given, the driver's whole state (finished members,
      histories, the running group's TrainState) is saved there (atomically)
      at chunk boundaries at most every ``checkpoint_every`` seconds, and a
      matching checkpoint found there at the start is resumed from. A
      checkpoint of a different ensemble (other seeds, data or configs) is
      ignored. The caller removes the file when the job is complete. A resumed
      ensemble gives the same numbers as an uninterrupted one.

  Returns:
    An :class:`EnsembleResult`.
  """
  seeds = np.asarray(seeds, np.int64)
  K = len(seeds)
  if K == 0:
    raise ValueError("need at least one seed")
  trainer, init_all, run_chunk, outs = _compiled(net_cfg, loss_cfg, cfg)
  if group_size is None:
    group_size = default_group_size(K, float(data.P) * nets.n_params(net_cfg))
  group_size = max(1, min(int(group_size), K))

  sched = measurement_steps(cfg.max_steps, cfg.n_log_per_decade)
  sched_set = set(int(s) for s in sched)
  bounds = sorted(sched_set | set(range(0, cfg.max_steps + 1, cfg.chunk_steps))
                  | {cfg.max_steps + 1})

  shapes_seen = set()

  history = {m: np.full((K, len(sched)), np.nan) for m in MEASUREMENTS}
  sched_index = {int(s): i for i, s in enumerate(sched)}
  final = {m: np.full((K,), np.nan) for m in MEASUREMENTS}
  stop_code = np.full((K,), RUNNING, np.int64)
  steps = np.zeros((K,), np.int64)
  final_states = [None] * K
  init_states = [None] * K
  done = 0

  unravel = None
  fingerprint = None
  last_save = time.time()
  start_g0, resume = 0, None
  if checkpoint_path:
    fingerprint = _fingerprint(seeds, data, net_cfg, loss_cfg, cfg, group_size,
                               compact)
    ckpt = _read_checkpoint(checkpoint_path, fingerprint)
    if ckpt is not None:
      unravel = nets.unravel_fn(net_cfg, data.x_train.dtype)
      for k in MEASUREMENTS:
        history[k][...] = ckpt[f"history_{k}"]
        final[k][...] = ckpt[f"final_{k}"]
      stop_code[...] = ckpt["stop_code"]
      steps[...] = ckpt["steps"]
      for m in range(K):
        if ckpt["has_init"][m]:
          init_states[m] = jax.device_get(unravel(jnp.asarray(ckpt["init_flat"][m])))
        if ckpt["has_final"][m]:
          final_states[m] = jax.device_get(unravel(jnp.asarray(ckpt["final_flat"][m])))
      done = int(sum(f is not None for f in final_states))
      start_g0 = int(ckpt["g0"])
      if ckpt["rows"].size:
        resume = (ckpt["rows"].tolist(), int(ckpt["t"]), ckpt)

  for g0 in range(start_g0, K, group_size):
    members = list(range(g0, min(g0 + group_size, K)))
    buckets = _buckets(len(members))
    if resume is not None:
      rows, t, ckpt = resume
      resume = None
      keys = jnp.stack([jax.random.key(int(seeds[max(m, 0)])) for m in rows])
      state = _restore_state(init_all(keys, data), ckpt)
    else:
      keys = jnp.stack([jax.random.key(int(seeds[m])) for m in members])
      state = init_all(keys, data)
      for row, m in enumerate(members):
        init_states[m] = jax.device_get(_take(state.params0, row))
      rows = list(members)
      t = 0
    for b in bounds[1:]:
      if b <= t:
        continue
      shapes_seen.add(len(rows))
      state, meas = run_chunk(state, data, jnp.int32(t), jnp.int32(b - t))
      t = b
      codes, stop_steps, stop_losses, stop_nd = jax.device_get(
          (state.code, state.stop_step, state.loss, state.n_delta))
      meas = {k: np.asarray(v) for k, v in meas.items()}
      for row, m in enumerate(rows):
        if m < 0 or final_states[m] is not None:
          continue
        if codes[row] == RUNNING:
          if b in sched_set and b <= cfg.max_steps:
            for k in MEASUREMENTS:
              history[k][m, sched_index[b]] = meas[k][row]
        else:
          stop_code[m] = codes[row]
          steps[m] = stop_steps[row]
          for k in MEASUREMENTS:
            final[k][m] = meas[k][row]
          # The loss and N_Delta on which the stop was decided (a re-measure
          # can differ in the last bit for Delta ~ 1e-17, see BUILD_NOTES).
          final["loss"][m] = float(stop_losses[row])
          final["n_delta"][m] = int(stop_nd[row])
          final_states[m] = jax.device_get(_take(state.params, row))
          done += 1
      live = [r for r, m in enumerate(rows)
              if m >= 0 and final_states[m] is None]
      if progress_fn is not None:
        progress_fn(min(t, cfg.max_steps), cfg.max_steps, len(live), done, K)
      if not live:
        break
      if compact:
        size = min(s for s in buckets if s >= len(live))
        if size < len(rows):
          take = live + [live[0]] * (size - len(live))
          state = _take(state, jnp.asarray(take))
          rows = [rows[r] for r in live] + [-1] * (size - len(live))
      if checkpoint_path and time.time() - last_save >= checkpoint_every:
        _write_checkpoint(checkpoint_path, fingerprint, g0, rows, t, state,
                          history, final, stop_code, steps, init_states,
                          final_states)
        last_save = time.time()
    if checkpoint_path and g0 + group_size < K:
      _write_checkpoint(checkpoint_path, fingerprint, g0 + group_size, [], 0,
                        None, history, final, stop_code, steps, init_states,
                        final_states)
      last_save = time.time()

  stack = lambda trees: jax.tree_util.tree_map(lambda *a: np.stack(a), *trees)
  params, params0 = stack(final_states), stack(init_states)
  f_train, f_test = outs(params, params0, data)
  return EnsembleResult(
      seeds=seeds, params=params, params0=params0, stop_code=stop_code,
      steps=steps, final=final, history_step=sched, history=history,
      f_train=np.asarray(f_train), f_test=np.asarray(f_test),
      group_size=group_size, n_compiles=len(shapes_seen))
