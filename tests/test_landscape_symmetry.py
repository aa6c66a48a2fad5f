"""Network symmetries: the loss is invariant, the aligned distance sees through them."""
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np

from lossland.landscape import potentials, symmetry


def test_symmetries_preserve_loss_and_distance_is_invariant():
  rng = np.random.default_rng(0)
  sizes = (4, 5, 3, 3)
  x = rng.standard_normal((20, 4))
  y = rng.integers(0, 3, 20)
  net = potentials.make_network_loss(jnp.asarray(x), jnp.asarray(y), sizes, 1e-3)
  w = rng.standard_normal(net.n_params)
  perms = [rng.permutation(5), rng.permutation(3)]
  signs = [rng.choice([-1.0, 1.0], 5), rng.choice([-1.0, 1.0], 3)]
  w_sym = symmetry.apply_symmetry(w, sizes, perms, signs)
  assert np.max(np.abs(w_sym - w)) > 0.1  # the copy really moved
  np.testing.assert_allclose(net.loss_fn(jnp.asarray(w_sym)), net.loss_fn(jnp.asarray(w)),
                             rtol=1e-13)
  dist = symmetry.network_distance_fn(sizes)
  assert dist(w, w_sym) < 1e-12
  other = rng.standard_normal(net.n_params)
  other_sym = symmetry.apply_symmetry(other, sizes, perms, signs)
  np.testing.assert_allclose(dist(w, other), dist(w, other_sym), rtol=1e-12)
  assert dist(w, other) > 1.0
  assert dist(w, other) <= np.linalg.norm(w - other) + 1e-12
  # Without sign flips (non-odd activation) a flipped copy is not equivalent.
  assert symmetry.network_distance_fn(sizes, odd=False)(w, w_sym) > 1e-3
