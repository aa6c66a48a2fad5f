"""Observables of trained networks and ensembles.

Written for outputs (arrays of f), so they apply to any model: single members
take ``f`` of shape [n], ensembles ``f`` of shape [K, n].
"""
import jax.numpy as jnp
import numpy as np


def deltas(f, y, epsilon: float = 1.0):
  """Delta_mu = epsilon - y_mu f_mu. f: [..., n], y: [n]."""
  return epsilon - y * f


def n_delta(f, y, epsilon: float = 1.0):
  """N_Delta = #{mu: Delta_mu > 0}, the unsatisfied constraints. f: [..., n]."""
  return jnp.sum(deltas(f, y, epsilon) > 0, axis=-1)


def error(f, y):
  """Classification error: fraction of points with y f <= 0 (f = 0 counts as
  an error). f: [..., n] -> [...]."""
  return jnp.mean((y * f <= 0).astype(jnp.result_type(float)), axis=-1)


def ensemble_mean(f):
  """The ensemble predictor fbar = (1/K) sum_k f_k. f: [K, n] -> [n]."""
  return jnp.mean(f, axis=0)


def output_variance(f):
  """<|f - fbar|^2>: mean over members and points of (f_k(x) - fbar(x))^2.

  With K members this is the biased (1/K) estimator, as a spread of the
  ensemble actually trained. f: [K, n] -> scalar.
  """
  return jnp.mean(jnp.square(f - ensemble_mean(f)))


def ensemble_summary(f_test, y_test) -> dict:
  """Test errors of the members and of the ensemble predictor.

  Args:
    f_test: [K, n_test] outputs of the members.
    y_test: [n_test] labels +-1.

  Returns:
    dict with ``member_test_errors`` [K], ``mean_test_error``,
    ``ensemble_test_error`` (error of fbar) and ``output_variance``.
  """
  f_test = np.asarray(f_test, np.float64)
  y_test = np.asarray(y_test, np.float64)
  if f_test.shape[-1] == 0:
    nan = float("nan")
    return {"member_test_errors": [nan] * f_test.shape[0],
            "mean_test_error": nan, "ensemble_test_error": nan,
            "output_variance": nan}
  member = np.asarray(error(f_test, y_test))
  return {
      "member_test_errors": member.tolist(),
      "mean_test_error": float(member.mean()),
      "ensemble_test_error": float(error(ensemble_mean(f_test), y_test)),
      "output_variance": float(output_variance(f_test)),
  }


def log_bins(lo: float = 1e-9, hi: float = 1e4, n: int = 130) -> np.ndarray:
  """Log-spaced bin edges (nn_jamming: 130 bins from 1e-9 to 1e4)."""
  return np.logspace(np.log10(lo), np.log10(hi), n + 1)


def delta_histograms(delta, loss, bins=None) -> dict:
  """Densities of Delta > 0 (rescaled by sqrt(loss)) and of -Delta for Delta < 0.

  As the authors do (nn_jamming), positive Delta are divided by sqrt(loss) so
  that histograms at different distances from jamming can be compared, and
  both sides are histogrammed on log-spaced bins as densities, normalized by
  the total number of points (so the two sides together integrate to the
  fraction of points with Delta != 0).

  Args:
    delta: [n] margins Delta of one network.
    loss: the loss at which to rescale (ignored where it is 0).
    bins: bin edges; default :func:`log_bins`.

  Returns:
    dict with ``bins`` [B+1], ``positive`` [B], ``negative`` [B],
    ``n_positive``, ``n_negative``.
  """
  delta = np.asarray(delta, np.float64)
  bins = log_bins() if bins is None else np.asarray(bins)
  n = max(delta.size, 1)
  pos = delta[delta > 0]
  if loss > 0:
    pos = pos / np.sqrt(loss)
  neg = -delta[delta < 0]
  widths = np.diff(bins)
  hp, _ = np.histogram(pos, bins)
  hn, _ = np.histogram(neg, bins)
  return {"bins": bins, "positive": hp / (n * widths),
          "negative": hn / (n * widths), "n_positive": int(pos.size),
          "n_negative": int(neg.size)}
