"""L-BFGS and FIRE: convergence, vmap consistency, dtype, Lennard-Jones minima."""
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np
import pytest

from lossland.landscape import potentials
from lossland.landscape.minimize import make_fire, make_lbfgs


def rosenbrock(x):
  return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


@pytest.mark.parametrize("maker", [make_lbfgs, make_fire])
def test_rosenbrock_converges_to_known_minimum(maker):
  kw = {"max_step": 0.1, "dt": 1e-3, "dt_max": 1e-2} if maker is make_fire else {}
  minimize = jax.jit(jax.vmap(maker(jax.value_and_grad(rosenbrock), gtol=1e-10,
                                    max_iter=200000, **kw)))
  x0 = jnp.array([[-1.2, 1.0], [0.0, 0.0], [1.5, 2.0]])  # 2-D: a single minimum
  res = minimize(x0)
  assert bool(jnp.all(res.converged))
  assert float(jnp.max(res.grad_rms)) <= 1e-10
  np.testing.assert_allclose(res.x, 1.0, atol=1e-8)


def test_unconverged_is_reported():
  res = make_lbfgs(jax.value_and_grad(rosenbrock), gtol=1e-10, max_iter=3)(
      jnp.array([-1.2, 1.0, 0.5]))
  assert not bool(res.converged) and int(res.n_iter) == 3


def test_vmap_equals_single_runs_and_energy_guard():
  f = potentials.lennard_jones(5)
  lbfgs = make_lbfgs(jax.value_and_grad(f), gtol=1e-9, max_step=0.1, max_erise=1e-4)
  keys = jax.random.split(jax.random.key(3), 4)
  x0 = jax.vmap(lambda k: potentials.lj_random_configuration(k, 5, dtype=jnp.float64))(keys)
  batched = jax.jit(jax.vmap(lbfgs))(x0)
  for i in range(4):
    single = jax.jit(lbfgs)(x0[i])
    np.testing.assert_allclose(batched.energy[i], single.energy, rtol=0, atol=1e-12)
    assert int(batched.n_iter[i]) == int(single.n_iter)
  # LJ5 has a single minimum, the trigonal bipyramid, E = -9.103852.
  np.testing.assert_allclose(batched.energy, -9.103852, atol=1e-6)


@pytest.mark.parametrize("maker", [make_lbfgs, make_fire])
def test_dtype_preserved(maker):
  f = lambda x: jnp.sum((x - 1.0) ** 2)
  for dt in (jnp.float32, jnp.float64):
    res = maker(jax.value_and_grad(f), gtol=1e-4)(jnp.zeros(3, dt))
    assert res.x.dtype == dt and res.energy.dtype == dt and bool(res.converged)


def test_lj7_quenches_find_the_four_minima():
  f = potentials.lennard_jones(7)
  lbfgs = jax.jit(jax.vmap(make_lbfgs(jax.value_and_grad(f), gtol=1e-8)))
  keys = jax.random.split(jax.random.key(0), 64)
  x0 = jax.vmap(lambda k: potentials.lj_random_configuration(k, 7, dtype=jnp.float64))(keys)
  res = lbfgs(x0)
  assert bool(jnp.all(res.converged))
  e = np.sort(np.asarray(res.energy))
  found = e[np.concatenate([[True], np.diff(e) > 1e-6])]
  assert len(found) == 4
  # The reference values given with the issue agree with ours to 1e-3; our values to
  # 1e-6 are cross-checked against pele's LJ potential (see docs/landscape.md).
  np.testing.assert_allclose(np.sort(found), np.sort(potentials.LJ7_MINIMA), atol=1e-3)
  np.testing.assert_allclose(np.sort(found),
                             [-16.505384, -15.935043, -15.593211, -15.533060], atol=2e-6)
  # Dense Hessian at each minimum: 6 zero modes, no negative eigenvalue.
  h = jax.vmap(jax.hessian(f))(res.x[:8])
  ev = np.linalg.eigvalsh(np.asarray(h))
  assert np.all(np.sum(np.abs(ev) < 1e-5, axis=1) == 6)
  assert np.all(ev > -1e-5)
