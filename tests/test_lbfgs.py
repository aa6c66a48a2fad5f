"""lbfgs.two_loop and lbfgs.scaling against the dense inverse-BFGS recursion."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lossland import lbfgs

N, M = 7, 3
# jitted once per dtype: eager fori_loops compile on every call
two_loop, scaling = jax.jit(lbfgs.two_loop), jax.jit(lbfgs.scaling, static_argnames="default")


def _pairs(n_pairs, seed=0):
  """n_pairs curvature pairs of a random SPD quadratic, stored in a ring of M rows.

  Rows that hold no pair (n_pairs < M) are filled with random finite junk:
  two_loop must not read them into the result.
  """
  rng = np.random.default_rng(seed)
  A = rng.normal(size=(N, N))
  A = A @ A.T + N * np.eye(N)
  S, Y, rho = rng.normal(size=(M, N)), rng.normal(size=(M, N)), rng.normal(size=M)
  pairs = []
  for j in range(n_pairs):
    s = rng.normal(size=N)
    pairs.append((s, A @ s))
    S[j % M], Y[j % M], rho[j % M] = s, A @ s, 1 / (s @ (A @ s))
  return pairs, S, Y, rho, rng.normal(size=N)


def _dense_direction(g, pairs, h0):
  # H <- (I - r s y') H (I - r y s') + r s s' from H0 = h0 I over the last M pairs,
  # oldest first (Nocedal & Wright, Eq. 7.19)
  H = h0 * np.eye(N)
  for s, y in pairs[-M:]:
    r = 1 / (s @ y)
    V = np.eye(N) - r * np.outer(y, s)
    H = V.T @ H @ V + r * np.outer(s, s)
  return -H @ g


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5, 7])   # none, k < M, k = M, wrapped once and twice
def test_two_loop_is_the_dense_inverse_bfgs_matrix_times_g(k):
  pairs, S, Y, rho, g = _pairs(k)
  args = tuple(map(jnp.asarray, (g, S, Y, rho))) + (jnp.int32(k),)
  # the h0 path (the landscape minimizer)
  got = two_loop(*args, jnp.float64(0.37))
  np.testing.assert_allclose(np.asarray(got), _dense_direction(g, pairs, 0.37), rtol=1e-10)
  # the gamma path (the trainer): H0 = s.y / y.y of the newest pair, 1 with no pair
  gamma = float(scaling(*args[1:]))
  if k == 0:
    assert gamma == 1.0
    np.testing.assert_array_equal(np.asarray(two_loop(*args, gamma)), -g)
  else:
    s_l, y_l = pairs[-1]
    np.testing.assert_allclose(gamma, (s_l @ y_l) / (y_l @ y_l), rtol=1e-14)
  got = two_loop(*args, scaling(*args[1:]))
  np.testing.assert_allclose(np.asarray(got), _dense_direction(g, pairs, gamma), rtol=1e-10)


def test_scaling_default_without_a_usable_pair():
  _, S, Y, rho, _ = _pairs(2)
  args = tuple(map(jnp.asarray, (S, Y, rho)))
  assert float(scaling(*args, jnp.int32(0), default=0.25)) == 0.25
  Y0 = args[1].at[1].set(0.0)   # newest pair (row 1) with y = 0
  assert float(scaling(args[0], Y0, args[2], jnp.int32(2))) == 1.0
  assert float(scaling(args[0], Y0, args[2], jnp.int32(2), default=0.25)) == 0.25


def test_vmap_over_members_with_different_k_equals_single_calls():
  ks = (0, 2, 5)
  batch = [_pairs(k, seed=k) for k in ks]
  stack = lambda i: jnp.stack([jnp.asarray(b[i]) for b in batch])
  g, S, Y, rho = stack(4), stack(1), stack(2), stack(3)
  k = jnp.asarray(ks, jnp.int32)
  fn = lambda g, S, Y, rho, k: two_loop(g, S, Y, rho, k, scaling(S, Y, rho, k))
  got = jax.jit(jax.vmap(fn))(g, S, Y, rho, k)
  for i in range(len(ks)):
    one = fn(g[i], S[i], Y[i], rho[i], k[i])
    np.testing.assert_allclose(np.asarray(got[i]), np.asarray(one), rtol=1e-13)


def test_dtype_preserved():
  for dt in (jnp.float32, jnp.float64):
    with jax.enable_x64(dt == jnp.float64):
      _, S, Y, rho, g = _pairs(4)
      a = tuple(jnp.asarray(x, dt) for x in (g, S, Y, rho)) + (jnp.int32(4),)
      gamma = scaling(*a[1:])
      d = two_loop(*a, gamma)
      assert gamma.dtype == dt and d.dtype == dt
      assert two_loop(*a, jnp.asarray(0.1, dt)).dtype == dt
