"""Lanczos, Ritz pairs, SLQ and Hutchinson against dense linear algebra."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lossland import lanczos as lz

jax.config.update("jax_enable_x64", True)


def _sym(n, seed):
  a = np.random.default_rng(seed).normal(size=(n, n))
  return (a + a.T) / 2


def _ritz_all(a, v0, m, reorth=True):
  a = jnp.asarray(a)
  f = jax.jit(lambda v: lz.ritz(lz.lanczos(lambda x: a @ x, v, m,
                                           reorthogonalize=reorth)))
  return f(jnp.asarray(v0))


@pytest.mark.parametrize("n,seed", [(7, 0), (40, 1), (120, 2)])
def test_full_lanczos_reproduces_eigh_random(n, seed):
  a = _sym(n, seed)
  v0 = np.random.default_rng(seed + 10).normal(size=n)
  theta, vecs, res = _ritz_all(a, v0, n)
  exact = np.linalg.eigvalsh(a)
  scale = np.abs(exact).max()
  np.testing.assert_allclose(np.sort(theta), exact, atol=1e-12 * scale * n)
  true_res = np.linalg.norm(a @ np.asarray(vecs) - np.asarray(vecs) * np.asarray(theta),
                            axis=0)
  assert true_res.max() < 1e-10 * scale


@pytest.mark.parametrize("kind", ["low_rank", "zero", "repeated"])
def test_full_lanczos_breakdown_degenerate(kind):
  """Invariant subspaces (low rank, repeated eigenvalues, zero matrix) restart
  cleanly: no NaN, and all eigenvalues with multiplicity are recovered."""
  n = 30
  rng = np.random.default_rng(3)
  if kind == "low_rank":
    b = rng.normal(size=(n, 3))
    a = b @ b.T
  elif kind == "zero":
    a = np.zeros((n, n))
  else:
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    a = q @ np.diag(np.repeat([-2.0, 0.5, 3.0], 10)) @ q.T
  theta, vecs, _ = _ritz_all(a, rng.normal(size=n), n)
  assert np.all(np.isfinite(theta))
  np.testing.assert_allclose(np.sort(theta), np.linalg.eigvalsh(a), atol=1e-11)
  # The Ritz vectors form an orthonormal eigenbasis.
  v = np.asarray(vecs)
  np.testing.assert_allclose(v.T @ v, np.eye(n), atol=1e-10)


def test_basis_orthonormal_with_reorthogonalization():
  n, m = 200, 80
  a = np.diag(np.linspace(0, 1, n) ** 3)  # clustered spectrum: orthogonality is lost fast
  v0 = np.ones(n)
  f = lambda reorth: np.asarray(jax.jit(lambda v: lz.lanczos(
      lambda x: jnp.asarray(a) @ x, v, m, reorthogonalize=reorth).basis)(v0))
  q = f(True)
  np.testing.assert_allclose(q @ q.T, np.eye(m), atol=1e-13)
  # Without it the three-term recurrence loses orthogonality (Paige 1972).
  q_plain = f(False)
  assert np.abs(q_plain @ q_plain.T - np.eye(m)).max() > 1e-6


def test_eigsh_extreme_pairs_and_residuals():
  n = 300
  rng = np.random.default_rng(4)
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  eigs = np.concatenate([[-5.0, -4.0], np.linspace(-1, 1, n - 4), [6.0, 8.0]])
  a = jnp.asarray(q @ np.diag(eigs) @ q.T)
  mv = lambda x: a @ x
  v0 = jnp.asarray(rng.normal(size=n))
  cases = (("LA", [8.0, 6.0]), ("SA", [-5.0, -4.0]), ("LM", [8.0, 6.0]))
  outs = jax.jit(lambda v: [lz.eigsh(mv, v, 60, k=2, which=w) for w, _ in cases])(v0)
  for (which, want), (vals, vecs, res) in zip(cases, outs):
    np.testing.assert_allclose(vals, want, atol=1e-10)
    true = lz.residual_norms(mv, vals, vecs)
    np.testing.assert_allclose(true, res, atol=1e-10)
    assert float(res.max()) < 1e-9


def test_gauss_quadrature_is_exact_to_degree_2m_minus_1():
  n, m = 50, 5
  a = _sym(n, 5) / 5
  v0 = np.random.default_rng(6).normal(size=n)
  nodes, weights = jax.jit(lambda v: lz.gauss_quadrature(
      lz.lanczos(lambda x: jnp.asarray(a) @ x, v, m)))(jnp.asarray(v0))
  q0 = v0 / np.linalg.norm(v0)
  np.testing.assert_allclose(float(weights.sum()), 1.0, atol=1e-14)
  for k in range(2 * m):
    exact = q0 @ np.linalg.matrix_power(a, k) @ q0
    np.testing.assert_allclose(float(jnp.sum(weights * nodes ** k)), exact,
                               rtol=1e-10, atol=1e-12)
  # Degree 2m is no longer exact (a test that would catch a wrong weight rule).
  exact = q0 @ np.linalg.matrix_power(a, 2 * m) @ q0
  assert abs(float(jnp.sum(weights * nodes ** (2 * m))) - exact) > 1e-8


def test_slq_moments_match_traces():
  n = 60
  a = _sym(n, 7) / np.sqrt(n)
  aj = jnp.asarray(a)
  num_probes = 400
  r = jax.jit(lambda k: lz.slq(lambda x: aj @ x, k, n, 10, num_probes))(
      jax.random.key(0))
  assert r.nodes.shape == (num_probes, 10)
  np.testing.assert_allclose(np.asarray(r.weights.sum(-1)), 1.0, atol=1e-12)
  # Per probe, the quadrature moment is exactly v^T A^k v / n.
  keys = jax.random.split(jax.random.key(0), num_probes)
  v = np.asarray(jax.vmap(lambda k: lz.rademacher(k, n, jnp.float64))(keys))
  for k, ak in ((1, a), (2, a @ a)):
    per_probe = np.einsum("pi,ij,pj->p", v, ak, v) / n
    np.testing.assert_allclose(
        np.asarray(jnp.sum(r.weights * r.nodes ** k, -1)), per_probe, rtol=1e-9,
        atol=1e-12)
    # And their mean estimates trace(A^k)/n within the Rademacher error
    # (var of v^T A v = 2 sum_{i != j} A_ij^2).
    off = ak - np.diag(np.diag(ak))
    sigma = np.sqrt(2 * np.sum(off ** 2)) / n / np.sqrt(num_probes)
    assert abs(float(r.moment(k)) - np.trace(ak) / n) < 4 * sigma


def test_slq_density_and_counts_recover_known_spectrum():
  """A spectrum with a zero peak of weight 1/2 and a gapped band [1, 2]."""
  n = 400
  rng = np.random.default_rng(8)
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  eigs = np.concatenate([np.zeros(n // 2), np.linspace(1, 2, n // 2)])
  a = jnp.asarray(q @ np.diag(eigs) @ q.T)
  r = jax.jit(lambda k: lz.slq(lambda x: a @ x, k, n, 30, 20))(jax.random.key(1))
  zero_frac = float(r.fraction(lambda x: jnp.abs(x) < 1e-8))
  assert abs(zero_frac - 0.5) < 0.05
  grid = jnp.linspace(-1, 3, 2001)
  rho = lz.density(r.nodes, r.weights, grid, 0.05)
  np.testing.assert_allclose(float(jnp.trapezoid(rho, grid)), 1.0, atol=1e-6)
  band = (grid > 0.5) & (grid < 2.5)
  np.testing.assert_allclose(float(jnp.trapezoid(jnp.where(band, rho, 0), grid)),
                             0.5, atol=0.05)
  gap = (grid > 0.3) & (grid < 0.7)
  assert float(jnp.max(jnp.where(gap, rho, 0))) < 1e-3


def test_hutchinson():
  n = 80
  d = np.random.default_rng(9).normal(size=n)
  # Rademacher probes give the exact trace of a diagonal matrix.
  est, _ = lz.hutchinson(lambda x: jnp.asarray(d) * x, jax.random.key(0), n, 3)
  np.testing.assert_allclose(float(est), d.sum(), rtol=1e-12)
  a = _sym(n, 10)
  est, err = jax.jit(lambda k: lz.hutchinson(lambda x: jnp.asarray(a) @ x, k, n,
                                             300, probe_batch_size=50))(
      jax.random.key(1))
  sigma = np.sqrt(2 * np.sum((a - np.diag(np.diag(a))) ** 2) / 300)
  assert abs(float(est) - np.trace(a)) < 4 * sigma
  assert 0.5 * sigma < float(err) < 2 * sigma


def test_loop_is_not_unrolled():
  """The jaxpr size does not grow with the number of steps (lax.fori_loop)."""
  n = 50
  a = jnp.asarray(_sym(n, 11))
  size = lambda m: len(str(jax.make_jaxpr(
      lambda v: lz.lanczos(lambda x: a @ x, v, m))(jnp.ones(n))))
  assert abs(size(5) - size(45)) < 50
  jaxpr = str(jax.make_jaxpr(lambda v: lz.lanczos(lambda x: a @ x, v, 45))(
      jnp.ones(n)))
  assert "scan" in jaxpr or "while" in jaxpr


def test_dtype_preserved_float32():
  n = 20
  a = jnp.asarray(_sym(n, 12), jnp.float32)
  mv = lambda x: a @ x

  @jax.jit
  def run(v):
    res = lz.lanczos(mv, v, 10)
    return (res, lz.ritz(res), lz.slq(mv, jax.random.key(0), n, 5, 2, jnp.float32),
            lz.ritz(lz.lanczos(mv, v, n))[0], lz.spectrum(mv, v))

  res, (theta, vecs, _), s, theta, spec = run(jnp.ones(n, jnp.float32))
  assert spec.values.dtype == jnp.float32 and spec.basis.dtype == jnp.float32
  assert res.alpha.dtype == jnp.float32 and res.basis.dtype == jnp.float32
  assert theta.dtype == jnp.float32 and vecs.dtype == jnp.float32
  assert s.nodes.dtype == jnp.float32 and s.weights.dtype == jnp.float32
  exact = np.linalg.eigvalsh(np.asarray(a, np.float64))
  np.testing.assert_allclose(np.sort(np.asarray(theta)), exact, atol=1e-4)


def test_vmap_over_start_vectors_equals_loop():
  n, m = 30, 12
  a = jnp.asarray(_sym(n, 13))
  v0s = jnp.asarray(np.random.default_rng(14).normal(size=(3, n)))
  run = lambda v: lz.lanczos(lambda x: a @ x, v, m)
  batched = jax.jit(jax.vmap(run))(v0s)
  for i in range(3):
    single = jax.jit(run)(v0s[i])
    np.testing.assert_allclose(batched.alpha[i], single.alpha, atol=1e-12)
    np.testing.assert_allclose(batched.beta[i], single.beta, atol=1e-12)


def test_bad_arguments():
  a = jnp.eye(4)
  with pytest.raises(ValueError, match="num_steps"):
    lz.lanczos(lambda x: a @ x, jnp.ones(4), 5)
  with pytest.raises(ValueError, match="flat"):
    lz.lanczos(lambda x: x, jnp.ones((2, 2)), 1)
  with pytest.raises(ValueError, match="which"):
    lz.eigsh(lambda x: a @ x, jnp.ones(4), 3, which="XX")


def test_deflated_lanczos_sees_the_complement_only():
  # Deflating known eigenvectors: with as many steps as the remaining
  # dimension, the Ritz values are the rest of the spectrum, exactly.
  rng = np.random.default_rng(3)
  a = rng.standard_normal((10, 10))
  a = a + a.T
  ev, vecs = np.linalg.eigh(a)
  modes = jnp.asarray(vecs[:, [0, 4]].T)  # the lowest and a middle one
  res = lz.lanczos(lambda v: jnp.asarray(a) @ v, jnp.ones(10), 8, deflate=modes)
  theta = np.sort(np.linalg.eigvalsh(np.asarray(lz.tridiagonal(res))))
  np.testing.assert_allclose(theta, np.delete(ev, [0, 4]), atol=1e-10)
  assert np.abs(np.asarray(res.basis) @ vecs[:, [0, 4]]).max() < 1e-12
  vals, _, _ = lz.eigsh(lambda v: jnp.asarray(a) @ v, jnp.ones(10), 8, k=1,
                             which="SA", deflate=modes)
  assert float(vals[0]) == pytest.approx(ev[1], abs=1e-10)


def _multiscale(n_zero=6, seed=15):
  """A symmetric matrix shaped like a jammed network's H: a positive bulk in
  [1e-3, 1], 40 negative eigenvalues in -[1e-10, 1e-5], 40 positive ones in
  [1e-12, 1e-6], four at +-1e-15 (zero at the N eps tolerance) and ``n_zero``
  structural zeros (zero rows and columns), coordinates shuffled."""
  rng = np.random.default_rng(seed)
  eigs = np.concatenate([np.geomspace(1e-3, 1, 60), -np.geomspace(1e-10, 1e-5, 40),
                         np.geomspace(1e-12, 1e-6, 40), [1e-15, -1e-15, 2e-15, -3e-15]])
  q, _ = np.linalg.qr(rng.normal(size=(eigs.size, eigs.size)))
  n = eigs.size + n_zero
  a = np.zeros((n, n))
  a[:eigs.size, :eigs.size] = (q * eigs) @ q.T
  perm = rng.permutation(n)
  return a[np.ix_(perm, perm)], eigs


def test_spectrum_counts_equal_eigh_across_decades():
  """Lanczos of full dimension gives every eigenvalue: the counts at the N eps
  tolerance (negatives at 1e-10 of the bulk, structural and rounding-level
  zeros) equal dense eigh's and the designed spectrum's; SLQ with 30 steps
  cannot resolve them (its zero and negative fractions are far off)."""
  a, eigs = _multiscale()
  n = a.shape[0]
  aj = jnp.asarray(a)
  mv = lambda x: aj @ x
  spec = jax.jit(lambda v: lz.spectrum(mv, v))(jnp.asarray(
      np.random.default_rng(16).normal(size=n)))
  values = np.asarray(spec.values)
  exact = np.linalg.eigvalsh(a)
  np.testing.assert_allclose(values, exact, atol=1e-14)
  tol = n * np.finfo(np.float64).eps * np.abs(exact).max()
  counts = lambda e: (int(np.sum(e < -tol)), int(np.sum(np.abs(e) <= tol)))
  assert counts(values) == counts(exact) == (40, 6 + 4)
  # True residuals of chosen pairs, and the pairs nearest given points.
  idx = lz.nearest(spec.values, jnp.asarray([-tol, tol]), 3)
  assert idx.shape == (2, 3)
  near = np.argsort(np.abs(values + tol))[:3]
  assert sorted(np.asarray(idx[0]).tolist()) == sorted(near.tolist())
  flat = idx.reshape(-1)
  y = np.asarray(spec.basis).T @ np.asarray(spec.s)[:, np.asarray(flat)]
  direct = np.linalg.norm(a @ y - y * values[np.asarray(flat)], axis=0)
  np.testing.assert_allclose(np.asarray(spec.residuals(mv, flat)), direct,
                             atol=1e-15)
  assert direct.max() < 1e-14
  slq = jax.jit(lambda k: lz.slq(mv, k, n, 30, 4))(jax.random.key(0))
  assert abs(float(slq.fraction(lambda x: x < -tol)) * n - 40) > 10
