"""nets.from_flax: flax modules (linen and nnx) as networks of the trainer,
the curvature code and the NTK code.

Ground truths: make_net's NTK-parametrized MLP (same weights, same outputs
bit for bit; trained by the trainer's own step from the same init), a plain
run of one seed, jax.hessian of the flat loss and an explicit Jacobian
product for the kernel.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx
from jax.flatten_util import ravel_pytree

from lossland import curvature
from lossland import data as data_lib
from lossland import flax_nets
from lossland import losses
from lossland import nets
from lossland import ntk
from lossland import train

D, WIDTH, DEPTH = 5, 6, 2
_SCALE = 1.0 / math.sqrt(0.5)  # make_net's ReLU normalization
_NORMAL = nn.initializers.normal(1.0)
_NNX_LIST = getattr(nnx, "List", list)  # flax < 0.12 keeps plain lists


class LinenMLP(nn.Module):
  """make_net's NTK-parametrized ReLU MLP, written in linen."""
  width: int = WIDTH
  depth: int = DEPTH
  n_out: int = 1

  @nn.compact
  def __call__(self, x):
    for _ in range(self.depth):
      z = nn.Dense(self.width, use_bias=False, kernel_init=_NORMAL)(x)
      x = _SCALE * nn.relu(z / math.sqrt(x.shape[-1]))
    z = nn.Dense(self.n_out, use_bias=False, kernel_init=_NORMAL)(x)
    return z / math.sqrt(x.shape[-1])


class NnxMLP(nnx.Module):
  """The same network in nnx."""

  def __init__(self, d, width, depth, n_out, rngs):
    sizes = [d] + [width] * depth + [n_out]
    self.layers = _NNX_LIST([
        nnx.Linear(a, b, use_bias=False, kernel_init=_NORMAL, rngs=rngs)
        for a, b in zip(sizes[:-1], sizes[1:])])

  def __call__(self, x):
    for i, layer in enumerate(self.layers):
      z = layer(x) / math.sqrt(x.shape[-1])
      x = _SCALE * nnx.relu(z) if i < len(self.layers) - 1 else z
    return x


def _nnx_mlp(rngs, n_out=1):
  return NnxMLP(D, WIDTH, DEPTH, n_out, rngs)


class CNN(nn.Module):
  """A small CNN for the 8x8 digits."""
  features: int = 3

  @nn.compact
  def __call__(self, x):
    x = nn.tanh(nn.Conv(self.features, (3, 3))(x))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    return nn.Dense(1)(x.reshape(x.shape[0], -1))


def _first_loss(res):
  """The first recorded loss of each member (the step-0 record may be NaN)."""
  h = res.history["loss"]
  return h[np.arange(h.shape[0]), np.argmax(np.isfinite(h), axis=1)]


def _from_linen(p):
  return [{"w": p[f"Dense_{i}"]["kernel"]} for i in range(len(p))]


def _from_nnx(p):
  return [{"w": p["layers"][i]["kernel"]} for i in range(len(p["layers"]))]


def _net_cfg(n_out=1):
  return nets.NetConfig(d=D, width=WIDTH, depth=DEPTH, n_out=n_out)


@functools.lru_cache(maxsize=None)
def _digits(P=24, n_test=12):
  """Raw 8x8 digit images (no PCA), parity labels, each image of norm 8."""
  return data_lib.digits(P, 64, n_test, dtype=jnp.float64, pca=False)


@pytest.mark.parametrize("kind", ["linen", "nnx"])
@pytest.mark.parametrize("n_out", [1, 3])
def test_mlp_matches_make_net(kind, n_out):
  if kind == "linen":
    net = nets.from_flax(LinenMLP(n_out=n_out), jnp.zeros((1, D)))
    to_net = _from_linen
  else:
    net = nets.from_flax(functools.partial(_nnx_mlp, n_out=n_out),
                         jnp.zeros((1, D)))
    to_net = _from_nnx
  cfg = _net_cfg(n_out)
  assert (net.d, net.n_out, net.in_shape) == (D, n_out, (D,))
  assert nets.n_params(net) == nets.n_params(cfg)
  init_fn, apply_fn = nets.make_net(net)
  _, apply_ref = nets.make_net(cfg)
  params = init_fn(jax.random.key(3))
  assert all(a.dtype == jnp.float64 for a in jax.tree_util.tree_leaves(params))
  x = jax.random.normal(jax.random.key(4), (7, D))
  f, f_ref = apply_fn(params, x), apply_ref(to_net(params), x)
  assert f.shape == f_ref.shape == ((7,) if n_out == 1 else (7, n_out))
  # Bitwise on the CPU; a GPU may pick different matrix kernels for the two
  # programs (seen on an H200: 1 ulp apart on the single-example path).
  same = (np.testing.assert_array_equal if jax.default_backend() == "cpu" else
          lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15))
  same(f, f_ref)
  # one example without a batch axis, as the NTK code calls it
  same(apply_fn(params, x[2]), apply_ref(to_net(params), x[2]))


@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_vmapped_init_gives_independent_members(kind):
  module = LinenMLP() if kind == "linen" else _nnx_mlp
  net = nets.from_flax(module, jnp.zeros((2, D)))
  init_fn, _ = nets.make_net(net)
  keys = jax.random.split(jax.random.key(0), 4)
  flat = nets.flatten_members(jax.jit(jax.vmap(init_fn))(keys))
  assert flat.shape == (4, nets.n_params(net))
  for k in range(4):  # member k is init_fn(key k) alone
    np.testing.assert_array_equal(flat[k], ravel_pytree(init_fn(keys[k]))[0])
  corr = np.corrcoef(flat)
  assert np.max(np.abs(corr[~np.eye(4, dtype=bool)])) < 0.6
  # N(0, 1) weights, as make_net's NTK init (4 x 84 draws: loose bounds)
  assert abs(np.mean(flat)) < 0.25 and abs(np.std(flat) - 1) < 0.25
  unravel = nets.unravel_fn(net)
  np.testing.assert_array_equal(ravel_pytree(unravel(jnp.asarray(flat[1])))[0],
                                flat[1])


def test_linen_mlp_trains_like_make_net():
  """A flax member of train_ensemble = make_net trained by the trainer's own
  step from the same (mapped) initial weights."""
  data = data_lib.sphere(jax.random.key(1), P=12, d=D, n_test=4)
  loss_cfg = losses.LossConfig("quadratic_hinge")
  cfg = train.TrainConfig(optimizer="adam", lr=1e-2, max_steps=60,
                          chunk_steps=30)
  net = nets.from_flax(LinenMLP(), jnp.zeros((1, D)))
  seeds = [5, 6]
  res = train.train_ensemble(seeds, data, net, loss_cfg, cfg)
  trainer = train.make_trainer(_net_cfg(), loss_cfg, cfg)
  chunk = jax.jit(trainer.chunk_fn, static_argnums=3)
  for k, seed in enumerate(seeds):
    p0 = _from_linen(jax.tree_util.tree_map(lambda a: a[k], res.params0))
    s = trainer.init_fn(jax.random.key(seed), data)
    s = s._replace(params=p0, params0=p0)
    s = chunk(s, data, 0, cfg.max_steps + 1)
    p1 = _from_linen(jax.tree_util.tree_map(lambda a: a[k], res.params))
    np.testing.assert_allclose(ravel_pytree(p1)[0], ravel_pytree(s.params)[0],
                               rtol=1e-10, atol=1e-12)
    assert int(s.code) == res.stop_code[k]
    np.testing.assert_allclose(trainer.measure_fn(s, data)["loss"],
                               res.final["loss"][k], rtol=1e-10)
  assert np.all(res.final["loss"] < 0.5 * _first_loss(res))


def test_nnx_mlp_trains_as_an_ensemble():
  data = data_lib.sphere(jax.random.key(2), P=10, d=D, n_test=0)
  loss_cfg = losses.LossConfig("quadratic_hinge")
  cfg = train.TrainConfig(optimizer="adam", lr=1e-2, max_steps=40,
                          chunk_steps=20)
  net = nets.from_flax(_nnx_mlp, jnp.zeros((1, D)))
  res = train.train_ensemble([0, 1], data, net, loss_cfg, cfg)
  init_fn, apply_fn = nets.make_net(net)
  k_init, _ = jax.random.split(jax.random.key(1))  # the trainer's init stream
  flat0 = nets.flatten_members(res.params0)
  np.testing.assert_array_equal(flat0[1], ravel_pytree(init_fn(k_init))[0])
  assert not np.allclose(flat0[0], flat0[1])
  assert np.all(res.final["loss"] < _first_loss(res))
  p1 = jax.tree_util.tree_map(lambda a: a[1], res.params)
  np.testing.assert_allclose(apply_fn(p1, data.x_train), res.f_train[1],
                             rtol=1e-12)


def test_cnn_on_digits_ensemble_hessian_and_ntk():
  data = _digits()
  net = nets.from_flax(CNN(), jnp.zeros((1, 8, 8, 1)))
  assert net.d == 64 and net.n_params == 3 * 9 + 3 + 3 * 16 + 1 == 79
  loss_cfg = losses.LossConfig("quadratic_hinge")
  cfg = train.TrainConfig(optimizer="adam", lr=3e-2, max_steps=80,
                          chunk_steps=40, stop_at_sat=False)
  res = train.train_ensemble([0, 1, 2], data, net, loss_cfg, cfg)
  flat0, flat = (nets.flatten_members(res.params0),
                 nets.flatten_members(res.params))
  assert flat.dtype == np.float64 and flat.shape == (3, net.n_params)
  corr = np.corrcoef(flat0)
  assert np.max(np.abs(corr[~np.eye(3, dtype=bool)])) < 0.6  # members differ
  assert np.min(np.std(res.f_train, axis=0)) > 0
  assert np.all(res.final["loss"] < 0.5 * _first_loss(res))

  # Hessian: curvature's matrix-free H v against jax.hessian of the flat loss,
  # at a member's initial weights (the trained ones fit the data: H = 0).
  _, apply_fn = nets.make_net(net)
  unravel = nets.unravel_fn(net)
  w = jnp.asarray(flat0[0])
  batch = curvature.examples(data.x_train, data.y_train)
  fns = curvature.curvature_fns(apply_fn, loss_cfg)
  flat_loss = lambda v: fns.loss(unravel(v), batch)
  h_ref = jax.jit(jax.hessian(flat_loss))(w)
  h = jax.jit(jax.vmap(lambda v: fns.hvp(unravel(w), batch, v)))(
      jnp.eye(w.size, dtype=w.dtype))
  scale = float(jnp.max(jnp.abs(h_ref)))
  assert scale > 0
  np.testing.assert_allclose(h, h_ref, rtol=0, atol=1e-10 * scale)
  np.testing.assert_allclose(h, h.T, rtol=0, atol=1e-10 * scale)
  # and the same loss as the trainer's
  delta = losses.margins(apply_fn(unravel(w), data.x_train), data.y_train,
                         loss_cfg.epsilon)
  np.testing.assert_allclose(flat_loss(w), jnp.mean(loss_cfg.fn(delta)),
                             rtol=1e-12)

  # Empirical NTK against the explicit Jacobian product.
  x1, x2 = data.x_train[:6], data.x_test[:5]
  jac = lambda x: jax.jacfwd(lambda v: apply_fn(unravel(v), x))(w)  # [P, N]
  theta_ref = jax.jit(lambda a, b: jac(a) @ jac(b).T)(x1, x2)
  for f, impl in ((apply_fn, "jacobian"), (apply_fn, "vp"), (net, "auto")):
    ntk_fn = jax.jit(ntk.empirical_ntk_fn(f, impl, chunk_size=4))  # net: the config
    theta = ntk_fn(unravel(w), x1, x2)
    np.testing.assert_allclose(theta, theta_ref, rtol=0,
                               atol=1e-10 * float(jnp.max(jnp.abs(theta_ref))))


def test_memory_plan_and_repr():
  net = nets.from_flax(CNN(), jnp.zeros((2, 8, 8, 1)))
  # 3x3 conv (8x8x3) + tanh + pool (4x4x3) + dense: at least these values
  assert net.n_act >= 2 * 8 * 8 * 3 + 4 * 4 * 3
  assert 3 * net.width * net.depth >= 2 * net.n_act
  plan = train.memory_plan(net, train.TrainConfig(), P=100, n_test=10,
                           n_members=4, itemsize=8, available=10**9)
  assert plan["group_size"] == 4 and plan["bytes_per_member"] > 0
  r = repr(net)
  assert "0x" not in r and "CNN(features=3" in r and "N=79" in r
  assert net == nets.from_flax(CNN(), jnp.zeros((5, 8, 8, 1)))
  assert hash(net) == hash(nets.from_flax(CNN(), jnp.zeros((5, 8, 8, 1))))
  assert net != nets.from_flax(CNN(features=4), jnp.zeros((1, 8, 8, 1)))
  other = repr(nets.from_flax(CNN(features=4), jnp.zeros((1, 8, 8, 1))))
  assert other != r
  init_fn, apply_fn = nets.make_net(net)
  with pytest.raises(ValueError, match=r"\[\.\.\., 64\]"):
    apply_fn(init_fn(jax.random.key(0)), jnp.zeros((2, 8, 8, 1)))


def test_dtype_preserved_without_x64():
  with jax.enable_x64(False):
    net = nets.from_flax(LinenMLP(), jnp.zeros((1, D)))
    init_fn, apply_fn = nets.make_net(net)
    params = init_fn(jax.random.key(0))
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(params))
    assert apply_fn(params, jnp.ones((3, D), jnp.float32)).dtype == jnp.float32
  net = nets.from_flax(_nnx_mlp, jnp.zeros((1, D)))
  init_fn, apply_fn = nets.make_net(net, dtype=jnp.float32)
  params = init_fn(jax.random.key(0))
  assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(params))
  assert apply_fn(params, jnp.ones((3, D), jnp.float32)).dtype == jnp.float32
  params64 = nets.make_net(net)[0](jax.random.key(0))
  assert apply_fn(params64, jnp.ones((3, D))).dtype == jnp.float64


class _WithBatchNorm(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(1)(nn.BatchNorm(use_running_average=True)(x))


class _WithDropout(nnx.Module):
  def __init__(self, rngs):
    self.lin = nnx.Linear(D, 1, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)

  def __call__(self, x):
    return self.lin(self.drop(x))


class _Matrix(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(4)(x).reshape(x.shape[0], 2, 2)


class _Listy(nn.Module):
  sizes: list

  @nn.compact
  def __call__(self, x):
    return nn.Dense(1)(x)


@pytest.mark.parametrize("module, x, error, match", [
    (_WithBatchNorm(), jnp.zeros((1, D)), ValueError, "batch_stats"),
    (_WithDropout, jnp.zeros((1, D)), ValueError, "nnx.Param"),
    (_nnx_mlp(nnx.Rngs(0)), jnp.zeros((1, D)), ValueError, "constructor"),
    (_Matrix(), jnp.zeros((1, D)), ValueError, "scalar or a vector"),
    (LinenMLP(), jnp.zeros((D,)), ValueError, "batch"),
    (_Listy(sizes=[1, 2]), jnp.zeros((1, D)), ValueError, "hashable"),
    (LinenMLP().bind({}), jnp.zeros((1, D)), ValueError, "unbound"),
    ("not a module", jnp.zeros((1, D)), TypeError, "flax"),
])
def test_bad_modules_are_refused(module, x, error, match):
  with pytest.raises(error, match=match):
    nets.from_flax(module, x)


def test_make_net_refuses_other_configs():
  with pytest.raises(TypeError, match="NetConfig or a FlaxNet"):
    nets.make_net({"d": 3})
  with pytest.raises(TypeError, match="NetConfig or a FlaxNet"):
    nets.n_params(object())
  assert isinstance(nets.from_flax(CNN(), jnp.zeros((1, 8, 8, 1))),
                    flax_nets.FlaxNet)
