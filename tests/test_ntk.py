import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from lossland import data, losses, nets, ntk


def _params(cfg, seed=0, random_bias=False):
  p = nets.make_net(cfg)[0](jax.random.key(seed))
  if random_bias:  # nonzero biases so that their gradients are tested too
    p = [dict(l, b=jax.random.normal(jax.random.key(10 + i), l["b"].shape))
         if "b" in l else l for i, l in enumerate(p)]
  return p


@pytest.mark.parametrize("kw", [
    {}, {"bias": True, "activation": "tanh", "alpha": 0.7},
    {"parametrization": "standard", "init": "orthogonal", "activation": "softplus"},
])
@pytest.mark.parametrize("impl", ["structured", "vp", "jacobian"])
def test_empirical_ntk_equals_jacobian_product(kw, impl):
  cfg = nets.NetConfig(d=4, width=7, depth=3, **kw)
  apply_fn = nets.make_net(cfg)[1]
  p = _params(cfg, random_bias=True)
  x1 = jax.random.normal(jax.random.key(1), (5, 4))
  x2 = jax.random.normal(jax.random.key(2), (6, 4))
  flat, unravel = ravel_pytree(p)
  jac = jax.jit(lambda w, x: jax.jacobian(lambda v: apply_fn(unravel(v), x))(w))
  j1, j2 = jac(flat, x1), jac(flat, x2)
  theta = jax.jit(ntk.empirical_ntk_fn(cfg, impl, chunk_size=2))(p, x1, x2)
  assert theta.dtype == jnp.float64 and theta.shape == (5, 6)
  np.testing.assert_allclose(theta, j1 @ j2.T, rtol=0, atol=1e-10)


def test_empirical_ntk_apply_fn_offset_vmap_and_dtype():
  cfg = nets.NetConfig(d=3, width=5, depth=2)
  init_fn, apply_fn = nets.make_net(cfg)
  x = jax.random.normal(jax.random.key(1), (4, 3))
  ps = jax.vmap(init_fn)(jax.random.split(jax.random.key(0), 3))
  p0 = jax.tree_util.tree_map(lambda a: a[0], ps)
  # f(w) - f(w0) has the kernel of f(w)
  shifted = lambda p, x: apply_fn(p, x) - jax.lax.stop_gradient(apply_fn(p0, x))
  single = jax.jit(ntk.empirical_ntk_fn(cfg))
  a = jax.jit(ntk.empirical_ntk_fn(shifted))(p0, x, x)
  np.testing.assert_allclose(a, single(p0, x, x), atol=1e-12)
  # vmapped over members == one member at a time
  batched = jax.jit(jax.vmap(ntk.empirical_ntk_fn(cfg), (0, None, None)))(ps, x, x)
  for k in range(3):
    one = single(jax.tree_util.tree_map(lambda a: a[k], ps), x, x)
    np.testing.assert_allclose(batched[k], one, atol=1e-12)
  with jax.enable_x64(False):
    p32 = nets.make_net(cfg, dtype=jnp.float32)[0](jax.random.key(0))
    for impl in ("structured", "vp"):
      t = jax.jit(ntk.empirical_ntk_fn(cfg, impl))(p32, x.astype(jnp.float32),
                                                   x.astype(jnp.float32))
      assert t.dtype == jnp.float32
  with pytest.raises(ValueError):
    ntk.empirical_ntk_fn(lambda p, x: x, "structured")
  with pytest.raises(ValueError):
    ntk.empirical_ntk_fn(cfg, "magic")


def _mc_kernels(x, act, depth, bias, n=400_000, seed=0):
  """The same recursion with every Gaussian expectation by Monte Carlo."""
  rng = np.random.default_rng(seed)
  phi = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh,
         "softplus": lambda z: np.logaddexp(0, z)}[act]
  dphi = {"relu": lambda z: (z > 0).astype(float),
          "tanh": lambda z: 1 - np.tanh(z) ** 2,
          "softplus": lambda z: 1 / (1 + np.exp(-z))}[act]
  c2 = 1 / nets._SECOND_MOMENT[act]
  b = 1.0 if bias else 0.0
  sigma = x @ x.T / x.shape[1]
  theta = sigma + b
  for _ in range(depth):
    z = rng.multivariate_normal(np.zeros(len(x)), sigma, size=n,
                                method="eigh")               # [n, P]
    f, fd = phi(z), dphi(z)
    new = c2 * f.T @ f / n
    theta = new + c2 * (fd.T @ fd / n) * theta + b
    sigma = new
  return sigma, theta


@pytest.mark.parametrize("act,bias", [("relu", False), ("tanh", True), ("softplus", False)])
def test_kernel_fn_against_monte_carlo(act, bias):
  x = np.array(data.normalize_to_sphere(jax.random.normal(jax.random.key(4), (4, 3))))
  x[1] *= 1.3  # off the sphere: the diagonal recursion is tested too
  cfg = nets.NetConfig(d=3, width=1, depth=3, activation=act, bias=bias, alpha=1.5)
  k = ntk.kernel_fn(cfg)(jnp.asarray(x), jnp.asarray(x))
  nngp, theta = _mc_kernels(x, act, 3, bias)
  # Monte Carlo error ~ 1/sqrt(4e5) per layer, a few layers: ~1e-2 relative
  np.testing.assert_allclose(k["nngp"], 2.25 * nngp, rtol=0.02, atol=0.02)
  np.testing.assert_allclose(k["ntk"], 2.25 * theta, rtol=0.02, atol=0.02)


def test_kernel_fn_closed_forms_and_errors():
  x = jax.random.normal(jax.random.key(0), (5, 3))
  # depth 0: the linear model's exact kernels
  k = ntk.kernel_fn(nets.NetConfig(d=3, width=1, depth=0, bias=True, alpha=2.0))(x, x)
  np.testing.assert_allclose(k["nngp"], 4 * x @ x.T / 3, atol=1e-12)
  np.testing.assert_allclose(k["ntk"], 4 * (x @ x.T / 3 + 1), atol=1e-12)
  # normalized ReLU keeps the diagonal: Sigma_l(x, x) = |x|^2 / d in every layer
  k = ntk.kernel_fn(nets.NetConfig(d=3, width=1, depth=4))(x, x)
  np.testing.assert_allclose(jnp.diag(k["nngp"]), jnp.sum(x * x, 1) / 3, rtol=1e-12)
  # ... and the NTK diagonal is (L + 1) times it (kdot = 1 on the diagonal)
  np.testing.assert_allclose(jnp.diag(k["ntk"]), 5 * jnp.sum(x * x, 1) / 3, rtol=1e-12)
  # quadrature (tanh): on the sphere the normalized activation keeps unit
  # variance, and the kernel is symmetric to the quadrature error (~1e-5)
  xs = data.normalize_to_sphere(x)
  kt = ntk.kernel_fn(nets.NetConfig(d=3, width=1, depth=2, activation="tanh"))(xs, xs)
  np.testing.assert_allclose(jnp.diag(kt["nngp"]), 1.0, rtol=1e-8)
  np.testing.assert_allclose(kt["ntk"], kt["ntk"].T, rtol=1e-5)
  assert float(jnp.linalg.eigvalsh(kt["ntk"])[0]) > 0
  with pytest.raises(ValueError, match="standard"):
    ntk.kernel_fn(nets.NetConfig(d=3, width=4, depth=2, parametrization="standard"))
  with pytest.raises(ValueError):
    ntk.kernel_fn(nets.NetConfig(d=3, width=4, depth=2))(x[:, :2], x[:, :2])


def test_empirical_ntk_converges_to_kernel_fn_like_inverse_sqrt_width():
  x = data.normalize_to_sphere(jax.random.normal(jax.random.key(1), (10, 5)))
  errors = {}
  for h in (64, 1024):
    cfg = nets.NetConfig(d=5, width=h, depth=2)
    k = ntk.kernel_fn(cfg)(x, x)["ntk"]
    ps = jax.vmap(nets.make_net(cfg)[0])(jax.random.split(jax.random.key(3), 6))
    th = jax.jit(jax.vmap(ntk.empirical_ntk_fn(cfg), (0, None, None)))(ps, x, x)
    errors[h] = float(jnp.mean(jnp.linalg.norm(th - k, axis=(1, 2))) / jnp.linalg.norm(k))
  # width x16 -> error / 4 for width^-1/2 (measured ~3.5); a biased kernel_fn
  # would leave an error floor and a ratio near 1.
  ratio = errors[64] / errors[1024]
  assert 2.5 < ratio < 6.5, errors
  assert errors[1024] < 0.15


def test_kernel_regression_against_direct_solve():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(8, 8))
  k = a @ a.T + 0.1 * np.eye(8)
  kt = rng.normal(size=(3, 8))
  y = rng.normal(size=8)
  np.testing.assert_allclose(ntk.kernel_regression(k, y, kt), kt @ np.linalg.inv(k) @ y,
                             rtol=1e-9)
  np.testing.assert_allclose(ntk.kernel_regression(k, y, kt, ridge=0.5),
                             kt @ np.linalg.inv(k + 0.5 * np.eye(8)) @ y, rtol=1e-9)
  # interpolation on the training points
  np.testing.assert_allclose(ntk.kernel_regression(k, y, k), y, atol=1e-10)


def _separable(P=30, d=4, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(P + 20, d))
  y = np.sign(x @ rng.normal(size=d))
  return x[:P], y[:P], x[P:], y[P:]


@pytest.mark.parametrize("name", ["hinge", "quadratic_hinge"])
def test_kernel_hinge_flow_fits_separable_data(name):
  xtr, ytr, xte, yte = _separable()
  k, kt = xtr @ xtr.T, xte @ xtr.T  # linear kernel: separable = fittable
  out = ntk.kernel_hinge_flow(jnp.asarray(k), jnp.asarray(ytr), jnp.asarray(kt),
                              losses.LossConfig(name), rtol=1e-14)
  assert bool(out["converged"])
  margins = ytr * np.asarray(out["f_train"])
  if name == "hinge":
    assert int(out["n_delta"]) == 0 and float(out["loss"]) == 0.0
    assert margins.min() >= 1.0
  else:
    assert float(out["loss"]) < 1e-12 and margins.min() > 1 - 1e-6
  # test outputs follow through the same coefficients
  np.testing.assert_allclose(out["f_test"], kt @ np.asarray(out["coef"]), atol=1e-10)
  assert np.mean(np.sign(out["f_test"]) != yte) < 0.3


def test_kernel_hinge_flow_equals_explicit_euler_loop():
  xtr, ytr, _, _ = _separable(P=12)
  k = np.tanh(xtr @ xtr.T / 4) + np.eye(12)
  cfg = losses.LossConfig("quadratic_hinge", margin=1.0, scale=0.25)
  dt, n = 0.3, 40
  out = ntk.kernel_hinge_flow(jnp.asarray(k), jnp.asarray(ytr), None, cfg, dt=dt,
                              max_steps=n, rtol=0.0, adaptive=False)
  f = np.zeros(12)
  for _ in range(n):  # df/dt = (scale / P) K ell'(Delta) y, ell' = relu(Delta)
    delta = 1 - ytr * f
    f = f + dt * 0.25 / 12 * k @ (np.maximum(delta, 0) * ytr)
  assert int(out["steps"]) == n
  np.testing.assert_allclose(out["f_train"], f, rtol=1e-12, atol=1e-12)
