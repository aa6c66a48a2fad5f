"""Basin-hopping (Wales & Doye, J. Phys. Chem. A 101, 5111, 1997), many chains at once.

One step: perturb the current minimum, quench, accept by Metropolis at temperature
``T`` (held in the state, so a host driver can calibrate it and a resumed run keeps
it); every ``adjust_interval`` steps the step size is scaled by ``adjust_factor``
towards an acceptance ratio ``target_accept`` (pele's ``AdaptiveStepsize``). The step
function is written for one chain; ``run_fn`` scans it over steps and the caller vmaps
over chains. Every quench is returned so the host can put each distinct minimum in
the database.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lossland.landscape.minimize import MinimizeResult

Array = Any


class BHState(NamedTuple):
  """State of one basin-hopping chain.

  Attributes:
    x: current (accepted) minimum ``[D]``.
    energy: its energy.
    step_size: current perturbation size.
    n_accept: acceptances since the last step-size adjustment.
    n_trial: trials since the last adjustment.
    n_step: total steps taken.
    best_x, best_energy: lowest minimum seen by this chain.
    temperature: Metropolis temperature T of this chain (energy units).
  """
  x: Array
  energy: Array
  step_size: Array
  n_accept: Array
  n_trial: Array
  n_step: Array
  best_x: Array
  best_energy: Array
  temperature: Array


class BHRecord(NamedTuple):
  """What one basin-hopping step produced (stacked over steps by ``run_fn``)."""
  x: Array  # quenched coordinates [D]
  energy: Array
  grad_rms: Array
  converged: Array
  accepted: Array


def make_basin_hopping(quench_fn: Callable[[Array], MinimizeResult],
                       perturb_fn: Callable[[Array, Array, Array], Array],
                       *,
                       temperature: float = 1.0,
                       target_accept: float = 0.5,
                       adjust_interval: int = 10,
                       adjust_factor: float = 0.9):
  """Builds basin-hopping for one chain.

  Args:
    quench_fn: ``x [D] -> MinimizeResult`` (e.g. from :func:`make_lbfgs`).
    perturb_fn: ``(key, x [D], step_size) -> x' [D]``.
    temperature: default Metropolis temperature T (energy units) of ``init_fn``.
    target_accept: acceptance ratio the adaptive step size aims at.
    adjust_interval: steps between step-size adjustments.
    adjust_factor: multiplicative factor (< 1) of one adjustment.

  Returns:
    ``(init_fn, step_fn, run_fn)``:
      ``init_fn(x0, step_size, temperature=temperature) -> (BHState, BHRecord)``
      quenches ``x0``;
      ``step_fn(state, key) -> (state, BHRecord)``;
      ``run_fn(state, key, n_steps) -> (state, BHRecord stacked [n_steps, ...])``,
      with ``n_steps`` static. Step ``t`` uses ``jax.random.fold_in(key, n_step)``, so
      running 2 x 10 steps equals running 20.
  """

  def init_fn(x0, step_size, temperature=temperature):
    res = quench_fn(x0)
    dtype = res.x.dtype
    state = BHState(x=res.x, energy=res.energy, step_size=jnp.asarray(step_size, dtype),
                    n_accept=jnp.asarray(0), n_trial=jnp.asarray(0), n_step=jnp.asarray(0),
                    best_x=res.x, best_energy=res.energy,
                    temperature=jnp.asarray(temperature, dtype))
    rec = BHRecord(x=res.x, energy=res.energy, grad_rms=res.grad_rms,
                   converged=res.converged, accepted=jnp.asarray(True))
    return state, rec

  def step_fn(state, key):
    key = jax.random.fold_in(key, state.n_step)
    k_move, k_acc = jax.random.split(key)
    res = quench_fn(perturb_fn(k_move, state.x, state.step_size))
    de = res.energy - state.energy
    u = jax.random.uniform(k_acc, (), res.energy.dtype)
    metropolis = (de <= 0) | (u < jnp.exp(-jnp.maximum(de, 0.0) / state.temperature))
    # An unconverged quench is not a minimum: never move the chain onto it.
    accept = metropolis & res.converged & jnp.isfinite(res.energy)
    n_accept = state.n_accept + accept
    n_trial = state.n_trial + 1
    adjust = n_trial >= adjust_interval
    ratio = n_accept / jnp.maximum(n_trial, 1)
    new_step = jnp.where(ratio > target_accept, state.step_size / adjust_factor,
                         state.step_size * adjust_factor)
    step_size = jnp.where(adjust, new_step, state.step_size)
    better = accept & (res.energy < state.best_energy)
    new_state = BHState(
        x=jnp.where(accept, res.x, state.x),
        energy=jnp.where(accept, res.energy, state.energy),
        step_size=step_size,
        n_accept=jnp.where(adjust, 0, n_accept),
        n_trial=jnp.where(adjust, 0, n_trial),
        n_step=state.n_step + 1,
        best_x=jnp.where(better, res.x, state.best_x),
        best_energy=jnp.where(better, res.energy, state.best_energy),
        temperature=state.temperature)
    rec = BHRecord(x=res.x, energy=res.energy, grad_rms=res.grad_rms,
                   converged=res.converged, accepted=accept)
    return new_state, rec

  def run_fn(state, key, n_steps):
    def body(s, _):
      return step_fn(s, key)
    return lax.scan(body, state, None, length=n_steps)

  return init_fn, step_fn, run_fn
