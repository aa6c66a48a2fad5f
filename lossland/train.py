"""The one training loop of lossland: chunked, jitted, vmapped, per-member stops.

Structure (CONVENTIONS.md; design notes and measurements in docs/engine.md):

* :func:`make_trainer` returns pure functions for **one** network: ``init_fn``,
  ``chunk_fn`` (a ``lax.scan`` of a static number of steps, no host sync
  inside), ``measure_fn`` and ``outputs_fn``. They are written per member.
* :func:`train_ensemble` is the host-side driver. Its state is a small pytree
  on the device(s): the running group (:class:`Group`: the members'
  :class:`TrainState`, their histories and final measurements, written inside
  jitted code) and the ensemble's results (:class:`Results`, one row per
  member). Between two measurement steps the driver dispatches a few scans
  whose lengths are powers of :data:`SCAN_BASE` (few compilations, no traced
  loop bounds), then :func:`record` measures every member on device and
  returns the number still running: **one device-to-host transfer per chunk**,
  whatever the number of members K. Stopped members are dropped by a
  device-side gather (:func:`compact`) that first scatters their rows into the
  results; the group is padded to a few bucket sizes so recompilations stay
  few. With several local devices the member axis is sharded over them.

Every member carries its own **stop reason** (:data:`STOP_REASONS`), decided by
the pure function :func:`stop_code`, in this order:

* ``diverged``: a non-finite loss or gradient, or a loss above
  ``divergence_factor * max(loss at step 0, 1)``.
* ``sat``: N_Delta = 0, all constraints satisfied (for the hinge losses the loss
  is exactly 0). Checked on the full training set at every step (full batch)
  or every ``check_every`` steps (mini-batch).
* ``max_steps``: ``max_steps`` updates done.
* ``jammed``: N_Delta > 0 and the loss has stalled: the best loss seen so far
  decreased by less than a fraction ``jam_rtol`` over the last ``jam_window``
  steps; with the plateau schedule (and the step schedule if
  ``jam_after_decays``) only once the learning rate has reached its last
  level (:func:`final_lr_level`: a stall at a larger learning rate is the
  optimizer's noise floor, not a minimum, docs/jamming.md). Using the running
  best makes the rule insensitive to Adam's oscillations. With ``lbfgs`` a
  member with N_Delta > 0 is also jammed as soon as its line search finds no
  step that lowers the loss, along the quasi-Newton direction nor along -g
  (``stuck``). A member reaching ``max_steps`` is ``max_steps``, never
  ``jammed``, even on a window boundary.

Step t evaluates the loss and gradient at params_t, decides whether the member
stops at t (then params_t are final and ``steps = t``), else updates to
params_{t+1}.

Optimizers: Adam (the authors'), SGD, momentum (learning rate in the state,
schedulable per member), and three that aim at true minima: ``gradient_flow``
(Euler steps of dw/dt = -grad L with an adaptive time step, accepted when the
gradient and outputs change little, as the authors' ``gradientflow`` code),
``fire`` (Bitzek et al., PRL 97, 170201 (2006)) and ``lbfgs`` (L-BFGS with
the weak-Wolfe bracketing line search of Lewis & Overton for nonsmooth
losses; one trial point per step). For those the state's ``lr`` is the time
step dt (lbfgs: the trial step length), and a "step" is one gradient
evaluation (a rejected gradient-flow step or line-search trial counts as a
step). ``train_ensemble(start=...)`` continues given networks, e.g. an Adam
run polished by L-BFGS (the ensemble job's ``polish``).

What is guaranteed about members (tests/test_train.py, tests/test_accelerator_path.py): the same
call gives bitwise the same numbers (resume from a checkpoint included);
member k equals seed k trained alone, or in a group of any size, with or
without compaction, up to rounding (batched and unbatched matmuls round
differently; far from jamming the members agree to ~1e-12, near jamming
chaotic dynamics can amplify the last bit into different trajectories).
"""
import dataclasses
import functools
import hashlib
import math
import os
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np
import optax

from lossland import checkpoint as ckpt_lib
from lossland import data as data_lib
from lossland import fire as fire_lib
from lossland import lbfgs as lbfgs_lib
from lossland import losses
from lossland import nets

STOP_REASONS = ("running", "sat", "jammed", "max_steps", "diverged")
RUNNING, SAT, JAMMED, MAX_STEPS, DIVERGED = range(5)

OPTIMIZERS = ("adam", "sgd", "momentum", "gradient_flow", "fire", "lbfgs")
# Optimizers whose state caches the loss and gradient at the accepted params
# (a step evaluates only a proposal).
_CACHED = ("gradient_flow", "lbfgs")
SCHEDULES = ("constant", "step", "plateau")
MEASUREMENTS = ("loss", "n_delta", "max_delta", "train_error", "test_error",
                "f2_train", "f2_test", "w_dist", "lr")

# Scans have lengths SCAN_BASE**i (i >= 0, at most chunk_steps): an interval
# of n steps is cut into at most (SCAN_BASE - 1) * log_base(n) scans.
SCAN_BASE = 8
# lax.scan unroll factor per backend (docs/engine.md: tuned on CPU; on GPU a
# moderate unroll lets XLA fuse the step's elementwise tail across steps).
UNROLL = {"cpu": 1, "gpu": 4, "cuda": 4, "rocm": 4, "tpu": 4}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How to train (hashable, jit-static).

  Attributes:
    optimizer: "adam" (default, as the authors), "sgd", "momentum",
      "gradient_flow" (adaptive Euler steps of dw/dt = -grad L), "fire" or
      "lbfgs" (L-BFGS with a backtracking Armijo line search, one gradient
      evaluation per step; reaches minima, docs/jamming.md).
    lr: initial learning rate (the initial time step dt for gradient_flow and
      fire; for lbfgs the first step length along -g, before any curvature
      pair is stored).
    momentum: momentum coefficient (optimizer="momentum").
    schedule: "constant"; "step" (multiply by ``decay_factor`` every
      ``decay_every`` steps: the authors' "divide by 10 every 250k steps");
      "plateau" (multiply by ``decay_factor`` when the best loss improved by
      less than ``plateau_rtol`` over ``plateau_patience`` steps). With
      "plateau" (and "step" if ``jam_after_decays``) a member stops jammed
      only at the last lr level (:func:`final_lr_level`). Only
      "constant" with gradient_flow and fire (they adapt dt themselves).
    decay_every, decay_factor, plateau_patience, plateau_rtol, min_lr: see above.
    max_steps: maximum number of updates (gradient evaluations for
      gradient_flow, fire and lbfgs).
    batch_size: 0 for full batch, else mini-batch size (sampled without
      replacement from ``fold_in(k_train, step)``).
    check_every: with mini-batches, evaluate the full training set (and the
      stop rules) every this many steps.
    subtract_init: train f(w) - f(w0) (1906.08034).
    stop_at_sat: stop a member as soon as N_Delta = 0.
    jam_window, jam_rtol: the jamming rule (module docstring).
    jam_after_decays: with the step schedule, stop jammed only at the last
      lr level (``min_lr`` or past the last decay before ``max_steps``).
    divergence_factor: loss blow-up factor that counts as divergence.
    chunk_steps: most steps between two host syncs (measurements add
      boundaries at log-spaced steps).
    n_log_per_decade: measurement steps per decade.
    max_dgrad, max_dout: gradient flow accepts a step w -> w - dt g when
      |g' - g|^2 / (|g| |g'|) < max_dgrad and max_mu |f'_mu - f_mu| <
      max_dout (the tests of the authors' ``gradientflow``); dt is multiplied
      by ``dt_grow`` when both are below half their threshold, by
      ``dt_shrink`` (and the step retried) when one is above.
    dt_grow, dt_shrink: see above.
    dt_max: largest time step of gradient_flow and fire (0: no cap for
      gradient_flow, 10 lr for fire).
    dt_min: gradient_flow takes a step without the tests once dt <= dt_min
      (0: 1e-4 lr): at a ReLU kink the gradient jumps whatever dt is.
    fire_n_min, fire_f_inc, fire_f_dec, fire_alpha_start, fire_f_alpha: FIRE's
      parameters (Bitzek et al. 2006, their recommended values).
    lbfgs_memory: curvature pairs kept by L-BFGS (Nocedal & Wright,
      Numerical Optimization, Alg. 7.4/7.5).
    ls_c1, ls_c2: Armijo and weak-Wolfe constants of L-BFGS's bracketing
      line search (Lewis & Overton 2013): a trial w + a d is accepted when
      L(w + a d) <= L(w) + ls_c1 a g.d and g(w + a d).d >= ls_c2 g.d.
    ls_min_step: the line search fails when its bracket is shorter than
      ls_min_step max(|w|, 1) with no Armijo point in it; a failure along
      the quasi-Newton direction restarts along -g, a failure along -g means
      no step satisfies Armijo at this precision: the member stops as
      jammed (never sat: that needs N_Delta = 0).
    record_unsat: store, at every measurement step, which training points are
      unsatisfied (Delta > 0) in ``EnsembleResult.history_unsat`` (bit-packed
      on the device).
    wgrad_split: 0 lets XLA differentiate the network; n >= 2 computes every
      weight gradient as a sum over n chunks of the training points
      (:func:`lossland.nets.split_k_matmul`; split-K, for GPUs at paper
      scale: docs/engine.md). The same training up to rounding.
    pad_to: 0, or n >= 2: the input and hidden layers are padded with zero
      units to a multiple of n inside the step (:func:`lossland.nets.make_net`;
      relu and tanh nets). The same training up to rounding.
    scan_unroll: unroll factor of the chunk's ``lax.scan`` (0: the backend's
      default, :data:`UNROLL`). The same training up to rounding.
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
  jam_after_decays: bool = False
  divergence_factor: float = 1e6
  chunk_steps: int = 2000
  n_log_per_decade: int = 10
  max_dgrad: float = 1e-4
  max_dout: float = 0.1
  dt_grow: float = 1.1
  dt_shrink: float = 0.1
  dt_max: float = 0.0
  dt_min: float = 0.0
  fire_n_min: int = 5
  fire_f_inc: float = 1.1
  fire_f_dec: float = 0.5
  fire_alpha_start: float = 0.1
  fire_f_alpha: float = 0.99
  lbfgs_memory: int = 10
  ls_c1: float = 1e-4
  ls_c2: float = 0.9
  ls_min_step: float = 1e-12
  record_unsat: bool = False
  wgrad_split: int = 0
  pad_to: int = 0
  scan_unroll: int = 0

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
    if self.optimizer in ("gradient_flow", "fire", "lbfgs"):
      if self.schedule != "constant":
        raise ValueError(f"{self.optimizer} adapts its time step itself; "
                         f"use schedule='constant', got {self.schedule!r}")
      if self.batch_size:
        raise ValueError(f"{self.optimizer} is full batch; got batch_size="
                         f"{self.batch_size}")
    for name in ("max_dgrad", "max_dout", "dt_grow", "fire_f_inc"):
      if not getattr(self, name) > 0:
        raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
    for name in ("dt_shrink", "fire_f_dec", "fire_f_alpha"):
      if not 0 < getattr(self, name) < 1:
        raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
    if not 0 <= self.fire_alpha_start < 1:
      raise ValueError(f"fire_alpha_start must be in [0, 1), got {self.fire_alpha_start}")
    if self.dt_max < 0 or self.dt_min < 0:
      raise ValueError(f"dt_max and dt_min must be >= 0, got {self.dt_max}, {self.dt_min}")
    if self.lbfgs_memory < 1:
      raise ValueError(f"lbfgs_memory must be >= 1, got {self.lbfgs_memory}")
    if not 0 < self.ls_c1 < self.ls_c2 < 1:
      raise ValueError(f"need 0 < ls_c1 < ls_c2 < 1, got {self.ls_c1}, {self.ls_c2}")
    if not self.ls_min_step > 0:
      raise ValueError(f"ls_min_step must be positive, got {self.ls_min_step}")
    for name in ("wgrad_split", "pad_to"):
      if getattr(self, name) < 0 or getattr(self, name) == 1:
        raise ValueError(f"{name} must be 0 or >= 2, got {getattr(self, name)}")
    if self.scan_unroll < 0:
      raise ValueError(f"scan_unroll must be >= 0, got {self.scan_unroll}")


class TrainState(NamedTuple):
  """State of one member (arrays only; add a leading axis for an ensemble).

  ``opt_state`` is optax's state for adam/sgd/momentum; for gradient_flow it
  caches the gradient, outputs, loss and N_Delta at the current params (a step
  evaluates only the proposal); for fire it holds the velocity, alpha and the
  number of steps since the power F.v was last negative.
  """
  params: Any
  params0: Any
  opt_state: Any
  lr: jax.Array         # current learning rate (time step dt for gradient_flow/fire)
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
  init_fn: Callable      # (key, data, start=None) -> TrainState
  chunk_fn: Callable     # (state, data, t0, n) -> state: steps t0 .. t0+n-1, n static
  measure_fn: Callable   # (state, data) -> dict of scalars (MEASUREMENTS)
  outputs_fn: Callable   # (params, params0, data) -> (f_train [P], f_test [n_test])


def member_keys(seed: int) -> tuple:
  """Named streams of a member: (k_init, k_train) from ``jax.random.key(seed)``."""
  k_init, k_train = jax.random.split(jax.random.key(seed))
  return k_init, k_train


def loss_scale(loss_cfg) -> float:
  """The loss prefactor (``LossConfig.scale``, 1906.08034's 1/alpha^2; 1 if absent)."""
  return float(getattr(loss_cfg, "scale", 1.0))


def stop_code(t, running, loss, loss0, finite_grad, nd, checked, best, jam_ref,
              lr, cfg: TrainConfig, stuck=False):
  """The stop rule (pure, per member): the code of a member after evaluating step t.

  Args:
    t: the step (unbatched int).
    running: whether the member was running before step t.
    loss, nd: loss and N_Delta at params_t (the last full-set check).
    loss0: the loss at step 0 (divergence reference).
    finite_grad: whether the gradient at params_t is finite.
    checked: whether loss/nd were evaluated on the full set at step t.
    best: best loss so far (including step t); jam_ref: best loss at the start
      of the current jam window.
    lr: current learning rate (the plateau schedule's floor).
    cfg: the training configuration.
    stuck: the optimizer found no descent direction (lbfgs: the line search
      failed along the quasi-Newton direction and along -g): with N_Delta > 0
      the member is jammed at once, at any step.

  Returns:
    int32 code: DIVERGED, SAT, MAX_STEPS, JAMMED (in this priority) or RUNNING;
    a member that was not running keeps RUNNING here (the caller keeps its code).
  """
  running, finite_grad, checked = (jnp.asarray(a, bool) for a in
                                   (running, finite_grad, checked))
  diverged = (~jnp.isfinite(loss) | ~finite_grad |
              (loss > cfg.divergence_factor * jnp.maximum(loss0, 1.0)))
  sat = (nd == 0) & checked & cfg.stop_at_sat
  window = checked & (t > 0) & (t % cfg.jam_window == 0)
  lr_floor = final_lr_level(t, lr, cfg)
  stalled = ((window & lr_floor & (best > (1.0 - cfg.jam_rtol) * jam_ref)) |
             (jnp.asarray(stuck, bool) & checked)) & (nd > 0)
  at_max = t >= cfg.max_steps
  code = jnp.select([diverged, sat, at_max, stalled],
                    [DIVERGED, SAT, MAX_STEPS, JAMMED], RUNNING)
  return jnp.where(running, code, RUNNING).astype(jnp.int32)


def final_lr_level(t, lr, cfg: TrainConfig):
  """Whether the learning rate has reached its last level (the jam rule's gate).

  A loss that stalls at a large learning rate is the optimizer's noise floor
  (Adam rattling), not a minimum: a member may stop as jammed only once no
  decay is left. "plateau": lr at ``min_lr``; "step" with
  ``jam_after_decays``: lr at ``min_lr`` or past the last decay before
  ``max_steps``; otherwise always. ``min_lr`` is matched up to a relative
  1e-6 (lr0 * 0.1**k rounds to just above it).
  """
  at_min = lr <= cfg.min_lr * (1.0 + 1e-6)
  if cfg.schedule == "plateau":
    return at_min
  if cfg.schedule == "step" and cfg.jam_after_decays:
    last_decay = ((cfg.max_steps - 1) // cfg.decay_every) * cfg.decay_every
    return at_min | (t >= last_decay)
  return jnp.asarray(True)


def _base_tx(cfg: TrainConfig) -> optax.GradientTransformation:
  # The learning rate lives in TrainState (per member, schedulable, bitwise
  # resumable), so the optax transformation is the lr-free direction.
  if cfg.optimizer == "adam":
    return optax.scale_by_adam()
  if cfg.optimizer == "momentum":
    return optax.trace(decay=cfg.momentum)
  return optax.identity()


def _tree_sum(fn, *trees):
  return sum(jnp.sum(fn(*leaves)) for leaves in
             zip(*(jax.tree_util.tree_leaves(t) for t in trees)))


def _axpy(a, x, y):
  """y + a x on pytrees (a scalar)."""
  return jax.tree_util.tree_map(lambda xi, yi: yi + a * xi, x, y)


def lbfgs_direction(g, S, Y, rho, k):
  """-H g, the L-BFGS direction with H_0 = gamma I (Nocedal & Wright, Alg. 7.4, Eq. 7.20).

  :func:`lossland.lbfgs.two_loop` with h0 = :func:`lossland.lbfgs.scaling`
  (gamma = s.y / y.y of the newest pair; with no pair, H = I). The pairs live
  in a ring buffer: pair j (j = 0 .. k-1, oldest first) is row j % m; only the
  last min(k, m) pairs are used.

  Args:
    g: [n] gradient.
    S, Y: [m, n] steps s_j = w_{j+1} - w_j and gradient changes y_j.
    rho: [m] 1 / (y_j . s_j).
    k: int32 number of pairs stored so far.

  Returns:
    [n] the direction -H g (a descent direction when every rho > 0).
  """
  return lbfgs_lib.two_loop(g, S, Y, rho, k, lbfgs_lib.scaling(S, Y, rho, k))


def make_trainer(net_cfg: nets.NetConfig, loss_cfg: losses.LossConfig,
                 cfg: TrainConfig) -> Trainer:
  """See :func:`_make_trainer` (which also returns the internal measure)."""
  return _make_trainer(net_cfg, loss_cfg, cfg)[0]


def _make_trainer(net_cfg: nets.NetConfig, loss_cfg: losses.LossConfig,
                  cfg: TrainConfig) -> tuple:
  """Builds the per-member training functions.

  The training loss is ``scale * mean_mu ell(Delta_mu)`` with
  ``Delta = epsilon - y f`` and ``scale = getattr(loss_cfg, "scale", 1)``;
  the divergence reference and the measured "loss" use the same scaled loss.

  Args:
    net_cfg: the network.
    loss_cfg: the per-example loss and margin epsilon.
    cfg: the training configuration.

  Returns:
    A :class:`Trainer`. ``chunk_fn(state, data, t0, n)`` runs steps
    t0 .. t0+n-1 as a ``lax.scan``; ``t0`` is an unbatched int32 and ``n`` a
    static Python int: vmap it with ``in_axes=(0, None, None)`` over
    ``functools.partial(chunk_fn, n=n)``.
  """
  init_net, apply_fn = nets.make_net(net_cfg, wgrad_split=cfg.wgrad_split,
                                     pad_to=cfg.pad_to)
  f_fn = nets.output_fn(apply_fn, cfg.subtract_init)
  ell, eps = loss_cfg.fn, loss_cfg.epsilon
  scale = loss_scale(loss_cfg)
  opt = cfg.optimizer
  tx = _base_tx(cfg)
  full_batch = cfg.batch_size == 0

  def scaled_loss(delta):
    loss = jnp.mean(ell(delta))
    return loss if scale == 1.0 else scale * loss

  # One definition of Delta and N_Delta (losses.margins, losses.n_unsatisfied).
  def n_delta_of(delta):
    return losses.n_unsatisfied(delta).astype(jnp.int32)

  def loss_fn(params, params0, x, y):
    delta = losses.margins(f_fn(params, params0, x), y, eps)
    return scaled_loss(delta), n_delta_of(delta)

  def loss_out_fn(params, params0, x, y):
    f = f_fn(params, params0, x)
    delta = losses.margins(f, y, eps)
    return scaled_loss(delta), (n_delta_of(delta), f)

  def evaluate(params, params0, data):
    """(loss, nd, f_train), grad at params on the full training set."""
    (loss, (nd, f)), g = jax.value_and_grad(loss_out_fn, has_aux=True)(
        params, params0, data.x_train, data.y_train)
    return loss, nd, f, g

  def init_fn(key, data: data_lib.Dataset, start=None) -> TrainState:
    """The state at step 0; ``start = (params, params0)`` continues a network
    (e.g. an L-BFGS polish of an Adam run) instead of drawing its init."""
    k_init, k_train = jax.random.split(key)
    dtype = data.x_train.dtype
    cast = lambda tree: jax.tree_util.tree_map(lambda a: a.astype(dtype), tree)
    if start is None:
      params = params0 = cast(init_net(k_init))
    else:
      params, params0 = cast(start[0]), cast(start[1])
    zero = jnp.zeros((), dtype)
    inf = jnp.full((), jnp.inf, dtype)
    if opt == "gradient_flow":
      loss, nd, f, g = evaluate(params, params0, data)
      opt_state = {"g": g, "f": f, "loss": loss, "n_delta": nd}
    elif opt == "lbfgs":
      loss, nd, _, g = evaluate(params, params0, data)
      gf = ravel_pytree(g)[0]
      m, n = cfg.lbfgs_memory, gf.shape[0]
      opt_state = {"g": gf, "loss": loss, "n_delta": nd, "d": -gf,
                   "S": jnp.zeros((m, n), dtype), "Y": jnp.zeros((m, n), dtype),
                   "rho": jnp.zeros((m,), dtype), "k": jnp.int32(0),
                   "sd": jnp.asarray(True), "stuck": jnp.asarray(False),
                   "lo": zero, "hi": inf, "lo_g": gf, "lo_loss": loss,
                   "lo_n_delta": nd}
    elif opt == "fire":
      opt_state = {"v": jax.tree_util.tree_map(jnp.zeros_like, params),
                   "alpha": jnp.asarray(cfg.fire_alpha_start, dtype),
                   "n_pos": jnp.int32(0)}
    else:
      opt_state = tx.init(params)
    return TrainState(
        params=params, params0=params0, opt_state=opt_state,
        lr=jnp.asarray(cfg.lr, dtype), code=jnp.int32(RUNNING),
        stop_step=jnp.int32(0), loss=zero, n_delta=jnp.int32(0), loss0=zero,
        best=inf, jam_ref=inf, plateau_ref=inf, key=k_train)

  def grad_and_check(s: TrainState, t, data):
    """Gradient at params_t, loss/N_Delta of the last full-set check, checked?"""
    x, y = data.x_train, data.y_train
    if opt in _CACHED:
      c = s.opt_state
      g = c["g"] if opt == "gradient_flow" else ravel_pytree(s.params)[1](c["g"])
      return g, c["loss"], c["n_delta"], True
    if full_batch:
      (loss, nd), g = jax.value_and_grad(loss_fn, has_aux=True)(
          s.params, s.params0, x, y)
      return g, loss, nd, True
    P = x.shape[0]
    idx = jax.random.choice(jax.random.fold_in(s.key, t), P,
                            (min(cfg.batch_size, P),), replace=False)
    g, _ = jax.grad(loss_fn, has_aux=True)(s.params, s.params0, x[idx], y[idx])
    # t is unbatched, so under vmap this stays a conditional (mini-batch only).
    checked = (t % cfg.check_every) == 0
    loss, nd = jax.lax.cond(checked,
                            lambda: loss_fn(s.params, s.params0, x, y),
                            lambda: (s.loss, s.n_delta))
    return g, loss, nd, checked

  dt_max_fire = cfg.dt_max if cfg.dt_max > 0 else 10.0 * cfg.lr
  fire_cfg = fire_lib.FireConfig(
      dt_max=dt_max_fire, n_min=cfg.fire_n_min, f_inc=cfg.fire_f_inc,
      f_dec=cfg.fire_f_dec, alpha_start=cfg.fire_alpha_start,
      f_alpha=cfg.fire_f_alpha)
  dt_min_gf = cfg.dt_min if cfg.dt_min > 0 else 1e-4 * cfg.lr

  def advance(s: TrainState, g, gnorm2, t, data):
    """(params_{t+1}, opt_state, lr) from params_t and the gradient g."""
    if opt == "gradient_flow":
      c, dt = s.opt_state, s.lr
      new = _axpy(-dt, g, s.params)
      loss1, nd1, f1, g1 = evaluate(new, s.params0, data)
      g1n2 = _tree_sum(jnp.square, g1)
      diff2 = _tree_sum(lambda a, b: jnp.square(a - b), g1, g)
      norms = jnp.sqrt(gnorm2 * g1n2)
      dgrad = jnp.where(norms > 0, diff2 / jnp.where(norms > 0, norms, 1), 0.0)
      dout = jnp.max(jnp.abs(f1 - c["f"]), initial=0.0)
      # A ReLU kink makes the gradient jump by a finite amount however small
      # dt is: at dt <= dt_min the step is taken anyway (then dt grows back).
      ok = (((dgrad < cfg.max_dgrad) & (dout < cfg.max_dout)) |
            (dt <= dt_min_gf)) & jnp.isfinite(loss1)
      calm = (dgrad < 0.5 * cfg.max_dgrad) & (dout < 0.5 * cfg.max_dout)
      dt_new = jnp.where(ok, jnp.where(calm, dt * cfg.dt_grow, dt),
                         dt * cfg.dt_shrink)
      if cfg.dt_max > 0:
        dt_new = jnp.minimum(dt_new, cfg.dt_max)
      pick = lambda a, b: jax.tree_util.tree_map(
          lambda u, v: jnp.where(ok, u, v), a, b)
      cache = pick({"g": g1, "f": f1, "loss": loss1, "n_delta": nd1}, c)
      return pick(new, s.params), cache, dt_new.astype(s.lr.dtype)
    if opt == "lbfgs":
      return lbfgs_advance(s, data)
    if opt == "fire":
      c = s.opt_state
      new, fs = fire_lib.fire_step(
          s.params, fire_lib.FireState(v=c["v"], dt=s.lr, alpha=c["alpha"],
                                       n_pos=c["n_pos"]), g, fire_cfg,
          grad_norm=jnp.sqrt(gnorm2))
      return new, {"v": fs.v, "alpha": fs.alpha, "n_pos": fs.n_pos}, fs.dt
    lr = s.lr
    if cfg.schedule == "step":
      lr = jnp.maximum(cfg.lr * cfg.decay_factor ** (t // cfg.decay_every),
                       cfg.min_lr).astype(s.lr.dtype)
    direction, opt_state = tx.update(g, s.opt_state, s.params)
    new = _axpy(-lr, direction, s.params)
    return new, opt_state, lr

  def lbfgs_advance(s: TrainState, data):
    """One trial w + a d of L-BFGS's weak-Wolfe line search (a = the state's lr).

    The bracketing line search of Lewis & Overton (Math. Program. 141, 135
    (2013), nonsmooth BFGS): a trial is accepted when it satisfies Armijo,
    L(w + a d) <= L(w) + ls_c1 a g.d, and weak Wolfe, g(w + a d).d >=
    ls_c2 g.d. Armijo fails: hi = a; Wolfe fails: lo = a (its loss and
    gradient kept); next a = (lo + hi) / 2, or 2 a while hi is unset. Steps
    that cross a ReLU kink are accepted, so the pairs (s, y) see the jump of
    the gradient. Once |(hi - lo) d| < ls_min_step max(|w|, 1) the search
    takes lo if lo > 0 (Armijo holds there); else it restarts along -g
    (pairs dropped) or, if already along -g, marks the member stuck: no
    step satisfies Armijo at this precision (:func:`stop_code`).
    Accepted: the pair is stored if s.y > 0; next direction -H g'
    (:func:`lbfgs_direction`) with a = 1.
    """
    c, a = s.opt_state, s.lr
    w, unravel = ravel_pytree(s.params)
    g, d = c["g"], c["d"]
    loss1, nd1, _, g1 = evaluate(unravel(w + a * d), s.params0, data)
    g1 = ravel_pytree(g1)[0]
    gd = jnp.dot(g, d)
    finite = jnp.isfinite(loss1) & jnp.all(jnp.isfinite(g1))
    armijo = finite & (loss1 <= c["loss"] + cfg.ls_c1 * a * gd) & (gd < 0)
    wolfe = jnp.dot(g1, d) >= cfg.ls_c2 * gd
    lo, hi = c["lo"], c["hi"]
    ok = armijo & wolfe
    hi = jnp.where(~armijo, a, hi)
    raise_lo = armijo & ~wolfe
    lo_c = {k: jnp.where(raise_lo, v1, c["lo_" + k]) for k, v1 in
            (("g", g1), ("loss", loss1), ("n_delta", nd1))}
    lo = jnp.where(raise_lo, a, lo)
    a_next = jnp.where(jnp.isfinite(hi), 0.5 * (lo + hi), 2.0 * a)
    dn = jnp.linalg.norm(d)
    collapsed = (jnp.isfinite(hi) &
                 ((hi - lo) * dn < cfg.ls_min_step * jnp.maximum(jnp.linalg.norm(w), 1.0)))
    take_lo = ~ok & collapsed & (lo > 0)
    fail = ~ok & collapsed & (lo <= 0)
    # the accepted point: the trial, or lo when the bracket collapsed
    acc = ok | take_lo
    a_acc = jnp.where(ok, a, lo)
    g_new = jnp.where(ok, g1, lo_c["g"])
    loss_new = jnp.where(ok, loss1, lo_c["loss"])
    nd_new = jnp.where(ok, nd1, lo_c["n_delta"])
    sv, yv = a_acc * d, g_new - g
    sy = jnp.dot(sv, yv)
    store = acc & (sy > 1e-12 * jnp.linalg.norm(sv) * jnp.linalg.norm(yv)) & (sy > 0)
    i = c["k"] % cfg.lbfgs_memory
    S = jnp.where(store, c["S"].at[i].set(sv), c["S"])
    Y = jnp.where(store, c["Y"].at[i].set(yv), c["Y"])
    rho = jnp.where(store, c["rho"].at[i].set(1.0 / jnp.where(store, sy, 1.0)), c["rho"])
    k = c["k"] + store.astype(jnp.int32)
    d_acc = lbfgs_direction(g_new, S, Y, rho, k)
    descent = jnp.dot(g_new, d_acc) < 0
    d_acc = jnp.where(descent, d_acc, -g_new)
    k_acc = jnp.where(descent, k, 0)
    # after a quasi-Newton step a = 1; along -g (no pair) the accepted a
    a0_acc = jnp.where(k_acc > 0, 1.0, a_acc)
    # a failed search: restart along -g with the last gamma (else lr), or stuck
    gamma = lbfgs_lib.scaling(c["S"], c["Y"], c["rho"], c["k"], default=cfg.lr)
    restart = fail & ~c["sd"]
    stuck = c["stuck"] | (fail & c["sd"])
    reset = acc | restart            # a new line search starts
    inf = jnp.full_like(hi, jnp.inf)
    new_c = {
        "g": jnp.where(acc, g_new, g),
        "loss": jnp.where(acc, loss_new, c["loss"]),
        "n_delta": jnp.where(acc, nd_new, c["n_delta"]),
        "d": jnp.where(acc, d_acc, jnp.where(restart, -g, d)),
        "S": S, "Y": Y, "rho": rho,
        "k": jnp.where(acc, k_acc, jnp.where(restart, 0, c["k"])).astype(jnp.int32),
        "sd": jnp.where(acc, k_acc == 0, c["sd"] | restart),
        "stuck": jnp.where(acc, False, stuck),
        "lo": jnp.where(reset, 0.0, lo).astype(lo.dtype),
        "hi": jnp.where(reset, inf, hi),
        "lo_g": lo_c["g"], "lo_loss": lo_c["loss"], "lo_n_delta": lo_c["n_delta"],
    }
    a_new = jnp.where(acc, a0_acc, jnp.where(restart, gamma,
                                             jnp.where(stuck, a, a_next)))
    new_w = jnp.where(acc, w + a_acc * d, w)
    return unravel(new_w), new_c, a_new.astype(s.lr.dtype)

  def step(t, s: TrainState, data) -> TrainState:
    running = s.code == RUNNING
    g, loss, nd, checked = grad_and_check(s, t, data)
    gnorm2 = _tree_sum(jnp.square, g)
    loss0 = jnp.where(t == 0, loss, s.loss0)
    best = jnp.where(checked, jnp.minimum(s.best, loss), s.best)
    stuck = s.opt_state["stuck"] if opt == "lbfgs" else False
    code = stop_code(t, running, loss, loss0, jnp.isfinite(gnorm2), nd, checked,
                     best, s.jam_ref, s.lr, cfg, stuck)
    code = jnp.where(running, code, s.code)
    update = running & (code == RUNNING)
    window = checked & (t > 0) & (t % cfg.jam_window == 0)
    jam_ref = jnp.where(window | (t == 0), best, s.jam_ref)

    new_params, opt_state, lr = advance(s, g, gnorm2, t, data)
    plateau_ref = s.plateau_ref
    if cfg.schedule == "plateau":
      boundary = checked & (t > 0) & (t % cfg.plateau_patience == 0)
      no_gain = best > (1.0 - cfg.plateau_rtol) * s.plateau_ref
      lr = jnp.where(boundary & no_gain,
                     jnp.maximum(s.lr * cfg.decay_factor, cfg.min_lr), s.lr)
      plateau_ref = jnp.where(boundary | (t == 0), best, s.plateau_ref)

    keep = lambda new, old: jax.tree_util.tree_map(
        lambda a, b: jnp.where(update, a, b), new, old)
    kept = lambda new, old: jnp.where(running, new, old)
    return TrainState(
        params=keep(new_params, s.params), params0=s.params0,
        opt_state=keep(opt_state, s.opt_state),
        lr=jnp.where(update, lr, s.lr), code=code,
        stop_step=kept(t, s.stop_step).astype(jnp.int32),
        loss=kept(loss, s.loss), n_delta=kept(nd, s.n_delta),
        loss0=kept(loss0, s.loss0), best=kept(best, s.best),
        jam_ref=kept(jam_ref, s.jam_ref),
        plateau_ref=kept(plateau_ref, s.plateau_ref), key=s.key)

  def chunk_fn(state: TrainState, data, t0, n: int) -> TrainState:
    def body(carry, _):
      s, t = carry
      return (step(t, s, data), t + 1), None
    unroll = max(1, min(n, cfg.scan_unroll or UNROLL.get(jax.default_backend(), 1)))
    (state, _), _ = jax.lax.scan(body, (state, jnp.asarray(t0, jnp.int32)),
                                 None, length=n, unroll=unroll)
    return state

  def outputs_fn(params, params0, data):
    return f_fn(params, params0, data.x_train), f_fn(params, params0, data.x_test)

  def measure_fn(state: TrainState, data) -> dict:
    return _measure(state, data)[0]

  def _measure(state: TrainState, data):
    f_tr, f_te = outputs_fn(state.params, state.params0, data)
    delta = losses.margins(f_tr, data.y_train, eps)
    nan = jnp.full((), jnp.nan, f_tr.dtype)
    has_test = data.x_test.shape[0] > 0
    meas = {
        "loss": scaled_loss(delta),
        "n_delta": n_delta_of(delta),
        # The largest Delta tells a jammed member (Delta = O(1)) from one stuck
        # with a few points at rounding level (Delta ~ 1e-16 epsilon).
        "max_delta": jnp.max(delta),
        "train_error": jnp.mean((data.y_train * f_tr <= 0).astype(f_tr.dtype)),
        "test_error": (jnp.mean((data.y_test * f_te <= 0).astype(f_te.dtype))
                       if has_test else nan),
        "f2_train": jnp.mean(f_tr ** 2),
        "f2_test": jnp.mean(f_te ** 2) if has_test else nan,
        "w_dist": jnp.sqrt(_tree_sum(lambda a, b: jnp.square(a - b),
                                     state.params, state.params0)),
        "lr": state.lr,
    }
    return meas, delta > 0

  return Trainer(init_fn, chunk_fn, measure_fn, outputs_fn), _measure


def measurement_steps(max_steps: int, n_per_decade: int = 10) -> np.ndarray:
  """Log-spaced integer steps 0, 1, 2, ... up to and including ``max_steps``."""
  n = int(np.ceil(np.log10(max(max_steps, 1)) * n_per_decade)) + 1
  steps = np.unique(np.round(np.logspace(0, np.log10(max(max_steps, 1)), n)))
  return np.unique(np.concatenate([[0], steps, [max_steps]]).astype(np.int64))


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


def n_devices() -> int:
  """Local devices the members are sharded over (1: no sharding)."""
  return jax.local_device_count()


_CLUSTER_VARS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def cluster_detected(env=None) -> bool:
  """Whether the environment describes a multi-process job.

  True when ``JAX_COORDINATOR_ADDRESS`` is set, or ``SLURM_NTASKS`` or
  ``OMPI_COMM_WORLD_SIZE`` is an integer > 1.
  """
  env = os.environ if env is None else env
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return True
  for name in _CLUSTER_VARS:
    try:
      if int(env.get(name, "1")) > 1:
        return True
    except ValueError:
      continue
  return False


def maybe_initialize_distributed(force: bool = False, env=None) -> bool:
  """Calls ``jax.distributed.initialize()`` in a cluster job (or if forced).

  Must run before any other jax call of the process. jax reads the
  coordinator, process count and id from SLURM, Open MPI or the
  ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``
  variables (docs/engine.md, "Several hosts").

  Returns:
    Whether it initialized.
  """
  if not (force or cluster_detected(env)):
    return False
  jax.distributed.initialize()
  return True


def default_group_size(n_members: int, work_per_member_step: float,
                       backend: str | None = None) -> int:
  """How many members to vmap together (the rest run group after group).

  On accelerators the whole ensemble is one vmapped program (then limited by
  :func:`memory_plan`). On CPU, batching pays off only while a member's step
  is small: past ~3e6 multiply-adds per member-step (P times N) one member
  already keeps the cores busy, and the batched matmuls of a vmap are slower
  than plain ones (docs/engine.md, benchmark "ensemble").
  """
  backend = backend or jax.default_backend()
  if backend != "cpu" or work_per_member_step < CPU_VMAP_WORK_LIMIT:
    return n_members
  return 1


CPU_VMAP_WORK_LIMIT = 3e6
# Share of the free memory the planner lets an ensemble use.
MEMORY_FRACTION = 0.8


def _fmt_bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
    if n < 1024 or unit == "EiB":
      return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
    n /= 1024
  return f"{n:.1f} EiB"


def _device_memory(backend: str) -> int | None:
  if backend == "cpu":
    from lossland import curvature
    return curvature.available_memory_bytes()
  try:
    stats = jax.local_devices(backend=backend)[0].memory_stats() or {}
  except (RuntimeError, ValueError):
    return None
  limit = stats.get("bytes_limit")
  if limit is None:
    return None
  return int(limit) - int(stats.get("bytes_in_use", 0))


def memory_plan(net_cfg: nets.NetConfig, cfg: TrainConfig, P: int, n_test: int,
                n_members: int, itemsize: int, backend: str | None = None,
                available: int | None = None) -> dict:
  """Bytes an ensemble needs and how many members fit in one vmapped group.

  Cheap and allocation-free (call it before building the data set). The
  estimate per member: params, initial params, gradient, the update and the
  optimizer's state (N floats each), the activations of the backward pass
  (P x width x depth, about three arrays: pre-activations, activations and
  their cotangents), the outputs of a measurement on P + n_test points, the
  histories, and the unsatisfied-point record if asked. The results of all
  members (initial and final params, histories) stay on the device.

  Args:
    net_cfg, cfg: the network and training configuration.
    P, n_test: training and test points.
    n_members: ensemble size K.
    itemsize: bytes per float (8 for float64).
    backend: default: jax's default backend.
    available: bytes free (default: the device's free memory; MemAvailable
      of /proc/meminfo on CPU).

  Returns:
    dict with ``bytes_per_member``, ``bytes_data``, ``bytes_results``,
    ``available``, ``usable`` (MEMORY_FRACTION of it) and ``group_size``
    (members that fit at once, at most n_members).

  Raises:
    ValueError: the data, the results or one member do not fit (one line).
  """
  backend = backend or jax.default_backend()
  P, n_test, K = int(P), int(n_test), int(n_members)
  N = nets.n_params(net_cfg)
  width = max(net_cfg.width, net_cfg.d, net_cfg.n_out) if net_cfg.depth else net_cfg.d
  opt_floats = {"adam": 2, "momentum": 1, "sgd": 0, "gradient_flow": 3,
                "fire": 2, "lbfgs": 5 + 2 * cfg.lbfgs_memory}[cfg.optimizer]
  n_meas = len(MEASUREMENTS)
  M = int(np.ceil(np.log10(max(cfg.max_steps, 1)) * cfg.n_log_per_decade)) + 3
  batch = min(cfg.batch_size, P) if cfg.batch_size else P
  acts = 3 * batch * width * max(net_cfg.depth, 1) + 4 * batch
  meas = 2 * (P + n_test) * width + 4 * (P + n_test)
  floats = (4 + opt_floats) * N + max(acts, meas) + (M + 1) * n_meas
  unsat = M * (-(-P // 8)) if cfg.record_unsat else 0
  per_member = floats * itemsize + unsat + 64
  results = K * ((2 * N + (M + 1) * n_meas) * itemsize + unsat + 16)
  data_bytes = (P + n_test) * (net_cfg.d + 1) * itemsize
  if available is None:
    available = _device_memory(backend)
  plan = {"bytes_per_member": int(per_member), "bytes_data": int(data_bytes),
          "bytes_results": int(results), "available": available,
          "usable": None, "group_size": K, "backend": backend}
  if available is None:
    return plan
  usable = int(MEMORY_FRACTION * available)
  plan["usable"] = usable
  where = "the device has" if backend != "cpu" else "the machine has"
  shape = f"P={P}, width={net_cfg.width}, depth={net_cfg.depth}, N={N}"
  if data_bytes > usable:
    raise ValueError(f"the data need {_fmt_bytes(data_bytes)} (P={P}, "
                     f"n_test={n_test}, d={net_cfg.d}), {where} "
                     f"{_fmt_bytes(available)} free")
  if data_bytes + per_member > usable:
    raise ValueError(f"one member needs {_fmt_bytes(per_member)} ({shape}), "
                     f"{where} {_fmt_bytes(available)} free")
  if data_bytes + per_member + results > usable:
    raise ValueError(f"the results of {K} members need {_fmt_bytes(results)} "
                     f"({shape}), {where} {_fmt_bytes(available)} free")
  plan["group_size"] = int(max(1, min(K, (usable - data_bytes - results)
                                      // per_member)))
  return plan


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
    n_compiles: number of distinct chunk shapes (group size, scan length)
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
  chunk: Callable        # (state, data, t0, n) -> state
  record: Callable       # (group, data, j) -> (group, n_running)
  compact: Callable      # (results, group, size) -> (results, group)
  finish: Callable       # (results, group, data) -> (results, (f_train, f_test))
  empty: Callable        # (group, K) -> Results of K members
  mesh: Any


@functools.lru_cache(maxsize=32)
def _compiled(net_cfg, loss_cfg, cfg, n_dev: int = 1) -> _Fns:
  """The jitted, vmapped functions of the driver, built once per config.

  jax caches compilations per function object; building the closures once
  per (hashable) config makes repeated ensembles (tests, sweeps, benchmarks)
  reuse them instead of recompiling.
  """
  trainer, measure = _make_trainer(net_cfg, loss_cfg, cfg)
  mesh = None
  if n_dev > 1:
    mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()[:n_dev]), ("m",))
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("m"))
    constrain = lambda tree: jax.lax.with_sharding_constraint(tree, rows)
  else:
    constrain = lambda tree: tree

  def init_group(keys, member, done, data, M, start=None):
    state = jax.vmap(trainer.init_fn, in_axes=(0, None, 0))(keys, data, start)
    G = member.shape[0]
    dtype = data.x_train.dtype
    # Padding rows are born stopped and recorded: computed, never reported.
    state = state._replace(code=jnp.where(done, MAX_STEPS, state.code).astype(jnp.int32))
    nan = jnp.full((G,), jnp.nan, dtype)
    n_bytes = -(-data.x_train.shape[0] // 8) if cfg.record_unsat else 0
    return constrain(Group(
        state=state, member=member, done=done,
        hist={m: jnp.full((G, M), jnp.nan, dtype) for m in MEASUREMENTS},
        final={m: nan for m in MEASUREMENTS},
        unsat=jnp.zeros((G, M if cfg.record_unsat else 0, n_bytes), jnp.uint8)))

  def chunk(state, data, t0, n):
    return jax.vmap(functools.partial(trainer.chunk_fn, n=n),
                    in_axes=(0, None, None))(state, data, t0)

  def record(group: Group, data, j):
    """Measures every row; running rows write column j, new stops their finals."""
    meas, unsat = jax.vmap(measure, in_axes=(0, None))(group.state, data)
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

  def empty(group: Group, K: int) -> Results:
    """K rows shaped like one row of the group: NaN floats, zero ints."""
    return jax.tree_util.tree_map(
        lambda a: (jnp.full((K,) + a.shape[1:], jnp.nan, a.dtype)
                   if jnp.issubdtype(a.dtype, jnp.floating)
                   else jnp.zeros((K,) + a.shape[1:], a.dtype)), _results_of(group))

  outs = jax.vmap(trainer.outputs_fn, in_axes=(0, 0, None))

  def finish(results: Results, group: Group, data):
    """Stores every row of a finished group; the final outputs of all members."""
    results = scatter(results, group, jnp.ones_like(group.done))
    return results, outs(results.params, results.params0, data)

  # Donating the driver's state lets accelerators update it in place; the
  # CPU client cannot use donations (it would only warn).
  cpu = jax.default_backend() == "cpu"
  donate = lambda *i: () if cpu else i
  return _Fns(
      trainer=trainer,
      init_group=jax.jit(init_group, static_argnums=4),
      chunk=jax.jit(chunk, static_argnums=3, donate_argnums=donate(0)),
      record=jax.jit(record, donate_argnums=donate(0)),
      # compact returns a smaller group and finish none: only the results
      # buffer can be reused (donating the group would only warn).
      compact=jax.jit(compact, static_argnums=2, donate_argnums=donate(0)),
      finish=jax.jit(finish, donate_argnums=donate(0)),
      empty=jax.jit(empty, static_argnums=1), mesh=mesh)


# Member index of padding rows: larger than any ensemble (int32).
_MEMBER_SENTINEL = np.iinfo(np.int32).max


def _fingerprint(seeds, data, net_cfg, loss_cfg, cfg, group_size, compact, n_dev,
                 start=None):
  h = hashlib.sha1()
  h.update(repr(("engine-2", seeds.tolist(), net_cfg, loss_cfg, _cfg_repr(cfg), group_size,
                 compact, n_dev, str(data.x_train.dtype))).encode())
  for a in data:
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
                   checkpoint_path: str | None = None,
                   checkpoint_every: float = 60.0,
                   start=None) -> EnsembleResult:
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
    compact: drop stopped members between chunks (padded to bucket sizes).
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

  Returns:
    An :class:`EnsembleResult`.
  """
  seeds = np.asarray(seeds, np.int64).reshape(-1)
  K = len(seeds)
  if K == 0:
    raise ValueError("need at least one seed")
  n_dev = n_devices()
  fns = _compiled(net_cfg, loss_cfg, cfg, n_dev)
  dtype = data.x_train.dtype
  if group_size is None:
    plan = memory_plan(net_cfg, cfg, data.P, data.x_test.shape[0], K,
                       np.dtype(dtype).itemsize)
    group_size = min(default_group_size(K, float(data.P) * nets.n_params(net_cfg)),
                     plan["group_size"])
  group_size = max(1, min(int(group_size), K))
  buckets = _buckets(group_size, n_dev)

  sched = measurement_steps(cfg.max_steps, cfg.n_log_per_decade)
  M = len(sched)
  sched_index = {int(s): i for i, s in enumerate(sched)}
  bounds = sorted(set(int(s) for s in sched)
                  | set(range(0, cfg.max_steps + 1, cfg.chunk_steps))
                  | {cfg.max_steps + 1})

  if n_dev > 1:
    shard = jax.sharding.NamedSharding(fns.mesh, jax.sharding.PartitionSpec("m"))
    repl = jax.sharding.NamedSharding(fns.mesh, jax.sharding.PartitionSpec())
    place_rows = lambda tree: jax.device_put(tree, shard)
    place_all = lambda tree: jax.device_put(tree, repl)
  else:
    place_rows = place_all = lambda tree: jax.device_put(tree)
  data = place_all(data)

  if start is not None:
    start = jax.tree_util.tree_map(lambda a: np.asarray(a, dtype), tuple(start))
    if any(a.shape[0] != K for a in jax.tree_util.tree_leaves(start)):
      raise ValueError(f"start must have a leading axis of {K} members")

  def start_rows(rows):
    if start is None:
      return None
    return place_rows(jax.tree_util.tree_map(lambda a: jnp.asarray(a[rows]), start))

  def new_group(first: int, G: int) -> Group:
    members = np.arange(first, min(first + group_size, K))
    pad = G - len(members)
    member = np.concatenate([members, np.full(pad, _MEMBER_SENTINEL)]).astype(np.int32)
    done = np.arange(G) >= len(members)
    row_seeds = np.concatenate([seeds[members], np.full(pad, seeds[members[0]])])
    rows = np.concatenate([members, np.full(pad, members[0])])
    keys = place_rows(_keys(row_seeds))
    return fns.init_group(keys, place_rows(jnp.asarray(member)),
                          place_rows(jnp.asarray(done)), data, M, start_rows(rows))

  def new_group_shape(G):
    return fns.init_group(_keys(np.zeros(G, np.int64)),
                          jnp.zeros(G, jnp.int32), jnp.zeros(G, bool), data, M,
                          start_rows(np.zeros(G, np.int64)))

  shapes_seen = set()
  first = new_group(0, buckets[-1])  # also the template of the results
  results = place_all(fns.empty(first, K))
  start_g0, resume = 0, None
  fingerprint, last_save = None, time.time()
  if checkpoint_path:
    fingerprint = _fingerprint(seeds, data, net_cfg, loss_cfg, cfg, group_size,
                               compact, n_dev, start)
    resume = _read_checkpoint(checkpoint_path, fingerprint)
    if resume is not None:
      meta = resume
      G = int(meta["G"])
      like = {"results": results}
      if G:
        like["group"] = new_group_shape(G)
      tree, _ = ckpt_lib.restore(checkpoint_path, like)
      results = place_all(tree["results"])
      start_g0 = int(meta["g0"])
      resume = (place_rows(tree["group"]), int(meta["t"])) if G else None

  done_before = int(start_g0)
  for g0 in range(start_g0, K, group_size):
    n_real = min(group_size, K - g0)
    if resume is not None:
      group, t = resume
      resume = None
    elif g0 == 0 and first is not None:
      group, t, first = first, 0, None
    else:
      group, t = new_group(g0, buckets[-1] if n_real == group_size else
                           min(b for b in buckets if b >= n_real)), 0
    for b in bounds[1:]:
      if b <= t:
        continue
      G = int(group.member.shape[0])
      state = group.state
      for n in scan_lengths(b - t, cfg.chunk_steps):
        shapes_seen.add((G, n))
        state = fns.chunk(state, data, jnp.int32(t), n)
        t += n
      j = sched_index.get(b, M) if b <= cfg.max_steps else M
      group, n_running = fns.record(group._replace(state=state), data, jnp.int32(j))
      n_running = int(n_running)  # the one device -> host transfer of a chunk
      if progress_fn is not None:
        progress_fn(min(t, cfg.max_steps), cfg.max_steps, n_running,
                    done_before + n_real - n_running, K)
      if n_running == 0:
        break
      if compact:
        size = min(s for s in buckets if s >= n_running)
        if size < G:
          results, group = fns.compact(results, group, size)
      if checkpoint_path and time.time() - last_save >= checkpoint_every:
        _write_checkpoint(checkpoint_path, fingerprint,
                          {"results": results, "group": group},
                          g0=g0, t=t, G=int(group.member.shape[0]))
        last_save = time.time()
    results, outputs = fns.finish(results, group, data)
    done_before += n_real
    if checkpoint_path and g0 + group_size < K:
      _write_checkpoint(checkpoint_path, fingerprint, {"results": results},
                        g0=g0 + group_size, t=0, G=0)
      last_save = time.time()

  res, (f_train, f_test) = jax.device_get((results, outputs))
  history = {k: np.asarray(v, np.float64) for k, v in res.hist.items()}
  final = {k: np.asarray(v, np.float64) for k, v in res.final.items()}
  running = ~np.isnan(history["loss"])
  unsat = None
  if cfg.record_unsat:
    unsat = np.unpackbits(np.asarray(res.unsat), axis=-1,
                          count=data.P).astype(bool)
    unsat &= running[:, :, None]
  return EnsembleResult(
      seeds=seeds, params=res.params, params0=res.params0,
      stop_code=np.asarray(res.code, np.int64), steps=np.asarray(res.steps, np.int64),
      final=final, history_step=sched, history=history,
      f_train=np.asarray(f_train), f_test=np.asarray(f_test),
      group_size=group_size, n_compiles=len(shapes_seen), n_devices=n_dev,
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
