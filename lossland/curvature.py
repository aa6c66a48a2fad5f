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

Tolerances (documented in docs/curvature.md): an eigenvalue lambda of a matrix M
counts as zero when |lambda| <= rtol * max|lambda(M)|, with default
``rtol = N * eps(dtype)`` (numpy.linalg.matrix_rank's rule, N the matrix size);
ranks of rectangular matrices use singular values with ``max(P, N) * eps``.
"""
import math
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
    Hp v each cost a small constant times one gradient.
  """
  if isinstance(loss, losses_lib.LossConfig):
    loss_fn = loss.fn
    epsilon = loss.epsilon if epsilon is None else epsilon
  else:
    loss_fn = loss
    if epsilon is None:
      raise ValueError("epsilon is required when loss is a function")
  d1_fn, d2_fn = loss_derivatives(loss_fn)

  def delta_fn(params, batch):
    f = apply_fn(params, batch.x) - batch.offset
    return epsilon - batch.y * f

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

  def chunk_hvp(fun, params, batch, v):
    return jax.jvp(lambda p: jax.grad(fun)(p, batch), (params,), (v,))[1]

  def loss_total(params, batch):
    return _accumulate(lambda b: chunk_loss(params, b), batch, chunk_size)

  def grad(params, batch):
    return _accumulate(lambda b: jax.grad(chunk_loss)(params, b), batch,
                       chunk_size)

  def delta(params, batch):
    return delta_fn(params, batch)

  def product(chunk_fn):
    def vp(params, batch, v):
      v, back = _tree_or_flat(params, v)
      out = _accumulate(lambda b: chunk_fn(params, b, v), batch, chunk_size)
      return back(out)
    return vp

  hvp = product(lambda p, b, v: chunk_hvp(chunk_loss, p, b, v))
  hpvp = product(lambda p, b, v: chunk_hvp(chunk_hp_potential, p, b, v))
  h0vp = product(chunk_h0vp)

  def split_vp(params, batch, v):
    v, back = _tree_or_flat(params, v)

    def chunk(b):
      return (chunk_hvp(chunk_loss, params, b, v), chunk_h0vp(params, b, v),
              chunk_hvp(chunk_hp_potential, params, b, v))

    hv, h0v, hpv = _accumulate(chunk, batch, chunk_size)
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
    fraction: usable fraction of the available memory.
  """
  need = dense_memory_bytes(n, np.dtype(dtype).itemsize, n_matrices)
  avail = available_memory_bytes()
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
  s = np.linalg.svd(a, compute_uv=False)
  if rtol is None:
    rtol = max(a.shape) * np.finfo(a.dtype).eps
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


def slq_counts(nodes_h, weights_h, nodes_h0, weights_h0, nodes_hp, weights_hp,
               n: int, n_delta: int, rtol: float = 1e-8) -> dict:
  """Estimated counts from SLQ quadratures (N times a quadrature weight).

  A Ritz node is zero when |theta| <= rtol * max|theta| over all probes of that
  matrix. Estimates are floats with the Monte-Carlo error of the probes (an
  eigenvalue cluster at 0 of weight m/N shows as one node of weight ~ m/N).
  """
  def frac(nodes, weights, sign):
    nodes, weights = np.asarray(nodes), np.asarray(weights)
    tol = rtol * float(np.max(np.abs(nodes))) if nodes.size else 0.0
    if sign < 0:
      m = nodes < -tol
    elif sign > 0:
      m = nodes > tol
    else:
      m = np.abs(nodes) <= tol
    return float(np.mean(np.sum(np.where(m, weights, 0.0), axis=-1)))

  n_neg_hp = n * frac(nodes_hp, weights_hp, -1)
  rank_h0 = n * (1.0 - frac(nodes_h0, weights_h0, 0))
  n_neg_h = n * frac(nodes_h, weights_h, -1)
  tol_h = rtol * float(np.max(np.abs(nodes_h)))
  stable = bool(np.min(nodes_h) >= -tol_h)
  n_neg_hp_resolved = n * float(np.mean(np.sum(
      np.where(np.asarray(nodes_hp) < -tol_h, weights_hp, 0.0), axis=-1)))
  return {
      "n_negative_hp": n_neg_hp,
      "rank_h0": rank_h0,
      "n_zero_h": n * frac(nodes_h, weights_h, 0),
      "n_negative_h": n_neg_h,
      "lambda_min_h": float(np.min(nodes_h)),
      "lambda_max_h": float(np.max(nodes_h)),
      "stable": stable,
      "rank_h0_le_n_delta": bool(rank_h0 <= n_delta + 0.5),
      "n_negative_hp_resolved": n_neg_hp_resolved,
      "n_negative_hp_le_n_delta": (bool(n_neg_hp_resolved <= n_delta + 0.5)
                                   if stable else None),
  }


def n_active(fns: CurvatureFns, params, batch: Examples) -> jax.Array:
  """#{i : ell''(Delta_i) w_i != 0}: the bound on rank(H0) for any loss
  (equals N_Delta for the quadratic hinge)."""
  _, d2 = loss_derivatives(fns.loss_fn)
  delta = fns.delta(params, batch)
  return jnp.sum((d2(delta) * batch.weight) != 0)


def sqrt_loss_scale(loss: float) -> float:
  """sqrt(L), the scale of Hp near jamming (Hp eigenvalues / sqrt(L) collapse)."""
  return math.sqrt(max(float(loss), 0.0))
