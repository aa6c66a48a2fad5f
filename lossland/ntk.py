"""Neural tangent kernels: empirical (finite width), infinite width, predictors.

In the style of neural-tangents (Novak et al. 2020, arXiv:1912.02803): functions
that return pure kernel functions, applied by the caller under jit/vmap.

* :func:`empirical_ntk_fn`: ``(params, x1, x2) -> Theta [P1, P2]`` with
  Theta(x, x') = sum_p df(x)/dw_p df(x')/dw_p for a finite network, by one of
  three implementations (``"structured"``: per-layer contraction of activations
  and back-propagated pre-activation gradients, the fastest for the fully
  connected nets of :mod:`lossland.nets`; ``"vp"``: Jacobian-vector products,
  one VJP and one JVP per column, memory O(N + P1 h); ``"jacobian"``: the
  per-example gradients contracted, memory O(P2 N)). Rows are processed in
  chunks so that P * N beyond memory works. Vmappable over ensemble members.
  The kernel of f(w) - f(w0) is the same as that of f(w): the offset does not
  depend on w.
* :func:`kernel_fn`: ``(x1, x2) -> {"nngp", "ntk"}``, the infinite-width
  kernels (Neal 1996; Lee et al. 2018; Jacot et al. 2018) of exactly the nets
  of :func:`lossland.nets.make_net` in the NTK parametrization.
* :func:`kernel_regression` and :func:`kernel_hinge_flow`: the predictors of
  the linearized (lazy, infinite-width) network trained with the squared loss
  (closed form) and with the hinge losses (gradient flow in function space).
"""
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from lossland import losses as losses_lib
from lossland import nets
from lossland import frozen_derivs

IMPLEMENTATIONS = ("auto", "structured", "vp", "jacobian")


# --------------------------------------------------------------------------
# Empirical NTK
# --------------------------------------------------------------------------


def _structured_features(cfg: nets.NetConfig, params, x):
  """Per-layer inputs a_{l-1}(x) and output gradients delta_l(x) = df/dz_l
  (:func:`lossland.frozen_derivs.features` with the net's own
  activation).

  Returns:
    (ins, deltas): lists over layers of [P, fan_in] and [P, fan_out].
  """
  ins, deltas, _ = frozen_derivs.features(cfg, params, x)
  return ins, deltas


def _structured_contract(cfg: nets.NetConfig, params, f1, f2):
  """Theta from the features of :func:`_structured_features` of two sets.

  d f / d W_l[i, j] = a_{l-1,i} delta_{l,j} / sqrt(fan_in) (NTK
  parametrization; no factor in the standard one) and d f / d b_l = delta_l,
  so Theta = sum_l (A1 A2^T / fan_in + [bias]) * (D1 D2^T), elementwise.
  """
  (ins1, d1), (ins2, d2) = f1, f2
  theta = 0.0
  for layer, a1, a2, g1, g2 in zip(params, ins1, ins2, d1, d2):
    gg = g1 @ g2.T
    aa = a1 @ a2.T
    if cfg.parametrization == "ntk":
      aa = aa / layer["w"].shape[0]
    if "b" in layer:
      aa = aa + 1.0
    theta = theta + aa * gg
  return theta


def _map_rows(fn, x, chunk_size):
  """fn over the rows of x ([P, ...] -> [P, ...]) in vmapped chunks."""
  if chunk_size is None or x.shape[0] <= chunk_size:
    return jax.vmap(fn)(x)
  return jax.lax.map(fn, x, batch_size=chunk_size)


def empirical_ntk_fn(f, implementation: str = "auto",
                     chunk_size: int | None = 256) -> Callable:
  """The empirical (finite-width) neural tangent kernel (Jacot et al. 2018).

  Theta(x, x') = sum_p [df(w; x)/dw_p] [df(w; x')/dw_p], the kernel that
  drives gradient flow in function space, df/dt = -Theta grad_f L. It is the
  same for f(w) - f(w0) (1906.08034), whose gradient is that of f(w).

  Args:
    f: a :class:`lossland.nets.NetConfig` (the net of ``nets.make_net``), a
      network of ``nets.from_flax`` with one output, or an
      ``apply_fn(params, x)`` mapping [P, d] inputs to scalar outputs [P].
    implementation: ``"structured"`` (NetConfig only; per-layer contraction of
      activations and back-propagated gradients: compute O(P1 P2 sum_l
      fan_in_l) and memory O((P1 + P2) sum_l h_l), independent of N);
      ``"vp"`` (one VJP of a test point and one JVP over x1 per column of
      Theta, memory O(N + P1 h): the NTK-vector-product route of
      neural-tangents); ``"jacobian"`` (per-example gradients [P, N]
      contracted, memory O(P2 N)); ``"auto"``: structured for a NetConfig with
      one output, else jacobian.
    chunk_size: rows of x1 (columns of Theta for "vp") handled per vmapped
      chunk (``jax.lax.map`` over chunks); None: all at once.

  Returns:
    ``ntk_fn(params, x1, x2) -> Theta [P1, P2]`` in the dtype of the params
    and inputs. Vmappable over a leading member axis of params.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"unknown implementation {implementation!r}; "
                     f"choose from {IMPLEMENTATIONS}")
  cfg = f if isinstance(f, nets.NetConfig) else None
  if cfg is not None:
    if cfg.n_out != 1:
      raise ValueError("empirical_ntk_fn needs a scalar output (n_out = 1); "
                       f"got n_out = {cfg.n_out}")
    apply_fn = nets.make_net(cfg)[1]
  elif callable(f):
    apply_fn = f
  else:  # another network config, e.g. nets.from_flax's
    if getattr(f, "n_out", 1) != 1:
      raise ValueError("empirical_ntk_fn needs a scalar output (n_out = 1); "
                       f"got n_out = {f.n_out}")
    apply_fn = nets.make_net(f)[1]
  if implementation == "auto":
    implementation = "structured" if cfg is not None else "jacobian"
  if implementation == "structured" and cfg is None:
    raise ValueError("implementation='structured' needs a NetConfig")

  def scalar_fn(params, x):  # one example [d] -> scalar
    out = apply_fn(params, x[None])
    if out.shape != (1,):
      raise ValueError("empirical_ntk_fn needs scalar outputs, got shape "
                       f"{out.shape[1:]} per example")
    return out[0]

  if implementation == "structured":
    def ntk_fn(params, x1, x2):
      f2 = _structured_features(cfg, params, x2)
      def rows(x):
        return _structured_contract(cfg, params,
                                    _structured_features(cfg, params, x[None]),
                                    f2)[0]
      return _map_rows(rows, x1, chunk_size)
    return ntk_fn

  if implementation == "jacobian":
    def ntk_fn(params, x1, x2):
      flat_grad = lambda x: ravel_pytree(jax.grad(scalar_fn)(params, x))[0]
      j2 = _map_rows(flat_grad, x2, chunk_size)          # [P2, N]
      return _map_rows(lambda x: j2 @ flat_grad(x), x1, chunk_size)
    return ntk_fn

  # "vp": column j of Theta = J1 (J2^T e_j), J2^T e_j = grad f(x2_j) by one
  # VJP, then one JVP of the batch x1 along it.
  def ntk_fn(params, x1, x2):
    def column(x):
      g = jax.grad(scalar_fn)(params, x)
      return jax.jvp(lambda p: apply_fn(p, x1), (params,), (g,))[1]
    return _map_rows(column, x2, chunk_size).T
  return ntk_fn


# --------------------------------------------------------------------------
# Infinite-width kernels
# --------------------------------------------------------------------------


def _gauss_hermite(n: int, dtype):
  """Nodes g and weights w with sum_i w_i h(g_i) ~ E[h(z)], z ~ N(0, 1)."""
  t, w = np.polynomial.hermite.hermgauss(n)
  return (jnp.asarray(np.sqrt(2.0) * t, dtype),
          jnp.asarray(w / np.sqrt(np.pi), dtype))


def _relu_expectations(q1, q2, s12, c2):
  """c2 E[relu(u) relu(v)] and c2 E[relu'(u) relu'(v)] in closed form.

  (u, v) centred Gaussian with variances q1, q2 and covariance s12. With
  cos(theta) = s12 / sqrt(q1 q2) (the arc-cosine kernels of Cho & Saul 2009):
  E[relu relu] = sqrt(q1 q2) (sin theta + (pi - theta) cos theta) / (2 pi),
  E[relu' relu'] = (pi - theta) / (2 pi).
  """
  norm = jnp.sqrt(q1[:, None] * q2[None, :])
  safe = jnp.where(norm > 0, norm, 1.0)
  cos = jnp.clip(s12 / safe, -1.0, 1.0)
  theta = jnp.arccos(cos)
  sin = jnp.sqrt(jnp.maximum(1.0 - cos * cos, 0.0))
  k = norm * (sin + (jnp.pi - theta) * cos) / (2 * jnp.pi)
  kdot = jnp.where(norm > 0, (jnp.pi - theta) / (2 * jnp.pi), 0.25)
  return c2 * k, c2 * kdot


def _quadrature_expectations(phi, q1, q2, s12, c2, n_quad):
  """c2 E[phi(u) phi(v)] and c2 E[phi'(u) phi'(v)] by 2-D Gauss-Hermite.

  u = sqrt(q1) g1, v = sqrt(q2) (rho g1 + sqrt(1 - rho^2) g2) with g1, g2
  independent N(0, 1) and rho = s12 / sqrt(q1 q2); the sum over the nodes of
  g1 is a scan (memory P1 P2 n_quad).
  """
  g, w = _gauss_hermite(n_quad, s12.dtype)
  dphi = lambda z: jax.jvp(phi, (z,), (jnp.ones_like(z),))[1]
  r1, r2 = jnp.sqrt(q1), jnp.sqrt(q2)
  norm = r1[:, None] * r2[None, :]
  rho = jnp.clip(s12 / jnp.where(norm > 0, norm, 1.0), -1.0, 1.0)
  perp = jnp.sqrt(jnp.maximum(1.0 - rho * rho, 0.0))

  def body(carry, gw):
    gi, wi = gw
    u = r1 * gi                                                # [P1]
    v = r2[None, :, None] * (rho[..., None] * gi + perp[..., None] * g)
    pu, du = phi(u)[:, None], dphi(u)[:, None]                 # [P1, 1]
    k = carry[0] + wi * pu * jnp.sum(w * phi(v), -1)
    kd = carry[1] + wi * du * jnp.sum(w * dphi(v), -1)
    return (k, kd), None

  zero = jnp.zeros_like(s12)
  (k, kd), _ = jax.lax.scan(body, (zero, zero), (g, w))
  return c2 * k, c2 * kd


def _diag_expectation(phi, q, c2, n_quad, closed_relu):
  """c2 E[phi(u)^2], u ~ N(0, q): the next layer's variance."""
  if closed_relu:
    return c2 * q / 2
  g, w = _gauss_hermite(n_quad, q.dtype)
  return c2 * jnp.sum(w * phi(jnp.sqrt(q)[:, None] * g) ** 2, -1)


def kernel_fn(net_cfg: nets.NetConfig, n_quad: int = 64) -> Callable:
  """Infinite-width NNGP and NTK of the nets of :func:`lossland.nets.make_net`.

  The recursion (Lee et al. 2018; Jacot et al. 2018; Arora et al. 2019) for the
  pre-activations z_1 = x W_1 / sqrt(d) + b_1 and
  z_{l+1} = c phi(z_l) W_{l+1} / sqrt(h) + b_{l+1}, f = alpha z_{L+1}, with
  c = 1 / sqrt(E[phi(g)^2]) the activation normalization (c^2 = 2 for ReLU):

    Sigma_1 = x.x' / d,                Theta_1 = Sigma_1 + [bias],
    Sigma_{l+1} = c^2 E[phi(u) phi(v)],
    Theta_{l+1} = Sigma_{l+1} + c^2 E[phi'(u) phi'(v)] Theta_l + [bias],

  (u, v) ~ N(0, Sigma_l restricted to {x, x'}); NNGP = alpha^2 Sigma_{L+1},
  NTK = alpha^2 Theta_{L+1}. Biases are zero at initialization, so they add
  nothing to Sigma, but their gradients add 1 per layer to Theta ([bias]).
  ReLU uses the closed-form arc-cosine kernels; tanh and softplus a 2-D
  Gauss-Hermite quadrature with ``n_quad`` nodes per dimension (64 nodes:
  relative error ~1e-5 for tanh with pre-activation variances ~1, i.e. inputs
  near the sphere of radius sqrt(d); the error grows with the variance, ~5%
  at variance 9, where more nodes are needed).

  Normal and orthogonal initializations have the same infinite-width limit
  (the pre-activation covariance over neurons is x.x'/fan_in in both; Huang,
  Wang, Tao & Zhao 2020, arXiv:2004.05867), so ``init`` is not used. With
  ``n_out > 1`` every output has this kernel and outputs are independent.

  Args:
    net_cfg: the architecture (NTK parametrization).
    n_quad: Gauss-Hermite nodes per dimension for non-ReLU activations.

  Returns:
    ``kernel(x1, x2) -> {"nngp": [P1, P2], "ntk": [P1, P2]}``.

  Raises:
    ValueError: for the standard parametrization, whose NTK grows like the
      width (the gradients with respect to the stored weights are O(1) per
      weight instead of O(1/sqrt(h))), so it has no infinite-width limit; train
      the NTK-parametrized net, which is the same function at initialization.
  """
  if net_cfg.parametrization != "ntk":
    raise ValueError(
        "kernel_fn: the standard parametrization has no infinite-width NTK "
        "(it grows like the width h); use parametrization='ntk'")
  phi = nets._ACTIVATIONS[net_cfg.activation]
  c2 = (1.0 / nets._SECOND_MOMENT[net_cfg.activation]
        if net_cfg.normalize_activation else 1.0)
  relu = net_cfg.activation == "relu"
  b = 1.0 if net_cfg.bias else 0.0
  a2 = net_cfg.alpha ** 2

  def fn(x1, x2):
    if x1.shape[-1] != net_cfg.d or x2.shape[-1] != net_cfg.d:
      raise ValueError(f"inputs must have d = {net_cfg.d} features, got "
                       f"{x1.shape[-1]} and {x2.shape[-1]}")
    d = net_cfg.d
    q1 = jnp.sum(x1 * x1, -1) / d
    q2 = jnp.sum(x2 * x2, -1) / d
    s12 = x1 @ x2.T / d
    theta = s12 + b
    for _ in range(net_cfg.depth):
      if relu:
        k, kd = _relu_expectations(q1, q2, s12, c2)
      else:
        k, kd = _quadrature_expectations(phi, q1, q2, s12, c2, n_quad)
      q1 = _diag_expectation(phi, q1, c2, n_quad, relu)
      q2 = _diag_expectation(phi, q2, c2, n_quad, relu)
      theta = k + kd * theta + b
      s12 = k
    return {"nngp": a2 * s12, "ntk": a2 * theta}

  return fn


# --------------------------------------------------------------------------
# Kernel predictors
# --------------------------------------------------------------------------


def kernel_regression(k_train_train, y_train, k_test_train, ridge: float = 0.0):
  """Kernel (ridge) regression: K_test,train (K_train,train + ridge I)^-1 y.

  With the NTK and ridge = 0 this is the infinite-time output of the
  linearized network trained by gradient flow on the squared loss from
  f0 = 0 (Jacot et al. 2018; Lee et al. 2019). Solved by LU, not an inverse.

  Args:
    k_train_train: [P, P]; y_train: [P] or [P, k]; k_test_train: [n, P].
    ridge: added to the diagonal.

  Returns:
    [n] (or [n, k]) predictions.
  """
  k = k_train_train + ridge * jnp.eye(k_train_train.shape[0],
                                      dtype=k_train_train.dtype)
  return k_test_train @ jnp.linalg.solve(k, y_train)


def _top_eigenvalue(k, n_iter: int = 100):
  v = jnp.ones((k.shape[0],), k.dtype) / math.sqrt(k.shape[0])
  def body(_, v):
    w = k @ v
    return w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(k.dtype).tiny)
  v = jax.lax.fori_loop(0, n_iter, body, v)
  return v @ (k @ v)


def _margin_loss_fn(K, y, f0, loss_cfg, scale):
  """c -> (loss, N_Delta, Delta) of the outputs f = f0 + K c."""
  ell, eps = loss_cfg.fn, loss_cfg.epsilon

  def loss_nd(c):
    delta = losses_lib.margins(f0 + K @ c, y, eps)
    return scale * jnp.mean(ell(delta)), losses_lib.n_unsatisfied(delta), delta

  return loss_nd


def _euler_flow(loss_nd, increment, c0, dt_max, max_steps: int, rtol: float,
                reject: bool) -> tuple:
  """Explicit Euler on c inside a ``lax.while_loop``: c += increment(h, Delta).

  Runs until N_Delta = 0, the loss falls to ``rtol`` times its initial value,
  or ``max_steps`` steps. With ``reject``, a step that increases the loss is
  undone and the step halved; accepted steps grow it by 1.1 up to ``dt_max``.

  Returns:
    ``(c, loss, n_delta, steps, t, target)``, t the flow time and target the
    loss of the rtol criterion.
  """
  dtype = c0.dtype
  loss0, nd0, delta0 = loss_nd(c0)
  target = rtol * loss0

  def cond(s):
    c, loss, nd, delta, step, t, h = s
    return (nd > 0) & (loss > target) & (step < max_steps)

  def body(s):
    c, loss, nd, delta, step, t, h = s
    c_new = c + increment(h, delta)
    loss_new, nd_new, delta_new = loss_nd(c_new)
    if reject:
      ok = loss_new <= loss
      h_next = jnp.where(ok, jnp.minimum(1.1 * h, dt_max), 0.5 * h)
    else:
      ok, h_next = True, h
    pick = lambda a, b: jnp.where(ok, a, b)
    return (pick(c_new, c), pick(loss_new, loss), pick(nd_new, nd),
            pick(delta_new, delta), step + 1, pick(t + h, t), h_next)

  state = (c0, loss0, nd0, delta0, jnp.asarray(0), jnp.zeros((), dtype),
           jnp.asarray(dt_max, dtype))
  c, loss, nd, _, steps, t, _ = jax.lax.while_loop(cond, body, state)
  return c, loss, nd, steps, t, target


def kernel_hinge_flow(k_train_train, y_train, k_test_train=None,
                      loss_cfg: losses_lib.LossConfig = losses_lib.LossConfig(),
                      f0_train=None, f0_test=None, dt=None,
                      max_steps: int = 200_000, rtol: float = 1e-12,
                      adaptive: bool = True) -> dict:
  """Gradient flow of a margin loss in function space with a fixed kernel.

  The infinite-width (lazy) limit of training: with the NTK fixed,
  d f(x)/dt = -sum_mu Theta(x, x_mu) dL/df_mu and
  L = (scale / P) sum_mu ell(Delta_mu), Delta_mu = epsilon - y_mu f_mu, so
  d f(x)/dt = (scale / P) sum_mu Theta(x, x_mu) ell'(Delta_mu) y_mu
  on the training points (Theta = K_train,train) and on the test points
  (K_test,train) alike. The outputs stay f = f0 + K c with
  dc/dt = (scale / P) ell'(Delta) y, so c is integrated (explicit Euler, one
  matrix-vector product per step) inside a ``lax.while_loop``.

  Step size: dt defaults to P / (scale lambda_max(K)) (lambda_max by power
  iteration), for which an Euler step of the quadratic hinge contracts every
  unsatisfied Delta. With ``adaptive`` (and a loss with continuous ell', i.e.
  not the linear hinge), a step that increases the loss is rejected and dt
  halved; accepted steps grow dt by 1.1 up to that default.

  Stops when N_Delta = 0 (every constraint satisfied: for the hinge losses the
  loss is exactly 0), when the loss falls below ``rtol`` times its initial
  value, or after ``max_steps`` steps.

  Args:
    k_train_train: [P, P] kernel on the training points.
    y_train: [P] labels +-1.
    k_test_train: [n, P] kernel between test and training points, or None.
    loss_cfg: the loss, its margin epsilon and its scale.
    f0_train, f0_test: initial outputs (default 0, as for f(w) - f(w0)).
    dt: the (largest) step; default above.
    max_steps, rtol: stop rules.
    adaptive: reject loss-increasing steps (else a plain Euler loop).

  Returns:
    dict with ``f_train`` [P], ``f_test`` [n] (or None), ``coef`` [P] (c),
    ``loss``, ``n_delta``, ``steps``, ``time`` (the flow time t) and
    ``converged`` (N_Delta = 0 or the rtol criterion met).
  """
  K = k_train_train
  dtype = K.dtype
  P = K.shape[0]
  y = jnp.asarray(y_train, dtype)
  f0 = jnp.zeros((P,), dtype) if f0_train is None else jnp.asarray(f0_train, dtype)
  scale = getattr(loss_cfg, "scale", 1.0)
  dell = jax.grad(lambda d: jnp.sum(loss_cfg.fn(d)))
  # The linear hinge has a discontinuous ell': its loss may rise on a good step
  # (points chatter across Delta = 0), so steps are never rejected; plain Euler
  # is then the batch perceptron with margin epsilon, which reaches N_Delta = 0
  # in finitely many steps on separable data (Novikoff 1962).
  smooth = loss_cfg.name != "hinge"
  if dt is None:
    dt_max = P / (scale * _top_eigenvalue(K))
  else:
    dt_max = jnp.asarray(dt, dtype)
  c, loss, nd, steps, t, target = _euler_flow(
      _margin_loss_fn(K, y, f0, loss_cfg, scale),
      lambda h, delta: h * (scale / P) * dell(delta) * y, jnp.zeros((P,), dtype),
      dt_max, max_steps, rtol, adaptive and smooth)
  out = {"f_train": f0 + K @ c, "coef": c, "loss": loss, "n_delta": nd,
         "steps": steps, "time": t,
         "converged": (nd == 0) | (loss <= target)}
  if k_test_train is not None:
    ft0 = (jnp.zeros((k_test_train.shape[0],), dtype) if f0_test is None
           else jnp.asarray(f0_test, dtype))
    out["f_test"] = ft0 + k_test_train @ c
  else:
    out["f_test"] = None
  return out
