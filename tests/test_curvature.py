"""H v, H0 v, Hp v and the dense split against jax.hessian, jax.jacobian and eigh."""
import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from lossland import curvature as cv
from lossland import data
from lossland import lanczos as lz
from lossland import losses
from lossland import nets
from lossland import train

jax.config.update("jax_enable_x64", True)


def _setup(activation="relu", parametrization="ntk", bias=False, loss="quadratic_hinge",
           P=24, d=4, width=5, depth=2, seed=0, dtype=jnp.float64):
  cfg = nets.NetConfig(d=d, width=width, depth=depth, activation=activation,
                       parametrization=parametrization, bias=bias)
  init_fn, apply_fn = nets.make_net(cfg, dtype=dtype)
  params = init_fn(jax.random.key(seed))
  ds = data.sphere(jax.random.key(seed + 100), P, d, dtype=dtype)
  loss_cfg = losses.LossConfig(loss)
  return cfg, apply_fn, params, ds, loss_cfg


def _dense_loss_hessian(apply_fn, params, x, y, loss_cfg, offset=0.0):
  flat, unravel = ravel_pytree(params)
  loss = lambda w: jnp.mean(loss_cfg.fn(
      loss_cfg.epsilon - y * (apply_fn(unravel(w), x) - offset)))
  return np.asarray(jax.jit(jax.hessian(loss))(flat))


CASES = [
    dict(),
    dict(activation="tanh", loss="soft_hinge", parametrization="standard", bias=True,
         depth=1),
]


@pytest.mark.parametrize("case", CASES)
def test_hvp_equals_jax_hessian_and_split_sums(case):
  _, apply_fn, params, ds, loss_cfg = _setup(**case)
  offset = 0.1 * jnp.sin(jnp.arange(ds.P, dtype=ds.y_train.dtype))
  batch = cv.examples(ds.x_train, ds.y_train, offset)
  fns = cv.curvature_fns(apply_fn, loss_cfg)
  h_ref = _dense_loss_hessian(apply_fn, params, ds.x_train, ds.y_train, loss_cfg,
                              offset)
  n = h_ref.shape[0]
  scale = np.abs(h_ref).max()
  flat, unravel = ravel_pytree(params)
  v = jax.random.normal(jax.random.key(1), (n,), flat.dtype)

  @jax.jit
  def products(params, batch, v):
    return (fns.split_vp(params, batch, v), fns.hvp(params, batch, unravel(v)),
            fns.h0vp(params, batch, v), fns.hpvp(params, batch, v),
            cv.dense_split(fns, params, batch, batch_size=16))

  (hv, h0v, hpv), hv_tree, h0v_b, hpv_b, (h, h0, hp) = products(params, batch, v)
  np.testing.assert_allclose(hv, h_ref @ v, atol=1e-12 * scale * n)
  np.testing.assert_allclose(ravel_pytree(hv_tree)[0], h_ref @ v,
                             atol=1e-12 * scale * n)
  np.testing.assert_allclose(h0v + hpv, hv, atol=1e-12 * scale * n)
  np.testing.assert_allclose(h0v_b, h0v, atol=1e-14 * scale * n)
  np.testing.assert_allclose(hpv_b, hpv, atol=1e-14 * scale * n)
  np.testing.assert_allclose(h, h_ref, atol=1e-12 * scale)
  np.testing.assert_allclose(h0 + hp, h_ref, atol=1e-12 * scale)
  np.testing.assert_allclose(h0 @ v, h0v, atol=1e-12 * scale * n)

  # Independent ground truths for the split.
  delta = np.asarray(fns.delta(params, batch))
  d1, d2 = cv.loss_derivatives(loss_cfg.fn)
  w = 1.0 / ds.P
  delta_of = lambda f: fns.delta(unravel(f), batch)
  jac, hess_delta = jax.jit(lambda f: (jax.jacobian(delta_of)(f),
                                       jax.hessian(delta_of)(f)))(flat)
  jac, hess_delta = np.asarray(jac), np.asarray(hess_delta)  # [P, N], [P, N, N]
  h0_ref = jac.T @ (w * np.asarray(d2(jnp.asarray(delta)))[:, None] * jac)
  np.testing.assert_allclose(h0, h0_ref, atol=1e-12 * scale)
  assert np.linalg.eigvalsh(h0).min() > -1e-12 * scale  # H0 is PSD
  hp_ref = np.einsum("i,ijk->jk", w * np.asarray(d1(jnp.asarray(delta))), hess_delta)
  np.testing.assert_allclose(hp, hp_ref, atol=1e-12 * scale)


def test_chunked_equals_unchunked():
  _, apply_fn, params, ds, loss_cfg = _setup(P=23)
  batch = cv.examples(ds.x_train, ds.y_train)
  full = cv.curvature_fns(apply_fn, loss_cfg)
  chunked = cv.curvature_fns(apply_fn, loss_cfg, chunk_size=5)  # 23 = 4*5 + 3 padded
  v = jax.tree_util.tree_map(lambda a: jnp.cos(a * 3.0), params)
  run = lambda fns: jax.jit(lambda p, b, v: (fns.split_vp(p, b, v), fns.loss(p, b),
                                             fns.grad(p, b)))(params, batch, v)
  a, b = run(full), run(chunked)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(x, y, atol=1e-14, rtol=1e-12)


def test_delta_zero_convention():
  """At Delta = 0 exactly, a hinge point is satisfied: ell' = ell'' = 0, so it
  enters neither H0 nor Hp, consistently with autodiff's Hessian."""
  for name in ("quadratic_hinge", "hinge"):
    d1, d2 = cv.loss_derivatives(losses.get_loss(name))
    z = jnp.zeros(3)
    assert np.all(np.asarray(d1(z)) == 0) and np.all(np.asarray(d2(z)) == 0)
    np.testing.assert_allclose(d1(jnp.array([0.5])), [0.5 if name == "quadratic_hinge" else 1.0])
  # A net whose output is exactly 0, with margin 0: every Delta_i = 0.
  cfg, apply_fn, params, ds, _ = _setup()
  params = list(params[:-1]) + [{"w": jnp.zeros_like(params[-1]["w"])}]
  loss_cfg = losses.LossConfig("quadratic_hinge", margin=0.0)
  batch = cv.examples(ds.x_train, ds.y_train)
  fns = cv.curvature_fns(apply_fn, loss_cfg)
  h, h0, hp = jax.jit(lambda p, b: cv.dense_split(fns, p, b))(params, batch)
  assert np.all(np.asarray(fns.delta(params, batch)) == 0)
  assert np.all(np.asarray(h) == 0) and np.all(np.asarray(h0) == 0)
  assert np.all(np.asarray(hp) == 0)
  assert int(cv.n_active(fns, params, batch)) == 0
  # A tiny positive margin makes every point unsatisfied: H0 becomes non-zero.
  fns_eps = cv.curvature_fns(apply_fn, losses.LossConfig("quadratic_hinge",
                                                          margin=1e-3))
  _, h0_eps, _ = jax.jit(lambda p, b: cv.dense_split(fns_eps, p, b))(params, batch)
  assert np.abs(np.asarray(h0_eps)).max() > 0


def test_vmap_over_members_equals_loop():
  cfg, apply_fn, _, ds, loss_cfg = _setup(depth=1)
  init_fn, _ = nets.make_net(cfg)
  keys = jax.random.split(jax.random.key(5), 3)
  params = jax.vmap(init_fn)(keys)
  params0 = jax.vmap(init_fn)(jax.random.split(jax.random.key(6), 3))
  offsets = jax.vmap(lambda p: apply_fn(p, ds.x_train))(params0)
  batches = jax.vmap(lambda o: cv.examples(ds.x_train, ds.y_train, o))(offsets)
  n = nets.n_params(cfg)
  vs = jax.random.normal(jax.random.key(7), (3, n))
  fns = cv.curvature_fns(apply_fn, loss_cfg)
  batched = jax.jit(jax.vmap(fns.split_vp))(params, batches, vs)
  one = jax.jit(fns.split_vp)
  for k in range(3):
    take = lambda t: jax.tree_util.tree_map(lambda a: a[k], t)
    single = one(take(params), take(batches), vs[k])
    for b, s in zip(batched, single):
      np.testing.assert_allclose(b[k], s, atol=1e-14)


def test_lanczos_and_slq_on_network_hessian():
  """Lanczos with N steps reproduces eigh of H, H0 and Hp of a real network;
  SLQ moments match trace(H)/N and trace(H^2)/N; Hutchinson matches trace(H)."""
  _, apply_fn, params, ds, loss_cfg = _setup(P=30, width=6)
  batch = cv.examples(ds.x_train, ds.y_train)
  fns = cv.curvature_fns(apply_fn, loss_cfg)
  n = ravel_pytree(params)[0].size
  num_probes = 60

  @jax.jit
  def run(params, batch):
    out = []
    for vp in (fns.hvp, fns.h0vp, fns.hpvp):
      mv = cv.flat_matvec(vp, params, batch)
      out.append(lz.ritz(lz.lanczos(mv, jnp.ones(n), n))[0])
    mv = cv.flat_matvec(fns.hvp, params, batch)
    return (out, cv.dense_split(fns, params, batch),
            lz.slq(mv, jax.random.key(3), n, 12, num_probes),
            lz.hutchinson(mv, jax.random.key(4), n, 60))

  ritz_vals, dense, r, (est, err) = run(params, batch)
  for theta, m in zip(ritz_vals, dense):
    exact = np.linalg.eigvalsh(np.asarray(m))
    np.testing.assert_allclose(np.sort(np.asarray(theta)), exact,
                               atol=1e-10 * np.abs(exact).max())
  h = np.asarray(dense[0])
  for k, hk in ((1, h), (2, h @ h)):
    off = hk - np.diag(np.diag(hk))
    sigma = np.sqrt(2 * np.sum(off ** 2)) / n / np.sqrt(num_probes)
    assert abs(float(r.moment(k)) - np.trace(hk) / n) < 4 * sigma
  assert abs(float(est) - np.trace(h)) < 4 * float(err) + 1e-12


def test_counts_closed_form():
  eig_h = np.array([-1e-17, 0.0, 1e-16, 0.5, 2.0])
  eig_h0 = np.array([0.0, 1e-17, 1e-16, 0.3, 1.9])
  eig_hp = np.array([-0.2, -0.1, 0.0, 1e-17, 0.1])
  c = cv.spectral_counts(eig_h, eig_h0, eig_hp, n_delta=2)
  assert c["n_zero_h"] == 3 and c["rank_h0"] == 2 and c["n_negative_hp"] == 2
  assert c["stable"] and c["rank_h0_le_n_delta"] and c["n_negative_hp_le_n_delta"]
  c = cv.spectral_counts(np.array([-0.1, 1.0]), eig_h0[:2], eig_hp[:2], n_delta=1)
  assert not c["stable"] and c["n_negative_hp_le_n_delta"] is None
  assert cv.count_eigenvalues(np.zeros(4))["n_zero"] == 4
  assert cv.matrix_rank(np.outer(np.arange(3.0), np.ones(4))) == 1


def test_check_dense_memory_message():
  with pytest.raises(MemoryError, match="lanczos"):
    cv.check_dense_memory(10 ** 7, np.float64)
  cv.check_dense_memory(100, np.float64)  # 100 x 100 always fits


def test_bad_flat_vector():
  _, apply_fn, params, ds, loss_cfg = _setup()
  fns = cv.curvature_fns(apply_fn, loss_cfg)
  with pytest.raises(ValueError, match="flat vector"):
    fns.hvp(params, cv.examples(ds.x_train, ds.y_train), jnp.ones(3))


def test_dtype_preserved_float32():
  _, apply_fn, params, ds, loss_cfg = _setup(dtype=jnp.float32)
  batch = cv.examples(ds.x_train, ds.y_train)
  fns = cv.curvature_fns(apply_fn, loss_cfg)
  n = ravel_pytree(params)[0].size
  outs = jax.jit(fns.split_vp)(params, batch, jnp.ones(n, jnp.float32))
  assert all(o.dtype == jnp.float32 for o in outs)
  assert batch.weight.dtype == jnp.float32


def _relu_rescaling(params, layer, neuron):
  """Generator A w of the ReLU symmetry: neuron's incoming weights scaled by c,
  outgoing by 1/c (d/dc at c = 1); A is diagonal (+1 in, -1 out)."""
  a = jax.tree_util.tree_map(jnp.zeros_like, params)
  a[layer]["w"] = a[layer]["w"].at[:, neuron].set(1.0)
  a[layer + 1]["w"] = a[layer + 1]["w"].at[neuron, :].set(-1.0)
  return a


def test_relu_rescaling_symmetry_identities():
  """L(g_c w) = L(w) gives grad.(A w) = 0 and H (A w) = -A grad at ANY w."""
  _, apply_fn, params, ds, loss_cfg = _setup(P=30)
  batch = cv.examples(ds.x_train, ds.y_train)
  fns = cv.curvature_fns(apply_fn, loss_cfg)
  flat = lambda t: ravel_pytree(t)[0]
  g = flat(fns.grad(params, batch))
  assert np.linalg.norm(g) > 1e-3
  for layer, neuron in ((0, 0), (0, 3), (1, 2)):
    a = flat(_relu_rescaling(params, layer, neuron))
    v = a * flat(params)
    np.testing.assert_allclose(float(g @ v), 0.0, atol=1e-14)
    hv = flat(fns.hvp(params, batch, v))
    np.testing.assert_allclose(hv, -a * g, atol=1e-13)
    # A non-symmetry direction of the same support is not gradient-orthogonal.
    assert abs(float(g @ (jnp.abs(a) * flat(params)))) > 1e-8


@functools.lru_cache(maxsize=None)
def _trained_jammed(P=48, d=5, width=4, data_seed=0):
  """A tiny under-parametrized ensemble of two depth-2 ReLU nets trained by
  lossland.train until they jam (N_Delta > 0 at the end): N = 40 < P = 48 by
  default, N = 120 < P = 160 with ``_trained_jammed(160, 6, 8, 3)``."""
  ds = data.sphere(jax.random.key(data_seed), P, d)
  net = nets.NetConfig(d=d, width=width, depth=2)
  tcfg = train.TrainConfig(max_steps=3000, lr=1e-2, jam_window=500, jam_rtol=1e-4)
  return ds, net, train.train_ensemble([0, 1], ds, net, losses.LossConfig(), tcfg)


def _dense_truth(*sizes):
  """The members of ``_trained_jammed(*sizes)`` with their dense truth.

  Returns:
    (ds, net, apply_fn, fns, batch, members), each member a tuple (params,
    N_Delta, (eigenvalues of H, H0, Hp), spectral_counts).
  """
  ds, net, res = _trained_jammed(*sizes)
  _, apply_fn = nets.make_net(net)
  fns = cv.curvature_fns(apply_fn, losses.LossConfig())
  batch = cv.examples(ds.x_train, ds.y_train)
  dense = jax.jit(lambda p, b: cv.dense_split(fns, p, b))
  members = []
  for k in range(2):
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a[k]), res.params)
    n_delta = int(jnp.sum(fns.delta(params, batch) > 0))
    eigs = tuple(np.linalg.eigvalsh(np.asarray(m)) for m in dense(params, batch))
    members.append((params, n_delta, eigs, cv.spectral_counts(*eigs, n_delta)))
  return ds, net, apply_fn, fns, batch, members


def test_counts_on_trained_jammed_nets():
  ds, _, apply_fn, fns, batch, members = _dense_truth()
  for params, n_delta, (h, _, _), c in members:
    assert n_delta > 0 and 0 < c["rank_h0"] <= n_delta and c["rank_h0_le_n_delta"]
    # rank(H0) is also the rank of the N_Delta x N Jacobian of the active margins.
    jac = np.asarray(cv.output_jacobian(apply_fn, params, ds.x_train))
    active = np.asarray(fns.delta(params, batch)) > 0
    assert c["rank_h0"] == np.linalg.matrix_rank(jac[active])
    # Near a minimum: negative eigenvalues of H are tiny compared to the band
    # (Adam stops at a kink of the ReLU net, not exactly at dL = 0), and the
    # counting bound N_-(Hp) <= N_Delta holds, with N_-(Hp) > 0.
    assert h.min() > -1e-3 * h.max()
    assert 0 < c["n_negative_hp"] <= n_delta
    n_eff = cv.matrix_rank(jac)
    assert n_eff == np.linalg.matrix_rank(jac) and n_eff <= min(ds.P, jac.shape[1])


def test_sat_point_has_zero_hessian():
  """Over-parametrized phase: at L = 0 with the finite-range hinge, H = H0 =
  Hp = 0 exactly (labels set to sign(f), margin below min |f|)."""
  cfg, apply_fn, params, ds, _ = _setup(P=20)
  f = apply_fn(params, ds.x_train)
  y = jnp.sign(f)
  loss_cfg = losses.LossConfig("quadratic_hinge", margin=0.5 * float(jnp.abs(f).min()))
  fns = cv.curvature_fns(apply_fn, loss_cfg)
  batch = cv.examples(ds.x_train, y)
  h, h0, hp = (np.linalg.eigvalsh(np.asarray(m)) for m in
               jax.jit(lambda p, b: cv.dense_split(fns, p, b))(params, batch))
  c = cv.spectral_counts(h, h0, hp, 0)
  n = nets.n_params(cfg)
  assert c["n_zero_h"] == n and c["rank_h0"] == 0 and c["n_negative_hp"] == 0
  assert float(fns.loss(params, batch)) == 0.0
  # The full-Krylov Lanczos path (breakdown at every step) says the same, with
  # no unsettled value: the residuals of an exact zero matrix are 0.
  row, _ = cv.lanczos_counts(fns, params, batch, jax.random.key(0), krylov="full")
  for key in ("n_zero_h", "n_negative_h", "n_negative_hp", "rank_h0", "stable",
              "n_negative_hp_le_n_delta"):
    assert row[key] == c[key], key
  assert row["n_zero_h_interval"] == [n, n] and row["n_negative_h_interval"] == [0, 0]


def test_zero_modes_at_jammed_minimum():
  """Each hidden ReLU neuron k gives a rescaling direction v_k = A_k w with
  H v_k = -A_k grad exactly, at any w (no assumption on how well training
  converged, which differs between CPU and GPU end points). On the span of the
  depth * width directions, V = QR, |H x| <= sigma = |[-A_k grad] R^-1|_2 for
  unit x, a bound computed from the gradient alone; by Courant-Fischer (for
  H^2) H then has at least depth * width eigenvalues with |lambda| <= sigma.
  Checked against dense eigh; each v_k is a soft mode to within its own
  gradient bound |A_k grad| / |v_k|, and sigma is small next to lambda_max
  because the gradient at the end of training is."""
  ds, net, res = _trained_jammed()
  _, apply_fn = nets.make_net(net)
  fns = cv.curvature_fns(apply_fn, losses.LossConfig())
  batch = cv.examples(ds.x_train, ds.y_train)
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(a[0]), res.params)
  flat = lambda t: ravel_pytree(t)[0]
  h = np.asarray(jax.jit(lambda p, b: cv.dense_split(fns, p, b)[0])(params, batch))
  g = np.asarray(flat(fns.grad(params, batch)))
  w = np.asarray(flat(params))
  eigs = np.linalg.eigvalsh(h)
  lam_max = np.abs(eigs).max()
  vs, hvs = [], []
  for layer in range(net.depth):
    for neuron in range(net.width):
      a = np.asarray(flat(_relu_rescaling(params, layer, neuron)))
      v = a * w
      np.testing.assert_allclose(h @ v, -a * g, atol=1e-12 * lam_max * np.abs(v).max())
      np.testing.assert_allclose(float(g @ v), 0.0, atol=1e-13)
      rayleigh = abs(v @ h @ v) / (v @ v)
      assert rayleigh <= np.linalg.norm(a * g) / np.linalg.norm(v) + 1e-12 * lam_max
      vs.append(v)
      hvs.append(-a * g)
  v_mat, hv_mat = np.stack(vs, 1), np.stack(hvs, 1)
  m = v_mat.shape[1]
  q, r = np.linalg.qr(v_mat)
  assert np.linalg.matrix_rank(v_mat) == m == net.depth * net.width
  sigma = np.linalg.norm(np.linalg.solve(r.T, hv_mat.T).T, 2)
  np.testing.assert_allclose(np.linalg.norm(h @ q, 2), sigma, rtol=1e-6,
                             atol=1e-12 * lam_max)
  n_small = int(np.sum(np.abs(eigs) <= sigma * (1 + 1e-9) + 1e-12 * lam_max))
  assert n_small >= m
  # Soft: the end-of-training gradient keeps sigma far below the band (1.9e-4
  # lambda_max on CPU; the GPU end point of issue 12 had v.H.v = 1.2e-4 lambda_max).
  print(f"sigma / lambda_max = {sigma / lam_max:.3g}, n_small = {n_small} >= {m}")
  assert sigma < 1e-2 * lam_max, (sigma, lam_max)


def test_lanczos_counts_against_dense_on_jammed_run():
  """At scale (SLQ): rank(H0), Tr(H0) and spec(H0) are exact (the N_Delta x
  N_Delta kernel), the other counts are estimates whose intervals hold the
  dense truth, and no check is stated from an estimate."""
  _, net, _, fns, batch, members = _dense_truth(160, 6, 8, 3)
  n = nets.n_params(net)
  for k, (params, n_delta, (h, h0, _), truth) in enumerate(members):
    assert n_delta > 0 and truth["rank_h0"] > 0
    row, arrays = cv.lanczos_counts(fns, params, batch, jax.random.key(k),
                                    num_steps=80, num_probes=8, top_k=3, pad_to=32,
                                    krylov="slq")
    assert row["lanczos_counts"] == "slq"
    assert row["n_active"] == n_delta
    assert row["rank_h0"] == truth["rank_h0"]
    np.testing.assert_allclose(row["trace_h0"], h0.sum(), rtol=1e-10)
    np.testing.assert_allclose(arrays["eig_h0"], h0, atol=1e-10 * h0.max())
    for key in ("n_negative_hp", "n_zero_h", "n_negative_h"):
      lo, hi = row[f"{key}_interval"]
      assert lo <= truth[key] <= hi, (k, key, truth[key], lo, hi)
      assert 0 <= row[f"{key}_stderr"] and key in row["estimated"]
      assert hi - lo < 0.75 * n  # the interval says something
    assert abs(row["trace_h"] - h.sum()) <= 3 * row["trace_h_stderr"] + 1e-10 * h.max()
    # Ritz values bound the spectrum; residuals are the true |H y - theta y|.
    assert row["lambda_min_h_upper_bound"] >= h.min() - 1e-12 * h.max()
    np.testing.assert_allclose(row["ritz_top_h"][0], h.max(), rtol=1e-8)
    assert 0 < row["ritz_top_residual_h"][0] < 1e-6 * h.max()
    assert row["stable"] in (False, None) and row["n_negative_hp_le_n_delta"] is None
    if row["stable"] is False:
      assert not truth["stable"]


# The dense path's counts and checks that the full-Krylov Lanczos path reproduces.
_EXACT_KEYS = ("n_negative_hp", "n_positive_hp", "n_zero_h", "n_negative_h",
               "n_negative_hp_resolved", "stable", "n_negative_hp_le_n_delta",
               "rank_h0", "rank_h0_le_n_delta")


def test_full_krylov_counts_equal_dense_on_jammed_run():
  """The default Lanczos path at N = 120 <= (8 + 1/2) 80 is a Lanczos run of
  dimension N on H and on Hp: every count and check equals dense eigh's (the
  same N eps tolerance), the eigenvalues agree to rounding, each interval
  holds the dense count, and nothing is listed as estimated."""
  _, net, _, fns, batch, members = _dense_truth(160, 6, 8, 3)
  n = nets.n_params(net)
  assert n == 120
  for k, (params, _, (h, h0, hp), truth) in enumerate(members):
    row, arrays = cv.lanczos_counts(fns, params, batch, jax.random.key(k),
                                    num_steps=80, num_probes=8, top_k=3, pad_to=32)
    assert row["lanczos_counts"] == "full" and row["estimated"] == []
    for key in _EXACT_KEYS:
      assert row[key] == truth[key], (k, key, row[key], truth[key])
    for key in ("n_negative_hp", "n_zero_h", "n_negative_h"):
      lo, hi = row[f"{key}_interval"]
      assert lo <= truth[key] <= hi and hi - lo <= 2, (key, lo, hi)
    scale = np.abs(h).max()
    np.testing.assert_allclose(arrays["eig_h"], h, atol=1e-12 * scale)
    np.testing.assert_allclose(arrays["eig_hp"], hp, atol=1e-12 * scale)
    np.testing.assert_allclose(arrays["eig_h0"], h0, atol=1e-10 * h0.max())
    np.testing.assert_allclose(row["trace_h"], h.sum(), atol=1e-10 * scale)
    assert row["lambda_min_h"] == pytest.approx(h.min(), abs=1e-12 * scale)
    np.testing.assert_allclose(row["ritz_top_h"][0], h.max(), rtol=1e-12)
    assert 0 < row["ritz_top_residual_h"][0] < 1e-10 * scale
  # n_zero(H) > 0 and N_-(H) > 0 in this run: the counts are not trivial.
  assert all(m[3]["n_zero_h"] > 0 and m[3]["n_negative_h"] > 0 for m in members)


def test_settled_count_closed_form():
  """Values within their true residual of a class boundary are unsettled;
  unchecked values get the largest checked residual."""
  values = np.array([-1.0, -2e-3, -0.5e-3, 0.0, 1.5e-3, 5e-3, 1.0])
  tol = 1e-3
  inside = values < -tol
  # Checked, the three nearest -tol: index 1 (residual 2e-3 reaches -tol), 2
  # and 3 (settled); the others are farther than 2e-3 from -tol.
  c = cv.settled_count(values, inside, (-tol,), [1, 2, 3], [2e-3, 1e-4, 1e-5])
  assert c["count"] == 2 and c["unresolved"] == 1 and c["interval"] == [1, 2]
  zero = np.abs(values) <= tol
  c = cv.settled_count(values, zero, (-tol, tol), np.array([[2, 3], [4, 3]]),
                       np.array([[1e-4, 0.0], [6e-4, 0.0]]))
  # Index 4 (1.5e-3, residual 6e-4) may be zero; unchecked 1 (-2e-3) is
  # 1e-3 away from -tol, beyond the largest checked residual 6e-4.
  assert c["count"] == 2 and c["unresolved"] == 1 and c["interval"] == [2, 3]


def test_choose_krylov():
  cfg = cv.SpectraConfig("lanczos")
  assert cv.choose_krylov(cfg, 450, np.float64) == "full"
  assert cv.choose_krylov(cfg, 451, np.float64) == "slq"
  more = cv.SpectraConfig("lanczos", num_probes=10)
  assert cv.choose_krylov(more, 1050, np.float64) == "full"
  assert cv.choose_krylov(cv.SpectraConfig("lanczos", krylov="full"), 5000,
                          np.float64) == "full"
  assert cv.choose_krylov(cv.SpectraConfig("lanczos", krylov="slq"), 10,
                          np.float64) == "slq"
  with pytest.raises(MemoryError, match="slq"):
    cv.choose_krylov(cv.SpectraConfig("lanczos", krylov="full"), 10 ** 7,
                     np.float64)
  with pytest.raises(ValueError, match="krylov"):
    cv.SpectraConfig("lanczos", krylov="exact")


def _three_members():
  """Two jammed members and one at initialization (many more active points),
  each with its own output offset: per-member batches [3, P, ...]."""
  ds, net, res = _trained_jammed()
  _, apply_fn = nets.make_net(net)
  pick = lambda t, k: jax.tree_util.tree_map(lambda a: jnp.asarray(a[k]), t)
  members = [pick(res.params, 0), pick(res.params, 1), pick(res.params0, 0)]
  params = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *members)
  offsets = [0.05 * k * jnp.sin(jnp.arange(ds.P, dtype=ds.y_train.dtype))
             for k in range(3)]
  batches = [cv.examples(ds.x_train, ds.y_train, o) for o in offsets]
  batch = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *batches)
  return apply_fn, members, batches, params, batch


def test_spectra_equals_plain_loop_over_members():
  """curvature.spectra (lax.map over members, 2 vmapped, groups of 2 with the
  last one padded) against a plain loop of the one-network functions: dense
  eigh of dense_split, spectral_counts, the rank of the output Jacobian, and
  lanczos_counts with each member's own key and its own active-set padding."""
  apply_fn, members, batches, params, batch = _three_members()
  fns = cv.curvature_fns(apply_fn, losses.LossConfig())
  dense_cfg = cv.SpectraConfig("dense", batch_size=16, vmap_size=2)
  res = cv.spectra(fns, params, batch, dense_cfg, group_size=2)
  dense = jax.jit(lambda p, b: cv.dense_split(fns, p, b))
  seen = []
  for k, (p, b) in enumerate(zip(members, batches)):
    eigs = [np.linalg.eigvalsh(np.asarray(m)) for m in dense(p, b)]
    delta = np.asarray(fns.delta(p, b))
    n_delta = int(np.sum(delta > 0))
    row = res.rows[k]
    assert row["n_delta"] == n_delta and row["method"] == "dense"
    np.testing.assert_allclose(row["loss"], float(fns.loss(p, b)), rtol=1e-12)
    for key, value in cv.spectral_counts(*eigs, n_delta).items():
      if isinstance(value, float):
        assert row[key] == pytest.approx(value, rel=1e-10), key
      else:
        assert row[key] == value, key
    jac = cv.output_jacobian(apply_fn, p, b.x)
    assert row["n_eff"] == cv.matrix_rank(jac)
    for name, e in zip(("eig_h", "eig_h0", "eig_hp"), eigs):
      np.testing.assert_allclose(res.arrays[name][k], e,
                                 atol=1e-12 * np.abs(eigs[0]).max())
    np.testing.assert_allclose(row["trace_h"], eigs[0].sum(),
                               atol=1e-12 * np.abs(eigs[0]).sum())
    seen.append((n_delta, row["rank_h0"]))
  assert len({nd for nd, _ in seen}) == 3 and all(r > 0 for _, r in seen)

  key = jax.random.key(7)
  ids = [4, 0, 9]
  lan_cfg = cv.SpectraConfig("lanczos", batch_size=16, num_steps=20,
                             num_probes=2, top_k=2, pad_to=8, vmap_size=2,
                             n_eff=False, krylov="slq")
  lan = cv.spectra(fns, params, batch, lan_cfg, key=key, member_ids=ids,
                   group_size=2)
  for k, (p, b) in enumerate(zip(members, batches)):
    row, arrays = cv.lanczos_counts(fns, p, b, jax.random.fold_in(key, ids[k]),
                                    num_steps=20, num_probes=2, top_k=2,
                                    block_size=16, pad_to=8, krylov="slq")
    got = lan.rows[k]
    for name, value in row.items():
      if isinstance(value, float):
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
      elif isinstance(value, list) and value and isinstance(value[0], float):
        np.testing.assert_allclose(got[name], value, rtol=1e-9, atol=1e-12)
      else:
        assert got[name] == value, name
    for name in ("eig_h0", "nodes_h", "nodes_hp", "ritz_h"):
      np.testing.assert_allclose(lan.arrays[name][k], arrays[name],
                                 atol=1e-12 * np.abs(arrays[name]).max())
    # The exact part against the dense truth: spec(H0) and rank(H0).
    h0 = res.arrays["eig_h0"][k]
    np.testing.assert_allclose(lan.arrays["eig_h0"][k], h0, atol=1e-10 * h0.max())
    assert got["rank_h0"] == res.rows[k]["rank_h0"] and got["rank_h0_le_n_delta"]
  assert lan.arrays["nodes_h"].shape == (3, 2, 20)
  # The full-Krylov path ("auto" at N = 40 <= 2.5 * 20), mapped the same way:
  # every count and check of every member equals the dense one.
  full = cv.spectra(fns, params, batch, dataclasses.replace(lan_cfg, krylov="auto"),
                    key=key, member_ids=ids, group_size=2)
  for k in range(3):
    got, want = full.rows[k], res.rows[k]
    assert got["lanczos_counts"] == "full"
    assert {q: got[q] for q in _EXACT_KEYS} == {q: want[q] for q in _EXACT_KEYS}
    np.testing.assert_allclose(full.arrays["eig_hp"][k], res.arrays["eig_hp"][k],
                               atol=1e-12 * np.abs(res.arrays["eig_h"][k]).max())


def test_spectra_config_and_method_choice():
  with pytest.raises(ValueError, match="num_probes"):
    cv.SpectraConfig("lanczos", num_probes=1)
  with pytest.raises(ValueError, match="method"):
    cv.SpectraConfig("magic")
  assert cv.choose_method("auto", 50, np.float64) == "dense"
  assert cv.choose_method("auto", 50, np.float64, dense_max_n=10) == "lanczos"
  assert cv.choose_method("auto", 10 ** 7, np.float64, dense_max_n=10 ** 8) == "lanczos"
  with pytest.raises(MemoryError, match="lanczos"):
    cv.choose_method("dense", 10 ** 7, np.float64)


def test_slq_interval_closed_form():
  """estimate_fraction on hand-made quadratures: mean, standard error over
  probes, and the weight of nodes whose residual straddles a boundary."""
  nodes = np.array([[-1.0, 0.0, 2.0], [-1.0, 1e-3, 2.0]])
  weights = np.array([[0.2, 0.3, 0.5], [0.4, 0.2, 0.4]])
  res = np.array([[0.0, 0.0, 0.0], [0.0, 5e-3, 0.0]])
  f = cv.estimate_fraction(nodes, weights, res, -1e-6, 1e-6)
  assert f["estimate"] == pytest.approx(0.15)
  assert f["stderr"] == pytest.approx(np.std([0.3, 0.0], ddof=1) / np.sqrt(2))
  assert f["unresolved"] == pytest.approx(0.1)
  lo, hi = f["interval"]
  assert lo == 0.0 and hi == pytest.approx(0.15 + 3 * f["stderr"] + 0.1)


def test_density_figures_of_an_all_zero_spectrum(tmp_path):
  """At L = 0 with the finite-range hinge H = 0: the figures say so instead of
  a density broadened by sigma = 1e-302."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  from lossland.plots import curvature as cp
  nodes = np.zeros((2, 1, 10))
  weights = np.full_like(nodes, 0.1)
  seen = []
  orig = plt.Figure.savefig

  def spy(fig, *a, **kw):
    seen.append([t.get_text() for ax in fig.axes for t in ax.texts] +
                [ax.get_ylabel() for ax in fig.axes] +
                [str(ax.get_ylim()) for ax in fig.axes])
    return orig(fig, *a, **kw)

  plt.Figure.savefig = spy
  try:
    paths = cp.plot_all(str(tmp_path), {m: (nodes, weights) for m in ("h", "h0", "hp")},
                        np.zeros(2), ["a", "b"])
    mixed = np.concatenate([nodes[:1], np.linspace(-1, 2, 10)[None, None]])
    cp.plot_density(mixed, weights, "H", str(tmp_path / "mixed.png"), ["a", "b"])
  finally:
    plt.Figure.savefig = orig
  assert all(os.path.getsize(p) > 1000 for p in paths)
  text = " ".join(" ".join(s) for s in seen[:3])
  assert "H = 0 exactly at a satisfied minimum" in text
  assert "1e-302" not in text and "e+30" not in text and "e+29" not in text
  # Only the zero member is named as such; the other one gets a density.
  assert "σ = 0.03" in " ".join(seen[-1]) and "e+30" not in " ".join(seen[-1])
