"""L-BFGS and FIRE: convergence, vmap consistency, dtype, Lennard-Jones minima."""
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np
import pytest

from lossland.landscape import potentials
from lossland.landscape.minimize import (CPU_VMAP_CHUNK, make_fire, make_lbfgs, vmap_chunk,
                                         vmap_chunked)


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


def _numpy_fire(x, a, n_steps, dt, c):
  """Plain-loop FIRE (Bitzek et al. 2006) on E = 0.5 x·A x, unit masses."""
  v = np.zeros_like(x)
  alpha, n_pos, xs = c.alpha_start, 0, []
  for _ in range(n_steps):
    f = -a @ x
    if f @ v > 0:
      v = (1 - alpha) * v + alpha * np.linalg.norm(v) * f / np.linalg.norm(f)
      if n_pos > c.n_min:
        dt, alpha = min(dt * c.f_inc, c.dt_max), alpha * c.f_alpha
      n_pos += 1
    else:
      v, dt, alpha, n_pos = np.zeros_like(v), dt * c.f_dec, c.alpha_start, 0
    v = v + dt * f
    dx = dt * v
    if c.max_step is not None:
      dx = dx * min(1.0, c.max_step / np.linalg.norm(dx))
    x = x + dx
    xs.append(x)
  return np.array(xs), dt, alpha


@pytest.mark.parametrize("max_step", [None, 0.05])
def test_fire_step_matches_numpy_loop_on_quadratic(max_step):
  from lossland import fire
  rng = np.random.default_rng(0)
  q = rng.standard_normal((5, 5))
  a = q @ q.T + 0.5 * np.eye(5)
  cfg = fire.FireConfig(dt_max=0.3, max_step=max_step)
  x0 = rng.standard_normal((3, 5))
  dts = np.array([0.01, 0.05, 0.1])  # per member

  def run(x, dt):  # pytree coordinates: a 2-leaf dict
    tree = {"u": x[:2], "w": x[2:]}
    state = fire.fire_init(tree, dt, cfg)

    def body(carry, _):
      t, s = carry
      flat = jnp.concatenate([t["u"], t["w"]])
      g = jnp.asarray(a) @ flat
      t, s = fire.fire_step(t, s, {"u": g[:2], "w": g[2:]}, cfg)
      return (t, s), jnp.concatenate([t["u"], t["w"]])

    (_, s), traj = jax.lax.scan(body, (tree, state), None, length=200)
    return traj, s

  traj, state = jax.jit(jax.vmap(run))(jnp.asarray(x0), jnp.asarray(dts))
  for m in range(3):
    ref, dt_ref, alpha_ref = _numpy_fire(x0[m], a, 200, dts[m], cfg)
    np.testing.assert_allclose(np.asarray(traj[m]), ref, rtol=0, atol=1e-12)
    assert float(state.dt[m]) == pytest.approx(dt_ref, rel=1e-12)
    assert float(state.alpha[m]) == pytest.approx(alpha_ref, rel=1e-12)
  assert np.linalg.norm(np.asarray(traj[:, -1])) < 1e-3  # relaxed towards 0


def test_fire_step_keeps_dtype():
  from lossland import fire
  for dt in (jnp.float32, jnp.float64):
    x = jnp.ones(3, dt)
    s = fire.fire_init(x, 0.1)
    x1, s1 = fire.fire_step(x, s, x)
    assert x1.dtype == dt and s1.dt.dtype == dt and s1.alpha.dtype == dt
    assert s1.v.dtype == dt and s1.n_pos.dtype == jnp.int32


def _tiny_network():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((12, 3)))
  y = jnp.asarray(rng.integers(0, 2, 12))
  return potentials.make_network_loss(x, y, (3, 3, 2), 1e-3)


def test_chunked_batch_finds_the_same_minima_as_vmap_and_one_at_a_time():
  """The CPU path (vmapped chunks in turn) against the accelerator path (the whole
  batch vmapped) and single runs: the same minima up to rounding."""
  net = _tiny_network()
  n_traces = []

  def vg(x):
    n_traces.append(1)  # one trace per distinct batch shape
    return jax.value_and_grad(net.loss_fn)(x)

  lbfgs = make_lbfgs(vg, gtol=1e-9)
  x0 = jax.vmap(lambda k: net.init_fn(k, jnp.float64))(jax.random.split(jax.random.key(1), 7))
  whole = jax.jit(vmap_chunked(lbfgs, 0))(x0)
  n_whole = len(n_traces)
  chunked = jax.jit(vmap_chunked(lbfgs, 3))(x0)  # two chunks of 3, a remainder of 1
  assert len(n_traces) - n_whole == 2 * n_whole  # the chunk and the remainder
  assert bool(jnp.all(whole.converged)) and bool(jnp.all(chunked.converged))
  assert len(np.unique(np.round(np.asarray(whole.energy), 6))) >= 2  # minima differ
  single = jax.jit(lbfgs)
  for i in range(7):
    one = single(x0[i])
    for e, x in ((chunked.energy[i], chunked.x[i]), (one.energy, one.x)):
      np.testing.assert_allclose(e, whole.energy[i], rtol=0, atol=1e-12)
      # a minimum's position is known to ~gtol / (smallest curvature ~ 2 λ)
      np.testing.assert_allclose(x, whole.x[i], rtol=0, atol=1e-5)


def test_vmap_chunk_by_backend_and_shared_arguments():
  assert vmap_chunk(None, 'cpu') == CPU_VMAP_CHUNK > 0
  assert vmap_chunk(None, 'gpu') == 0 and vmap_chunk(None, 'tpu') == 0
  assert vmap_chunk(5, 'gpu') == 5 and vmap_chunk(0, 'cpu') == 0
  with pytest.raises(ValueError, match='>= 0'):
    vmap_chunk(-1)
  with pytest.raises(ValueError, match='0 or None'):
    vmap_chunked(lambda a: a, 2, in_axes=1)
  # shared (None) arguments and pytree outputs, batch not a multiple of the chunk
  f = lambda a, s, b: {'y': a * s + b, 'z': jnp.sum(a)}
  a, b = jnp.arange(10.0).reshape(5, 2), jnp.ones((5, 2))
  ref = jax.vmap(f, in_axes=(0, None, 0))(a, 3.0, b)
  out = jax.jit(vmap_chunked(f, 2, in_axes=(0, None, 0)))(a, 3.0, b)
  for k in ref:
    np.testing.assert_array_equal(out[k], ref[k])
