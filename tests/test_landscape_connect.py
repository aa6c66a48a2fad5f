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
