"""What every minimizer of the trainer is: a pair of pure per-member functions.

A :class:`Minimizer` is to the trainer what an optax ``GradientTransformation``
is to a training loop (optax/_src/base.py): functions, no state of its own.
Its state (``opt_state``) is a pytree of arrays that the trainer carries in
``TrainState`` and vmaps over members; the learning rate (or time step) stays
beside it in ``TrainState.lr``, where schedules and stop rules read it.

One step of the trainer (lossland.train.trainer) is:

  g, loss, n_delta, checked = minimizer.current(params, params0, opt_state, evaluate, t)
  ... the stop rule decides on (loss, n_delta, checked) ...
  params', opt_state', lr' = minimizer.update(params, params0, opt_state, lr, g, gnorm2, t, data)

``evaluate(params, t)`` is the trainer's gradient provider (full batch, or a
mini-batch plus a periodic full-set check). Minimizers that evaluate trial
points themselves (gradient flow, L-BFGS) cache the evaluation at the
accepted point in their state, and ``current`` returns it without a new
evaluation; the others call ``evaluate``. ``Objective.evaluate`` gives them
the full-set loss, N_Delta, outputs and gradient at any point.
"""
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class Objective(NamedTuple):
  """The training objective of one member, built by the trainer.

  Attributes:
    evaluate: ``(params, params0, data) -> (loss, n_delta, f_train, grad)`` on
      the full training set.
  """
  evaluate: Callable


class Minimizer(NamedTuple):
  """A per-member minimizer: pure functions, vmapped by the caller.

  Attributes:
    init: ``(params, params0, data) -> opt_state``.
    current: ``(params, params0, opt_state, evaluate, t) -> (grad, loss,
      n_delta, checked)`` at params_t; ``evaluate(params, t)`` returns the
      same tuple from the trainer's gradient provider.
    update: ``(params, params0, opt_state, lr, grad, grad_norm2, t, data) ->
      (params_{t+1}, opt_state, lr)``.
    stuck: ``opt_state -> bool``: no step lowers the loss at this precision
      (the stop rule then calls a member with N_Delta > 0 jammed).
  """
  init: Callable
  current: Callable
  update: Callable
  stuck: Callable


def evaluate_current(params, params0, opt_state, evaluate, t):
  """``Minimizer.current`` of minimizers that keep no evaluation: evaluate."""
  del params0, opt_state
  return evaluate(params, t)


def never_stuck(opt_state):
  del opt_state
  return False


def tree_sum(fn, *trees):
  """sum over leaves of jnp.sum(fn(*leaves))."""
  return sum(jnp.sum(fn(*leaves)) for leaves in
             zip(*(jax.tree_util.tree_leaves(t) for t in trees)))


def axpy(a, x, y):
  """y + a x on pytrees (a scalar)."""
  return jax.tree_util.tree_map(lambda xi, yi: yi + a * xi, x, y)
