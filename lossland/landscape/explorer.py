"""The landscape engine: basin-hopping → database → DNEB/HEF connect loop.

:func:`make_explorer` turns any jittable ``energy_fn(x [D]) -> []`` into a bundle of
jitted, vmapped pure functions (:class:`Explorer`). The host-side drivers
(:func:`basin_hopping`, :func:`add_minima`, :func:`local_connect`,
:func:`connect_database`) call them and write what they find to a
:class:`~lossland.landscape.database.Database`. Compilation happens once per shape
(batch size, D), so a whole study reuses a handful of executables.

Example (float64 is enabled by the caller)::

  jax.config.update('jax_enable_x64', True)
  energy_fn = potentials.lennard_jones(7)
  ex = make_explorer(energy_fn, ExplorerConfig(n_zero_modes=6),
                     modes_fn=potentials.rigid_body_modes(7),
                     perturb_fn=potentials.lj_perturb_fn(7))
  db = Database(':memory:')
  x0 = jax.vmap(lambda k: potentials.lj_random_configuration(k, 7, dtype=jnp.float64))(
      jax.random.split(jax.random.key(0), 8))
  basin_hopping(db, ex, jax.random.key(1), x0, n_steps=50)
  report = connect_database(db, ex, budget=20)
"""

import bisect
import dataclasses
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lossland.landscape import basinhopping as bh_lib
from lossland.landscape import potentials
from lossland.landscape.database import Database, norm_gap  # noqa: F401 (re-export)
from lossland.landscape.disconnectivity import UnionFind
from lossland.landscape.minimize import make_fire, make_lbfgs, vmap_chunk, vmap_chunked
from lossland.landscape.transition import (hessian_eigenvalues_fn, make_dneb, make_hef)

Array = Any


@dataclasses.dataclass(frozen=True)
class ExplorerConfig:
  """Settings of the engine (frozen, hashable).

  Attributes:
    gtol: RMS-gradient tolerance of minima and transition states in the database.
    bh_gtol: RMS-gradient tolerance of basin-hopping quenches (GMIN's SLOPPYCONV);
      minima are re-quenched to ``gtol`` before they enter the database.
    max_iter: maximum L-BFGS iterations per quench.
    lbfgs_memory, max_step, max_erise: L-BFGS settings (GMIN/pele style).
    temperature: basin-hopping Metropolis temperature, in energy units; ``None``
      (default) calibrates it from the energy scale of the landscape at the start
      of :func:`basin_hopping` (:func:`calibrate_temperature`: the median energy
      rise of a trial move is accepted with probability 1/2). Set it by hand to a
      fraction of the barriers you want the chains to cross.
    step_size: initial basin-hopping step, in coordinate units (then adapted to
      ``target_accept``); about the distance between neighbouring minima.
    target_accept, adjust_interval, adjust_factor: adaptive step size.
    evcut: eigenvalues with modulus below this count as zero modes in index checks.
    n_zero_modes: number of exact zero modes expected (6 for clusters, 0 for a
      regularised network loss).
    neb_images, neb_k, neb_gtol, neb_max_iter, neb_dt: DNEB settings.
    n_climb: highest band maxima refined by HEF per connect attempt.
    hef_gtol_factor: HEF stops at ``gtol * hef_gtol_factor``
      (1 = same tolerance as minima).
    hef_max_iter, n_lanczos, n_tangent, max_uphill: HEF settings.
    pushoff: displacement along ± the TS eigenvector before the quenches (retried
      once with ``4 * pushoff`` if the quenches fail or meet in one minimum).
    quench_batch: the one batch size of the host drivers' quenches and Hessian
      spectra (candidate minima, push-offs, TS candidates): every call is padded
      to it, so each executable compiles once (>= 2 * n_climb keeps all push-offs
      of an attempt in one call).
    vmap_chunk: members vmapped together in the batched quenches, basin-hopping
      chains and HEF runs: ``None`` (default) chooses by backend
      (:func:`~lossland.landscape.minimize.vmap_chunk`: chunks of 16 on CPU, where
      a large vmapped batch is slower than one quench at a time; the whole batch
      on an accelerator); 0 the whole batch; ``k > 0`` chunks of ``k``. Results
      agree up to rounding whatever the chunk.

  The energy tolerance for the identity of stationary points is the database's
  (``Database(energy_tol=...)``): one tolerance, used by the drivers as well.
  """
  gtol: float = 1e-8
  bh_gtol: float = 1e-5
  max_iter: int = 20000
  lbfgs_memory: int = 10
  max_step: float = 0.2
  max_erise: float = 1e-4
  temperature: Optional[float] = None
  step_size: float = 0.5
  target_accept: float = 0.5
  adjust_interval: int = 10
  adjust_factor: float = 0.9
  evcut: float = 1e-6
  n_zero_modes: int = 0
  neb_images: int = 12
  neb_k: float = 10.0
  neb_gtol: float = 1e-3
  neb_max_iter: int = 3000
  neb_dt: float = 0.01
  n_climb: int = 3
  hef_gtol_factor: float = 1.0
  hef_max_iter: int = 500
  n_lanczos: int = 40
  n_tangent: int = 10
  max_uphill: float = 0.1
  pushoff: float = 0.01
  quench_batch: int = 8
  vmap_chunk: Optional[int] = None


class Explorer(NamedTuple):
  """Jitted pure functions for one energy function (see :func:`make_explorer`).

  Attributes:
    config: the :class:`ExplorerConfig`.
    energy_fn: ``x [D] -> []`` (not jitted; for reference).
    quench: ``xs [B, D] -> MinimizeResult`` batched, to ``config.gtol`` (the
      batched functions run ``vmap_chunk`` members at a time, see
      ``ExplorerConfig``).
    fire_quench: ``xs [B, D] -> MinimizeResult`` batched FIRE, to ``config.gtol``.
    hessian_eigs: ``xs [B, D] -> [B, D]`` dense Hessian spectra.
    bh_init: ``(xs [C, D], step_size, temperature) -> (BHState, BHRecord)`` for C
      chains.
    bh_run: ``(state, keys [C], n_steps) -> (state, BHRecord [C, n_steps, ...])``.
    dneb: ``(x_a [D], x_b [D]) -> (images, energies, MinimizeResult)``.
    hef: ``(x0s [B, D], v0s [B, D]) -> HEFResult`` batched.
    align_fn: host ``(a, b) -> b'`` symmetry alignment of b onto a (or identity).
    distance_fn: host ``(a, b) -> float`` symmetry-invariant distance.
    distance_lower_bound: host ``(a, b) -> float`` with
      ``distance_lower_bound(a, b) <= distance_fn(a, b)``, or None: a cheap
      pre-screen that spares ``distance_fn`` (a Hungarian alignment for networks)
      for pairs that cannot be the closest.
    vmap_chunk: members vmapped together in ``quench``, ``fire_quench``,
      ``bh_init``, ``bh_run`` and ``hef``: ``config.vmap_chunk`` resolved for the
      backend (0: the whole batch).
  """
  config: ExplorerConfig
  energy_fn: Callable
  quench: Callable
  fire_quench: Callable
  hessian_eigs: Callable
  bh_init: Callable
  bh_run: Callable
  dneb: Callable
  hef: Callable
  align_fn: Callable
  distance_fn: Callable
  distance_lower_bound: Optional[Callable] = None
  vmap_chunk: int = 0


def make_explorer(energy_fn: Callable[[Array], Array],
                  config: ExplorerConfig = ExplorerConfig(), *,
                  perturb_fn: Optional[Callable] = None,
                  modes_fn: Optional[Callable] = None,
                  align_fn: Optional[Callable] = None,
                  distance_fn: Optional[Callable] = None,
                  distance_lower_bound: Optional[Callable] = None) -> Explorer:
  """Builds the engine for ``energy_fn``.

  Args:
    energy_fn: jittable ``x [D] -> []``.
    config: :class:`ExplorerConfig`.
    perturb_fn: basin-hopping move ``(key, x, step) -> x'``; default uniform.
    modes_fn: ``x -> [m, D]`` orthonormal zero modes projected out in HEF.
    align_fn: host ``(a, b) -> b'`` that maps ``b`` to its symmetry copy closest to
      ``a``; used to start DNEB between aligned end points. Default identity.
    distance_fn: host distance for pair selection; default Euclidean after
      ``align_fn``.
    distance_lower_bound: optional host ``(a, b) -> float``, never above
      ``distance_fn`` (e.g. :func:`norm_gap` for network symmetries); default
      ``distance_fn.lower_bound`` if that attribute exists.

  Returns:
    An :class:`Explorer`.
  """
  c = config
  chunk = vmap_chunk(c.vmap_chunk)
  vg = jax.value_and_grad(energy_fn)
  lbfgs = make_lbfgs(vg, gtol=c.gtol, max_iter=c.max_iter, memory=c.lbfgs_memory,
                     max_step=c.max_step, max_erise=c.max_erise)
  lbfgs_bh = make_lbfgs(vg, gtol=c.bh_gtol, max_iter=c.max_iter, memory=c.lbfgs_memory,
                        max_step=c.max_step, max_erise=c.max_erise)
  fire = make_fire(vg, gtol=c.gtol, max_iter=10 * c.max_iter, max_step=c.max_step)
  init_fn, _, run_fn = bh_lib.make_basin_hopping(
      lbfgs_bh, perturb_fn or potentials.uniform_perturb_fn(),
      temperature=1.0 if c.temperature is None else c.temperature,
      target_accept=c.target_accept, adjust_interval=c.adjust_interval,
      adjust_factor=c.adjust_factor)
  dneb = make_dneb(energy_fn, c.neb_images, k_spring=c.neb_k, gtol=c.neb_gtol,
                   max_iter=c.neb_max_iter, dt=c.neb_dt, dt_max=10 * c.neb_dt,
                   max_step=c.max_step)
  hef = make_hef(energy_fn, gtol=c.gtol * c.hef_gtol_factor, max_iter=c.hef_max_iter,
                 n_lanczos=c.n_lanczos, n_tangent=c.n_tangent, max_uphill=c.max_uphill,
                 modes_fn=modes_fn)
  if align_fn is None:
    def align_fn(a, b):
      return np.asarray(b)
  if distance_fn is None:
    def distance_fn(a, b):
      return float(np.linalg.norm(np.asarray(a) - align_fn(a, b)))

  return Explorer(
      config=c, energy_fn=energy_fn,
      quench=jax.jit(vmap_chunked(lbfgs, chunk)),
      fire_quench=jax.jit(vmap_chunked(fire, chunk)),
      hessian_eigs=jax.jit(jax.vmap(hessian_eigenvalues_fn(energy_fn))),
      bh_init=jax.jit(vmap_chunked(init_fn, chunk, in_axes=(0, None, None))),
      bh_run=jax.jit(vmap_chunked(run_fn, chunk, in_axes=(0, 0, None)),
                     static_argnums=2),
      dneb=jax.jit(dneb),
      hef=jax.jit(vmap_chunked(hef, chunk)),
      align_fn=align_fn, distance_fn=distance_fn,
      distance_lower_bound=(distance_lower_bound if distance_lower_bound is not None
                            else getattr(distance_fn, 'lower_bound', None)),
      vmap_chunk=chunk)


# ----------------------------------------------------------------------------
# Minima → database
# ----------------------------------------------------------------------------

def _pad(xs, size):
  """Pads a batch to a fixed size (repeating the last row) so jit compiles once."""
  n = xs.shape[0]
  if n == size:
    return xs
  return np.concatenate([xs, np.repeat(xs[-1:], size - n, axis=0)])


def _quench(ex: Explorer, xs):
  """``ex.quench`` on ``xs [n, D]`` in padded batches of ``quench_batch``: host
  arrays ``(x, energy, grad_rms, converged)`` for the n rows."""
  size = ex.config.quench_batch
  out = []
  for start in range(0, xs.shape[0], size):
    chunk = xs[start:start + size]
    res = jax.device_get(ex.quench(jnp.asarray(_pad(chunk, size))))
    out.append([np.asarray(a)[:chunk.shape[0]] for a in
                (res.x, res.energy, res.grad_rms, res.converged)])
  return tuple(np.concatenate(a) for a in zip(*out))


def _hessian_eigs(ex: Explorer, xs) -> np.ndarray:
  """``ex.hessian_eigs`` on ``xs [n, D]`` in padded batches of ``quench_batch``."""
  size = ex.config.quench_batch
  return np.concatenate([
      np.asarray(ex.hessian_eigs(jnp.asarray(_pad(xs[s:s + size], size))))[:len(xs[s:s + size])]
      for s in range(0, xs.shape[0], size)])


def _store_minima(db: Database, ex: Explorer, xq, eq, gq, conv, out: dict,
                  metrics_fn=None) -> None:
  """Index check (dense Hessian) and storage of quenched points; counts into ``out``."""
  c = ex.config
  eigs = _hessian_eigs(ex, xq)
  for i in range(xq.shape[0]):
    if not conv[i]:
      out['n_unconverged'] += 1
      out['ids'].append(-1)
      continue
    if np.sum(eigs[i] < -c.evcut) > 0:
      out['n_not_minimum'] += 1
      out['ids'].append(-1)
      continue
    metrics = metrics_fn(xq[i]) if metrics_fn is not None else None
    rid, new = db.add_minimum(eq[i], xq[i], eigenvalues=eigs[i], grad_rms=gq[i],
                              metrics=metrics, commit=False)
    out['n_new'] += int(new)
    out['ids'].append(rid)
  db.commit()


def add_minima(db: Database, ex: Explorer, xs, *,
               metrics_fn: Optional[Callable[[np.ndarray], dict]] = None,
               requench: bool = True) -> dict:
  """Re-quenches candidate minima to ``gtol``, checks their Hessian index and stores
  the distinct ones.

  A candidate enters the database only if L-BFGS converged and the dense Hessian has
  no eigenvalue below ``-evcut`` (zero modes allowed). Candidates whose energy matches
  a stored minimum within ``energy_tol`` and whose distance matches are skipped by the
  database.

  Args:
    db: database.
    ex: explorer.
    xs: ``[B, D]`` candidate coordinates (already near minima); the jitted calls
      run in padded batches of ``ex.config.quench_batch``.
    metrics_fn: host ``x -> dict`` of per-minimum values (e.g. test accuracy).
    requench: whether to re-quench to ``gtol`` first.

  Returns:
    Counts ``{'n_candidates', 'n_new', 'n_unconverged', 'n_not_minimum'}`` and
    ``'ids'`` (database id per candidate, -1 when rejected).
  """
  xs = check_coordinates(xs, 'xs')
  out = {'n_candidates': int(xs.shape[0]), 'n_new': 0, 'n_unconverged': 0,
         'n_not_minimum': 0, 'ids': []}
  if requench:
    xq, eq, gq, conv = _quench(ex, xs)
  else:
    xq = np.asarray(xs)
    eq = np.asarray(jax.vmap(ex.energy_fn)(jnp.asarray(xq)))
    gq = np.zeros(xq.shape[0])
    conv = np.ones(xq.shape[0], bool)
  _store_minima(db, ex, xq, eq, gq, conv, out, metrics_fn)
  return out


def check_coordinates(xs, name: str = 'x0s') -> np.ndarray:
  """Checks a batch of coordinates for the engine: ``[B, D]`` float64.

  The engine's tolerances (``gtol`` 1e-8, energy identity 1e-7) are below float32
  resolution: in float32 quenches never converge to them and nothing would be
  stored, so float32 is refused with a clear message.

  Raises:
    ValueError: wrong rank or dtype.
  """
  dtype = getattr(xs, 'dtype', None)
  shape = np.shape(xs)
  if len(shape) != 2:
    raise ValueError(f'{name} must have shape [n_chains, D] (one row per chain; '
                     f'use x[None] for one chain), got shape {tuple(shape)}')
  if dtype is None or np.dtype(dtype) != np.float64:
    raise ValueError(
        f'the landscape engine needs float64 coordinates, got {np.dtype(dtype).name} '
        f"{name}: call jax.config.update('jax_enable_x64', True) before creating "
        'arrays and pass float64 (the tolerances are below float32 resolution)')
  return np.asarray(xs)


def _near_sorted(sorted_e: np.ndarray, e: np.ndarray, tol: float) -> np.ndarray:
  """``[n]`` bool: whether each ``e`` lies within ``tol`` (strictly) of an entry of
  the sorted array ``sorted_e`` (its two neighbours by ``searchsorted``)."""
  e = np.asarray(e, np.float64)
  if sorted_e.size == 0:
    return np.zeros(e.shape, bool)
  k = np.searchsorted(sorted_e, e)
  lo = sorted_e[np.maximum(k - 1, 0)]
  hi = sorted_e[np.minimum(k, sorted_e.size - 1)]
  return (np.abs(e - lo) < tol) | (np.abs(hi - e) < tol)


def new_energies(seen: np.ndarray, energies, converged, tol: float) -> tuple:
  """Energies not yet seen: the first converged entry of every new energy.

  The same choice as a scan in index order that skips an energy within ``tol``
  (strictly) of any seen or already chosen one, at O((n + s) log s) cost instead
  of O(n s): ``searchsorted`` against the sorted ``seen``, then ``bisect`` among
  the new ones.

  Args:
    seen: sorted ``[s]`` energies already offered.
    energies: ``[n]`` candidate energies; converged: ``[n]`` bool.
    tol: energy tolerance.

  Returns:
    ``(indices of the chosen candidates (list, index order), sorted seen + chosen)``.
  """
  eq, conv = np.asarray(energies, np.float64), np.asarray(converged, bool)
  cand = np.nonzero(conv)[0]
  cand = cand[~_near_sorted(seen, eq[cand], tol)]
  reps, fresh = [], []
  for i in cand:
    e = float(eq[i])
    k = bisect.bisect_left(fresh, e)
    if (k > 0 and e - fresh[k - 1] < tol) or (k < len(fresh) and fresh[k] - e < tol):
      continue
    fresh.insert(k, e)
    reps.append(int(i))
  if reps:
    seen = np.sort(np.concatenate([seen, fresh]))
  return reps, seen


def calibrate_temperature(ex: Explorer, state, key, n_steps: int = 10,
                          min_rise: float = 1e-6, max_doublings: int = 5) -> float:
  """A basin-hopping temperature from the energy scale of the landscape.

  Runs ``n_steps`` trial moves per chain at infinite temperature (every converged
  quench accepted; the trial chains are then discarded) and returns
  ``median(uphill energy rises) / ln 2``: a typical uphill move is accepted with
  probability 1/2. Rises below ``min_rise`` (a quench back into the same minimum)
  do not count; while fewer than 3 rises are seen the trial step is doubled (up to
  ``max_doublings`` times), so a start step too small to leave a basin still
  yields the scale. Units follow the energy: the same rule serves Müller–Brown
  (rises ~30–70, T ~ 50) and a network loss (rises ~1e-4).

  Returns:
    T > 0 (1.0 if no move ever went uphill).
  """
  rises = []
  trial = state._replace(temperature=jnp.full_like(state.temperature, jnp.inf))
  prev0 = np.asarray(state.energy)
  for k in range(max_doublings + 1):
    _, rec = ex.bh_run(trial, jax.vmap(lambda q: jax.random.fold_in(q, k))(key),
                       n_steps)
    e, acc = np.asarray(rec.energy), np.asarray(rec.accepted)
    for c in range(e.shape[0]):
      p = prev0[c]
      for t in range(e.shape[1]):
        if acc[c, t]:
          if e[c, t] > p + min_rise:
            rises.append(e[c, t] - p)
          p = e[c, t]
    if len(rises) >= 3:
      break
    trial = trial._replace(step_size=2 * trial.step_size)
  rises = np.asarray(rises)
  rises = rises[np.isfinite(rises)]
  return float(np.median(rises) / np.log(2.0)) if rises.size else 1.0


def _start_chains(db: Database, ex: Explorer, key, x0s, state, chunk: int,
                  seen_tol: float) -> tuple:
  """The chains at the start of :func:`basin_hopping`: new ones from ``x0s`` (the
  temperature set or calibrated) or ``state`` resumed.

  Returns:
    ``(state, keys [C], rec0, seen)``: the initial quenches ``rec0`` (None when
    resuming) and the sorted energies already offered to the database.
  """
  if state is None:
    x0s = jnp.asarray(check_coordinates(x0s))
    n_chains = x0s.shape[0]
    state, rec0 = ex.bh_init(x0s, ex.config.step_size, 1.0)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n_chains))
    if ex.config.temperature is None:
      cal_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2**31 - 1))(keys)
      temp = calibrate_temperature(ex, state, cal_keys, chunk, min_rise=seen_tol)
    else:
      temp = float(ex.config.temperature)
    state = state._replace(temperature=jnp.full_like(state.temperature, temp))
    return state, keys, rec0, np.zeros(0)
  check_coordinates(state.x, 'state.x')
  n_chains = state.x.shape[0]
  state = jax.tree_util.tree_map(jnp.asarray, state)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n_chains))
  return state, keys, None, np.sort(db.graph_arrays()[1])


def _minima_offer(db: Database, ex: Explorer, seen: np.ndarray, seen_tol: float,
                  metrics_fn) -> Callable:
  """``offer(xq [n, D], eq [n], conv [n])``: stores the quenched minima of energies
  not offered before (from the sorted ``seen``, updated on every call)."""

  def offer(xq, eq, conv):
    # Sloppy quenches of one minimum agree in energy to far better than seen_tol, so
    # one representative per energy is re-quenched tightly; the database then
    # decides identity with the tight energies (and distances).
    nonlocal seen
    xq = np.asarray(xq)
    reps, seen = new_energies(seen, eq, conv, seen_tol)
    if reps:
      add_minima(db, ex, xq[reps], metrics_fn=metrics_fn)

  return offer


def _count_chunk(counts: dict, rec) -> None:
  """Adds the quenches, trials, converged quenches and accepted moves of one
  chunk's records ``rec`` to ``counts``."""
  counts['n_quenches'] += int(rec.energy.size)
  counts['n_trials'] += int(rec.energy.size)
  counts['n_converged'] += int(np.sum(rec.converged))
  counts['n_accepted'] += int(np.sum(rec.accepted))


def _bh_summary(state, counts: dict, done: int, reached: bool, target, t0: float) -> dict:
  """The summary :func:`basin_hopping` returns (see there)."""
  n_acc, n_trials = counts['n_accepted'], counts['n_trials']
  best = float(np.min(state.best_energy))
  return {'n_quenches': counts['n_quenches'], 'n_converged': counts['n_converged'],
          'n_accepted': n_acc,
          'acceptance': n_acc / max(n_trials, 1),
          'best_energy': best,
          'final_step_size': np.asarray(state.step_size).tolist(),
          'temperature': np.asarray(state.temperature).tolist(),
          'n_steps_done': done,
          'total_steps': np.asarray(state.n_step).tolist(),
          'reached_target': bool(reached or (target is not None and best <= target)),
          'seconds': time.time() - t0,
          'state': jax.device_get(state)}


def basin_hopping(db: Database, ex: Explorer, key: Array, x0s, n_steps: int, *,
                  chunk: int = 10, metrics_fn=None,
                  progress: Optional[Callable[[str], None]] = None,
                  target_energy: Optional[float] = None,
                  state=None) -> dict:
  """Runs ``C`` independent basin-hopping chains and stores every distinct minimum.

  Chains advance ``chunk`` steps per jitted call; after each call the quenched
  minima come back to the host, are de-duplicated by energy (to
  ``10 * db.energy_tol``) and the new ones re-quenched tightly and stored via
  :func:`add_minima`.

  The temperature is ``ex.config.temperature``, or, when that is None, calibrated
  once at the start by :func:`calibrate_temperature` (reported as
  ``'temperature'``). A run can stop early at ``target_energy`` and be resumed
  with the returned ``'state'``: step t of chain c always uses
  ``fold_in(fold_in(key, c), t)``, so 10 + 10 steps (same key) equal 20 steps.

  Args:
    db: database.
    ex: explorer.
    key: PRNG key; chain ``c`` uses ``fold_in(key, c)``.
    x0s: ``[C, D]`` float64 starting points (ignored when ``state`` is given).
    n_steps: basin-hopping steps per chain in this call (rounded up to a multiple
      of ``chunk``).
    chunk: steps per jitted call.
    metrics_fn: passed to :func:`add_minima`.
    progress: optional callback receiving one progress line per chunk.
    target_energy: stop after the first chunk in which a chain's best minimum is
      at or below ``target_energy + db.energy_tol``.
    state: a ``'state'`` returned by an earlier call: resume those chains.

  Returns:
    Summary ``{'n_quenches', 'n_converged', 'n_accepted', 'acceptance', 'best_energy',
    'final_step_size' (per chain), 'temperature' (per chain), 'n_steps_done' (this
    call), 'total_steps' (per chain, all calls), 'reached_target', 'seconds',
    'state' (a :class:`~lossland.landscape.basinhopping.BHState` for resuming)}``.

  Raises:
    ValueError: ``x0s`` is not ``[C, D]`` float64.
  """
  t0 = time.time()
  seen_tol = max(10 * db.energy_tol, 1e-6)
  state, keys, rec0, seen = _start_chains(db, ex, key, x0s, state, chunk, seen_tol)
  offer = _minima_offer(db, ex, seen, seen_tol, metrics_fn)
  counts = {'n_quenches': 0, 'n_converged': 0, 'n_accepted': 0, 'n_trials': 0}
  if rec0 is not None:
    offer(rec0.x, rec0.energy, rec0.converged)
    counts['n_quenches'] = len(keys)  # one initial quench per chain
    counts['n_converged'] = int(np.sum(rec0.converged))
  done = 0
  reached = False
  target = None if target_energy is None else float(target_energy) + db.energy_tol
  while done < n_steps:
    state, rec = ex.bh_run(state, keys, chunk)
    done += chunk
    d = rec.x.shape[-1]
    offer(rec.x.reshape(-1, d), rec.energy.reshape(-1), rec.converged.reshape(-1))
    _count_chunk(counts, rec)
    best = float(np.min(state.best_energy))
    if progress is not None:
      progress(f'basin-hopping step {done}/{n_steps}: {db.n_minima()} minima, '
               f'best {best:.10g}, accept '
               f'{counts["n_accepted"] / max(counts["n_trials"], 1):.2f}, '
               f'{time.time() - t0:.1f}s')
    if target is not None and best <= target:
      reached = True
      break
  return _bh_summary(state, counts, done, reached, target, t0)


# ----------------------------------------------------------------------------
# Transition states → database
# ----------------------------------------------------------------------------

def _count(stats, name, n=1):
  if stats is not None:
    stats[name] = stats.get(name, 0) + n


def _verified_saddles(c: ExplorerConfig, converged, eigs, stats) -> list:
  """Indices of the HEF results that are transition states: converged, exactly one
  eigenvalue below ``-evcut`` and at most ``n_zero_modes`` of modulus up to
  ``evcut``; the rejections are counted into ``stats``."""
  good = []
  for i in range(eigs.shape[0]):
    if not converged[i]:
      _count(stats, 'hef_unconverged')
      continue
    n_neg = int(np.sum(eigs[i] < -c.evcut))
    n_zero = int(np.sum(np.abs(eigs[i]) <= c.evcut))
    if n_neg != 1 or n_zero > c.n_zero_modes:
      _count(stats, 'wrong_index')
      continue
    good.append(i)
  return good


def refine_and_store_ts(db: Database, ex: Explorer, x0s, v0s, *, metrics_fn=None,
                        stats: Optional[dict] = None) -> list:
  """HEF from candidate points, index check, push-off, quench, store.

  A TS is accepted only if HEF converged and the dense Hessian has exactly one
  eigenvalue below ``-evcut`` and at most ``n_zero_modes`` with modulus below
  ``evcut``. It is then displaced by ``± pushoff`` along its eigenvector; both
  displaced points are quenched to ``gtol``, each quench must end below the TS, in a
  verified minimum, and the two minima must differ. If that fails, the push-off is
  repeated once with ``4 * pushoff`` (OPTIM also enlarges the push-off when the
  energy does not drop). Then the minima (if new) and the TS are stored, whatever
  minima they are: a verified TS that connects other minima than the pair being
  tried still grows the network (OPTIM keeps every such TS too).

  Args:
    x0s, v0s: ``[n_climb, D]`` start points and start directions.
    stats: optional dict; counts of rejection reasons are added to it
      (``hef_unconverged``, ``wrong_index``, ``duplicate``, ``pushoff_failed``,
      ``same_minimum``) and of ``accepted`` TS.

  Returns:
    List of dicts, one per distinct accepted TS: ``{'ts_id', 'min1', 'min2',
    'energy', 'eigenvalue', 'new'}``; rejected candidates are omitted.
  """
  c = ex.config
  hres = jax.device_get(ex.hef(jnp.asarray(x0s), jnp.asarray(v0s)))
  xs, vs = np.asarray(hres.x), np.asarray(hres.eigenvector)
  eigs = _hessian_eigs(ex, xs)
  good = _verified_saddles(ex.config, hres.converged, eigs, stats)
  # The first push-off of every candidate in one fixed-size quench call (a candidate
  # that turns out to duplicate an accepted one is quenched for nothing).
  first = (_quench(ex, np.concatenate([[xs[i] + c.pushoff * vs[i], xs[i] - c.pushoff * vs[i]]
                                        for i in good]))
           if good else None)

  def pushed_minima(k, i, push):
    """Database ids of the minima both sides of candidate i reach, or a reason."""
    if push == c.pushoff:
      xq, eq, gq, conv = (a[2 * k:2 * k + 2] for a in first)
    else:
      xq, eq, gq, conv = _quench(ex, np.stack([xs[i] + push * vs[i], xs[i] - push * vs[i]]))
    if not np.all(conv) or not np.all(eq < hres.energy[i]):
      return 'pushoff_failed'
    out = {'n_new': 0, 'n_unconverged': 0, 'n_not_minimum': 0, 'ids': []}
    _store_minima(db, ex, xq, eq, gq, conv, out, metrics_fn)
    got = out['ids']
    if min(got) < 0:
      return 'pushoff_failed'
    if got[0] == got[1]:
      return 'same_minimum'
    return got

  found = []
  for k, i in enumerate(good):
    x, v = xs[i], vs[i]
    if any(abs(hres.energy[i] - f['energy']) < db.energy_tol and
           ex.distance_fn(x, f['x']) < 1e-3 for f in found):
      _count(stats, 'duplicate')
      continue
    for push in (c.pushoff, 4 * c.pushoff):
      ids = pushed_minima(k, i, push)
      if not isinstance(ids, str):
        break
    if isinstance(ids, str):
      _count(stats, ids)
      continue
    ts_id, new = db.add_transition_state(hres.energy[i], x, ids[0], ids[1],
                                         eigenvalue=eigs[i][0], eigenvector=v,
                                         grad_rms=hres.grad_rms[i], eigenvalues=eigs[i])
    _count(stats, 'accepted')
    found.append({'ts_id': ts_id, 'min1': ids[0], 'min2': ids[1], 'x': x,
                  'energy': float(hres.energy[i]), 'eigenvalue': float(eigs[i][0]),
                  'new': new})
  return found


def local_connect(db: Database, ex: Explorer, id_a: int, id_b: int, *,
                  metrics_fn=None, stats: Optional[dict] = None) -> list:
  """One DNEB + HEF attempt between stored minima ``id_a`` and ``id_b``.

  ``b`` is first mapped to its symmetry copy closest to ``a`` (``align_fn``), the
  band is relaxed, and its ``n_climb`` highest interior local maxima are refined by
  HEF (start direction: the band tangent) and stored by :func:`refine_and_store_ts`.
  Interior images that are local minima of the band profile are quenched as well;
  the verified minima they reach enter the database as intermediates that later
  attempts can connect through (OPTIM finds such intermediates by push-off only).

  Args:
    stats: optional dict of counters (see :func:`refine_and_store_ts`), plus
      ``band_minima_quenched``.

  Returns:
    The accepted TS (see :func:`refine_and_store_ts`); the attempt is recorded.
  """
  c = ex.config
  xa = db.get_minimum(id_a).coords
  xb = ex.align_fn(xa, db.get_minimum(id_b).coords)
  images, energies, _ = jax.device_get(ex.dneb(jnp.asarray(xa), jnp.asarray(xb)))
  e = np.asarray(energies)
  interior = [i for i in range(1, len(e) - 1) if e[i] > e[i - 1] and e[i] >= e[i + 1]]
  interior.sort(key=lambda i: -e[i])
  valleys = [i for i in range(1, len(e) - 1) if e[i] < e[i - 1] and e[i] <= e[i + 1]]
  if valleys:
    _count(stats, 'band_minima_quenched', len(valleys))
    add_minima(db, ex, np.stack([images[i] for i in valleys]), metrics_fn=metrics_fn)
  found = []
  if interior:
    picks = (interior * c.n_climb)[:c.n_climb]
    x0 = np.stack([images[i] for i in picks])
    v0 = np.stack([images[i + 1] - images[i - 1] for i in picks])
    found = refine_and_store_ts(db, ex, x0, v0, metrics_fn=metrics_fn, stats=stats)
  else:
    _count(stats, 'no_band_maximum')
  db.record_attempt(id_a, id_b, len(found))
  return found


class _Graph:
  """The database's minima graph, kept up to date incrementally.

  A union-find over minima (edges = TS) that only reads the minima and TS added
  since the last :meth:`update`, instead of re-reading the whole database (SQL +
  a new union-find) twice per connect attempt.
  """

  def __init__(self, db: Database):
    self.db = db
    self.uf = UnionFind(0)
    self.pos = {}  # db id -> union-find index
    self.order = []  # (energy, db id), sorted: the order of db.graph_arrays()
    self.joined = set()  # (min, max) db-id pairs joined by a TS
    self.last_min = self.last_ts = 0
    self.update()

  def update(self) -> None:
    for rid, energy in self.db.minima_after(self.last_min):
      self.pos[rid] = len(self.uf)
      self.uf.add()
      bisect.insort(self.order, (energy, rid))
      self.last_min = rid
    for rid, a, b in self.db.ts_pairs_after(self.last_ts):
      self.uf.union(self.pos[a], self.pos[b])
      self.joined.add((min(a, b), max(a, b)))
      self.last_ts = rid

  def components(self) -> list:
    """Lists of db ids, each in energy order, the global minimum's first."""
    groups = {}
    for _, rid in self.order:
      groups.setdefault(self.uf.find(self.pos[rid]), []).append(rid)
    return list(groups.values())


def components(db: Database) -> list:
  """Connected components of the minima graph (edges = TS), as lists of db ids,
  the global minimum's component first."""
  return _Graph(db).components()


def _closest_pair_fn(db: Database, ex: Explorer, tried: set, dist_cache: dict) -> Callable:
  """``closest(pairs)``: ``(distance, a, b)`` of the closest pair of db ids in
  ``pairs`` not in ``tried`` (the first one on ties), or None.

  Coordinates, lower bounds and distances (into ``dist_cache``, keyed by
  ``(min, max)`` id pair) are cached across calls; with ``ex.distance_lower_bound``
  the pairs are visited by increasing bound and ``distance_fn`` is skipped for every
  pair whose bound is not below the best distance so far.
  """
  coords, bounds = {}, {}
  lower = ex.distance_lower_bound

  def x_of(i):
    if i not in coords:
      coords[i] = db.get_minimum(i).coords
    return coords[i]

  def distance(key):
    if key not in dist_cache:
      dist_cache[key] = ex.distance_fn(x_of(key[0]), x_of(key[1]))
    return dist_cache[key]

  def closest(pairs):
    """(distance, a, b) of the closest untried pair (first one on ties), or None."""
    cands = [(k, a, b) for k, a, b in (((min(a, b), max(a, b)), a, b) for a, b in pairs)
             if k not in tried]
    if lower is not None:  # distances only where the bound cannot rule a pair out
      known = [dist_cache[k] for k, _, _ in cands if k in dist_cache]
      cut = min(known, default=np.inf)
      for k, _, _ in cands:
        if k not in bounds:
          bounds[k] = lower(x_of(k[0]), x_of(k[1]))
      for k in sorted((k for k, _, _ in cands if k not in dist_cache), key=bounds.get):
        if bounds[k] >= cut:
          break
        cut = min(cut, distance(k))
      cands = [c for c in cands if c[0] in dist_cache]
    best = None
    for k, a, b in cands:
      if best is None or distance(k) < best[0]:
        best = (distance(k), a, b)
    return best

  return closest


def _next_pair(graph: _Graph, closest: Callable, refine: bool) -> tuple:
  """The next connect attempt: ``(best, refining)``, ``best`` from ``closest``.

  The closest untried pair between the global minimum's component and the rest;
  once connected (or when every such pair was tried) and with ``refine``, the
  closest untried pair of minima not yet joined by a TS. ``best`` is None when
  there is nothing left to try.
  """
  comps = graph.components()
  if len(comps) > 1:
    main = comps[0]
    rest = [i for comp in comps[1:] for i in comp]
    best = closest((a, b) for a in main for b in rest)
    if best is not None:
      return best, False
  if not refine:
    return None, False
  ids = [i for comp in comps for i in comp]
  return closest((a, b) for k, a in enumerate(ids) for b in ids[k + 1:]
                 if (min(a, b), max(a, b)) not in graph.joined), True


def connect_database(db: Database, ex: Explorer, budget: int, *, metrics_fn=None,
                     refine: bool = False,
                     progress: Optional[Callable[[str], None]] = None) -> dict:
  """Grows the database until all minima form one connected network, or the budget
  of connect attempts runs out.

  Each attempt joins the global minimum's component to the rest through the closest
  (symmetry-aligned distance) pair of minima that has not been tried yet, a greedy
  relative of OPTIM's Dijkstra missing-connection scheme. Every verified TS an
  attempt finds is stored, whichever minima it joins, and minima it reaches by
  push-off (or that band images quench to) join the graph, so the path grows
  through intermediates. New minima that are not yet connected become targets of
  later attempts.

  With ``refine``, attempts left once the graph is connected go to the closest
  untried pairs of minima not yet joined by a TS (any component), as PATHSAMPLE
  does to find lower alternative paths: minimax barriers from a spanning tree of
  TS are upper bounds.

  The graph is updated incrementally (:class:`_Graph`); distances are cached, and
  with ``ex.distance_lower_bound`` the pairs are visited by increasing lower bound
  and ``distance_fn`` is skipped for every pair whose bound is not below the best
  distance so far (the same closest pair, fewer alignments).

  Args:
    db: database with at least one minimum.
    ex: explorer.
    budget: maximum number of :func:`local_connect` attempts (connecting and
      refining together).
    metrics_fn: passed on for new minima.
    refine: spend the remaining budget on alternative paths once connected.
    progress: optional per-attempt callback.

  Returns:
    ``{'n_attempts', 'n_refine_attempts', 'n_ts_found', 'connected', 'n_components',
    'unconnected_minima' (db ids outside the global minimum's component),
    'n_new_minima' (found by push-off or band quenches), 'candidates' (counts of
    accepted TS candidates and of rejection reasons), 'n_distances' (calls of
    ``distance_fn`` for pair selection), 'seconds'}``.
  """
  t0 = time.time()
  tried = {tuple(sorted(a[:2])) for a in db.attempts()}
  dist_cache = {}
  n_attempts, n_ts = 0, 0
  n_min0 = db.n_minima()
  stats = {}
  n_refine = 0
  graph = _Graph(db)
  closest = _closest_pair_fn(db, ex, tried, dist_cache)

  while n_attempts < budget:
    best, refining = _next_pair(graph, closest, refine)
    if best is None:
      break
    _, a, b = best
    tried.add((min(a, b), max(a, b)))
    found = local_connect(db, ex, a, b, metrics_fn=metrics_fn, stats=stats)
    graph.update()
    n_attempts += 1
    n_refine += int(refining)
    n_ts += sum(f['new'] for f in found)
    if progress is not None:
      progress(f'connect attempt {n_attempts}/{budget}{" (refine)" if refining else ""}: '
               f'{a}-{b}, {len(found)} TS; '
               f'{db.n_minima()} minima, {db.n_transition_states()} TS, '
               f'{len(graph.components())} components, {time.time() - t0:.1f}s')
  comps = graph.components()
  return {'n_attempts': n_attempts, 'n_refine_attempts': n_refine, 'n_ts_found': n_ts,
          'connected': len(comps) <= 1,
          'n_components': len(comps),
          'unconnected_minima': [i for comp in comps[1:] for i in comp],
          'n_new_minima': db.n_minima() - n_min0, 'candidates': stats,
          'n_distances': len(dist_cache),
          'seconds': time.time() - t0}
