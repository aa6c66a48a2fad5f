"""The per-member trainer: one network's init, chunk of steps and measurements.

:func:`make_trainer` returns pure functions for **one** network (package
docstring, :mod:`lossland.train`); the ensemble driver vmaps them. A step is

  evaluation at params_t (the minimizer's ``current``) -> the stop rule
  (:func:`lossland.train.stop.stop_code`) -> the minimizer's ``update``

with the minimizer one of :mod:`lossland.optim`, built from the flat
:class:`TrainConfig` (:meth:`TrainConfig.minimizer_config`).
"""
import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lossland import data as data_lib
from lossland import losses
from lossland import nets
from lossland import optim
from lossland.optim import base as optim_base
from lossland.optim import first_order, schedules
from lossland.optim.schedules import SCHEDULES
from lossland.train.stop import RUNNING, StopRule, stop_code

OPTIMIZERS = first_order.NAMES + ("gradient_flow", "fire", "lbfgs")
MEASUREMENTS = ("loss", "n_delta", "max_delta", "train_error", "test_error",
                "f2_train", "f2_test", "w_dist", "lr")

# lax.scan unroll factor per backend (docs/engine.md: tuned on CPU; on GPU a
# moderate unroll lets XLA fuse the step's elementwise tail across steps).
UNROLL = {"cpu": 1, "gpu": 4, "cuda": 4, "rocm": 4, "tpu": 4}

# The minimizers' own configs hold the defaults of TrainConfig's flat fields.
_GF, _FIRE, _LBFGS = optim.GradientFlowConfig(), optim.FireConfig(), optim.LBFGSConfig()


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
  max_dgrad: float = _GF.max_dgrad
  max_dout: float = _GF.max_dout
  dt_grow: float = _GF.dt_grow
  dt_shrink: float = _GF.dt_shrink
  dt_max: float = _GF.dt_max
  dt_min: float = _GF.dt_min
  fire_n_min: int = _FIRE.n_min
  fire_f_inc: float = _FIRE.f_inc
  fire_f_dec: float = _FIRE.f_dec
  fire_alpha_start: float = _FIRE.alpha_start
  fire_f_alpha: float = _FIRE.f_alpha
  lbfgs_memory: int = _LBFGS.memory
  ls_c1: float = _LBFGS.c1
  ls_c2: float = _LBFGS.c2
  ls_min_step: float = _LBFGS.min_step
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

  def stop_rule(self) -> StopRule:
    """The fields of the stop rule, as a :class:`StopRule`."""
    return StopRule(**{f.name: getattr(self, f.name)
                       for f in dataclasses.fields(StopRule)})

  def schedule_config(self) -> schedules.Schedule:
    """The learning-rate schedule, as a :class:`lossland.optim.Schedule`."""
    return schedules.Schedule(
        kind=self.schedule, lr=self.lr, decay_every=self.decay_every,
        decay_factor=self.decay_factor, plateau_patience=self.plateau_patience,
        plateau_rtol=self.plateau_rtol, min_lr=self.min_lr)

  def minimizer_config(self):
    """The optimizer's own config (:mod:`lossland.optim`) from the flat fields."""
    return _MINIMIZER_CONFIGS[self.optimizer](self)


_MINIMIZER_CONFIGS = {
    **{name: (lambda cfg, name=name: optim.FirstOrderConfig(
        name=name, schedule=cfg.schedule_config(), momentum=cfg.momentum))
       for name in first_order.NAMES},
    "gradient_flow": lambda cfg: optim.GradientFlowConfig(
        lr=cfg.lr, max_dgrad=cfg.max_dgrad, max_dout=cfg.max_dout,
        dt_grow=cfg.dt_grow, dt_shrink=cfg.dt_shrink, dt_max=cfg.dt_max,
        dt_min=cfg.dt_min),
    # FIRE's dt_max defaults to 10 lr
    "fire": lambda cfg: optim.FireConfig(
        dt_max=cfg.dt_max if cfg.dt_max > 0 else 10.0 * cfg.lr,
        n_min=cfg.fire_n_min, f_inc=cfg.fire_f_inc, f_dec=cfg.fire_f_dec,
        alpha_start=cfg.fire_alpha_start, f_alpha=cfg.fire_f_alpha),
    "lbfgs": lambda cfg: optim.LBFGSConfig(
        lr=cfg.lr, memory=cfg.lbfgs_memory, c1=cfg.ls_c1, c2=cfg.ls_c2,
        min_step=cfg.ls_min_step),
}


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
  chunk_fn: Callable     # (state, data, t0, n) -> state: steps t0 .. t0+n-1
  measure_fn: Callable   # (state, data) -> dict of scalars (MEASUREMENTS)
  outputs_fn: Callable   # (params, params0, data) -> (f_train [P], f_test [n_test])


def member_keys(seed: int) -> tuple:
  """Named streams of a member: (k_init, k_train) from ``jax.random.key(seed)``."""
  k_init, k_train = jax.random.split(jax.random.key(seed))
  return k_init, k_train


def loss_scale(loss_cfg) -> float:
  """The loss prefactor (``LossConfig.scale``, 1906.08034's 1/alpha^2; 1 if absent)."""
  return float(getattr(loss_cfg, "scale", 1.0))


def make_trainer(net_cfg: nets.NetConfig, loss_cfg: losses.LossConfig,
                 cfg: TrainConfig) -> Trainer:
  """See :func:`_make_trainer` (which also returns the internal measure)."""
  return _make_trainer(net_cfg, loss_cfg, cfg)[0]


class _Objective(NamedTuple):
  """One member's training loss, built once per (net, loss, cfg, masked)."""
  init_net: Callable     # key -> params
  f_fn: Callable         # (params, params0, x) -> outputs
  eps: float
  masked: bool
  mean: Callable         # (values [P], y [P]) -> mean over the real points
  scaled_loss: Callable  # (delta, y) -> scale * mean ell(delta)
  n_delta_of: Callable   # (delta, y) -> int32 N_Delta over the real points
  loss_fn: Callable      # (params, params0, x, y) -> (loss, n_delta)
  evaluate: Callable     # (params, params0, data) -> (loss, n_delta, f_train, grad)


def _objective(net_cfg, loss_cfg, cfg: TrainConfig, masked: bool = False) -> _Objective:
  """The training loss ``scale * mean_mu ell(Delta_mu)``, Delta = epsilon - y f.

  ``masked``: the data are padded with points of label y = 0 (a grid of
  cells of different P trained as one program, :mod:`lossland.train.cells`):
  means, N_Delta and the outputs returned by ``evaluate`` count the real
  points (y != 0) only; padded points have zero loss, gradient and output.
  """
  init_net, apply_fn = nets.make_net(net_cfg, wgrad_split=cfg.wgrad_split,
                                     pad_to=cfg.pad_to)
  f_fn = nets.output_fn(apply_fn, cfg.subtract_init)
  ell, eps = loss_cfg.fn, loss_cfg.epsilon
  scale = loss_scale(loss_cfg)

  if masked:
    def mean(values, y):
      real = y != 0
      return jnp.sum(jnp.where(real, values, 0)) / jnp.sum(real)

    def n_delta_of(delta, y):
      return jnp.sum((delta > 0) & (y != 0)).astype(jnp.int32)
  else:
    def mean(values, y):
      del y
      return jnp.mean(values)

    # One definition of Delta and N_Delta (losses.margins, losses.n_unsatisfied).
    def n_delta_of(delta, y):
      del y
      return losses.n_unsatisfied(delta).astype(jnp.int32)

  def scaled_loss(delta, y):
    loss = mean(ell(delta), y)
    return loss if scale == 1.0 else scale * loss

  def loss_fn(params, params0, x, y):
    delta = losses.margins(f_fn(params, params0, x), y, eps)
    return scaled_loss(delta, y), n_delta_of(delta, y)

  def loss_out_fn(params, params0, x, y):
    f = f_fn(params, params0, x)
    delta = losses.margins(f, y, eps)
    if masked:
      f = jnp.where(y != 0, f, 0)
    return scaled_loss(delta, y), (n_delta_of(delta, y), f)

  def evaluate(params, params0, data):
    (loss, (nd, f)), g = jax.value_and_grad(loss_out_fn, has_aux=True)(
        params, params0, data.x_train, data.y_train)
    return loss, nd, f, g

  return _Objective(init_net, f_fn, eps, masked, mean, scaled_loss, n_delta_of,
                    loss_fn, evaluate)


def _init_fn(obj: _Objective, minimizer, cfg: TrainConfig) -> Callable:
  def init_fn(key, data: data_lib.Dataset, start=None) -> TrainState:
    """The state at step 0; ``start = (params, params0)`` continues a network
    (e.g. an L-BFGS polish of an Adam run) instead of drawing its init."""
    k_init, k_train = jax.random.split(key)
    dtype = data.x_train.dtype
    cast = lambda tree: jax.tree_util.tree_map(lambda a: a.astype(dtype), tree)
    if start is None:
      params = params0 = cast(obj.init_net(k_init))
    else:
      params, params0 = cast(start[0]), cast(start[1])
    zero = jnp.zeros((), dtype)
    inf = jnp.full((), jnp.inf, dtype)
    return TrainState(
        params=params, params0=params0,
        opt_state=minimizer.init(params, params0, data),
        lr=jnp.asarray(cfg.lr, dtype), code=jnp.int32(RUNNING),
        stop_step=jnp.int32(0), loss=zero, n_delta=jnp.int32(0), loss0=zero,
        best=inf, jam_ref=inf, plateau_ref=inf, key=k_train)

  return init_fn


def _gradient_provider(obj: _Objective, cfg: TrainConfig, s: TrainState, data):
  """``provide(params, t) -> (g, loss, n_delta, checked)``, the trainer's gradient.

  Full batch: the gradient, loss and N_Delta of the training set. With
  mini-batches: the gradient of a batch drawn from fold_in(key, t), and the
  full set's loss and N_Delta every ``check_every`` steps (the last check's
  otherwise).
  """
  x, y = data.x_train, data.y_train

  def provide(params, t):
    if cfg.batch_size == 0:
      (loss, nd), g = jax.value_and_grad(obj.loss_fn, has_aux=True)(
          params, s.params0, x, y)
      return g, loss, nd, True
    P = x.shape[0]
    idx = jax.random.choice(jax.random.fold_in(s.key, t), P,
                            (min(cfg.batch_size, P),), replace=False)
    g, _ = jax.grad(obj.loss_fn, has_aux=True)(params, s.params0, x[idx], y[idx])
    # t is unbatched, so under vmap this stays a conditional (mini-batch only).
    checked = (t % cfg.check_every) == 0
    loss, nd = jax.lax.cond(checked,
                            lambda: obj.loss_fn(params, s.params0, x, y),
                            lambda: (s.loss, s.n_delta))
    return g, loss, nd, checked

  return provide


def _step_fn(obj: _Objective, minimizer, cfg: TrainConfig) -> Callable:
  """step(t, state, data): evaluate at params_t, decide the stop, update."""
  rule = cfg.stop_rule()
  sched = cfg.schedule_config()

  def step(t, s: TrainState, data) -> TrainState:
    running = s.code == RUNNING
    g, loss, nd, checked = minimizer.current(
        s.params, s.params0, s.opt_state, _gradient_provider(obj, cfg, s, data), t)
    gnorm2 = optim_base.tree_sum(jnp.square, g)
    loss0 = jnp.where(t == 0, loss, s.loss0)
    best = jnp.where(checked, jnp.minimum(s.best, loss), s.best)
    code = stop_code(t, running, loss, loss0, jnp.isfinite(gnorm2), nd, checked,
                     best, s.jam_ref, s.lr, rule, minimizer.stuck(s.opt_state))
    code = jnp.where(running, code, s.code)
    update = running & (code == RUNNING)
    window = checked & (t > 0) & (t % cfg.jam_window == 0)
    jam_ref = jnp.where(window | (t == 0), best, s.jam_ref)

    new_params, opt_state, lr = minimizer.update(
        s.params, s.params0, s.opt_state, s.lr, g, gnorm2, t, data)
    plateau_ref = s.plateau_ref
    if sched.kind == "plateau":
      lr, plateau_ref = schedules.plateau_step(sched, s.lr, best, s.plateau_ref,
                                               checked, t)

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

  return step


def _measure_fn(obj: _Objective) -> Callable:
  """measure(state, data) -> (MEASUREMENTS dict, unsatisfied mask [P])."""
  def measure(state: TrainState, data):
    f_tr = obj.f_fn(state.params, state.params0, data.x_train)
    f_te = obj.f_fn(state.params, state.params0, data.x_test)
    y_tr, y_te = data.y_train, data.y_test
    delta = losses.margins(f_tr, y_tr, obj.eps)
    nan = jnp.full((), jnp.nan, f_tr.dtype)
    has_test = data.x_test.shape[0] > 0
    unsat = delta > 0
    if obj.masked:
      unsat = unsat & (y_tr != 0)
    meas = {
        "loss": obj.scaled_loss(delta, y_tr),
        "n_delta": obj.n_delta_of(delta, y_tr),
        # The largest Delta tells a jammed member (Delta = O(1)) from one stuck
        # with a few points at rounding level (Delta ~ 1e-16 epsilon).
        "max_delta": (jnp.max(jnp.where(y_tr != 0, delta, -jnp.inf)) if obj.masked
                      else jnp.max(delta)),
        "train_error": obj.mean((y_tr * f_tr <= 0).astype(f_tr.dtype), y_tr),
        "test_error": (obj.mean((y_te * f_te <= 0).astype(f_te.dtype), y_te)
                       if has_test else nan),
        "f2_train": obj.mean(f_tr ** 2, y_tr),
        "f2_test": obj.mean(f_te ** 2, y_te) if has_test else nan,
        "w_dist": jnp.sqrt(optim_base.tree_sum(lambda a, b: jnp.square(a - b),
                                               state.params, state.params0)),
        "lr": state.lr,
    }
    return meas, unsat

  return measure


def _make_trainer(net_cfg: nets.NetConfig, loss_cfg: losses.LossConfig,
                  cfg: TrainConfig, masked: bool = False) -> tuple:
  """Builds the per-member training functions.

  The training loss is ``scale * mean_mu ell(Delta_mu)`` with
  ``Delta = epsilon - y f`` and ``scale = getattr(loss_cfg, "scale", 1)``;
  the divergence reference and the measured "loss" use the same scaled loss.
  The minimizer is ``optim.make(cfg.minimizer_config(), ...)``. ``masked``:
  the data are padded with y = 0 points (:func:`_objective`).

  Returns:
    ``(trainer, measure)``: a :class:`Trainer` and the measurement that also
    returns the unsatisfied mask. ``chunk_fn(state, data, t0, n)`` runs steps
    t0 .. t0+n-1; ``t0`` is an unbatched int32. ``n`` a Python int gives a
    ``lax.scan`` of that known length (unrolled by ``scan_unroll``): one
    program per length. ``n`` a traced int32 gives a while loop: one program
    for every length (:func:`lossland.train.ensemble.static_scans` says which
    the driver uses). vmap it with ``in_axes=(0, None, None)`` over
    ``functools.partial(chunk_fn, n=n)``.
  """
  obj = _objective(net_cfg, loss_cfg, cfg, masked)
  minimizer = optim.make(cfg.minimizer_config(), optim.Objective(obj.evaluate))
  step = _step_fn(obj, minimizer, cfg)
  measure = _measure_fn(obj)

  def chunk_fn(state: TrainState, data, t0, n) -> TrainState:
    t0 = jnp.asarray(t0, jnp.int32)
    if isinstance(n, (int, np.integer)):
      def body(carry, _):
        s, t = carry
        return (step(t, s, data), t + 1), None
      unroll = max(1, min(int(n), cfg.scan_unroll or UNROLL.get(jax.default_backend(), 1)))
      (state, _), _ = jax.lax.scan(body, (state, t0), None, length=int(n), unroll=unroll)
      return state
    # a traced length: a while loop, the same steps in the same order
    return jax.lax.fori_loop(jnp.int32(0), jnp.asarray(n, jnp.int32),
                             lambda i, s: step(t0 + i, s, data), state)

  def outputs_fn(params, params0, data):
    return obj.f_fn(params, params0, data.x_train), obj.f_fn(params, params0, data.x_test)

  return (Trainer(_init_fn(obj, minimizer, cfg), chunk_fn,
                  lambda state, data: measure(state, data)[0], outputs_fn),
          measure)


def measurement_steps(max_steps: int, n_per_decade: int = 10) -> np.ndarray:
  """Log-spaced integer steps 0, 1, 2, ... up to and including ``max_steps``."""
  n = int(np.ceil(np.log10(max(max_steps, 1)) * n_per_decade)) + 1
  steps = np.unique(np.round(np.logspace(0, np.log10(max(max_steps, 1)), n)))
  return np.unique(np.concatenate([[0], steps, [max_steps]]).astype(np.int64))


