import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lossland import nets


def test_weight_count_matches_papers():
  # nn_jamming/nips2018.md: L = 3, d = h = 51 gives N = 7854.
  assert nets.n_weights(51, 51, 3) == 7854
  assert nets.n_weights(62, 62, 2) == 7750
  assert nets.n_weights(10, 30, 5) == 3930
  cfg = nets.NetConfig(d=5, width=7, depth=2, bias=True)
  init_fn, _ = nets.make_net(cfg)
  params = init_fn(jax.random.key(0))
  assert nets.tree_size(params) == nets.n_params(cfg) == 5 * 7 + 7 * 7 + 7 + 7 + 7 + 1
  cfg = nets.NetConfig(d=5, width=7, depth=2)
  assert nets.tree_size(nets.make_net(cfg)[0](jax.random.key(0))) == nets.n_weights(5, 7, 2)


@pytest.mark.parametrize("depth", [1, 3, 5])
def test_width_for_n_is_closest(depth):
  for target in (100, 1000, 7854, 20000):
    h = nets.width_for_n(target, 10, depth)
    best = min(range(1, 3000), key=lambda w: abs(nets.n_weights(10, w, depth) - target))
    assert abs(nets.n_weights(10, h, depth) - target) == abs(nets.n_weights(10, best, depth) - target)


@pytest.mark.parametrize("activation", ["relu", "tanh", "softplus"])
def test_activation_normalization(activation):
  x, w = np.polynomial.hermite_e.hermegauss(120)
  w = w / w.sum()
  phi = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh,
         "softplus": lambda z: np.logaddexp(0, z)}[activation]
  np.testing.assert_allclose(nets._SECOND_MOMENT[activation], (phi(x) ** 2 * w).sum(), rtol=1e-10)


def test_ntk_and_standard_are_the_same_function_at_init(key):
  x = jax.random.normal(jax.random.key(1), (16, 6))
  for init in ("normal", "orthogonal"):
    f = {}
    for par in ("ntk", "standard"):
      cfg = nets.NetConfig(d=6, width=9, depth=3, parametrization=par, init=init)
      init_fn, apply_fn = nets.make_net(cfg)
      f[par] = apply_fn(init_fn(key), x)
    np.testing.assert_allclose(f["ntk"], f["standard"], rtol=1e-10)


def test_forward_against_plain_numpy(key):
  cfg = nets.NetConfig(d=4, width=5, depth=2, activation="tanh", bias=True, alpha=0.7)
  init_fn, apply_fn = nets.make_net(cfg)
  params = init_fn(key)
  params = jax.tree_util.tree_map(lambda a: a + 0.1, params)  # nonzero biases
  x = np.asarray(jax.random.normal(jax.random.key(2), (3, 4)))
  z = x
  c = 1 / math.sqrt(nets._SECOND_MOMENT["tanh"])
  for i, layer in enumerate(params):
    w, b = np.asarray(layer["w"]), np.asarray(layer["b"])
    z = z @ w / math.sqrt(w.shape[0]) + b
    if i < len(params) - 1:
      z = c * np.tanh(z)
  np.testing.assert_allclose(apply_fn(params, x), 0.7 * z[:, 0], rtol=1e-12)
  # one example and a batch agree
  np.testing.assert_allclose(apply_fn(params, x[0]), apply_fn(params, x)[0], rtol=1e-12)


def test_orthogonal_init_is_orthogonal(key):
  cfg = nets.NetConfig(d=8, width=8, depth=2, init="orthogonal", parametrization="standard")
  params = nets.make_net(cfg)[0](key)
  w = np.asarray(params[1]["w"])
  np.testing.assert_allclose(w.T @ w, np.eye(8), atol=1e-12)


def test_preactivations_have_unit_scale_at_init():
  # Over many inits, hidden pre-activations have second moment ~ 1 at all depths.
  cfg = nets.NetConfig(d=20, width=200, depth=4)
  init_fn, apply_fn = nets.make_net(cfg)
  x = jax.random.normal(jax.random.key(3), (64, 20))
  x = x * jnp.sqrt(20) / jnp.linalg.norm(x, axis=1, keepdims=True)
  f = jnp.stack([apply_fn(init_fn(jax.random.key(s)), x) for s in range(20)])
  assert 0.6 < float(jnp.mean(f ** 2)) < 1.6


def test_subtract_init_output_starts_at_zero(key):
  cfg = nets.NetConfig(d=3, width=4, depth=1)
  init_fn, apply_fn = nets.make_net(cfg)
  p0 = init_fn(key)
  fn = nets.output_fn(apply_fn, subtract_init=True)
  x = jnp.ones((2, 3))
  np.testing.assert_allclose(fn(p0, p0, x), 0.0)
  # gradient does not flow into params0
  g = jax.grad(lambda q: jnp.sum(fn(p0, q, x)))(p0)
  assert all(float(jnp.abs(l).max()) == 0 for l in jax.tree_util.tree_leaves(g))


@pytest.mark.parametrize("bad", [dict(d=0, width=3, depth=1), dict(d=3, width=0, depth=1),
                                 dict(d=3, width=3, depth=1, activation="gelu"),
                                 dict(d=3, width=3, depth=1, init="xavier")])
def test_bad_configs_raise(bad):
  with pytest.raises(ValueError):
    nets.NetConfig(**bad)


def test_dtype_follows_x64():
  cfg = nets.NetConfig(d=3, width=4, depth=2)
  init_fn, apply_fn = nets.make_net(cfg)
  p = init_fn(jax.random.key(0))
  assert p[0]["w"].dtype == jnp.float64
  with jax.enable_x64(False):
    p = init_fn(jax.random.key(0))
    assert p[0]["w"].dtype == jnp.float32
    assert apply_fn(p, jnp.ones((2, 3), jnp.float32)).dtype == jnp.float32


def _authors_orthogonal_numpy(g):
  # nn_jamming functions.orthogonal_(tensor, gain=1), transliterated from
  # PyTorch: W [rows, cols] filled cols rows at a time.
  rows, cols = g.shape
  w = np.empty_like(g)
  for i in range(0, rows, cols):
    q, r = np.linalg.qr(g[i:i + cols].T)
    q = q * np.sign(np.diag(r))
    w[i:i + cols] = q.T
  return w


@pytest.mark.parametrize("shape", [(3, 5), (5, 5), (12, 5), (1, 7)])
def test_orthogonal_gain1_is_the_authors_construction(shape):
  g = np.asarray(jax.random.normal(jax.random.key(4), shape))
  w = np.asarray(nets.orthogonal_rows(jnp.asarray(g)))
  np.testing.assert_allclose(w, _authors_orthogonal_numpy(g), atol=1e-12)
  np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, rtol=1e-12)


def test_authors_net_init_structure(key):
  # d < h: the first layer stacks independent square orthogonal blocks (no
  # rescaling), every neuron's incoming weights have norm 1, biases are zero.
  cfg = nets.authors_net(d=5, width=12, depth=2)
  assert cfg.init == "orthogonal_gain1" and not cfg.normalize_activation
  assert cfg.parametrization == "standard" and cfg.bias
  params = nets.make_net(cfg)[0](key)
  w0 = np.asarray(params[0]["w"])  # [5, 12] = W.T
  np.testing.assert_allclose(np.linalg.norm(w0, axis=0), 1.0, rtol=1e-12)
  for blk in (w0[:, 0:5], w0[:, 5:10]):
    np.testing.assert_allclose(blk.T @ blk, np.eye(5), atol=1e-12)
  w1 = np.asarray(params[1]["w"])
  np.testing.assert_allclose(w1.T @ w1, np.eye(12), atol=1e-12)
  np.testing.assert_allclose(np.linalg.norm(params[2]["w"]), 1.0, rtol=1e-12)
  assert all(float(jnp.abs(l["b"]).max()) == 0 for l in params)
  # the default "orthogonal" init differs when fan_out > fan_in (one Haar
  # matrix with orthonormal rows, rescaled), and is the same otherwise
  cfg_o = nets.NetConfig(d=5, width=12, depth=2, init="orthogonal",
                         parametrization="standard")
  w0o = np.asarray(nets.make_net(cfg_o)[0](key)[0]["w"])
  np.testing.assert_allclose(w0o @ w0o.T, 12 / 5 * np.eye(5), atol=1e-12)


def test_authors_forward_pass_against_plain_numpy(key):
  cfg = nets.authors_net(d=4, width=6, depth=3)
  init_fn, apply_fn = nets.make_net(cfg)
  params = jax.tree_util.tree_map(lambda a: a + 0.05, init_fn(key))  # nonzero biases
  x = np.asarray(jax.random.normal(jax.random.key(2), (7, 4)))
  z = x
  for i, layer in enumerate(params):
    W, b = np.asarray(layer["w"]).T, np.asarray(layer["b"])  # torch layout
    z = z @ W.T + b  # nn.Linear
    if i < len(params) - 1:
      z = np.maximum(z, 0)  # F.relu, no sqrt(2)
  np.testing.assert_allclose(apply_fn(params, x), z[:, 0], rtol=1e-12)
  # N counts weights only, as the authors
  assert nets.n_weights(4, 6, 3) == sum(int(l["w"].size) for l in params)


def test_authors_net_output_scale_halves_per_layer():
  # Unit-norm rows and plain ReLU: E[z^2] = 1 after the first layer and is
  # halved by every further layer, so E[f^2] = 2^-L for |x| = sqrt(d).
  depth = 3
  cfg = nets.authors_net(d=20, width=100, depth=depth)
  init_fn, apply_fn = nets.make_net(cfg)
  x = jax.random.normal(jax.random.key(3), (64, 20))
  x = x * jnp.sqrt(20) / jnp.linalg.norm(x, axis=1, keepdims=True)
  f = jnp.stack([apply_fn(init_fn(jax.random.key(s)), x) for s in range(40)])
  assert 0.65 < float(jnp.mean(f ** 2)) * 2 ** depth < 1.5


@pytest.mark.parametrize("bias, param", [(False, "ntk"), (True, "standard")])
def test_dead_points_against_a_plain_loop(bias, param):
  """Dead point: some hidden layer has every unit off, by a NumPy forward pass."""
  cfg = nets.NetConfig(d=3, width=3, depth=3, bias=bias, parametrization=param)
  init_fn, apply_fn = nets.make_net(cfg)
  params = init_fn(jax.random.key(1))
  # push layer 2's biases / weights so that some inputs kill it
  params[1]["w"] = params[1]["w"] - 0.6 * jnp.abs(params[1]["w"]).max()
  if bias:
    params[2]["b"] = jnp.array([0.7, -0.2, 0.1])
  x = jax.random.normal(jax.random.key(2), (400, 3))
  got = np.asarray(nets.dead_points(cfg, params, x))
  want = np.zeros(400, bool)
  for i in range(400):
    z = np.asarray(x[i], np.float64)
    for l, layer in enumerate(params[:-1]):
      w = np.asarray(layer["w"], np.float64)
      z = z @ w / (np.sqrt(w.shape[0]) if param == "ntk" else 1.0)
      if bias:
        z = z + np.asarray(layer["b"])
      if np.all(z <= 0):
        want[i] = True
      z = np.maximum(z, 0) * (np.sqrt(2.0) if cfg.normalize_activation else 1.0)
  assert 0 < want.sum() < 400
  np.testing.assert_array_equal(got, want)
  f = np.asarray(apply_fn(params, x))
  if not bias:
    np.testing.assert_array_equal(f[got], 0.0)     # bias-free: f = 0 exactly
  else:
    np.testing.assert_allclose(f[got], f[got][0])   # with biases: one common value
  with pytest.raises(ValueError):
    nets.dead_points(nets.NetConfig(d=3, width=3, depth=1, activation="tanh"), params[:2], x)


@pytest.mark.parametrize("bias", [False, True])
def test_balanced_keeps_the_function_and_has_the_least_norm_on_the_orbit(bias):
  """nets.balanced: the same outputs, |in| = |out| for every hidden unit, and
  no rescaling of the balanced net (random factors per unit, the orbit) has
  a smaller norm; the input's norm is not smaller either."""
  cfg = nets.NetConfig(d=5, width=7, depth=3, bias=bias)
  init_fn, apply_fn = nets.make_net(cfg, jnp.float64)
  params = init_fn(jax.random.key(3))
  rng = np.random.default_rng(0)
  # move the net along its orbit first, far from balance
  for l in range(cfg.depth):
    c = np.exp(rng.normal(scale=1.5, size=cfg.width))
    params[l] = {k: v * c for k, v in params[l].items()}
    params[l + 1] = dict(params[l + 1], w=params[l + 1]["w"] / c[:, None])
  x = jax.random.normal(jax.random.key(4), (30, 5), jnp.float64)
  bal = nets.balanced(cfg, params)
  np.testing.assert_allclose(apply_fn(bal, x), apply_fn(params, x), rtol=1e-10, atol=1e-12)
  norm = lambda p: float(np.sqrt(sum(np.sum(np.asarray(a) ** 2)
                                     for a in jax.tree_util.tree_leaves(p))))
  for l in range(cfg.depth):
    w_in = np.sum(np.asarray(bal[l]["w"]) ** 2, axis=0)
    if bias:
      w_in = w_in + np.asarray(bal[l]["b"]) ** 2
    np.testing.assert_allclose(w_in, np.sum(np.asarray(bal[l + 1]["w"]) ** 2, axis=1),
                               rtol=1e-8)
  assert norm(bal) < 0.9 * norm(params)
  for _ in range(20):
    q = [dict(layer) for layer in bal]
    for l in range(cfg.depth):
      c = np.exp(rng.normal(scale=0.3, size=cfg.width))
      q[l] = {k: v * c for k, v in q[l].items()}
      q[l + 1] = dict(q[l + 1], w=q[l + 1]["w"] / c[:, None])
    assert norm(q) >= norm(bal) * (1 - 1e-12)
  with pytest.raises(ValueError, match="ReLU"):
    nets.balanced(nets.NetConfig(d=5, width=7, depth=3, activation="tanh"), params)
