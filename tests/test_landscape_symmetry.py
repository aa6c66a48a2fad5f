"""The landscape's network energy is nets' forward pass; network symmetries: the loss
is invariant, the aligned distance sees through them."""
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np
import pytest

from lossland import nets
from lossland.landscape import potentials, symmetry


def _data(rng, n=20, d=4, k=3):
  return rng.standard_normal((n, d)), rng.integers(0, k, n)


def _reference_loss(w_old, x, y, sizes, lam):
  """The pre-nets implementation in plain NumPy: flat layout W (row-major) then b
  per layer, tanh hidden layers, mean softmax cross-entropy + lam |w|^2."""
  h, i = x, 0
  n_layers = len(sizes) - 1
  for l, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
    wl, bl = w_old[i:i + a * b].reshape(a, b), w_old[i + a * b:i + a * b + b]
    i += a * b + b
    h = h @ wl + bl
    if l < n_layers - 1:
      h = np.tanh(h)
  m = h.max(-1, keepdims=True)
  logp = h - m - np.log(np.exp(h - m).sum(-1, keepdims=True))
  return -logp[np.arange(len(y)), y].mean() + lam * w_old @ w_old


def _old_to_nets_layout(w_old, sizes):
  """W-then-b per layer -> nets' ravel_pytree order (b then W per layer)."""
  parts, i = [], 0
  for a, b in zip(sizes[:-1], sizes[1:]):
    parts += [w_old[i + a * b:i + a * b + b], w_old[i:i + a * b]]
    i += a * b + b
  return np.concatenate(parts)


@pytest.mark.parametrize('sizes', [(4, 5, 3), (4, 5, 5, 3), (4, 3)])
def test_energy_equals_the_pre_nets_implementation(sizes):
  rng = np.random.default_rng(1)
  x, y = _data(rng)
  net = potentials.make_network_loss(jnp.asarray(x), jnp.asarray(y), sizes, 1e-3)
  assert net.n_params == sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
  assert net.net == nets.NetConfig(d=4, width=sizes[1] if len(sizes) > 2 else 0,
                                   depth=len(sizes) - 2, activation='tanh',
                                   parametrization='standard', bias=True, n_out=3,
                                   normalize_activation=False)
  loss = jax.jit(net.loss_fn)
  for _ in range(3):
    w_old = rng.standard_normal(net.n_params)
    w = _old_to_nets_layout(w_old, sizes)
    np.testing.assert_allclose(float(loss(jnp.asarray(w))),
                               _reference_loss(w_old, x, y, sizes, 1e-3), rtol=1e-12)
  # The flat layout is nets': the params pytree is unravel_fn's.
  params = net.params_fn(jnp.asarray(w))
  ref = nets.unravel_fn(net.net)(jnp.asarray(w))
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref)):
    np.testing.assert_array_equal(a, b)
  back = symmetry.to_flat(symmetry.to_params(w, sizes), sizes)
  np.testing.assert_array_equal(back, w)
  np.testing.assert_array_equal(symmetry.to_params(w, sizes)[0]['w'], params[0]['w'])


def test_dtype_is_the_callers():
  rng = np.random.default_rng(0)
  x, y = _data(rng)
  net = potentials.make_network_loss(x, y, (4, 5, 3), 1e-3)
  assert net.init_fn(jax.random.key(0)).dtype == jnp.float64
  with jax.enable_x64(False):
    w32 = net.init_fn(jax.random.key(0))
    assert w32.dtype == jnp.float32 and jax.jit(net.loss_fn)(w32).dtype == jnp.float32
    assert potentials.lj_random_configuration(jax.random.key(0), 4).dtype == jnp.float32
  w64 = net.init_fn(jax.random.key(0), jnp.float64)
  assert w32.shape == w64.shape == (net.n_params,)
  assert jax.jit(net.loss_fn)(w64).dtype == jnp.float64
  # nets' init: weights N(0, 1/fan_in), biases zero.
  p = net.params_fn(w64)
  assert not np.any(p[0]['b']) and not np.any(p[1]['b']) and np.all(p[0]['w'] != 0)


def test_unequal_hidden_widths_and_one_output_are_refused():
  with pytest.raises(ValueError, match='one width'):
    potentials.network_config((4, 5, 3, 3))
  with pytest.raises(ValueError, match='two outputs'):
    potentials.network_config((4, 5, 1))


def test_symmetries_preserve_loss_and_distance_is_invariant():
  rng = np.random.default_rng(0)
  sizes = (4, 5, 5, 3)
  x, y = _data(rng)
  net = potentials.make_network_loss(jnp.asarray(x), jnp.asarray(y), sizes, 1e-3)
  w = rng.standard_normal(net.n_params)
  perms = [rng.permutation(5), rng.permutation(5)]
  signs = [rng.choice([-1.0, 1.0], 5), rng.choice([-1.0, 1.0], 5)]
  w_sym = symmetry.apply_symmetry(w, sizes, perms, signs)
  assert np.max(np.abs(w_sym - w)) > 0.1  # the copy really moved
  np.testing.assert_allclose(net.loss_fn(jnp.asarray(w_sym)), net.loss_fn(jnp.asarray(w)),
                             rtol=1e-13)
  # The same symmetry on the pytree, checked by hand on one entry: the unit at
  # slot j of layer 0 is old unit perms[0][j] times its sign.
  p, p_sym = symmetry.to_params(w, sizes), symmetry.to_params(w_sym, sizes)
  j = 2
  np.testing.assert_array_equal(p_sym[0]['w'][:, j],
                                signs[0][perms[0][j]] * p[0]['w'][:, perms[0][j]])
  np.testing.assert_array_equal(p_sym[0]['b'][j], signs[0][perms[0][j]] * p[0]['b'][perms[0][j]])
  dist = symmetry.network_distance_fn(sizes)
  assert dist(w, w_sym) < 1e-12
  np.testing.assert_allclose(symmetry.align_network(w, w_sym, net.net), w, atol=1e-12)
  other = rng.standard_normal(net.n_params)
  other_sym = symmetry.apply_symmetry(other, net.net, perms, signs)
  np.testing.assert_allclose(dist(w, other), dist(w, other_sym), rtol=1e-12)
  assert dist(w, other) > 1.0
  assert dist(w, other) <= np.linalg.norm(w - other) + 1e-12
  # Without sign flips (non-odd activation) a flipped copy is not equivalent.
  assert symmetry.network_distance_fn(sizes, odd=False)(w, w_sym) > 1e-3


def test_alignment_of_a_relu_net_without_biases():
  """Any nets.NetConfig: ReLU (permutations only, odd by default False), no biases."""
  cfg = nets.NetConfig(d=3, width=6, depth=2)
  init_fn, apply_fn = nets.make_net(cfg)
  params = init_fn(jax.random.key(0))
  rng = np.random.default_rng(3)
  perms = [rng.permutation(6), rng.permutation(6)]
  ones = [np.ones(6), np.ones(6)]
  p_sym = symmetry.permute_params(params, perms, ones)
  x = jax.random.normal(jax.random.key(1), (5, 3))
  np.testing.assert_allclose(apply_fn(jax.tree_util.tree_map(jnp.asarray, p_sym), x),
                             apply_fn(params, x), rtol=1e-12)
  flat = symmetry.to_flat(params, cfg)
  flat_sym = symmetry.to_flat(p_sym, cfg)
  assert np.linalg.norm(flat - flat_sym) > 0.1
  assert symmetry.network_distance_fn(cfg)(flat, flat_sym) < 1e-12


def test_flat_symmetry_functions_keep_the_input_dtype():
  sizes = (3, 4, 2)
  w = np.random.default_rng(0).standard_normal(3 * 4 + 4 + 4 * 2 + 2)
  perm, sign = [np.array([2, 0, 3, 1])], [np.array([1., -1., -1., 1.])]
  w32 = w.astype(np.float32)
  s32 = symmetry.apply_symmetry(w32, sizes, perm, sign)
  assert s32.dtype == np.float32
  np.testing.assert_array_equal(s32, symmetry.apply_symmetry(w, sizes, perm, sign).astype(np.float32))
  assert symmetry.align_network(w32, s32, sizes).dtype == np.float32
  np.testing.assert_array_equal(symmetry.align_network(w32, s32, sizes), w32)
