r"""The gradient and dense Hessian of a pattern-frozen ReLU net's loss, layer
by layer: the finish's Hessian without N Hessian-vector products.

With the ReLU pattern frozen (every hidden unit's slope d in [0, 1] fixed
per point: 1[z > 0], or the kink slopes of :mod:`lossland.optim.kink_newton`)
the net is a product of linear maps. Layer i maps its input u_i [fan_in] to
z_i = sigma_i u_i W_i + b_i (sigma_i = 1 / sqrt(fan_in) in the NTK
parametrization, else 1), the next input is u_{i+1} = a D_i z_i (a the
activation's normalization, D_i the slopes), and f = alpha z_L. Write
G_i = df/dz_i and E^{ij} = du_j/dz_i (i < j). Then for one point

    df/dW_i[p, q] = sigma_i u_i[p] G_i[q],      df/db_i = G_i,
    d2f/dtheta_i dtheta_i = 0                   (f is affine in each layer),
    d2f/dW_i[p, q] dW_j[n, k] = sigma_i sigma_j u_i[p] E^{ij}[n, q] G_j[k],
    d2f/db_i[q] dW_j[n, k] = sigma_j E^{ij}[n, q] G_j[k],
    d2f/dtheta_i db_j = 0                       (i < j: G_j does not depend on theta_i),

because f is affine in z_j for every j (so the only second-order term is
that of the bilinear map (W_j, u_j) -> z_j). With the margins
Delta = epsilon - y (f - f0) and the per-point loss ell,

    grad L = J^T c,   c = -y ell'(Delta),
    H = J^T diag(y^2 ell''(Delta)) J + sum_mu c_mu d2f_mu,

J [P, N] the per-point gradients of f. Cost: O(P N^2) for the Gauss-Newton
part and O(P h^4) per pair of layers, against N forward-over-reverse passes
over all P points for ``jax.hessian`` (measured in the finish's benchmark,
``python -m lossland.scripts.bench finish``; tested against
``jax.hessian`` in tests/test_frozen_derivs.py).

The slopes' part dg/ds (:func:`slope_jacobian`, the multipliers of the kink
contacts) needs one point per kink pair, and only ReLU nets have kinks.

A smooth activation (tanh, softplus) is not linear in z, so its net has one
more second-order term per hidden layer k (:func:`curvature_hessian`):
with D_k = phi'(z_k) as the slopes above (the cross blocks then hold
unchanged) and Q^{ik} = dz_k/dz_i (Q^{kk} = 1),

    d2f/dtheta dtheta' += sum_q (df/du_{k+1})[q] a phi''(z_k[q]) dz_k[q]/dtheta dz_k[q]/dtheta',
    dz_k[q]/dW_i[p, r] = sigma_i u_i[p] Q^{ik}[r, q],   dz_k[q]/db_i[r] = Q^{ik}[r, q]   (i <= k),

summed over the points with weights c_mu: O(P h^4) per pair of layers i, i'
<= k, as the cross blocks. One output only (:func:`applies`).
"""
import math

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from lossland import losses, nets


def applies(cfg: nets.NetConfig) -> bool:
  """Whether the layer-wise derivatives hold: one output (scalar margins);
  a frozen ReLU pattern (slopes given) or a smooth activation's own
  (``slopes=None`` in :func:`loss_derivatives`)."""
  return cfg.n_out == 1


def activation_derivatives(cfg: nets.NetConfig, params, x):
  """Per hidden layer (phi'(z_i), phi''(z_i)) [P, h] of the net's own
  activation at its pre-activations (elementwise, by forward mode)."""
  act = nets._ACTIVATIONS[cfg.activation]
  d1 = lambda z: jax.jvp(act, (z,), (jnp.ones_like(z),))[1]
  d2 = lambda z: jax.jvp(d1, (z,), (jnp.ones_like(z),))[1]
  zs = nets._forward(cfg, params, x)[:-1]
  return [d1(z) for z in zs], [d2(z) for z in zs]


def _sigmas(cfg: nets.NetConfig, params) -> list:
  return [1.0 / math.sqrt(layer["w"].shape[0]) if cfg.parametrization == "ntk" else 1.0
          for layer in params]


def features(cfg: nets.NetConfig, params, x, slopes=None, phi=None):
  """Per layer the inputs u_i [P, fan_in] and G_i = df/dz_i [P, fan_out], and
  the outputs f (``nets.readout``), of the net whose hidden layer i has the
  slopes ``slopes[i]`` [P, h] (the frozen net), or with ``phi`` the
  activation ``phi(i, z)``, or with neither the net's own activation; G from
  one backward pass of the summed outputs through zero perturbations of
  every z_i (examples do not interact). The empirical NTK's structured
  features (:mod:`lossland.ntk`) are these."""
  a, n = nets.activation_scale(cfg), len(params)
  if phi is None:
    act = nets._ACTIVATIONS[cfg.activation]
    phi = (lambda i, z: act(z)) if slopes is None else (lambda i, z: slopes[i] * z)

  def fwd(eps):
    u, ins = x, []
    for i, layer in enumerate(params):
      ins.append(u)
      z = u @ layer["w"]
      if cfg.parametrization == "ntk":
        z = z / math.sqrt(layer["w"].shape[0])
      if "b" in layer:
        z = z + layer["b"]
      z = z + eps[i]
      if i < n - 1:
        u = a * phi(i, z)
    return jnp.sum(cfg.alpha * z), (ins, nets.readout(cfg, z))

  eps = [jnp.zeros(x.shape[:-1] + (layer["w"].shape[1],), x.dtype) for layer in params]
  G, (ins, f) = jax.grad(fwd, has_aux=True)(eps)
  return ins, G, f


def jacobian(cfg: nets.NetConfig, params, ins, G):
  """J [P, N]: per point the gradient of f, flattened as ``ravel_pytree``."""
  sig = _sigmas(cfg, params)
  tree = []
  for layer, s, u, g in zip(params, sig, ins, G):
    t = {"w": s * u[:, :, None] * g[:, None, :]}
    if "b" in layer:
      t["b"] = g
    tree.append(t)
  return jax.vmap(lambda t: ravel_pytree(t)[0])(tree)


def _offsets(params) -> dict:
  """(layer, "w" | "b") -> its first index in the ``ravel_pytree`` vector."""
  out, o = {}, 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    out[(path[0].idx, path[1].key)] = o
    o += leaf.size
  return out


def cross_hessian(cfg: nets.NetConfig, params, ins, G, slopes, c):
  """sum_mu c_mu d2f_mu [N, N] (the module docstring's cross blocks)."""
  a, sig, n = nets.activation_scale(cfg), _sigmas(cfg, params), len(params)
  offs = _offsets(params)
  size = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
  R = jnp.zeros((size, size), c.dtype)
  for i in range(n - 1):
    h = slopes[i].shape[1]
    E = a * slopes[i][:, :, None] * jnp.eye(h, dtype=c.dtype)  # du_{i+1}/dz_i [P, h, h]
    for j in range(i + 1, n):
      cg = (c * sig[j])[:, None] * G[j]  # [P, fan_out_j]
      w_j = params[j]["w"]
      o_j, n_j = offs[(j, "w")], w_j.size
      wb = jnp.einsum("pk,pnq,pr->rqnk", cg, E, sig[i] * ins[i])
      R = R.at[offs[(i, "w")]:offs[(i, "w")] + params[i]["w"].size, o_j:o_j + n_j].set(
          wb.reshape(-1, n_j))
      if "b" in params[i]:
        bb = jnp.einsum("pk,pnq->qnk", cg, E)
        R = R.at[offs[(i, "b")]:offs[(i, "b")] + h, o_j:o_j + n_j].set(bb.reshape(h, n_j))
      if j < n - 1:  # du_{j+1}/dz_i = a D_j sigma_j W_j^T du_j/dz_i
        E = a * slopes[j][:, :, None] * (sig[j] * jnp.einsum("pnq,nk->pkq", E, w_j))
  return R + R.T


def curvature_hessian(cfg: nets.NetConfig, params, ins, G, slopes, curv, c):
  """sum_mu c_mu times a smooth activation's own second-order term of f
  [N, N] (module docstring): ``slopes`` phi'(z_i), ``curv`` phi''(z_i) per
  hidden layer [P, h]; ``ins``, ``G`` from :func:`features` of the same net.
  Assembled from its layer blocks by concatenation, in ``ravel_pytree``
  order (per layer b, then W): built by scatters into a zero matrix and
  added to the cross blocks' it sent XLA's algebraic simplifier into a loop
  that it reports and breaks off."""
  a, sig, n = nets.activation_scale(cfg), _sigmas(cfg, params), len(params)
  fan = [layer["w"].shape for layer in params]
  size = [layer["w"].size + (layer["b"].size if "b" in layer else 0) for layer in params]
  # U_i: layer i's inputs as they enter dz/dW_i, with a column of ones for b_i
  U = [jnp.concatenate([sig[i] * ins[i]] + ([jnp.ones_like(ins[i][:, :1])]
                                             if "b" in params[i] else []), axis=1)
       for i in range(n)]
  B = {}  # (i, j), i <= j: sum over k >= j of sum_mu U_i U_j T  [(fi + b), (fj + b), hi, hj]
  for k in range(n - 1):
    # weights of dz_k[q] dz_k[q]: c_mu (df/du_{k+1})[q] a phi''(z_k[q])
    wt = c[:, None] * (sig[k + 1] * G[k + 1] @ params[k + 1]["w"].T) * a * curv[k]
    Q = {k: None}  # Q^{ik} = dz_k/dz_i [P, h_i, h_k]; None: the identity
    for i in range(k - 1, -1, -1):  # Q^{ik} = a phi'(z_i) sigma_{i+1} W_{i+1} Q^{i+1,k}
      W = sig[i + 1] * params[i + 1]["w"]
      M = W[None] if Q[i + 1] is None else jnp.einsum("rs,psq->prq", W, Q[i + 1])
      Q[i] = a * slopes[i][:, :, None] * M
    for i in range(k + 1):
      for j in range(i, k + 1):
        if Q[i] is None:  # i = j = k
          T = jax.vmap(jnp.diag)(wt)
        elif Q[j] is None:  # j = k
          T = Q[i] * wt[:, None, :]
        else:
          T = jnp.einsum("prq,psq,pq->prs", Q[i], Q[j], wt)
        blk = jnp.einsum("mp,ms,mrt->psrt", U[i], U[j], T)
        B[i, j] = B[i, j] + blk if (i, j) in B else blk

  def block(i, j):  # rows: layer i's (b, W) in ravel order; columns: layer j's
    if (min(i, j), max(i, j)) not in B:
      return jnp.zeros((size[i], size[j]), c.dtype)
    b = B[i, j] if i <= j else B[j, i].transpose(1, 0, 3, 2)
    (fi, hi), (fj, hj) = fan[i], fan[j]
    ww = b[:fi, :fj].transpose(0, 2, 1, 3).reshape(fi * hi, fj * hj)
    if "b" not in params[i] and "b" not in params[j]:
      return ww
    if "b" not in params[i]:
      return jnp.concatenate([b[:fi, fj].reshape(fi * hi, hj), ww], axis=1)
    if "b" not in params[j]:
      return jnp.concatenate([b[fi, :fj].transpose(1, 0, 2).reshape(hi, fj * hj), ww], axis=0)
    return jnp.block([[b[fi, fj], b[fi, :fj].transpose(1, 0, 2).reshape(hi, fj * hj)],
                      [b[:fi, fj].reshape(fi * hi, hj), ww]])

  return jnp.block([[block(i, j) for j in range(n)] for i in range(n)])


def loss_derivatives(cfg: nets.NetConfig, params, x, y, off, slopes,
                     loss: losses.LossConfig, decay=0.0):
  """(value, gradient [N], Hessian [N, N], J [P, N], Delta [P]) of
  sum_mu ell(Delta_mu) + decay |w|^2 / 2 for the net with hidden slopes
  ``slopes`` (per hidden layer [P, h]; a frozen ReLU pattern), or with
  ``slopes=None`` for the net's own smooth activation (its phi'' term added);
  J the per-point gradients of f."""
  ins, G, f = features(cfg, params, x, slopes)
  curv = None
  if slopes is None:
    slopes, curv = activation_derivatives(cfg, params, x)
  J = jacobian(cfg, params, ins, G)
  delta = losses.margins(f - off, y, loss.epsilon)
  ell = lambda d: jnp.sum(loss.fn(d))
  d1 = jax.grad(ell)(delta)  # ell is per point: elementwise derivatives
  d2 = jax.grad(lambda d: jnp.sum(jax.grad(ell)(d)))(delta)
  c = -y * d1
  w = ravel_pytree(params)[0]
  H = J.T @ ((y * y * d2)[:, None] * J) + cross_hessian(cfg, params, ins, G, slopes, c)
  if curv is not None:
    H = H + curvature_hessian(cfg, params, ins, G, slopes, curv, c)
  H = H + decay * jnp.eye(w.size, dtype=w.dtype)
  return ell(delta) + 0.5 * decay * w @ w, J.T @ c + decay * w, H, J, delta


def slope_jacobian(cfg: nets.NetConfig, params, x, y, off, slopes, loss: losses.LossConfig,
                   pts, units, straight_through: bool = False):
  """dg/ds [N, K]: the loss gradient's derivative in the slope of each kink
  pair (hidden layer l's pairs ``pts[l]``, ``units[l]``, concatenated over
  the layers; a point index >= P is padding and gives a zero column). Only
  the pair's own point moves, so each column is one point's forward and
  backward pass, not a pass over all P points. ``straight_through``: the
  net's value is the ReLU's, the slopes only its derivative
  (:func:`lossland.nets.apply_with_kink_slopes`, the certificate's net)
  instead of the frozen net's slopes times z (the finish's)."""
  P = x.shape[0]
  off = jnp.broadcast_to(jnp.asarray(off, x.dtype), (P,))
  ell1 = jax.grad(lambda d: jnp.sum(loss.fn(d)))
  cols = []
  for l in range(len(pts)):
    def column(p, u, l=l):
      q = jnp.minimum(p, P - 1)

      def point_grad(t):
        rows = [s[q][None] for s in slopes]
        rows[l] = rows[l].at[0, u].set(t)
        phi = None
        if straight_through:
          phi = lambda i, z: (jax.lax.stop_gradient(jax.nn.relu(z))
                              + rows[i] * (z - jax.lax.stop_gradient(z)))
        ins, G, f = features(cfg, params, x[q][None], rows, phi=phi)
        c = -y[q] * ell1(losses.margins(f - off[q], y[q], loss.epsilon))
        return c[0] * jacobian(cfg, params, ins, G)[0]
      tangent = jax.jvp(point_grad, (slopes[l][q, u],), (jnp.ones((), x.dtype),))[1]
      return jnp.where(p < P, tangent, 0.0)
    cols.append(jax.vmap(column)(pts[l], units[l]))
  n = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
  return jnp.concatenate(cols + [jnp.zeros((0, n), x.dtype)], axis=0).T


def kink_rows(cfg: nets.NetConfig, params, x, slopes, pts, units, z_scale):
  """(z_K [K], A = dz_K/dw [K, N]): the pre-activations of the kink pairs
  (hidden layer l's ``pts[l]``, ``units[l]``, concatenated over the layers),
  each over its unit's ``z_scale[l]``, and their gradients, one point's pass
  per pair (a point index >= P is padding: value and row 0)."""
  P = x.shape[0]
  w, unravel = ravel_pytree(params)
  zs, rows = [], []
  for l in range(len(pts)):
    def pair(p, u, l=l):
      q = jnp.minimum(p, P - 1)

      def z_of(wf):
        z = nets._forward(cfg, unravel(wf), x[q][None],
                          phi=lambda m, z: slopes[m][q][None] * z)[l][0, u]
        return z / z_scale[l].at[u].get(mode="fill", fill_value=1.0)
      value, row = jax.value_and_grad(z_of)(w)
      return jnp.where(p < P, value, 0.0), jnp.where(p < P, row, 0.0)
    z, row = jax.vmap(pair)(pts[l], units[l])
    zs.append(z)
    rows.append(row)
  return jnp.concatenate(zs + [jnp.zeros(0, w.dtype)]), jnp.concatenate(
      rows + [jnp.zeros((0, w.size), w.dtype)])
