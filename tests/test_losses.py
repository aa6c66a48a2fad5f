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
  rows = jnp.array([[0.0, 1.0, -1.0], [2.0, 3.0, 0.5]])
  assert losses.n_unsatisfied(rows, axis=-1).tolist() == [1, 3]


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


def test_loss_scale_and_alpha_config():
  lc = losses.alpha_loss_config("hinge", alpha=4.0)
  assert lc.scale == 1 / 16 and lc.epsilon == 1.0 and lc.name == "hinge"
  assert losses.alpha_loss_config("quadratic_hinge", 2.0, margin=0.5).epsilon == 0.5
  f, y = jnp.array([0.2, -1.0, 3.0]), jnp.array([1.0, 1.0, -1.0])
  np.testing.assert_allclose(losses.mean_loss(lc, f, y),
                             np.mean(np.maximum(1 - np.asarray(y * f), 0)) / 16)
  assert losses.LossConfig().scale == 1.0
  for bad in (0.0, -1.0, float("inf")):
    with pytest.raises(ValueError):
      losses.LossConfig(scale=bad)
    with pytest.raises(ValueError):
      losses.alpha_loss_config("hinge", alpha=bad)


def _gd_outputs(alpha, scale, x, y, steps, lr):
  """Plain gradient descent on scale * mean ell(1 - y alpha (f - f0))."""
  cfg = nets.NetConfig(d=x.shape[1], width=32, depth=2, alpha=alpha)
  init_fn, apply_fn = nets.make_net(cfg)
  p0 = init_fn(jax.random.key(0))
  out = nets.output_fn(apply_fn, subtract_init=True)
  lc = losses.LossConfig("quadratic_hinge", scale=scale)
  grad = jax.jit(jax.grad(lambda p: losses.mean_loss(lc, out(p, p0, x), y)))
  p = p0
  for _ in range(steps):
    p = jax.tree_util.tree_map(lambda a, g: a - lr * g, p, grad(p))
  return out(p, p0, x)


def test_alpha_rescaled_loss_gives_alpha_independent_lazy_dynamics():
  # F = alpha (f - f0) with the loss / alpha^2: the function-space dynamics
  # tends to the alpha-independent kernel flow with the NTK of f at init
  # (1906.08034); without the 1/alpha^2 the outputs move alpha^2 faster.
  from lossland import ntk
  x = jax.random.normal(jax.random.key(1), (10, 4))
  y = jnp.where(jnp.arange(10) % 2 == 0, 1.0, -1.0)
  steps, lr = 20, 1.0
  cfg1 = nets.NetConfig(d=4, width=32, depth=2)
  theta = ntk.empirical_ntk_fn(cfg1)(nets.make_net(cfg1)[0](jax.random.key(0)), x, x)
  lazy = ntk.kernel_hinge_flow(theta, y, None, losses.LossConfig("quadratic_hinge"),
                               dt=lr, max_steps=steps, rtol=0.0, adaptive=False)["f_train"]
  rel = lambda a: float(jnp.linalg.norm(a - lazy) / jnp.linalg.norm(lazy))
  err_feature = rel(_gd_outputs(0.1, 100.0, x, y, steps, lr))
  err_lazy = rel(_gd_outputs(1e3, 1e-6, x, y, steps, lr))
  err_mid = rel(_gd_outputs(30.0, 1 / 900, x, y, steps, lr))
  # lazy corrections are O(1 / (alpha sqrt(h)))
  assert err_lazy < 1e-3 and err_mid > 3 * err_lazy and err_feature > 3 * err_mid, (
      err_lazy, err_mid, err_feature)


def test_softmax_cross_entropy_against_numpy():
  rng = np.random.default_rng(0)
  z = rng.standard_normal((7, 4)) * 3
  y = rng.integers(0, 4, 7)
  ref = np.log(np.exp(z).sum(-1)) - z[np.arange(7), y]  # -log(e^{z_y} / sum e^z)
  got = losses.softmax_cross_entropy(jnp.asarray(z), jnp.asarray(y))
  assert got.shape == (7,)
  np.testing.assert_allclose(got, ref, rtol=1e-13)
  # Large logits: the shifted formula (NumPy's naive one overflows).
  big = z + 1000.0
  m = big.max(-1)
  ref_big = m + np.log(np.exp(big - m[:, None]).sum(-1)) - big[np.arange(7), y]
  np.testing.assert_allclose(losses.softmax_cross_entropy(jnp.asarray(big), y), ref_big,
                             rtol=1e-10)
  # Gradient: softmax(z) - onehot(y), per example.
  g = jax.grad(lambda a: jnp.sum(losses.softmax_cross_entropy(a, y)))(jnp.asarray(z))
  p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
  np.testing.assert_allclose(g, p - np.eye(4)[y], rtol=1e-12, atol=1e-14)
  # Batch dimensions and dtype are kept.
  assert losses.softmax_cross_entropy(jnp.zeros((2, 3, 5)), jnp.zeros((2, 3), int)).shape == (2, 3)
  with jax.enable_x64(False):
    out = losses.softmax_cross_entropy(jnp.asarray(z, jnp.float32), y)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, rtol=1e-5)
