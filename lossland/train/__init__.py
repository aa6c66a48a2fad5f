"""The one training loop of lossland: chunked, jitted, vmapped, per-member stops.

Structure (CONVENTIONS.md; design notes and measurements in docs/engine.md).
The package's modules: :mod:`~lossland.train.stop` (the stop rule),
:mod:`~lossland.train.trainer` (TrainConfig and the per-member step over a
minimizer of :mod:`lossland.optim`), :mod:`~lossland.train.ensemble` (the
driver), :mod:`~lossland.train.plan` (memory and devices); every public name
is importable from ``lossland.train``.

* :func:`make_trainer` returns pure functions for **one** network: ``init_fn``,
  ``chunk_fn`` (n steps, no host sync inside: a ``lax.scan`` for a static
  n, a while loop for a traced one), ``measure_fn`` and ``outputs_fn``.
  They are written per member.
* :func:`train_ensemble` is the host-side driver. Its state is a small pytree
  on the device(s): the running group (:class:`Group`: the members'
  :class:`TrainState`, their histories and final measurements, written inside
  jitted code) and the ensemble's results (:class:`Results`, one row per
  member). Between two measurement steps the driver dispatches one chunk of
  a traced length on the CPU, or on accelerators a few scans whose lengths
  are powers of :data:`SCAN_BASE` (known trip counts, few compilations;
  :func:`static_scans`), then :func:`record` measures every member on
  device and returns the number still running: **one device-to-host
  transfer per chunk**, whatever the number of members K. Stopped members are dropped by a
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

from lossland.optim.lbfgs import direction as lbfgs_direction
from lossland.optim.schedules import SCHEDULES
from lossland.train.ensemble import (
    SCAN_BASE, EnsembleResult, Group, Results, _buckets, _cfg_repr, _compiled,
    _fingerprint, _keys, _LATE_FIELDS, _MEMBER_SENTINEL, _read_checkpoint,
    _write_checkpoint, scan_lengths, static_scans, train_ensemble)
from lossland.train.plan import (
    CPU_VMAP_WORK_LIMIT, MEMORY_FRACTION, _device_memory, _fmt_bytes,
    cluster_detected, default_group_size, maybe_initialize_distributed,
    memory_plan, n_devices)
from lossland.train.stop import (
    DIVERGED, JAMMED, MAX_STEPS, RUNNING, SAT, STOP_REASONS, StopRule,
    final_lr_level, stop_code)
from lossland.train.trainer import (
    MEASUREMENTS, OPTIMIZERS, UNROLL, Trainer, TrainConfig, TrainState,
    _make_trainer, loss_scale, make_trainer, measurement_steps, member_keys)
from lossland.train import protocol
from lossland.train.protocol import (Stage, ProtocolResult, StageRecord, chain,
                                     continue_stage, run_protocol)
