"""The Hessian of the training loss and its split H = H0 + Hp, matrix-free and dense.

For L(W) = sum_i w_i ell(Delta_i(W)) with Delta_i = epsilon - y_i f(x_i; W) and
weights w_i = 1/P (Geiger et al., arXiv:1809.09349, §1.3 of the reference notes):

    H  = H0 + Hp,
    H0 = sum_i w_i ell''(Delta_i) grad Delta_i grad Delta_i^T   (PSD, rank <= N_Delta)
    Hp = sum_i w_i ell'(Delta_i)  hess Delta_i                  (~ sqrt(L) near jamming)

ell' and ell'' are ``jax.grad`` of the per-example loss of :mod:`lossland.losses`,
so they follow its convention at Delta = 0: the hinge losses use a strict
``Delta > 0`` mask and give ell = ell' = ell'' = 0 there. A point exactly at
Delta = 0 is satisfied and enters neither H0 nor Hp, and H0 + Hp equals the
autodiff Hessian of the loss exactly (the chain rule is what autodiff does).
For the linear hinge ell'' = 0 (its delta function at 0 is dropped), so H0 = 0.

Layers of this module:

* :func:`examples` / :class:`Examples`: the data a loss is evaluated on, with an
  optional output offset (``f(w0; x)`` when the trained function is
  f(w) - f(w0), arXiv:1906.08034).
* :func:`curvature_fns`: pure functions ``(params, batch, v) -> product`` for
  H v (forward-over-reverse), H0 v (a J-vector product then a J^T-vector
  product, J never materialized), Hp v (forward-over-reverse of
  ``sum_i w_i stop_gradient(ell'(Delta_i)) Delta_i``, not H v - H0 v, which
  would lose the small Hp to cancellation near jamming). ``v`` is a pytree like
  ``params`` or a flat [N] vector (ravel_pytree order). Optional accumulation
  over chunks of the data (``chunk_size``) with ``lax.scan``. Nothing is
  jitted; everything vmaps over ensemble members (params, batch and v).
* :func:`dense_split`: H, H0, Hp as [N, N] matrices (columns from the same
  products applied to basis vectors, in batches), with :func:`check_dense_memory`.
* :func:`output_jacobian`, :func:`matrix_rank`, :func:`spectral_counts`: N_eff,
  rank(H0), N_-(Hp), the number of near-zero eigenvalues of H and the checks
  rank(H0) <= N_Delta and N_-(Hp) <= N_Delta at a stable minimum.
* :func:`h0_kernel`, :func:`slq_counts`, :func:`settled_count`,
  :func:`lanczos_counts`: the same matrix-free, exact rank(H0) from the
  N_Delta x N_Delta kernel, and the other counts either exact from a Lanczos
  run of dimension N (when that costs no more products than SLQ,
  :func:`choose_krylov`) or SLQ estimates with error bars.
* :func:`spectra` (:class:`SpectraConfig`, :func:`choose_method`): the whole
  analysis of every member of an ensemble, dense or Lanczos, ``lax.map``-ped
  over the members; ``python -m lossland.scripts.hessian`` writes it out.

Delta and N_Delta are :func:`lossland.losses.margins` and
:func:`lossland.losses.n_unsatisfied`.

Tolerances (documented in docs/curvature.md): an eigenvalue lambda of a matrix M
counts as zero when |lambda| <= rtol * max|lambda(M)|, with default
``rtol = N * eps(dtype)`` (numpy.linalg.matrix_rank's rule, N the matrix size);
ranks of rectangular matrices use singular values with ``max(P, N) * eps``.
"""
import dataclasses
import functools
import os
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from lossland import losses as losses_lib


class Examples(NamedTuple):
  """Data a loss is evaluated on. Shapes [P, d], [P], [P], [P].

  Attributes:
    x: inputs.
    y: labels +-1.
    offset: subtracted from the network output (f(w0; x) when training
      f(w) - f(w0); zeros otherwise).
    weight: per-example weight w_i in L = sum_i w_i ell(Delta_i); 1/P for the
      mean, 0 for padding.
  """
  x: jax.Array
  y: jax.Array
  offset: jax.Array
  weight: jax.Array


def examples(x, y, offset=None, weight=None) -> Examples:
  """Builds :class:`Examples` with zero offset and weights 1/P by default."""
  x = jnp.asarray(x)
  y = jnp.asarray(y, x.dtype)
  n = y.shape[-1]
  offset = jnp.zeros_like(y) if offset is None else jnp.asarray(offset, x.dtype)
  weight = (jnp.full_like(y, 1.0 / n) if weight is None
            else jnp.asarray(weight, x.dtype))
  return Examples(x, y, offset, weight)


def loss_derivatives(loss_fn: Callable) -> tuple:
  """Elementwise ell' and ell'' of a scalar per-example loss, by autodiff.

  With the losses of :mod:`lossland.losses` both vanish at Delta = 0 for the
  hinge losses (strict mask).

  Returns:
    (d1_fn, d2_fn), each mapping an array of Delta to an array of the same shape.
  """
  d1 = jax.grad(loss_fn)
  d2 = jax.grad(d1)
  return (lambda delta: jax.vmap(d1)(delta.ravel()).reshape(delta.shape),
          lambda delta: jax.vmap(d2)(delta.ravel()).reshape(delta.shape))


class CurvatureFns(NamedTuple):
  """Pure curvature functions of one network on one data set.

  Each takes ``params`` (pytree) and ``batch`` (:class:`Examples`); products
  also take ``v``, a pytree like params or a flat [N] vector, and return the
  same kind. vmap over ensemble members by mapping params, batch and v.

  Attributes:
    delta: (params, batch) -> Delta [P].
    loss: (params, batch) -> L, scalar.
    grad: (params, batch) -> dL/dparams (pytree).
    hvp: (params, batch, v) -> H v.
    h0vp: (params, batch, v) -> H0 v.
    hpvp: (params, batch, v) -> Hp v.
    split_vp: (params, batch, v) -> (H v, H0 v, Hp v).
    loss_fn: the per-example loss ell(Delta).
  """
  delta: Callable
  loss: Callable
  grad: Callable
  hvp: Callable
  h0vp: Callable
  hpvp: Callable
  split_vp: Callable
  loss_fn: Callable


def _chunks(batch: Examples, chunk_size: int) -> Examples:
  """[P, ...] -> [n_chunks, chunk_size, ...], padding with zero-weight examples."""
  n = batch.y.shape[0]
  n_chunks = -(-n // chunk_size)
  pad = n_chunks * chunk_size - n

  def reshape(a):
    if pad:
      a = jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)])
    return a.reshape((n_chunks, chunk_size) + a.shape[1:])

  return jax.tree_util.tree_map(reshape, batch)


def _accumulate(fn: Callable, batch: Examples, chunk_size: int | None):
  """sum over chunks of fn(chunk); fn returns a pytree. One call if no chunking."""
  if chunk_size is None or chunk_size >= batch.y.shape[0]:
    return fn(batch)
  chunked = _chunks(batch, chunk_size)
  first = jax.tree_util.tree_map(lambda a: a[0], chunked)
  rest = jax.tree_util.tree_map(lambda a: a[1:], chunked)

  def body(acc, chunk):
    return jax.tree_util.tree_map(jnp.add, acc, fn(chunk)), None

  acc, _ = jax.lax.scan(body, fn(first), rest)
  return acc


def _tree_or_flat(params, v):
  """(v as a pytree, function mapping a result back to v's form)."""
  if jax.tree_util.tree_structure(v) == jax.tree_util.tree_structure(params):
    return v, lambda t: t
  flat, unravel = ravel_pytree(params)
  v = jnp.asarray(v)
  if v.shape != flat.shape:
    raise ValueError(f"v must be a pytree like params or a flat vector of shape "
                     f"{flat.shape}, got {v.shape}")
  return unravel(v), lambda t: ravel_pytree(t)[0]


def _loss_and_margin(loss, epsilon) -> tuple:
  """(ell, epsilon) of a LossConfig or of a per-example loss function."""
  if isinstance(loss, losses_lib.LossConfig):
    return loss.fn, (loss.epsilon if epsilon is None else epsilon)
  if epsilon is None:
    raise ValueError("epsilon is required when loss is a function")
  return loss, epsilon


class _ChunkFns(NamedTuple):
  """The per-chunk quantities that :func:`curvature_fns` sums over chunks.

  Attributes:
    delta: (params, batch) -> Delta [P].
    loss: (params, batch) -> sum_i w_i ell(Delta_i).
    hp_potential: (params, batch) -> sum_i w_i ell'(Delta_i) Delta_i with
      ell' frozen (stop_gradient): its Hessian is Hp.
    h0vp: (params, batch, v) -> H0 v (pytree v).
  """
  delta: Callable
  loss: Callable
  hp_potential: Callable
  h0vp: Callable


def _chunk_fns(apply_fn: Callable, loss_fn: Callable, epsilon) -> _ChunkFns:
  """Delta, L, the Hp potential and H0 v of one chunk of examples."""
  d1_fn, d2_fn = loss_derivatives(loss_fn)

  def delta_fn(params, batch):
    return losses_lib.margins(apply_fn(params, batch.x) - batch.offset, batch.y,
                              epsilon)

  def chunk_loss(params, batch):
    return jnp.sum(batch.weight * loss_fn(delta_fn(params, batch)))

  def chunk_hp_potential(params, batch):
    # sum_i w_i c_i Delta_i(W) with c_i = ell'(Delta_i) frozen: its Hessian is Hp.
    delta = delta_fn(params, batch)
    c = jax.lax.stop_gradient(batch.weight * d1_fn(delta))
    return jnp.sum(c * delta)

  def chunk_h0vp(params, batch, v):
    f = lambda p: delta_fn(p, batch)
    delta, jv = jax.jvp(f, (params,), (v,))
    u = batch.weight * d2_fn(delta) * jv
    _, vjp = jax.vjp(f, params)
    return vjp(u)[0]

  return _ChunkFns(delta_fn, chunk_loss, chunk_hp_potential, chunk_h0vp)


def _chunk_hvp(fun, params, batch, v):
  """Forward-over-reverse product of the Hessian of fun(., batch) with v."""
  return jax.jvp(lambda p: jax.grad(fun)(p, batch), (params,), (v,))[1]


def curvature_fns(apply_fn: Callable, loss, epsilon: float | None = None,
                  chunk_size: int | None = None) -> CurvatureFns:
  """Matrix-free curvature of L = sum_i w_i ell(epsilon - y_i (f(x_i) - offset_i)).

  Args:
    apply_fn: ``apply_fn(params, x[P, d]) -> f [P]`` (scalar output).
    loss: a :class:`lossland.losses.LossConfig`, or a per-example loss
      function ``ell(delta)`` (then ``epsilon`` is required).
    epsilon: margin; defaults to ``loss.epsilon`` for a LossConfig.
    chunk_size: if set, every quantity is accumulated over chunks of this many
      examples with ``lax.scan`` (memory ~ chunk_size instead of P); padding
      examples have weight 0.

  Returns:
    :class:`CurvatureFns`. Cost (benchmark in docs/curvature.md): H v, H0 v and
    Hp v each cost a small constant times one gradient (2-4.5); ``split_vp``
    shares no work between them and costs about the sum of the three.
  """
  loss_fn, epsilon = _loss_and_margin(loss, epsilon)
  chunk = _chunk_fns(apply_fn, loss_fn, epsilon)

  def loss_total(params, batch):
    return _accumulate(lambda b: chunk.loss(params, b), batch, chunk_size)

  def grad(params, batch):
    return _accumulate(lambda b: jax.grad(chunk.loss)(params, b), batch,
                       chunk_size)

  def delta(params, batch):
    return chunk.delta(params, batch)

  def product(chunk_fn):
    def vp(params, batch, v):
      v, back = _tree_or_flat(params, v)
      out = _accumulate(lambda b: chunk_fn(params, b, v), batch, chunk_size)
      return back(out)
    return vp

  hvp = product(lambda p, b, v: _chunk_hvp(chunk.loss, p, b, v))
  hpvp = product(lambda p, b, v: _chunk_hvp(chunk.hp_potential, p, b, v))
  h0vp = product(chunk.h0vp)

  def split_vp(params, batch, v):
    v, back = _tree_or_flat(params, v)

    def all_three(b):
      return (_chunk_hvp(chunk.loss, params, b, v), chunk.h0vp(params, b, v),
              _chunk_hvp(chunk.hp_potential, params, b, v))

    hv, h0v, hpv = _accumulate(all_three, batch, chunk_size)
    return back(hv), back(h0v), back(hpv)

  return CurvatureFns(delta=delta, loss=loss_total, grad=grad, hvp=hvp,
                      h0vp=h0vp, hpvp=hpvp, split_vp=split_vp, loss_fn=loss_fn)


def flat_matvec(vp: Callable, params, batch) -> Callable:
  """Binds params and batch: returns matvec(v[N]) -> [N] for Lanczos."""
  return lambda v: vp(params, batch, v)


# ----------------------------------------------------------------------------
# Dense path


def available_memory_bytes() -> int | None:
  """MemAvailable from /proc/meminfo (Linux), else physical pages; None if unknown."""
  try:
    with open("/proc/meminfo") as fh:
      for line in fh:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    return None


def array_memory_bytes(backend: str | None = None) -> int | None:
  """Free bytes where jax arrays live: the host's on CPU, else the device's.

  The dense and kernel paths hold their matrices on the default device, so on
  a GPU the host's MemAvailable (often larger than the device memory) is the
  wrong bound: the device's allocator limit minus what it has in use is the
  right one (``memory_stats()``'s ``bytes_limit`` and ``bytes_in_use``).

  Args:
    backend: default: jax's default backend.

  Returns:
    Bytes, or None if unknown (no memory statistics from the device).
  """
  backend = backend or jax.default_backend()
  if backend == "cpu":
    return available_memory_bytes()
  try:
    stats = jax.local_devices(backend=backend)[0].memory_stats() or {}
  except (RuntimeError, ValueError, IndexError):
    return None
  if stats.get("bytes_limit") is None:
    return None
  return max(0, int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)))


def dense_memory_bytes(n: int, itemsize: int, n_matrices: int = 3) -> int:
  """Peak bytes of the dense path: the matrices plus eigh workspace (~2 N^2)."""
  return (n_matrices + 2) * n * n * itemsize


def check_dense_memory(n: int, dtype, n_matrices: int = 3,
                       fraction: float = 0.8) -> None:
  """Raises MemoryError with a clear message if the dense path would not fit.

  Args:
    n: number of parameters N.
    dtype: matrix dtype.
    n_matrices: how many [N, N] matrices are held at once.
    fraction: usable fraction of the available memory
      (:func:`array_memory_bytes`: the device's on an accelerator).
  """
  need = dense_memory_bytes(n, np.dtype(dtype).itemsize, n_matrices)
  avail = array_memory_bytes()
  if avail is not None and need > fraction * avail:
    raise MemoryError(
        f"dense Hessian path needs about {need / 2**30:.1f} GiB for N={n} "
        f"({np.dtype(dtype).name}) but only {avail / 2**30:.1f} GiB is "
        f"available; use the Lanczos path (method='lanczos')")


def dense_operator(matvec: Callable, n: int, dtype, batch_size: int = 64):
  """[n, n] matrix of a linear operator on flat vectors, ``batch_size`` columns
  at a time (vmapped matvec inside ``lax.map``). Symmetrized: (A + A^T)/2."""
  def column(i):
    return matvec(jax.nn.one_hot(i, n, dtype=dtype))

  cols = jax.lax.map(column, jnp.arange(n), batch_size=min(batch_size, n))
  a = cols.T
  return 0.5 * (a + a.T)


def dense_split(fns: CurvatureFns, params, batch: Examples,
                batch_size: int = 64) -> tuple:
  """H, H0, Hp as dense [N, N] matrices (flat ravel_pytree order).

  Each column comes from the matrix-free products applied to a basis vector;
  H, H0 and Hp are computed independently (no subtraction). Call
  :func:`check_dense_memory` first for large N; jit the call.

  Returns:
    (H, H0, Hp), each [N, N], symmetrized.
  """
  flat, _ = ravel_pytree(params)
  n = flat.shape[0]

  def column(i):
    return fns.split_vp(params, batch, jax.nn.one_hot(i, n, dtype=flat.dtype))

  h, h0, hp = jax.lax.map(column, jnp.arange(n), batch_size=min(batch_size, n))
  sym = lambda a: 0.5 * (a + a.T)
  return sym(h), sym(h0), sym(hp)


def output_jacobian(apply_fn: Callable, params, x) -> jax.Array:
  """J [P, N] = d f(x_mu) / d W, flat ravel_pytree order (reverse mode)."""
  flat, unravel = ravel_pytree(params)
  return jax.jacrev(lambda w: apply_fn(unravel(w), x))(flat)


def matrix_rank(a, rtol: float | None = None) -> int:
  """Rank of a [P, N] matrix: #{sigma > rtol sigma_max}, rtol = max(P, N) eps."""
  a = np.asarray(a)
  if a.size == 0:
    return 0
  return rank_of_singular_values(np.linalg.svd(a, compute_uv=False), a.shape,
                                 rtol)


def rank_of_singular_values(s, shape, rtol: float | None = None) -> int:
  """:func:`matrix_rank` from the singular values ``s`` of a matrix of ``shape``."""
  s = np.asarray(s)
  if s.size == 0:
    return 0
  if rtol is None:
    rtol = max(shape) * np.finfo(s.dtype).eps
  return int(np.sum(s > rtol * s.max())) if s.max() > 0 else 0


def default_rtol(n: int, dtype) -> float:
  """N eps(dtype): the relative tolerance for zero eigenvalues (matrix_rank's)."""
  return float(n * np.finfo(np.dtype(dtype)).eps)


def count_eigenvalues(eigs, rtol: float | None = None) -> dict:
  """Counts negative, zero and positive eigenvalues of one symmetric matrix.

  An eigenvalue is zero when |lambda| <= rtol * max|lambda| (so the zero matrix
  has N zero eigenvalues).

  Args:
    eigs: [N] eigenvalues.
    rtol: relative tolerance; default N eps(dtype).

  Returns:
    dict with n_negative, n_zero, n_positive, tol (absolute), max_abs.
  """
  eigs = np.asarray(eigs)
  rtol = default_rtol(eigs.shape[-1], eigs.dtype) if rtol is None else rtol
  scale = float(np.max(np.abs(eigs))) if eigs.size else 0.0
  tol = rtol * scale
  return {"n_negative": int(np.sum(eigs < -tol)),
          "n_zero": int(np.sum(np.abs(eigs) <= tol)),
          "n_positive": int(np.sum(eigs > tol)),
          "tol": tol, "max_abs": scale}


def spectral_counts(eig_h, eig_h0, eig_hp, n_delta: int,
                    rtol: float | None = None) -> dict:
  """Counts and checks at the end of training (1809.09349 counting argument).

  Args:
    eig_h, eig_h0, eig_hp: [N] eigenvalues of H, H0, Hp.
    n_delta: N_Delta, the number of unsatisfied points (Delta > 0).
    rtol: relative zero tolerance for each matrix (default N eps).

  Returns:
    dict with n_negative_hp, rank_h0, n_zero_h, n_negative_h, lambda_min_h,
    stable (no eigenvalue of H below -tol_H), rank_h0_le_n_delta,
    n_negative_hp_resolved (#{lambda(Hp) < -tol_H}: negative eigenvalues of Hp
    resolvable at H's precision) and n_negative_hp_le_n_delta (that count
    <= N_Delta; None when not stable: the bound only holds at a minimum,
    since N_-(Hp) <= rank(H0) whenever H0 + Hp >= 0). n_negative_hp counts
    with Hp's own scale, max|lambda(Hp)| (the authors' N_- ~ N/2).
  """
  ch, ch0, chp = (count_eigenvalues(e, rtol) for e in (eig_h, eig_h0, eig_hp))
  stable = ch["n_negative"] == 0
  # The bound compares Hp with H at H's resolution: Hp eigenvalues below H's
  # zero tolerance cannot destabilize H (e.g. when L ~ 1e-32, Hp is rounding
  # level and its own-scale count is meaningless for stability).
  n_neg_hp_resolved = int(np.sum(np.asarray(eig_hp) < -ch["tol"]))
  return {
      "n_negative_hp": chp["n_negative"],
      "n_positive_hp": chp["n_positive"],
      "rank_h0": ch0["n_positive"] + ch0["n_negative"],
      "n_zero_h": ch["n_zero"],
      "n_negative_h": ch["n_negative"],
      "lambda_min_h": float(np.min(eig_h)),
      "lambda_max_h": float(np.max(eig_h)),
      "stable": bool(stable),
      "rank_h0_le_n_delta": bool(ch0["n_positive"] + ch0["n_negative"]
                                 <= n_delta),
      "n_negative_hp_resolved": n_neg_hp_resolved,
      "n_negative_hp_le_n_delta": (bool(n_neg_hp_resolved <= n_delta)
                                   if stable else None),
  }


def h0_kernel(fns: CurvatureFns, params, batch: Examples,
              block_size: int = 64, chunk_size: int | None = None) -> jax.Array:
  """The l''-weighted kernel K = S J J^T S of the examples in ``batch``, [P, P].

  J [P, N] is dDelta/dW and S = diag(sqrt(w_i l''(Delta_i))), so H0 = J^T S^2 J
  and K have the same non-zero eigenvalues: rank(H0) = rank(K) and
  Tr(H0) = Tr(K), exactly, from a P x P matrix instead of an N x N one. Pass the
  active examples only (l''(Delta_i) != 0, i.e. the N_Delta unsatisfied points
  for the quadratic hinge; padding with weight 0 only adds zero rows).

  J is never formed: row blocks of K come from ``block_size`` per-example
  gradients (reverse mode, [block_size, N]) pushed through one vmapped
  Jacobian-vector product over the examples (forward mode), accumulated over
  data chunks of ``chunk_size`` examples when given.

  Args:
    fns: from :func:`curvature_fns`.
    params: network parameters (pytree).
    batch: :class:`Examples`, typically the active examples only.
    block_size: kernel columns computed together (memory ~ block_size * N).
    chunk_size: examples per forward-mode pass (memory ~ chunk_size * width).

  Returns:
    [P, P] symmetric PSD matrix (symmetrized).
  """
  _, d2_fn = loss_derivatives(fns.loss_fn)
  flat, unravel = ravel_pytree(params)
  delta = fns.delta(params, batch)
  s = jnp.sqrt(jnp.maximum(batch.weight * d2_fn(delta), 0.0))
  n_ex = batch.y.shape[0]

  def example_grad(i):
    one = jax.tree_util.tree_map(lambda a: a[i][None], batch)
    return s[i] * jax.grad(lambda w: fns.delta(unravel(w), one)[0])(flat)

  def jvp_all(u):
    fwd = lambda b: jax.jvp(lambda w: fns.delta(unravel(w), b), (flat,),
                            (u,))[1]
    if chunk_size is None or chunk_size >= n_ex:
      return s * fwd(batch)
    chunked = _chunks(batch, chunk_size)
    return s * jax.lax.map(fwd, chunked).reshape(-1)[:n_ex]

  k = jax.lax.map(lambda i: jvp_all(example_grad(i)), jnp.arange(n_ex),
                  batch_size=min(block_size, n_ex))
  return 0.5 * (k + k.T)


def kernel_rank(eigs_k, n: int, rtol: float | None = None,
                n_active: int | None = None) -> int:
  """rank(H0) from the eigenvalues of :func:`h0_kernel` with the dense rule.

  |lambda| <= rtol * max|lambda| is zero, rtol = max(N, n_active) eps by
  default (n_active defaults to the kernel's size; padding examples only add
  exact zeros): the tolerance the dense path applies to H0's N eigenvalues.
  """
  eigs_k = np.asarray(eigs_k)
  if eigs_k.size == 0:
    return 0
  if rtol is None:
    m = eigs_k.shape[-1] if n_active is None else n_active
    rtol = default_rtol(max(n, m), eigs_k.dtype)
  scale = float(np.max(np.abs(eigs_k)))
  return int(np.sum(np.abs(eigs_k) > rtol * scale)) if scale > 0 else 0


def kernel_memory_bytes(n_active: int, itemsize: int) -> int:
  """Peak bytes of the N_Delta x N_Delta kernel and its eigh (~4 copies)."""
  return 4 * n_active * n_active * itemsize


def estimate_fraction(nodes, weights, residuals, lo: float, hi: float,
                      z: float = 3.0) -> dict:
  """SLQ estimate of the fraction of eigenvalues in [lo, hi], with error bars.

  One probe v gives the Gauss-quadrature sum of the weights of its nodes in
  the class; over probes this is an unbiased Monte-Carlo estimate of the
  fraction when every node is classified correctly. Two uncertainties are
  reported apart:

  * ``stderr``: standard error of the mean over probes (Monte-Carlo noise);
  * ``unresolved``: mean weight of the nodes whose class is not settled,
    i.e. whose distance to a class boundary (lo or hi) is at most their Ritz
    residual (such a node stands for eigenvalues on both sides of the
    boundary, e.g. a cluster at 0 with small eigenvalues nearby when the
    Krylov space is too small to separate them).

  The interval is [estimate - z stderr - unresolved, estimate + z stderr +
  unresolved], clipped to [0, 1].

  Args:
    nodes, weights, residuals: [n_probes, m] (an :class:`lanczos.SLQResult`).
    lo, hi: class bounds (use +-inf for half lines); nodes in [lo, hi] count.
    z: width of the Monte-Carlo part of the interval in standard errors.

  Returns:
    dict with estimate, stderr, unresolved, interval (fractions).
  """
  nodes, weights = np.asarray(nodes), np.asarray(weights)
  residuals = (np.zeros_like(nodes) if residuals is None
               else np.asarray(residuals))
  inside = (nodes >= lo) & (nodes <= hi)
  per_probe = np.sum(np.where(inside, weights, 0.0), axis=-1)
  dist = np.minimum(np.abs(nodes - lo), np.abs(nodes - hi))
  unsure = np.sum(np.where(dist <= residuals, weights, 0.0), axis=-1)
  n_v = per_probe.shape[0]
  est = float(np.mean(per_probe))
  se = float(np.std(per_probe, ddof=1) / np.sqrt(n_v)) if n_v > 1 else float("nan")
  unres = float(np.mean(unsure))
  half = (z * se if np.isfinite(se) else 1.0) + unres
  return {"estimate": est, "stderr": se, "unresolved": unres,
          "interval": [max(est - half, 0.0), min(est + half, 1.0)]}


def settled_count(values, inside, bounds, check_index, check_residual) -> dict:
  """A count of eigenvalues with the number that rounding could reclassify.

  ``values`` are computed eigenvalues (e.g. of a full Krylov run), ``inside``
  marks the class counted. The true residual r_i = |A y_i - theta_i y_i| of a
  pair says an eigenvalue of A lies within r_i of theta_i; a value whose
  distance to the nearest class boundary is at most r_i is unsettled. r_i is
  known for the checked pairs (the few nearest each boundary); every other
  value is farther from the boundaries than those and gets the largest
  checked residual.

  Args:
    values: [n] eigenvalues.
    inside: [n] bool, the class.
    bounds: the class boundaries (e.g. (-tol,) for negatives, (-tol, tol)
      for zeros).
    check_index: indices of the checked pairs (any shape; repeats allowed).
    check_residual: their true residuals, same shape.

  Returns:
    dict with count, unresolved (unsettled values) and interval [count -
    unsettled inside, count + unsettled outside].
  """
  values, inside = np.asarray(values), np.asarray(inside, bool)
  idx = np.asarray(check_index).reshape(-1)
  res = np.asarray(check_residual).reshape(-1)
  r = np.full(values.shape, float(res.max()) if res.size else 0.0)
  r[idx] = res
  dist = np.min(np.abs(values[:, None] - np.asarray(bounds)[None, :]), axis=1)
  unsure = (dist <= r) & (r > 0)  # r = 0: an exact eigenvalue (e.g. H = 0)
  count = int(np.sum(inside))
  return {"count": count, "unresolved": int(np.sum(unsure)),
          "interval": [count - int(np.sum(unsure & inside)),
                       count + int(np.sum(unsure & ~inside))]}


def slq_counts(slq_h, slq_hp, n: int, rtol: float | None = None,
               z: float = 3.0) -> dict:
  """Estimated counts of H and Hp eigenvalues from SLQ, with error bars.

  A node counts as zero when |theta| <= rtol * scale, with the dense path's
  rule rtol = N eps by default and scale the largest |node| of that matrix
  (Ritz values lie inside the spectrum and the extreme ones converge first).
  Every count is N times :func:`estimate_fraction`: ``<name>`` is the
  estimate, ``<name>_stderr`` its Monte-Carlo standard error, ``<name>_unresolved``
  the weight of nodes whose class their Ritz residual does not settle, and
  ``<name>_interval`` the range [est - z se - unresolved, est + z se +
  unresolved]. The trace Tr(M) = N E[sum_i w_i theta_i] (Hutchinson's
  estimator, exact per probe for the quadrature) comes with its standard error.

  Args:
    slq_h, slq_hp: :class:`lossland.lanczos.SLQResult` of H and Hp.
    n: N.
    rtol: relative zero tolerance.
    z: standard errors in the intervals.

  Returns:
    dict with n_negative_hp, n_zero_h, n_negative_h (+ _stderr, _unresolved,
    _interval each), trace_hp, trace_hp_stderr, trace_h, trace_h_stderr,
    tol_h, tol_hp.
  """
  out = {}

  def tol_of(res):
    nodes = np.asarray(res.nodes)
    r = default_rtol(n, nodes.dtype) if rtol is None else rtol
    return r * float(np.max(np.abs(nodes))) if nodes.size else 0.0

  def put(name, res, lo, hi):
    f = estimate_fraction(res.nodes, res.weights, res.residuals, lo, hi, z)
    out[name] = n * f["estimate"]
    out[f"{name}_stderr"] = n * f["stderr"]
    out[f"{name}_unresolved"] = n * f["unresolved"]
    out[f"{name}_interval"] = [n * f["interval"][0], n * f["interval"][1]]

  tol_h, tol_hp = tol_of(slq_h), tol_of(slq_hp)
  put("n_negative_hp", slq_hp, -np.inf, -tol_hp)
  put("n_zero_h", slq_h, -tol_h, tol_h)
  put("n_negative_h", slq_h, -np.inf, -tol_h)
  for name, res in (("trace_h", slq_h), ("trace_hp", slq_hp)):
    per = n * np.sum(np.asarray(res.weights) * np.asarray(res.nodes), axis=-1)
    out[name] = float(np.mean(per))
    out[f"{name}_stderr"] = (float(np.std(per, ddof=1) / np.sqrt(per.size))
                             if per.size > 1 else float("nan"))
  out["tol_h"], out["tol_hp"] = tol_h, tol_hp
  return out


def n_active(fns: CurvatureFns, params, batch: Examples) -> jax.Array:
  """#{i : ell''(Delta_i) w_i != 0}: the bound on rank(H0) for any loss
  (equals N_Delta for the quadratic hinge)."""
  _, d2 = loss_derivatives(fns.loss_fn)
  delta = fns.delta(params, batch)
  return jnp.sum((d2(delta) * batch.weight) != 0)


# ----------------------------------------------------------------------------
# Spectra of every member of an ensemble (the library side of scripts.hessian)

METHODS = ("dense", "lanczos")
KRYLOV = ("auto", "full", "slq")


@dataclasses.dataclass(frozen=True)
class SpectraConfig:
  """Settings of :func:`spectra` (hashable, jit-static).

  Attributes:
    method: "dense" (every eigenvalue of H, H0 and Hp, exact counts) or
      "lanczos" (exact spectrum of H0 from the kernel of the active points,
      SLQ estimates with error bars for H and Hp, extreme Ritz pairs of H).
    rtol: relative zero tolerance of the counts; None: N eps(dtype).
    batch_size: basis vectors per batch when building the dense matrices;
      kernel columns per block on the Lanczos path.
    num_steps: Lanczos steps per probe (<= N).
    num_probes: SLQ probes per matrix (>= 2: error bars need two).
    top_k: extreme Ritz pairs of H reported at each end (Lanczos).
    pad_to: the active points of each member are padded with zero-weight
      examples to a multiple of this; all members share the largest such size,
      so one compiled kernel serves them all.
    z: standard errors in the reported intervals (Lanczos).
    n_eff: compute N_eff, the rank of the P x N Jacobian; None: when 3 P N
      numbers fit in half of the available memory.
    vmap_size: members vmapped together inside the ``lax.map`` over members
      (its ``batch_size``); memory grows by this factor, 1 keeps one member's.
    krylov: how the Lanczos path counts the eigenvalues of H and Hp: "full"
      (a Lanczos run of dimension N on each, :func:`lossland.lanczos.spectrum`:
      every eigenvalue, exact counts), "slq" (estimates with error bars) or
      "auto" (:func:`choose_krylov`: "full" when it needs no more products
      than the SLQ estimate and fits in memory).
  """
  method: str = "dense"
  rtol: float | None = None
  batch_size: int = 64
  num_steps: int = 100
  num_probes: int = 4
  top_k: int = 5
  pad_to: int = 64
  z: float = 3.0
  n_eff: bool | None = None
  vmap_size: int = 1
  krylov: str = "auto"

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
    if self.krylov not in KRYLOV:
      raise ValueError(f"krylov must be one of {KRYLOV}, got {self.krylov!r}")
    for name in ("batch_size", "num_steps", "num_probes", "pad_to", "vmap_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if self.method == "lanczos" and self.num_probes < 2:
      raise ValueError("num_probes must be >= 2 with Lanczos (error bars need "
                       "two probes)")


def choose_method(method: str, n: int, dtype, dense_max_n: int = 10000) -> str:
  """The analysis method for N parameters.

  "auto" is "dense" (exact counts) when N <= ``dense_max_n`` and
  :func:`check_dense_memory` passes, else "lanczos".

  Raises:
    ValueError: an unknown method.
    MemoryError: "dense" asked for but beyond the available memory.
  """
  if method == "auto":
    if n > dense_max_n:
      return "lanczos"
    try:
      check_dense_memory(n, dtype)
    except MemoryError:
      return "lanczos"
    return "dense"
  if method not in METHODS:
    raise ValueError(f"method must be 'auto' or one of {METHODS}, got {method!r}")
  if method == "dense":
    check_dense_memory(n, dtype)
  return method


def krylov_memory_bytes(n: int, itemsize: int) -> int:
  """Peak bytes of one full-dimension Lanczos run: Q, T's eigenvectors, the
  eigh workspace (~2 N^2) and T, [N, N] each."""
  return 5 * n * n * itemsize


def choose_krylov(cfg: SpectraConfig, n: int, dtype) -> str:
  """"full" or "slq": how the Lanczos path counts eigenvalues for N = n.

  "auto" is "full" when a Lanczos run of dimension N on H and on Hp (2 N
  products) costs no more products than the SLQ estimate it replaces
  (``num_probes * num_steps`` on each plus ``num_steps`` for the Ritz run of
  H), i.e. N <= (num_probes + 1/2) num_steps (450 with the defaults), and
  ``vmap_size`` copies of :func:`krylov_memory_bytes` fit in half the free
  memory; else "slq".

  Raises:
    MemoryError: "full" asked for but beyond the available memory.
  """
  need = krylov_memory_bytes(n, np.dtype(dtype).itemsize) * cfg.vmap_size
  avail = array_memory_bytes()
  fits = avail is None or need <= 0.5 * avail
  if cfg.krylov == "full" and not fits:
    raise MemoryError(
        f"a full Krylov decomposition needs about {need / 2**30:.1f} GiB for "
        f"N={n} but only {avail / 2**30:.1f} GiB is available; use SLQ "
        f"(krylov='slq')")
  if cfg.krylov != "auto":
    return cfg.krylov
  cheaper = 2 * n <= (2 * cfg.num_probes + 1) * cfg.num_steps
  return "full" if cheaper and fits else "slq"


class Spectra(NamedTuple):
  """Per-member results of :func:`spectra`.

  Attributes:
    rows: K JSON-ready dicts, one per member (keys in :func:`spectra`).
    arrays: name -> numpy array with a leading [K] axis.
  """
  rows: list
  arrays: dict


# Ritz pairs per class boundary whose true residual settles their class.
N_CHECK = 8


def _slq_part(fns: CurvatureFns, params, batch: Examples, key, n: int, dtype,
              cfg: SpectraConfig) -> dict:
  """SLQ quadratures of H and Hp and the extreme Ritz pairs of one
  ``num_steps`` run on H, with their true residuals (device side)."""
  from lossland import lanczos as lz  # pylint: disable=g-import-not-at-top
  top = min(cfg.top_k, cfg.num_steps)
  k_h, k_hp, k_top = jax.random.split(key, 3)
  mv_h = flat_matvec(fns.hvp, params, batch)
  s_h = lz.slq(mv_h, k_h, n, cfg.num_steps, cfg.num_probes, dtype,
               probe_batch_size=1)
  s_hp = lz.slq(flat_matvec(fns.hpvp, params, batch), k_hp, n, cfg.num_steps,
                cfg.num_probes, dtype, probe_batch_size=1)
  v0 = jax.random.normal(k_top, (n,), dtype)
  theta, vecs, est = lz.ritz(lz.lanczos(mv_h, v0, cfg.num_steps))
  idx = jnp.concatenate([jnp.arange(top),
                         jnp.arange(cfg.num_steps - top, cfg.num_steps)])
  return dict(nodes_h=s_h.nodes, weights_h=s_h.weights,
              residuals_h=s_h.residuals, nodes_hp=s_hp.nodes,
              weights_hp=s_hp.weights, residuals_hp=s_hp.residuals,
              ritz_h=theta, ritz_residual_estimate_h=est, ritz_index=idx,
              ritz_residual_h=lz.residual_norms(mv_h, theta[idx], vecs[:, idx]))


def _krylov_part(fns: CurvatureFns, params, batch: Examples, key, n: int,
                 dtype, cfg: SpectraConfig) -> dict:
  """Every eigenvalue of H and of Hp (:func:`lossland.lanczos.spectrum`) with
  the true residuals of the N_CHECK pairs nearest each class boundary (H:
  -tol_H, tol_H; Hp: -tol_Hp, tol_Hp and -tol_H, for the resolved count) and
  of the ``top_k`` extreme pairs of H (device side)."""
  from lossland import lanczos as lz  # pylint: disable=g-import-not-at-top
  rtol = default_rtol(n, dtype) if cfg.rtol is None else cfg.rtol
  top, k = min(cfg.top_k, n), min(N_CHECK, n)
  k_h, k_hp = jax.random.split(key)
  out, tol_h = {}, None
  for name, vp, kk in (("h", fns.hvp, k_h), ("hp", fns.hpvp, k_hp)):
    mv = flat_matvec(vp, params, batch)
    spec = lz.spectrum(mv, jax.random.normal(kk, (n,), dtype))
    tol = rtol * jnp.max(jnp.abs(spec.values))
    points = [-tol, tol] if name == "h" else [-tol, tol, -tol_h]
    check = lz.nearest(spec.values, jnp.stack(points), k)
    idx = check.reshape(-1)
    if name == "h":
      tol_h = tol
      ritz = jnp.concatenate([jnp.arange(top), jnp.arange(n - top, n)])
      idx = jnp.concatenate([idx, ritz])
      out["ritz_index"] = ritz
    res = spec.residuals(mv, idx)
    out[f"eig_{name}"] = spec.values
    out[f"check_index_{name}"] = check
    out[f"check_residual_{name}"] = res[:check.size].reshape(check.shape)
    if name == "h":
      out["ritz_residual_h"] = res[check.size:]
  return out


def _member_analysis(fns: CurvatureFns, cfg: SpectraConfig, n: int, dtype,
                     do_neff: bool) -> Callable:
  """The device part of the analysis of one member: (params, batch, key) ->
  dict of arrays (key is None on the dense path). The H0 kernel of the
  Lanczos path is compiled apart (:func:`_mapped_kernel`): its size depends on
  the data, the rest only on N and the settings. ``cfg.krylov`` is resolved
  ("full" or "slq") on the Lanczos path."""

  def one(params, batch, key):
    delta = fns.delta(params, batch)
    out = {"loss": fns.loss(params, batch),
           "n_delta": losses_lib.n_unsatisfied(delta),
           "n_active": n_active(fns, params, batch)}
    if cfg.method == "dense":
      h, h0, hp = dense_split(fns, params, batch, cfg.batch_size)
      eig = jnp.linalg.eigvalsh
      out.update(eig_h=eig(h), eig_h0=eig(h0), eig_hp=eig(hp))
    elif cfg.krylov == "full":
      out.update(_krylov_part(fns, params, batch, key, n, dtype, cfg))
    else:
      out.update(_slq_part(fns, params, batch, key, n, dtype, cfg))
    if do_neff:
      # rank of dDelta/dW = -y J equals rank J (labels +-1): N_eff.
      flat, unravel = ravel_pytree(params)
      jac = jax.jacrev(lambda w: fns.delta(unravel(w), batch))(flat)
      out["singular_values_jac"] = jnp.linalg.svd(jac, compute_uv=False)
    return out

  return one


@functools.lru_cache(maxsize=16)
def _mapped_analysis(fns: CurvatureFns, cfg: SpectraConfig, n: int,
                     dtype_name: str, do_neff: bool,
                     shared_batch: bool) -> Callable:
  """jit of ``lax.map`` of :func:`_member_analysis` over a group of members."""
  one = _member_analysis(fns, cfg, n, np.dtype(dtype_name), do_neff)

  @jax.jit
  def mapped(params, batch, keys):
    def body(xs):
      p, b, k = xs
      return one(p, batch if shared_batch else b, k)
    size = jax.tree_util.tree_leaves(params)[0].shape[0]
    return jax.lax.map(body, (params, None if shared_batch else batch, keys),
                       batch_size=min(cfg.vmap_size, size))

  return mapped


@functools.lru_cache(maxsize=16)
def _mapped_kernel(fns: CurvatureFns, block_size: int,
                   vmap_size: int) -> Callable:
  """jit of (params [G], active [G, S]) -> eigenvalues [G, S] of each member's
  :func:`h0_kernel`, ``lax.map``-ped over the members."""
  @jax.jit
  def mapped(params, active):
    def body(xs):
      p, a = xs
      return jnp.linalg.eigvalsh(h0_kernel(fns, p, a, block_size))
    size = jax.tree_util.tree_leaves(params)[0].shape[0]
    return jax.lax.map(body, (params, active), batch_size=min(vmap_size, size))

  return mapped


@functools.lru_cache(maxsize=16)
def _curvature_weights(fns: CurvatureFns, shared_batch: bool) -> Callable:
  """jit of (params [K], batch) -> w_i ell''(Delta_i) [K, P] of every member."""
  _, d2_fn = loss_derivatives(fns.loss_fn)
  one = lambda p, b: d2_fn(fns.delta(p, b)) * b.weight
  return jax.jit(jax.vmap(one, in_axes=(0, None if shared_batch else 0)))


def _active_sets(weights, pad_to: int) -> tuple:
  """Indices of the points with w_i ell''(Delta_i) != 0 of every member.

  Args:
    weights: [K, P] w_i ell''(Delta_i).
    pad_to: the common size is the largest count rounded up to a multiple of
      this (at least pad_to).

  Returns:
    (index [K, S], mask [K, S] of real entries, counts [K]); padding entries
    point at example 0 and are masked out.
  """
  act = np.asarray(weights) != 0
  counts = act.sum(axis=1)
  most = int(counts.max()) if counts.size else 0
  size = max(pad_to, -(-most // pad_to) * pad_to)
  index = np.zeros((act.shape[0], size), np.int64)
  mask = np.zeros((act.shape[0], size), bool)
  for k in range(act.shape[0]):
    sel = np.nonzero(act[k])[0]
    index[k, :sel.size] = sel
    mask[k, :sel.size] = True
  return index, mask, counts


def _gather_active(batch: Examples, index, mask, shared_batch: bool) -> Examples:
  """[K, S] examples of the active sets; masked entries get weight 0."""
  index = jnp.asarray(index)
  take = lambda b, i: jax.tree_util.tree_map(lambda a: a[i], b)
  sel = take(batch, index) if shared_batch else jax.vmap(take)(batch, index)
  return sel._replace(weight=jnp.where(jnp.asarray(mask), sel.weight,
                                       jnp.zeros_like(sel.weight)))


def _dense_row(out: dict, n: int, dtype, rtol) -> tuple:
  """Row and arrays of one member on the dense path (host side)."""
  eh, eh0, ehp = out["eig_h"], out["eig_h0"], out["eig_hp"]
  row = {"rtol": rtol if rtol is not None else default_rtol(n, dtype),
         "trace_h": float(eh.sum()), "trace_h0": float(eh0.sum()),
         "estimated": []}
  row.update(spectral_counts(eh, eh0, ehp, int(out["n_delta"]), rtol))
  return row, {"eig_h": eh, "eig_h0": eh0, "eig_hp": ehp}


def _h0_row(out: dict, n: int, dtype, rtol, n_act: int,
            kernel_note: str | None) -> tuple:
  """Row and arrays of the exact H0 part of the Lanczos path (host side):
  rank(H0), Tr(H0) and spec(H0) from the kernel eigenvalues ``out["eig_k"]``,
  or nulls with ``kernel_note`` saying why they were not computed."""
  row, arrays = {"n_active": n_act}, {}
  row["rtol"] = rtol if rtol is not None else default_rtol(n, dtype)
  if kernel_note is not None:
    row.update(rank_h0=None, trace_h0=None, rank_h0_le_n_delta=None,
               rank_h0_note=kernel_note)
    arrays["eig_h0"] = np.full((n,), np.nan, dtype)
    return row, arrays
  eig_k = np.sort(out["eig_k"]) if n_act else np.zeros((0,), dtype)
  top_n = eig_k[-n:] if eig_k.size >= n else np.concatenate(
      [np.zeros(n - eig_k.size, dtype), eig_k])
  arrays["eig_h0"] = np.sort(top_n)
  rank = kernel_rank(eig_k, n, rtol, n_active=n_act)
  row.update(rank_h0=rank, trace_h0=float(np.sum(eig_k)),
             rank_h0_le_n_delta=bool(rank <= int(out["n_delta"])))
  return row, arrays


def _ritz_keys(theta, idx, true, top: int) -> dict:
  """The extreme Ritz pairs of H of a row: ``idx`` holds the ``top`` lowest
  then the ``top`` highest indices into ``theta``, ``true`` their residuals."""
  return {"ritz_bottom_h": theta[idx[:top]].tolist(),
          "ritz_bottom_residual_h": true[:top].tolist(),
          "ritz_top_h": theta[idx[top:]][::-1].tolist(),
          "ritz_top_residual_h": true[top:][::-1].tolist(),
          "lambda_min_h_upper_bound": float(theta[0]),
          "lambda_max_h_lower_bound": float(theta[-1])}


def _slq_row(out: dict, n: int, dtype, cfg: SpectraConfig) -> tuple:
  """Row and arrays of the SLQ counts of H and Hp (host side)."""
  from lossland import lanczos as lz  # pylint: disable=g-import-not-at-top
  s_h = lz.SLQResult(out["nodes_h"], out["weights_h"], out["residuals_h"])
  s_hp = lz.SLQResult(out["nodes_hp"], out["weights_hp"], out["residuals_hp"])
  row = {"lanczos_counts": "slq"}
  row.update(slq_counts(s_h, s_hp, n, cfg.rtol, cfg.z))
  theta, true = out["ritz_h"], out["ritz_residual_h"]
  row.update(_ritz_keys(theta, out["ritz_index"], true,
                        min(cfg.top_k, cfg.num_steps)))
  r = default_rtol(n, dtype) if cfg.rtol is None else cfg.rtol
  tol_upper = r * (float(np.max(np.abs(theta))) + float(np.max(true, initial=0.0)))
  row["stable"] = False if theta[0] < -tol_upper else None
  row["n_negative_hp_le_n_delta"] = None
  row["n_negative_hp_resolved"] = None
  row["estimated"] = ["n_negative_hp", "n_zero_h", "n_negative_h", "trace_hp",
                      "trace_h"]
  row["exact"] = ["rank_h0", "trace_h0", "n_active"]
  names = ("nodes_h", "weights_h", "residuals_h", "nodes_hp", "weights_hp",
           "residuals_hp", "ritz_h", "ritz_residual_estimate_h")
  return row, {name: out[name] for name in names}


def _krylov_row(out: dict, n: int, cfg: SpectraConfig, n_delta: int) -> tuple:
  """Row and arrays of the full-Krylov counts of H and Hp (host side): the
  dense path's counts and checks from every eigenvalue, each count with the
  interval of :func:`settled_count`."""
  eh, ehp = np.asarray(out["eig_h"]), np.asarray(out["eig_hp"])
  ch, chp = count_eigenvalues(eh, cfg.rtol), count_eigenvalues(ehp, cfg.rtol)
  th, thp = ch["tol"], chp["tol"]
  row = {"lanczos_counts": "full", "tol_h": th, "tol_hp": thp}
  classes = (("n_negative_hp", ehp, "hp", ehp < -thp, (-thp,)),
             ("n_positive_hp", ehp, "hp", ehp > thp, (thp,)),
             ("n_negative_hp_resolved", ehp, "hp", ehp < -th, (-th,)),
             ("n_zero_h", eh, "h", np.abs(eh) <= th, (-th, th)),
             ("n_negative_h", eh, "h", eh < -th, (-th,)))
  for name, values, m, inside, bounds in classes:
    c = settled_count(values, inside, bounds, out[f"check_index_{m}"],
                      out[f"check_residual_{m}"])
    row[name] = c["count"]
    row[f"{name}_unresolved"] = c["unresolved"]
    row[f"{name}_interval"] = c["interval"]
    row[f"{name}_stderr"] = 0.0
  neg_lo, neg_hi = row["n_negative_h_interval"]
  row["stable"] = True if neg_hi == 0 else (False if neg_lo > 0 else None)
  res_lo, res_hi = row["n_negative_hp_resolved_interval"]
  row["n_negative_hp_le_n_delta"] = (
      None if row["stable"] is not True else
      True if res_hi <= n_delta else False if res_lo > n_delta else None)
  row.update(lambda_min_h=float(eh[0]), lambda_max_h=float(eh[-1]),
             trace_h=float(np.sum(eh)), trace_hp=float(np.sum(ehp)),
             trace_h_stderr=0.0, trace_hp_stderr=0.0)
  row.update(_ritz_keys(eh, out["ritz_index"], out["ritz_residual_h"],
                        min(cfg.top_k, n)))
  row["estimated"] = []
  row["exact"] = ["rank_h0", "trace_h0", "n_active", "n_negative_hp",
                  "n_zero_h", "n_negative_h", "trace_hp", "trace_h", "stable"]
  return row, {"eig_h": eh, "eig_hp": ehp}


def _lanczos_row(out: dict, n: int, dtype, cfg: SpectraConfig, n_act: int,
                 kernel_note: str | None) -> tuple:
  """Row and arrays of one member on the Lanczos path (host side).

  ``out["eig_k"]`` holds the kernel eigenvalues when the kernel was computed;
  otherwise ``kernel_note`` says why not (None: no active point at all).
  ``cfg.krylov`` is resolved: "full" or "slq".
  """
  row, arrays = _h0_row(out, n, dtype, cfg.rtol, n_act, kernel_note)
  if cfg.krylov == "full":
    counts, more = _krylov_row(out, n, cfg, int(out["n_delta"]))
  else:
    counts, more = _slq_row(out, n, dtype, cfg)
    if row.get("trace_h0") is not None:
      counts["trace_h"] = row["trace_h0"] + counts["trace_hp"]
      counts["trace_h_stderr"] = counts["trace_hp_stderr"]
  row.update(counts)
  arrays.update(more)
  return row, arrays


def spectra(fns: CurvatureFns, params, batch: Examples,
            cfg: SpectraConfig = SpectraConfig(), *, key=None, member_ids=None,
            group_size: int | None = None,
            progress: Callable | None = None) -> Spectra:
  """Spectra of H, H0 and Hp of every member of an ensemble, with counts.

  The analysis of one member (loss, N_Delta, the eigenvalues or SLQ
  quadratures, N_eff's singular values) is one pure function, ``lax.map``-ped
  over the members (``cfg.vmap_size`` of them vmapped together) inside one
  jitted call per group of ``group_size`` members; the counts and checks are
  then read from those arrays on the host (:func:`spectral_counts` on the
  dense path; :func:`kernel_rank` with :func:`count_eigenvalues` and
  :func:`settled_count` (``cfg.krylov`` "full") or :func:`slq_counts`
  ("slq") on the Lanczos path, as described in docs/curvature.md; "auto" is
  resolved by :func:`choose_krylov`). Member k's result equals the analysis
  of that member alone (tested against a plain loop).

  On the Lanczos path the active points (w_i ell''(Delta_i) != 0) of every
  member are selected on the host first and padded to one common size, so
  one compiled N_active x N_active kernel (:func:`h0_kernel`) serves all
  members; the kernel is skipped (rank_h0 null, with a note) when
  ``cfg.vmap_size`` copies of it do not fit in half the available memory.

  Args:
    fns: from :func:`curvature_fns`.
    params: params pytree with a leading [K] member axis.
    batch: :class:`Examples`, shared by the members ([P, ...]) or one per
      member ([K, P, ...], e.g. per-member offsets f(w0_k; x)).
    cfg: :class:`SpectraConfig`.
    key: PRNG key of the Lanczos probes and start vectors (required for
      "lanczos"); member k uses ``fold_in(key, member_ids[k])``.
    member_ids: [K] integers (default 0..K-1), so that an analysis of a subset
      of a run's members reproduces those members of the full analysis.
    group_size: members per jitted call (default: all at once); the last group
      is padded by repeating its last member (one compiled shape).
    progress: called as ``progress(done, K)`` after each group.

  Returns:
    :class:`Spectra`. Every row has n_params, n_delta, n_active, loss,
    method, rtol, n_eff (None when skipped), n_negative_hp_over_n and the
    counts of :func:`spectral_counts` (dense) or the exact and estimated
    counts with intervals of the Lanczos path (``lanczos_counts`` says
    "full" or "slq"; ``estimated`` lists the estimated keys). Arrays:
    ``loss``, ``n_delta`` [K] and ``eig_h``, ``eig_h0``, ``eig_hp`` [K, N]
    (dense, and Lanczos "full"; there ``eig_h0`` is NaN when the kernel was
    not computed) or ``eig_h0`` [K, N] (NaN when not computed), ``nodes_*``,
    ``weights_*``, ``residuals_*`` [K, num_probes, num_steps] of H and Hp,
    ``ritz_h``, ``ritz_residual_estimate_h`` [K, num_steps] (Lanczos "slq").
  """
  if cfg.method == "lanczos" and key is None:
    raise ValueError("spectra(method='lanczos') needs a PRNG key")
  n_members = int(jax.tree_util.tree_leaves(params)[0].shape[0])
  ids = (np.arange(n_members) if member_ids is None
         else np.asarray(member_ids, np.int64).reshape(-1))
  if ids.shape[0] != n_members:
    raise ValueError(f"member_ids has {ids.shape[0]} entries for {n_members} "
                     f"members")
  keys = None
  if cfg.method == "lanczos":
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(ids))
  return _spectra(fns, params, batch, cfg, keys, group_size, progress)


def _spectra(fns: CurvatureFns, params, batch: Examples, cfg: SpectraConfig,
             keys, group_size: int | None = None,
             progress: Callable | None = None) -> Spectra:
  """:func:`spectra` with explicit per-member keys ([K] key array or None)."""
  n_members = int(jax.tree_util.tree_leaves(params)[0].shape[0])
  flat0, _ = ravel_pytree(jax.tree_util.tree_map(lambda a: a[0], params))
  n, dtype = int(flat0.shape[0]), np.dtype(flat0.dtype)
  shared = batch.y.ndim == 1
  p_train = int(batch.y.shape[-1])
  lanczos_path = cfg.method == "lanczos"
  avail = array_memory_bytes()
  do_neff = cfg.n_eff
  if do_neff is None:
    do_neff = (avail is None or 3 * p_train * n * dtype.itemsize * cfg.vmap_size
               < 0.5 * avail)

  active = counts = None
  kernel, kernel_note = False, None
  if lanczos_path:
    cfg = dataclasses.replace(cfg, krylov=choose_krylov(cfg, n, dtype))
    if cfg.krylov == "slq" and not 1 <= cfg.num_steps <= n:
      raise ValueError(f"num_steps must be in [1, N={n}], got {cfg.num_steps}")
    weights = _curvature_weights(fns, shared)(params, batch)
    index, mask, counts = _active_sets(jax.device_get(weights), cfg.pad_to)
    k_bytes = kernel_memory_bytes(index.shape[1], dtype.itemsize) * cfg.vmap_size
    if counts.max(initial=0) == 0:
      pass  # no active point anywhere: H0 = 0, no kernel needed
    elif avail is not None and k_bytes > 0.5 * avail:
      kernel_note = (f"kernel of {int(counts.max())} active points needs "
                     f"{k_bytes / 2**30:.1f} GiB; not computed")
    else:
      kernel = True
      active = _gather_active(batch, index, mask, shared)

  run = _mapped_analysis(fns, cfg, n, dtype.name, bool(do_neff), shared)
  group = n_members if not group_size else min(int(group_size), n_members)
  parts = []
  for start in range(0, n_members, group):
    idx = np.minimum(np.arange(start, start + group), n_members - 1)
    take = lambda t, idx=idx: (None if t is None else
                               jax.tree_util.tree_map(lambda a: a[idx], t))
    group_params = take(params)
    out = run(group_params, batch if shared else take(batch), take(keys))
    if kernel:
      out["eig_k"] = _mapped_kernel(fns, cfg.batch_size, cfg.vmap_size)(
          group_params, take(active))
    out = jax.device_get(out)
    real = min(group, n_members - start)
    parts.append({k: np.asarray(v)[:real] for k, v in out.items()})
    if progress is not None:
      progress(start + real, n_members)
  out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  rows, store = [], {}
  for k in range(n_members):
    one = {name: v[k] for name, v in out.items()}
    row = {"n_params": n, "n_delta": int(one["n_delta"]),
           "n_active": int(one["n_active"]), "loss": float(one["loss"]),
           "method": cfg.method}
    if lanczos_path:
      extra, arrays = _lanczos_row(
          one, n, dtype, cfg, int(counts[k]),
          kernel_note if counts[k] else None)
    else:
      extra, arrays = _dense_row(one, n, dtype, cfg.rtol)
    row.update(extra)
    if row["n_negative_hp"] is not None:
      row["n_negative_hp_over_n"] = row["n_negative_hp"] / n
    row["n_eff"] = (rank_of_singular_values(one["singular_values_jac"],
                                            (p_train, n))
                    if do_neff else None)
    rows.append(row)
    for name, a in arrays.items():
      store.setdefault(name, []).append(a)
  arrays = {name: np.stack(v) for name, v in store.items()}
  arrays["loss"] = np.array([r["loss"] for r in rows])
  arrays["n_delta"] = np.array([r["n_delta"] for r in rows])
  return Spectra(rows, arrays)


def lanczos_counts(fns: CurvatureFns, params, batch: Examples, key, *,
                   num_steps: int = 100, num_probes: int = 8, top_k: int = 5,
                   rtol: float | None = None, block_size: int = 64,
                   pad_to: int = 64, z: float = 3.0,
                   krylov: str = "auto") -> tuple:
  """Counts of one network at scale: exact where possible, else estimated.

  The Lanczos path of :func:`spectra` for one network (no member axis, probes
  from ``key`` itself):

  * Exact: rank(H0), Tr(H0) and the whole spectrum of H0, from the
    eigenvalues of the l''-weighted kernel of the active points
    (:func:`h0_kernel`, N_active x N_active; the non-zero eigenvalues of
    H0 = J^T S^2 J and K = S J J^T S coincide). rank(H0) uses the dense
    path's tolerance, max(N, N_active) eps, so it equals the dense count.
  * With ``krylov="full"`` (the "auto" choice when N <= (num_probes + 1/2)
    num_steps, :func:`choose_krylov`): every eigenvalue of H and of Hp from a
    Lanczos run of dimension N (:func:`lossland.lanczos.spectrum`), so
    n_zero(H), N_-(H), N_-(Hp), the traces and the checks are the dense
    path's counts (``estimated`` is empty); each count has an ``_interval``
    from :func:`settled_count` (values that rounding could move across a
    class boundary). Arrays: eig_h, eig_hp, eig_h0.
  * With ``krylov="slq"``, estimated with error bars (:func:`slq_counts`):
    n_zero(H), N_-(H), N_-(Hp) and Tr(Hp) from SLQ over ``num_probes``
    Rademacher probes; Tr(H) = Tr(H0) (exact) + Tr(Hp) (estimated). The
    lowest Ritz value of H is >= lambda_min(H), so H is certainly not stable
    when it is below -tol; otherwise stability is unknown (``None``), never
    claimed from an estimate.
  * Extreme Ritz pairs of H with their true residuals |H y - theta y|.

  Args:
    fns: from :func:`curvature_fns`.
    params, batch: one network and its data.
    key: PRNG key for the probes and the Ritz start vector.
    num_steps: Lanczos steps per SLQ probe (<= N with SLQ).
    num_probes: SLQ probes per matrix (>= 2 for error bars).
    top_k: extreme Ritz pairs reported at each end.
    rtol: zero tolerance (default N eps, as the dense path).
    block_size: kernel columns per block.
    pad_to: the active set is padded to a multiple of this (fewer compiles).
    z: standard errors in the reported intervals (SLQ).
    krylov: "auto", "full" or "slq" (:class:`SpectraConfig`).

  Returns:
    (row, arrays): ``row`` a JSON-ready dict of counts (``lanczos_counts``
    says "full" or "slq"; ``estimated`` lists the keys that are estimates;
    also loss, n_delta and n_eff), ``arrays`` the exact eig_h0 [N] with
    eig_h and eig_hp [N] (full) or the SLQ nodes/weights/residuals of H and
    Hp and the Ritz values/residuals of H (slq).
  """
  cfg = SpectraConfig("lanczos", rtol, block_size, num_steps, num_probes,
                      top_k, pad_to, z, n_eff=False, krylov=krylov)
  one = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a)[None], t)
  res = _spectra(fns, one(params), batch, cfg, key[None])
  return res.rows[0], {k: v[0] for k, v in res.arrays.items()}
