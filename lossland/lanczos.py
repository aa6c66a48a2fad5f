"""Lanczos tridiagonalization, Ritz pairs, stochastic Lanczos quadrature, Hutchinson.

Everything here is generic over a symmetric linear operator given as a pure
function ``matvec(v[n]) -> [n]`` on flat vectors (curvature.py supplies H, H0 and
Hp products; any jnp matrix works through ``lambda v: a @ v``). Nothing is
jitted here: wrap the call in ``jax.jit`` with ``matvec`` closed over (or
``static_argnums``), and ``jax.vmap`` it over probes or ensemble members.

Design choices (software_anchors.md §3, bugs of existing tools avoided):

* The loop is a ``lax.fori_loop``, never unrolled in Python, so the compile time
  does not grow with the number of steps (google/spectral-density compiles for
  minutes at order 90).
* Full reorthogonalization is classical Gram-Schmidt applied twice
  ("twice is enough", Giraud et al. 2005) as two matrix products against the
  whole stored basis ``Q [m, n]`` (rows not yet filled are zero and drop out),
  not a sequential loop over stored vectors (matfree #181). It can be turned off.
* Breakdown (an invariant Krylov subspace, e.g. the zero matrix, a low-rank H0,
  or ``num_steps`` equal to the dimension of a matrix with repeated
  eigenvalues) is handled without randomness: the next vector is the
  coordinate vector ``e_k`` least represented in the basis (smallest running
  column norm of Q), orthogonalized, and the coupling ``beta`` is set to 0, so
  T becomes block diagonal and stays exact. With full reorthogonalization and
  ``num_steps = n`` the Ritz values are then all the eigenvalues.
* :func:`spectrum` runs Lanczos to the full dimension n: with full
  reorthogonalization and the restarts above, T is the operator in an
  orthonormal basis of R^n, so its eigenvalues are all of the operator's
  (exact counts of negative and zero eigenvalues for n matvecs, where SLQ
  only estimates them).
* SLQ weights are the squared FIRST components of the eigenvectors of T
  (Golub & Meurant 2010, §6; the PyHessian PR #18/#23 bug squared the whole
  eigenvector matrix).

References: Lanczos (1950); Paige (1972) for loss of orthogonality; Golub &
Welsch (1969) for Gauss quadrature from T; Ubaru, Chen & Saad, SIAM J. Matrix
Anal. Appl. 38 (2017) for SLQ; Ghorbani, Krishnan & Xiao, ICML 2019
(arXiv:1901.10159) for Hessian densities; Hutchinson (1989) for traces.
"""
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from lossland import dtypes


class LanczosResult(NamedTuple):
  """Output of :func:`lanczos` (m = num_steps, n = dimension).

  Attributes:
    alpha: [m] diagonal of the tridiagonal matrix T.
    beta: [m] ``beta[j]`` is the norm of the residual after step j, i.e. the
      coupling T[j, j+1] for j < m - 1; ``beta[m-1]`` is the residual norm that
      bounds the Ritz residuals. A zero marks a breakdown (restart).
    basis: [m, n] orthonormal Lanczos vectors q_0..q_{m-1} as rows.
  """
  alpha: jax.Array
  beta: jax.Array
  basis: jax.Array


def _orth_all(basis, w):
  """w minus its projection on the rows of ``basis``: classical Gram-Schmidt
  twice, as matrix products."""
  w = w - basis.T @ (basis @ w)
  return w - basis.T @ (basis @ w)


def _lanczos_step(matvec: Callable, project: Callable, num_steps: int,
                  reorthogonalize: bool, tol) -> Callable:
  """The body of :func:`lanczos`'s ``fori_loop``: step j of the recurrence.

  The carry is ``(basis [m, n], alpha [m], beta [m], colnorm [n], anorm)``:
  ``colnorm`` is the running sum of squares of the basis columns (to pick a
  restart vector), ``anorm`` the running |T| estimate of the breakdown test.
  """

  def step(j, carry):
    basis, alpha, beta, colnorm, anorm = carry
    q = basis[j]
    q_prev = jnp.where(j > 0, basis[jnp.maximum(j - 1, 0)], jnp.zeros_like(q))
    b_prev = jnp.where(j > 0, beta[jnp.maximum(j - 1, 0)], 0.0)
    w = project(matvec(q))
    a = jnp.vdot(q, w)
    w = w - a * q - b_prev * q_prev
    if reorthogonalize:
      w = _orth_all(basis, w)
    b = jnp.linalg.norm(w)
    anorm = jnp.maximum(anorm, jnp.maximum(jnp.abs(a), b))
    broke = b <= tol * anorm

    def restart(w):
      # The coordinate vector least represented in the basis, orthogonalized.
      e = project(jnp.zeros_like(q).at[jnp.argmin(colnorm)].set(1.0))
      if reorthogonalize:
        return _orth_all(basis, e)
      return e - jnp.vdot(q, e) * q - jnp.vdot(q_prev, e) * q_prev

    # A real branch unbatched (the restart costs two more passes over Q);
    # under vmap it becomes a select.
    w = jax.lax.cond(broke, restart, lambda w: w, w)
    w_norm = jnp.linalg.norm(w)
    q_next = w / jnp.where(w_norm > 0, w_norm, 1.0)
    b = jnp.where(broke, jnp.zeros_like(b), b)
    alpha = alpha.at[j].set(a)
    beta = beta.at[j].set(b)
    # The last step's residual is not stored in the basis.
    inside = j + 1 < num_steps
    idx = jnp.minimum(j + 1, num_steps - 1)
    basis = basis.at[idx].set(jnp.where(inside, q_next, basis[idx]))
    colnorm = jnp.where(inside, colnorm + q_next * q_next, colnorm)
    return basis, alpha, beta, colnorm, anorm

  return step


def lanczos(matvec: Callable, v0: jax.Array, num_steps: int, *,
            reorthogonalize: bool = True,
            breakdown_rtol: float | None = None,
            deflate: jax.Array | None = None) -> LanczosResult:
  """Runs ``num_steps`` steps of symmetric Lanczos from ``v0``.

  A Q_m^T = Q_m^T T_m + beta_{m-1} q_m e_m^T with Q_m = ``basis`` [m, n].

  Args:
    matvec: symmetric operator, [n] -> [n], same dtype as ``v0``.
    v0: [n] starting vector (need not be normalized; must be non-zero).
    num_steps: m, a Python int, 1 <= m <= n.
    reorthogonalize: full reorthogonalization (two classical Gram-Schmidt
      passes as matrix products) at every step; O(m n) extra work per step.
      Without it, the classical three-term recurrence (ghost eigenvalues appear
      once Ritz values converge, Paige 1972).
    breakdown_rtol: a residual norm below ``breakdown_rtol * |T|_est`` counts as
      a breakdown; default ``n * eps(dtype)``. |T|_est is the running maximum
      of |alpha| and beta.
    deflate: optional [k, n] orthonormal rows (known eigenvectors, e.g. the
      zero modes of rigid-body motions) kept out of the Krylov space: the
      start vector, every matvec and every restart are projected orthogonal
      to them, so the run sees the operator restricted to their complement.

  Returns:
    A :class:`LanczosResult`.
  """
  n = v0.shape[-1]
  if v0.ndim != 1:
    raise ValueError(f"v0 must be a flat [n] vector, got shape {v0.shape}")
  if not 1 <= num_steps <= n:
    raise ValueError(f"num_steps must be in [1, n={n}], got {num_steps}")
  dtype = v0.dtype
  tol = (n * jnp.finfo(dtype).eps if breakdown_rtol is None
         else breakdown_rtol)

  if deflate is None:
    project = lambda v: v
  else:
    project = lambda v: v - deflate.T @ (deflate @ v)
  v0 = project(v0)
  q0 = v0 / jnp.linalg.norm(v0)
  basis = jnp.zeros((num_steps, n), dtype).at[0].set(q0)
  colnorm = q0 * q0  # running sum of squares of Q's columns, to pick restarts
  step = _lanczos_step(matvec, project, num_steps, reorthogonalize, tol)
  alpha = jnp.zeros((num_steps,), dtype)
  beta = jnp.zeros((num_steps,), dtype)
  init = (basis, alpha, beta, colnorm, jnp.zeros((), dtype))
  basis, alpha, beta, _, _ = jax.lax.fori_loop(0, num_steps, step, init)
  return LanczosResult(alpha, beta, basis)


def tridiagonal(result: LanczosResult) -> jax.Array:
  """The [m, m] symmetric tridiagonal matrix T of a Lanczos run."""
  off = result.beta[:-1]
  return (jnp.diag(result.alpha) + jnp.diag(off, 1) + jnp.diag(off, -1))


def ritz(result: LanczosResult) -> tuple:
  """Ritz values, Ritz vectors and residual estimates, ascending.

  For a Ritz pair (theta_i, y_i = Q^T s_i), ``|A y_i - theta_i y_i| =
  |beta_{m-1} s_i[m-1]|`` when the basis is orthonormal (Parlett 1998, §13.1).

  Returns:
    values [m], vectors [n, m] (columns, unit norm), residuals [m].
  """
  theta, s = jnp.linalg.eigh(tridiagonal(result))
  vectors = result.basis.T @ s
  residuals = jnp.abs(result.beta[-1] * s[-1, :])
  return theta, vectors, residuals


def eigsh(matvec: Callable, v0: jax.Array, num_steps: int, k: int = 1,
          which: str = "LA", reorthogonalize: bool = True,
          deflate: jax.Array | None = None) -> tuple:
  """Extreme eigenpairs of a symmetric operator by Lanczos.

  Args:
    matvec: [n] -> [n].
    v0: [n] starting vector (e.g. Gaussian from a key).
    num_steps: Krylov dimension m (>= k).
    k: number of eigenpairs.
    which: "LA" (largest algebraic), "SA" (smallest algebraic) or "LM"
      (largest magnitude).
    reorthogonalize, deflate: see :func:`lanczos`.

  Returns:
    values [k], vectors [n, k], residual estimates [k], ordered as ``which``
    (most extreme first).
  """
  if k > num_steps:
    raise ValueError(f"k={k} eigenpairs need num_steps >= k, got {num_steps}")
  if which not in ("LA", "SA", "LM"):
    raise ValueError(f"which must be 'LA', 'SA' or 'LM', got {which!r}")
  theta, vecs, res = ritz(lanczos(matvec, v0, num_steps,
                                  reorthogonalize=reorthogonalize,
                                  deflate=deflate))
  if which == "LA":
    order = jnp.argsort(-theta)
  elif which == "SA":
    order = jnp.argsort(theta)
  else:
    order = jnp.argsort(-jnp.abs(theta))
  idx = order[:k]
  return theta[idx], vecs[:, idx], res[idx]


def residual_norms(matvec: Callable, values: jax.Array,
                   vectors: jax.Array) -> jax.Array:
  """True residuals |A y_i - theta_i y_i| (one matvec per pair). vectors [n, k]."""
  av = jax.vmap(matvec, in_axes=1, out_axes=1)(vectors)
  return jnp.linalg.norm(av - vectors * values[None, :], axis=0)


class Spectrum(NamedTuple):
  """Every eigenvalue of an operator, from a Lanczos run of full dimension.

  Attributes:
    values: [n] eigenvalues, ascending (the Ritz values of an n-step run).
    s: [n, n] eigenvectors of T (columns, same order); Ritz vector i is
      ``basis.T @ s[:, i]``.
    basis: [n, n] the orthonormal Lanczos vectors as rows.
  """
  values: jax.Array
  s: jax.Array
  basis: jax.Array

  def residuals(self, matvec: Callable, idx: jax.Array) -> jax.Array:
    """True residuals |A y_i - theta_i y_i| of the pairs ``idx`` [k] (k matvecs)."""
    return residual_norms(matvec, self.values[idx], self.basis.T @ self.s[:, idx])


def spectrum(matvec: Callable, v0: jax.Array) -> Spectrum:
  """All n eigenvalues of a symmetric n x n operator by Lanczos with m = n.

  With full reorthogonalization and the breakdown restarts of :func:`lanczos`,
  n steps span R^n with an orthonormal basis Q, so T = Q A Q^T is A in that
  basis and its eigenvalues are A's up to rounding: an exact count of
  negative, zero or positive eigenvalues (Sylvester), not a quadrature
  estimate. Cost: n matvecs, three [n, n] arrays (Q, T's eigenvectors and
  workspace) and O(n^3) flops, like a dense eigh; no probes.

  Args:
    matvec: [n] -> [n] symmetric operator.
    v0: [n] non-zero start vector.

  Returns:
    :class:`Spectrum`.
  """
  res = lanczos(matvec, v0, v0.shape[-1], reorthogonalize=True)
  values, s = jnp.linalg.eigh(tridiagonal(res))
  return Spectrum(values, s, res.basis)


def nearest(values: jax.Array, points: jax.Array, k: int) -> jax.Array:
  """Indices [p, k] of the k entries of ``values`` [n] nearest each of ``points`` [p]."""
  dist = jnp.abs(values[None, :] - points[:, None])
  return jnp.argsort(dist, axis=1)[:, :k]


def rademacher(key, n: int, dtype) -> jax.Array:
  """[n] vector of +-1 entries."""
  return jax.random.rademacher(key, (n,), dtype=dtype)


def gauss_quadrature(result: LanczosResult) -> tuple:
  """Nodes and weights of the Gauss quadrature rule of a Lanczos run.

  For a start vector q_0, ``sum_i w_i g(theta_i) = q_0^T g(A) q_0`` exactly for
  polynomials g of degree <= 2m - 1 (Golub & Welsch 1969).

  Returns:
    nodes [m] (Ritz values, ascending), weights [m] (squared first components
    of T's eigenvectors; they sum to 1).
  """
  theta, s = jnp.linalg.eigh(tridiagonal(result))
  return theta, s[0, :] ** 2


class SLQResult(NamedTuple):
  """Stochastic Lanczos quadrature of an n x n operator.

  The spectral density is rho(x) ~ (1/n_v) sum_v sum_i weights[v, i]
  delta(x - nodes[v, i]); ``n * weights`` counts eigenvalues.

  Attributes:
    nodes: [num_probes, m].
    weights: [num_probes, m], each row sums to 1.
    residuals: [num_probes, m] Ritz residual estimates |beta_{m-1} s_{m-1, i}|
      of the nodes (an eigenvalue of the operator lies within this distance
      of each node); None when not computed.
  """
  nodes: jax.Array
  weights: jax.Array
  residuals: jax.Array | None = None

  def moment(self, k: int) -> jax.Array:
    """Estimate of trace(A^k) / n (exact per probe for k <= 2m - 1)."""
    return jnp.mean(jnp.sum(self.weights * self.nodes ** k, axis=-1))

  def fraction(self, mask_fn: Callable) -> jax.Array:
    """Estimated fraction of eigenvalues x with ``mask_fn(x)`` True."""
    return jnp.mean(jnp.sum(jnp.where(mask_fn(self.nodes), self.weights, 0.0),
                            axis=-1))


def slq(matvec: Callable, key, n: int, num_steps: int, num_probes: int,
        dtype=None, *, reorthogonalize: bool = True,
        probe_batch_size: int | None = None) -> SLQResult:
  """Stochastic Lanczos quadrature over Rademacher probes.

  Args:
    matvec: [n] -> [n] symmetric operator.
    key: PRNG key for the probes.
    n: dimension.
    num_steps: Lanczos steps per probe.
    num_probes: number of independent probes.
    dtype: vector dtype (default: jax's default float).
    reorthogonalize: see :func:`lanczos`.
    probe_batch_size: probes run together through ``lax.map(batch_size=)``
      (vmapped matvecs); None runs them all at once. Memory is
      ``probe_batch_size * num_steps * n`` floats.

  Returns:
    :class:`SLQResult` with [num_probes, num_steps] nodes, weights and Ritz
    residual estimates.
  """
  dtype = dtypes.float_dtype(dtype)
  keys = jax.random.split(key, num_probes)

  def one(k):
    res = lanczos(matvec, rademacher(k, n, dtype), num_steps,
                  reorthogonalize=reorthogonalize)
    theta, s = jnp.linalg.eigh(tridiagonal(res))
    return theta, s[0, :] ** 2, jnp.abs(res.beta[-1] * s[-1, :])

  nodes, weights, residuals = jax.lax.map(one, keys, batch_size=probe_batch_size
                                          or num_probes)
  return SLQResult(nodes, weights, residuals)


def density(nodes: jax.Array, weights: jax.Array, grid: jax.Array,
            sigma: float) -> jax.Array:
  """Gaussian-broadened density on a grid.

  rho(x) = mean over probes of sum_i w_i N(x; theta_i, sigma^2). For exact
  eigenvalues pass ``nodes = eigs[None]``, ``weights = ones / n``.

  Args:
    nodes: [..., m]; leading axes are averaged over.
    weights: same shape as nodes.
    grid: [g] points.
    sigma: broadening (same units as the eigenvalues).

  Returns:
    [g] density, integrating to ~1 over a grid that covers the spectrum.
  """
  nodes = nodes.reshape(-1, nodes.shape[-1])
  weights = weights.reshape(nodes.shape)
  z = (grid[None, None, :] - nodes[..., None]) / sigma
  g = jnp.exp(-0.5 * z * z) / (sigma * jnp.sqrt(2 * jnp.pi))
  return jnp.mean(jnp.sum(weights[..., None] * g, axis=1), axis=0)


def hutchinson(matvec: Callable, key, n: int, num_probes: int,
               dtype=None, probe_batch_size: int | None = None) -> tuple:
  """Hutchinson's trace estimate with Rademacher probes (Hutchinson 1989).

  Returns:
    (estimate, standard error): mean of v^T A v and its sample std / sqrt(n_v).
  """
  dtype = dtypes.float_dtype(dtype)
  keys = jax.random.split(key, num_probes)

  def one(k):
    v = rademacher(k, n, dtype)
    return jnp.vdot(v, matvec(v))

  samples = jax.lax.map(one, keys, batch_size=probe_batch_size or num_probes)
  stderr = jnp.std(samples, ddof=1) / jnp.sqrt(num_probes) if num_probes > 1 \
      else jnp.full((), jnp.nan, dtype)
  return jnp.mean(samples), stderr
