"""The step's GPU layouts (split-K weight gradients, zero-padded widths, the
scan's unroll) compute the same function, gradient and training as the plain
step, to rounding; and the checkpoint fingerprint of a default TrainConfig is
the one written before these fields existed."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from lossland import data, losses, nets, train


def _rel(a, b):
  a, b = ravel_pytree(a)[0], ravel_pytree(b)[0]
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize("P,n_split", [(64, 8), (61, 8), (7, 3)])
def test_split_k_matmul_value_and_gradients(P, n_split):
  kx, kw, kg = jax.random.split(jax.random.key(P), 3)
  x = jax.random.normal(kx, (P, 5))
  w = jax.random.normal(kw, (5, 4))
  g = jax.random.normal(kg, (P, 4))
  f = lambda x, w: jnp.sum(g * nets.split_k_matmul(x, w, n_split))
  f_ref = lambda x, w: jnp.sum(g * (x @ w))
  np.testing.assert_allclose(f(x, w), f_ref(x, w), rtol=1e-13)
  dx, dw = jax.grad(f, argnums=(0, 1))(x, w)
  dx_ref, dw_ref = jax.grad(f_ref, argnums=(0, 1))(x, w)
  np.testing.assert_allclose(dw, dw_ref, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
  # the dW of a plain loop over chunks of rows, summed in order
  m = -(-P // n_split)
  loop = sum(x[c * m:(c + 1) * m].T @ g[c * m:(c + 1) * m] for c in range(n_split))
  np.testing.assert_allclose(dw, loop, rtol=1e-12, atol=1e-12)


def _nets():
  return [nets.NetConfig(d=7, width=13, depth=3),
          nets.NetConfig(d=7, width=13, depth=2, activation="tanh",
                         parametrization="standard", bias=True),
          nets.authors_net(d=9, width=11, depth=2)]


@pytest.mark.parametrize("net", _nets(), ids=["ntk_relu", "std_tanh_bias", "authors"])
@pytest.mark.parametrize("split,pad", [(4, 0), (0, 8), (4, 16)])
def test_variants_compute_the_same_loss_and_gradient(net, split, pad):
  init, apply_ref = nets.make_net(net)
  _, apply_fn = nets.make_net(net, wgrad_split=split, pad_to=pad)
  keys = jax.random.split(jax.random.key(1), 3)
  params = jax.vmap(init)(keys)
  # biases nonzero, as after training
  params = jax.tree_util.tree_map(lambda a: a + 0.1 * jnp.cos(jnp.arange(a.size).reshape(a.shape)),
                                  params)
  ds = data.sphere(jax.random.key(2), 50, net.d)
  loss = losses.LossConfig()
  lfn = lambda f: lambda p: losses.mean_loss(loss, f(p, ds.x_train), ds.y_train)
  vg = lambda f: jax.jit(jax.vmap(jax.value_and_grad(lfn(f))))(params)
  (l1, g1), (l0, g0) = vg(apply_fn), vg(apply_ref)
  np.testing.assert_allclose(l1, l0, rtol=1e-13)
  assert _rel(g1, g0) < 1e-13
  # the single-example path (no batch axis) is unchanged
  p0 = jax.tree_util.tree_map(lambda a: a[0], params)
  np.testing.assert_allclose(apply_fn(p0, ds.x_train[3]), apply_ref(p0, ds.x_train[3]),
                             rtol=1e-13)


def test_pad_to_rejects_activations_nonzero_at_zero_and_bad_values():
  with pytest.raises(ValueError, match="phi\\(0\\) = 0"):
    nets.make_net(nets.NetConfig(d=3, width=5, depth=1, activation="softplus"), pad_to=8)
  for kw in ({"pad_to": 1}, {"wgrad_split": 1}, {"pad_to": -2}):
    with pytest.raises(ValueError, match="must be 0 or >= 2"):
      nets.make_net(nets.NetConfig(d=3, width=5, depth=1), **kw)
    with pytest.raises(ValueError, match="must be 0 or >= 2"):
      train.TrainConfig(**kw)
  with pytest.raises(ValueError, match="scan_unroll"):
    train.TrainConfig(scan_unroll=-1)


def test_padded_units_stay_zero_and_softplus_would_not():
  """Why pad_to is exact for relu/tanh: the padded weights' gradient is 0."""
  net = nets.NetConfig(d=5, width=6, depth=2)
  params = nets.make_net(net)[0](jax.random.key(0))
  ds = data.sphere(jax.random.key(1), 30, 5)
  padded = [{"w": nets._pad_axes(l["w"], (8 if i else 5, 8 if i < 2 else 1))}
            for i, l in enumerate(params)]
  loss = losses.LossConfig()
  g = jax.grad(lambda p: losses.mean_loss(loss, nets._forward(net, p, ds.x_train)[-1][:, 0],
                                          ds.y_train))(padded)
  assert float(jnp.abs(g[1]["w"][6:]).max()) == 0 and float(jnp.abs(g[1]["w"][:, 6:]).max()) == 0
  assert float(jnp.abs(g[2]["w"][6:]).max()) == 0
  assert float(jnp.abs(g[0]["w"][:, 6:]).max()) == 0


@pytest.mark.parametrize("variant", [{"wgrad_split": 4}, {"pad_to": 8},
                                     {"scan_unroll": 3}, {"wgrad_split": 4, "pad_to": 16}])
def test_training_with_a_variant_matches_the_plain_engine(variant):
  net = nets.NetConfig(d=6, width=10, depth=2)
  ds = data.sphere(jax.random.key(0), 60, 6, n_test=20)
  loss = losses.LossConfig()
  base = train.TrainConfig(lr=1e-2, max_steps=300, chunk_steps=100)
  r0 = train.train_ensemble([0, 1, 2], ds, net, loss, base)
  r1 = train.train_ensemble([0, 1, 2], ds, net, loss, dataclasses.replace(base, **variant))
  np.testing.assert_array_equal(r1.stop_code, r0.stop_code)
  np.testing.assert_array_equal(r1.steps, r0.steps)
  np.testing.assert_allclose(r1.final["loss"], r0.final["loss"], rtol=1e-8, atol=1e-14)
  np.testing.assert_allclose(nets.flatten_members(r1.params),
                             nets.flatten_members(r0.params), rtol=1e-8, atol=1e-10)
  np.testing.assert_allclose(r1.f_test, r0.f_test, rtol=1e-8, atol=1e-10)


OLD_DEFAULT_REPR = (
    "TrainConfig(optimizer='adam', lr=0.01, momentum=0.9, schedule='constant', "
    "decay_every=250000, decay_factor=0.1, plateau_patience=1000, plateau_rtol=0.001, "
    "min_lr=1e-07, max_steps=10000, batch_size=0, check_every=100, subtract_init=False, "
    "stop_at_sat=True, jam_window=2000, jam_rtol=0.001, jam_after_decays=False, "
    "divergence_factor=1000000.0, chunk_steps=2000, n_log_per_decade=10, max_dgrad=0.0001, "
    "max_dout=0.1, dt_grow=1.1, dt_shrink=0.1, dt_max=0.0, dt_min=0.0, fire_n_min=5, "
    "fire_f_inc=1.1, fire_f_dec=0.5, fire_alpha_start=0.1, fire_f_alpha=0.99, "
    "lbfgs_memory=10, ls_c1=0.0001, ls_c2=0.9, ls_min_step=1e-12, record_unsat=False)")


def test_checkpoints_written_before_the_engine_fields_still_match():
  """repr(TrainConfig()) of the code before wgrad_split/pad_to/scan_unroll."""
  assert repr(train._cfg_repr(train.TrainConfig())) == OLD_DEFAULT_REPR
  assert "wgrad_split=8" in repr(train._cfg_repr(train.TrainConfig(wgrad_split=8)))


def test_flat_buffer_naive_scan_equals_the_pytree_one():
  """bench step's ``naive_flat`` row (params and Adam moments as one flat [N]
  buffer per member, issue 18 item 1) runs the same Adam steps as the pytree
  naive scan (optax.adam): same final params up to rounding."""
  from lossland.scripts import _bench_common, bench_step
  net = nets.NetConfig(d=5, width=7, depth=2)
  loss = losses.LossConfig()
  ds = data.sphere(jax.random.key(1), 40, 5)
  keys = jax.random.split(jax.random.key(2), 3)
  tree = _bench_common.naive_runner(net, loss, 25, 1e-2, jnp.float64)(keys, ds.x_train,
                                                                       ds.y_train)
  flat = bench_step.flat_naive_runner(net, loss, 25, 1e-2, jnp.float64)(keys, ds.x_train,
                                                                        ds.y_train)
  want = jax.vmap(lambda p: ravel_pytree(p)[0])(tree)
  start = jax.vmap(lambda k: ravel_pytree(nets.make_net(net)[0](jax.random.split(k)[0]))[0])(
      keys)
  assert float(jnp.max(jnp.abs(want - start))) > 1e-2  # the steps moved the weights
  np.testing.assert_allclose(np.asarray(flat), np.asarray(want), rtol=1e-10, atol=1e-12)
