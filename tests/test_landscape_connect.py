"""Connect loop on a network loss: the loop joins every minimum basin-hopping finds,
each stored TS has exactly one negative Hessian eigenvalue, and an independent
descent (FIRE with small steps, no energy-rise allowance) from either side of each
TS reaches the two minima it claims. Also the L-BFGS escape from a flat saddle that
made push-off quenches fail before (issue 5 connect fix)."""
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np

from lossland.landscape import explorer as E
from lossland.landscape import potentials, study, symmetry
from lossland.landscape.database import Database
from lossland.landscape.minimize import make_fire, make_lbfgs


def test_lbfgs_leaves_a_flat_saddle_quickly():
  # A saddle with curvature -1e-3 along x0 and +1e-3 elsewhere, like the TS of a
  # network loss: a quench pushed 1e-3 off it used to need ~1e5 steepest-descent
  # steps of size 0.1|g| (no positive-curvature pair, so no L-BFGS scaling).
  def f(x):
    return 1e-3 * (-0.5 * x[0] ** 2 + 0.25 * x[0] ** 4 + 0.5 * jnp.sum(x[1:] ** 2))

  lbfgs = jax.jit(jax.vmap(make_lbfgs(jax.value_and_grad(f), gtol=1e-10, max_iter=2000,
                                      max_step=0.2, max_erise=1e-12)))
  x0 = jnp.zeros((2, 6)).at[0, 0].set(1e-3).at[1, 0].set(-1e-3).at[:, 1:].set(0.3)
  res = lbfgs(x0)
  assert bool(jnp.all(res.converged)), res.n_iter
  np.testing.assert_allclose(np.asarray(res.x[:, 0]), [1.0, -1.0], atol=1e-6)
  np.testing.assert_allclose(np.asarray(res.x[:, 1:]), 0.0, atol=1e-6)
  assert int(jnp.max(res.n_iter)) < 500


def test_network_connect_loop_connects_all_minima():
  cfg = study.StudyConfig(depth=1, n_data=30, n_params=57, lam=1e-3)
  xtr, ytr, _, _ = study.make_data(cfg)
  sizes = (5, 6, 3)
  net = potentials.make_network_loss(jnp.asarray(xtr), jnp.asarray(ytr), sizes, cfg.lam)
  ex_cfg = study.explorer_config(cfg, net.n_params)
  dist = symmetry.network_distance_fn(sizes)
  ex = E.make_explorer(net.loss_fn, ex_cfg, distance_fn=dist,
                       align_fn=lambda a, b: symmetry.align_network(a, b, sizes))
  shapes = set()  # every host-side quench / spectrum call: one batch shape

  def record(fn):
    def wrapped(xs):
      shapes.add((fn.__name__ if hasattr(fn, '__name__') else 'f', xs.shape))
      return fn(xs)
    return wrapped

  ex = ex._replace(quench=record(ex.quench), hessian_eigs=record(ex.hessian_eigs))
  db = Database(':memory:', energy_tol=study.ENERGY_TOL, distance_fn=dist,
                distance_tol=1e-3)
  x0 = jax.vmap(lambda k: net.init_fn(k, jnp.float64))(
      jax.random.split(jax.random.key(0), 8))
  E.basin_hopping(db, ex, jax.random.key(1), x0, n_steps=20)
  n_bh = db.n_minima()
  assert n_bh >= 4  # a non-trivial landscape
  budget = 3 * n_bh
  report = E.connect_database(db, ex, budget=budget)
  assert report['connected'], report
  assert report['n_attempts'] <= budget
  assert not report['unconnected_minima']
  assert report['n_refine_attempts'] == 0
  n_ts = db.n_transition_states()
  assert n_ts >= db.n_minima() - 1
  # Refinement: attempts beyond connection look for alternative paths.
  more = E.connect_database(db, ex, budget=3, refine=True)
  assert more['n_attempts'] == more['n_refine_attempts'] == 3 and more['connected']
  assert db.n_transition_states() > n_ts
  assert {shape for _, shape in shapes} == {(ex_cfg.quench_batch, net.n_params)}
  mins = {m.id: m for m in db.minima()}
  tss = db.transition_states()
  hess = jax.jit(jax.vmap(jax.hessian(net.loss_fn)))
  ev = np.linalg.eigvalsh(np.asarray(hess(jnp.asarray(np.stack([t.coords for t in tss])))))
  for t, e in zip(tss, ev):
    assert np.sum(e < -ex_cfg.evcut) == 1 and np.sum(np.abs(e) <= ex_cfg.evcut) == 0
    assert t.grad_rms <= cfg.gtol
    assert t.energy > max(mins[t.min1].energy, mins[t.min2].energy)
  # Independent descent from both sides of every TS: FIRE, small steps, no Erise.
  fire = jax.jit(jax.vmap(make_fire(jax.value_and_grad(net.loss_fn), gtol=1e-9,
                                    max_iter=200000, dt=0.05, dt_max=0.5,
                                    max_step=0.01)))
  pushed = np.concatenate([[t.coords + ex_cfg.pushoff * t.eigenvector,
                            t.coords - ex_cfg.pushoff * t.eigenvector] for t in tss])
  res = jax.device_get(fire(jnp.asarray(pushed)))
  assert np.all(res.converged)
  for k, t in enumerate(tss):
    ends = set()
    for j in (2 * k, 2 * k + 1):
      d = {i: dist(m.coords, res.x[j]) for i, m in mins.items()}
      i = min(d, key=d.get)
      assert d[i] < 1e-3
      ends.add(i)
    assert ends == {t.min1, t.min2}


def test_new_energies_equals_linear_scan():
  """searchsorted de-duplication picks what the old O(n s) scan picked."""
  rng = np.random.default_rng(0)
  tol = 1e-6
  seen_list = list(np.round(rng.uniform(0, 1e-4, 40), 7))  # many near-ties at tol
  seen = np.sort(np.asarray(seen_list))
  for _ in range(5):
    e = np.concatenate([rng.uniform(0, 1e-4, 60), rng.choice(seen_list, 20) + 5e-7])
    conv = rng.uniform(size=e.size) < 0.8
    reps_ref = []
    for i in np.nonzero(conv)[0]:  # the old scan
      if any(abs(e[i] - s) < tol for s in seen_list):
        continue
      seen_list.append(float(e[i]))
      reps_ref.append(int(i))
    reps, seen = E.new_energies(seen, e, conv, tol)
    assert reps == reps_ref and reps
    np.testing.assert_array_equal(seen, np.sort(seen_list))


def test_norm_gap_bounds_network_distance_and_incremental_graph():
  sizes = (3, 4, 4, 2)
  dist = symmetry.network_distance_fn(sizes)
  rng = np.random.default_rng(1)
  n = 3 * 4 + 4 + 4 * 4 + 4 + 4 * 2 + 2
  assert dist.lower_bound is E.norm_gap  # the database and explorer pick it up
  for _ in range(20):
    a, b = rng.standard_normal(n), rng.standard_normal(n) * rng.uniform(0.5, 2)
    assert E.norm_gap(a, b) <= dist(a, b) + 1e-12
  # The incremental graph equals the components rebuilt from scratch (plain BFS).
  db = Database(':memory:')
  graph = E._Graph(db)
  for step in range(6):
    for _ in range(5):
      db.add_minimum(rng.uniform(), rng.standard_normal(2))
    ids = [m.id for m in db.minima()]
    for _ in range(3):
      a, b = rng.choice(ids, 2, replace=False)
      db.add_transition_state(2.0 + rng.uniform(), rng.standard_normal(2), int(a), int(b))
    graph.update()
    nbrs = {i: set() for i in ids}
    for t in db.transition_states():
      nbrs[t.min1].add(t.min2)
      nbrs[t.min2].add(t.min1)
    comps, done = [], set()
    for i in ids:  # energy order
      if i in done:
        continue
      comp, todo = [], [i]
      done.add(i)
      while todo:
        j = todo.pop()
        comp.append(j)
        todo.extend(k for k in nbrs[j] if k not in done)
        done.update(nbrs[j])
      comps.append(sorted(comp, key=ids.index))
    assert graph.components() == comps == E.components(db)
