import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np
import pytest

from lossland import losses, nets


def test_closed_forms():
  d = jnp.array([-2.0, -0.5, 0.0, 0.5, 2.0])
  np.testing.assert_allclose(losses.quadratic_hinge(d), [0, 0, 0, 0.125, 2.0])
  np.testing.assert_allclose(losses.hinge(d), [0, 0, 0, 0.5, 2.0])
  np.testing.assert_allclose(losses.squared(d), 0.5 * d ** 2)
  np.testing.assert_allclose(losses.logistic(d), np.log1p(np.exp(np.asarray(d))), rtol=1e-12)
  np.testing.assert_allclose(losses.soft_hinge(d, 5.0), np.log1p(np.exp(5 * np.asarray(d))) / 5, rtol=1e-12)


@pytest.mark.parametrize("name", ["quadratic_hinge", "hinge"])
def test_convention_at_zero(name):
  # Delta = 0 is satisfied: loss, first and second derivative vanish there.
  fn = losses.get_loss(name)
  zero = jnp.zeros(())
  assert float(fn(zero)) == 0.0
  assert float(jax.grad(fn)(zero)) == 0.0
  assert float(jax.grad(jax.grad(fn))(zero)) == 0.0
  assert int(losses.n_unsatisfied(jnp.array([0.0, 0.0, 1e-300]))) == 1


def test_derivatives_against_finite_differences():
  for name in losses.LOSS_NAMES:
    fn = losses.get_loss(name)
    for x in (-1.3, -0.2, 0.4, 1.7):
      h = 1e-6
      fd = (fn(jnp.asarray(x + h)) - fn(jnp.asarray(x - h))) / (2 * h)
      np.testing.assert_allclose(jax.grad(fn)(jnp.asarray(x)), fd, rtol=1e-6, atol=1e-9)


def test_mean_loss_gradient_against_finite_differences():
  cfg = nets.NetConfig(d=4, width=6, depth=2)
  init_fn, apply_fn = nets.make_net(cfg)
  params = init_fn(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (12, 4))
  y = jnp.where(jnp.arange(12) % 2 == 0, 1.0, -1.0)
  lc = losses.LossConfig("quadratic_hinge", margin=2.0)  # many unsatisfied points
  loss = lambda p: losses.mean_loss(lc, apply_fn(p, x), y)
  flat, unravel = ravel_pytree(params)
  g = ravel_pytree(jax.grad(loss)(params))[0]
  rng = np.random.default_rng(0)
  for _ in range(3):
    v = jnp.asarray(rng.normal(size=flat.shape))
    h = 1e-6
    fd = (loss(unravel(flat + h * v)) - loss(unravel(flat - h * v))) / (2 * h)
    np.testing.assert_allclose(jnp.dot(g, v), fd, rtol=1e-6)


def test_defaults_and_errors():
  assert losses.LossConfig().epsilon == 1.0
  assert losses.LossConfig("logistic").epsilon == 0.0
  assert losses.LossConfig("hinge", margin=0.5).epsilon == 0.5
  with pytest.raises(ValueError):
    losses.LossConfig("mse")
