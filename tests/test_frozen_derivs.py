"""The layer-wise gradient and Hessian of the pattern-frozen ReLU net's loss,
and of a smooth net's (lossland.frozen_derivs), against jax.hessian of
the same loss."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from lossland import losses, nets
from lossland import frozen_derivs
from lossland.optim import kink_newton

LOSS = losses.LossConfig("quadratic_hinge")


def _case(depth, bias, parametrization, normalize, alpha, P=30, d=3, width=5,
          activation="relu"):
  """(cfg, params, x, y, slopes): for a ReLU net a frozen pattern with two
  kink slopes; for a smooth activation slopes None (the net's own)."""
  cfg = nets.NetConfig(d=d, width=width, depth=depth, bias=bias,
                       parametrization=parametrization, normalize_activation=normalize,
                       alpha=alpha, activation=activation)
  params = nets.make_net(cfg, jnp.float64)[0](jax.random.key(depth))
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  params = jax.tree_util.tree_unflatten(  # biases away from 0
      tree, [a + 0.3 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
  x = jax.random.normal(jax.random.key(1), (P, d))
  y = jnp.sign(jax.random.normal(jax.random.key(2), (P,)))
  if activation != "relu":
    return cfg, params, x, y, None
  zs = nets.preactivations(cfg, params, x)[:-1]
  # the 0/1 pattern, and two kink slopes strictly inside (0, 1)
  slopes = [jnp.where(z > 0, 1.0, 0.0).at[0, 0].set(0.37).at[3, 1].set(0.8) for z in zs]
  return cfg, params, x, y, slopes


def _reference(cfg, params, x, y, off, slopes, decay):
  """(w, the loss plus decay |w|^2 / 2 as a function of the flat w) of the
  frozen net (slopes) or of the net's own activation (slopes None)."""
  w, unravel = ravel_pytree(params)
  phi = None if slopes is None else (lambda l, z: slopes[l] * z)

  def total(wf):
    f = nets.readout(cfg, nets._forward(cfg, unravel(wf), x, phi=phi)[-1])
    return jnp.sum(LOSS.fn(losses.margins(f - off, y, LOSS.epsilon))) + 0.5 * decay * wf @ wf

  return w, total


def _equal_to_jax_hessian(cfg, params, x, y, slopes, decay=0.01):
  """loss_derivatives against jax.grad and jax.hessian of the same loss, the
  margins put at random values in [-1, 1] by an output offset; (w, H, J,
  Delta)."""
  phi = None if slopes is None else (lambda l, z: slopes[l] * z)
  f = nets.readout(cfg, nets._forward(cfg, params, x, phi=phi)[-1])
  target = jax.random.uniform(jax.random.key(3), (x.shape[0],), minval=-1.0, maxval=1.0)
  off = f - y * (LOSS.epsilon - target)
  w, total = _reference(cfg, params, x, y, off, slopes, decay)
  value, g, H, J, delta = frozen_derivs.loss_derivatives(cfg, params, x, y, off, slopes,
                                                         LOSS, decay)
  H_ref = jax.hessian(total)(w)
  assert float(jnp.abs(value - total(w))) <= 1e-12 * float(total(w))
  np.testing.assert_allclose(g, jax.grad(total)(w), rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(g))))
  assert float(jnp.max(jnp.abs(H - H_ref))) <= 1e-13 * float(jnp.max(jnp.abs(H_ref)))
  assert 0 < int(jnp.sum(delta > 0)) < x.shape[0]  # both sides of the hinge are tested
  return w, H_ref, J, delta


# every depth with and without biases; each parametrization, normalization
# and output scale at depths 1 to 3
_CASES = [(depth, bias, par, norm, alpha) for (depth, bias), (par, norm, alpha) in zip(
    itertools.product((0, 1, 2, 3), (False, True)),
    itertools.cycle([("ntk", True, 1.0), ("standard", False, 0.7), ("ntk", False, 0.7),
                     ("standard", True, 1.0)]))]


@pytest.mark.parametrize("depth,bias,parametrization,normalize,alpha", _CASES)
def test_loss_derivatives_equal_jax_hessian(depth, bias, parametrization, normalize, alpha):
  cfg, params, x, y, slopes = _case(depth, bias, parametrization, normalize, alpha)
  w, H, J, delta = _equal_to_jax_hessian(cfg, params, x, y, slopes)
  # the cross blocks are where the net's second derivatives live: not zero
  if depth > 0:
    gn = J.T @ (jnp.where(delta > 0, 1.0, 0.0)[:, None] * J)
    assert float(jnp.max(jnp.abs(H - gn - 0.01 * jnp.eye(w.size)))) > 1e-3


def test_finish_parts_equal_jax_hessian_and_jacobians():
  """The finish's _PARTS and _MARGINS (layer-wise; the slope Jacobian C one
  point per pair) against the same pieces by jax.hessian and jax.jacfwd of
  the frozen net at kink pairs, with an output offset; the padding columns
  of C and rows of A are zero."""
  cfg, params, x, y, _ = _case(2, True, "ntk", True, 1.0, P=24)
  zs = [np.asarray(z) for z in nets.preactivations(cfg, params, x)[:-1]]
  pattern = [z > 0 for z in zs]
  idx = [(np.array([0, 5]), np.array([1, 2])), (np.array([3]), np.array([4]))]
  fr = kink_newton._frozen(pattern, idx, x.shape[0])
  s_pad = np.zeros(fr.pad)
  s_pad[fr.real] = [0.2, 0.9, 0.5]
  s_pad = jnp.asarray(s_pad)
  z_scale = [jnp.full(5, 0.5), jnp.full(5, 2.0)]
  w, unravel = ravel_pytree(params)
  off = 0.2 * jax.random.normal(jax.random.key(4), (x.shape[0],))  # f - f0
  args = (w, s_pad, x, y, off, fr.pattern, fr.pts, fr.units)
  value, g, H, zk_, A, C = kink_newton._PARTS(cfg, LOSS, *args, z_scale, 0.0)
  split = kink_newton.stationarity.split_slopes(fr.pts)

  def margins(wf, sf):
    zs_ = kink_newton._frozen_forward(cfg, unravel(wf), x, fr.pattern, fr.pts, fr.units,
                                      split(sf))
    return losses.margins(nets.readout(cfg, zs_[-1]) - off, y, LOSS.epsilon)

  total = lambda wf, sf: jnp.sum(LOSS.fn(margins(wf, sf)))
  scale = float(jnp.max(jnp.abs(H)))
  assert float(jnp.max(jnp.abs(H - jax.hessian(total)(w, s_pad)))) <= 1e-13 * scale
  np.testing.assert_allclose(C, jax.jacfwd(jax.grad(total), argnums=1)(w, s_pad), atol=1e-12)
  def zk(wf):  # the kink pairs' pre-activations, each over its unit's scale
    zs_ = kink_newton._frozen_forward(cfg, unravel(wf), x, fr.pattern, fr.pts, fr.units,
                                      split(s_pad))
    return jnp.concatenate([zs_[l].at[fr.pts[l], fr.units[l]].get(mode="fill", fill_value=0.0)
                            / z_scale[l][0] for l in range(2)])

  np.testing.assert_allclose(zk_, zk(w), atol=1e-13)
  np.testing.assert_allclose(A, jax.jacfwd(zk)(w), atol=1e-12)
  D, J = kink_newton._MARGINS(cfg, LOSS, *args)
  np.testing.assert_allclose(D, margins(w, s_pad), atol=1e-13)
  np.testing.assert_allclose(J, jax.jacfwd(margins)(w, s_pad), atol=1e-12)


def test_applies_to_nets_with_one_output():
  assert frozen_derivs.applies(nets.NetConfig(d=2, width=3, depth=2))
  assert frozen_derivs.applies(nets.NetConfig(d=2, width=3, depth=2, activation="softplus"))
  assert not frozen_derivs.applies(nets.NetConfig(d=2, width=3, depth=2, n_out=2))


# smooth activations: every depth with and without biases, both parametrizations
_SMOOTH = [(act, depth, bias, par) for act in ("tanh", "softplus") for depth in (0, 1, 2, 3)
           for bias, par in ((False, "ntk"), (True, "standard"), (True, "ntk"))]


@pytest.mark.parametrize("activation,depth,bias,parametrization", _SMOOTH)
def test_smooth_loss_derivatives_equal_jax_hessian(activation, depth, bias, parametrization):
  """slopes=None: the net's own smooth activation, its phi'' term included."""
  cfg, params, x, y, _ = _case(depth, bias, parametrization, True, 0.7, activation=activation)
  w, H, J, delta = _equal_to_jax_hessian(cfg, params, x, y, None)
  if depth > 0:  # the phi'' term is there and matters: the net's slopes alone miss it
    slopes, _ = frozen_derivs.activation_derivatives(cfg, params, x)
    ins, G, _ = frozen_derivs.features(cfg, params, x)
    c = -y * jnp.maximum(delta, 0.0)
    without = (J.T @ (jnp.where(delta > 0, 1.0, 0.0)[:, None] * J)
               + frozen_derivs.cross_hessian(cfg, params, ins, G, slopes, c)
               + 0.01 * jnp.eye(w.size))
    assert float(jnp.max(jnp.abs(H - without))) > 1e-3 * float(jnp.max(jnp.abs(H)))


def test_smooth_finish_parts_equal_jax_hessian():
  """The finish's _PARTS and _MARGINS of a softplus net (no kink pairs, only
  padding) layer by layer against jax.hessian and jax.jacfwd, with weight
  decay."""
  cfg = nets.NetConfig(d=3, width=5, depth=2, bias=True, activation="softplus")
  params = nets.make_net(cfg, jnp.float64)[0](jax.random.key(5))
  x = jax.random.normal(jax.random.key(1), (24, 3))
  y = jnp.sign(jax.random.normal(jax.random.key(2), (24,)))
  zs = [np.asarray(z) for z in nets.preactivations(cfg, params, x)[:-1]]
  fr = kink_newton._frozen([z > 0 for z in zs], [(np.zeros(0, int), np.zeros(0, int))] * 2,
                           x.shape[0])
  w = ravel_pytree(params)[0]
  off = 0.2 * jax.random.normal(jax.random.key(4), (x.shape[0],))
  args = (w, jnp.zeros(fr.pad), x, y, off, fr.pattern, fr.pts, fr.units)
  z_scale = [jnp.ones(5), jnp.ones(5)]
  ours = kink_newton._PARTS(cfg, LOSS, *args, z_scale, 1e-3)
  ref = kink_newton._PARTS(cfg, LOSS, *args, z_scale, 1e-3, layerwise=False)
  assert ours[0] == pytest.approx(float(ref[0]), rel=1e-13)
  for a, b in zip(ours[1:], ref[1:]):  # g, H, z_K, A, C
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=0,
                               atol=1e-12 * max(1.0, float(jnp.max(jnp.abs(b), initial=0.0))))
  assert float(jnp.max(jnp.abs(ours[2]))) > 0
  for a, b in zip(kink_newton._MARGINS(cfg, LOSS, *args),
                  kink_newton._MARGINS(cfg, LOSS, *args, layerwise=False)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
