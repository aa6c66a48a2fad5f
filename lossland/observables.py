"""Observables of trained networks and ensembles.

Written for outputs (arrays of f), so they apply to any model: single members
take ``f`` of shape [n], ensembles ``f`` of shape [K, n]. Delta and N_Delta
are those of :mod:`lossland.losses` (``margins``, ``n_unsatisfied``).
"""
import jax.numpy as jnp
import numpy as np

from lossland import losses


def n_delta(f, y, epsilon: float = 1.0):
  """N_Delta = #{mu: Delta_mu > 0} of each network from its outputs.

  :func:`lossland.losses.n_unsatisfied` of :func:`lossland.losses.margins`
  over the last axis. f: [..., n], y: [n] -> [...].
  """
  return losses.n_unsatisfied(losses.margins(f, y, epsilon), axis=-1)


def error(f, y):
  """Classification error: fraction of points with y f <= 0 (f = 0 counts as
  an error). f: [..., n] -> [...]."""
  return jnp.mean((y * f <= 0).astype(jnp.result_type(float)), axis=-1)


def ensemble_mean(f):
  """The ensemble predictor fbar = (1/K) sum_k f_k. f: [K, n] -> [n]."""
  return jnp.mean(f, axis=0)


def output_variance(f):
  """<|f - fbar|^2>: the variance of the output over initializations.

  The unbiased estimator over the K members, averaged over the points:
  (1 / (K - 1)) sum_k (1 / n) sum_x (f_k(x) - fbar(x))^2, an estimate of the
  variance of f(x) over random initializations (1906.08034, the fluctuations
  that ensembling removes). NaN for K = 1. f: [K, n] -> scalar.
  """
  K = f.shape[0]
  ss = jnp.sum(jnp.mean(jnp.square(f - ensemble_mean(f)), axis=-1), axis=0)
  return ss / (K - 1) if K > 1 else jnp.full((), jnp.nan, ss.dtype)


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
  if f_test.shape[-1] == 0 or f_test.shape[0] == 0:  # no test set, or no member
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


MEMBER_CLASSES = ("sat", "dead_points", "limbo", "jammed", "unbalanced", "stalled",
                  "not_converged", "diverged", "dead")
UNHEALTHY = ("diverged", "dead", "dead_points")


def unsatisfied_dead_points(f_train, y_train, epsilon: float = 1.0,
                            dead_points=None) -> np.ndarray:
  """[K] the number of unsatisfied dead points of each member (f = 0
  exactly, or ``dead_points`` [K, P] of :func:`lossland.nets.dead_points`)."""
  f_train = np.asarray(f_train, np.float64)
  f_train = f_train.reshape(-1, f_train.shape[-1])
  unsat = losses.margins(f_train, np.asarray(y_train, np.float64)[None, :], epsilon) > 0
  is_dead = f_train == 0
  if dead_points is not None:
    is_dead = is_dead | np.asarray(dead_points, bool).reshape(f_train.shape)
  return np.sum(is_dead & unsat, axis=-1)


# The authors' jamming criterion (nn_jamming/transition.py, 1809.09349): a
# stopped run is jammed when N_Delta > this fraction of N.
JAMMED_ND_FRACTION = 0.1


def member_classes(stop_reasons, n_delta, max_delta, f_train, n_weights: int,
                   limbo_max_nd: int = 4, limbo_delta: float = 1e-6,
                   y_train=None, epsilon: float = 1.0, dead_points=None) -> list:
  """Classifies the members of an ensemble at the end of training.

  The first class that applies, in this order:

  * ``diverged``: stop reason "diverged", or non-finite outputs (or N_Delta);
  * ``dead``: f = 0 exactly on every training point (e.g. a ReLU net whose
    units are all off), a net that cannot learn;
  * ``sat``: N_Delta = 0, every constraint satisfied;
  * ``dead_points`` (only when ``y_train`` is given): N_Delta > 0 and some
    unsatisfied point is a dead point: f = 0 exactly, or where
    ``dead_points`` says so (:func:`lossland.nets.dead_points`: some hidden
    layer entirely off, which also covers nets with biases). A ReLU net
    without biases outputs exactly 0 on an input where every unit of a layer
    is off; such a point keeps Delta = epsilon and a zero gradient whatever
    the training does, so no optimizer can satisfy it: the member is neither
    sat nor a jammed minimum of its live constraints, and is left out of the
    sat fraction and the headline numbers (unhealthy). (Before issue 20 a
    member whose unsatisfied points were *all* dead was ``sat_dead`` and
    counted as sat.)
  * ``limbo``: 1 <= N_Delta <= ``limbo_max_nd`` and max Delta <
    ``limbo_delta``: satisfied up to the floating-point precision;
  * ``not_converged``: stopped at max_steps (or still running) with N_Delta > 0
    (the ensemble job makes it ``jammed`` where a finishing stage brought it
    to force balance with N_Delta > 0.1 N: :func:`apply_force_balance`);
  * ``jammed``: stopped as jammed with N_Delta > 0.1 N, the authors'
    criterion (nn_jamming/transition.py, 1809.09349); the ensemble job then
    keeps it ``jammed`` only where its force balance closes
    (:func:`apply_force_balance`, class ``unbalanced`` otherwise);
  * ``stalled``: stopped as jammed with N_Delta <= 0.1 N (the loss stalled
    with few unsatisfied points, e.g. dead ReLU units).

  Healthy members are all but ``diverged``, ``dead`` and ``dead_points``.

  Args:
    stop_reasons: [K] strings of ``train.STOP_REASONS``.
    n_delta: [K] final N_Delta.
    max_delta: [K] final max_mu Delta_mu.
    f_train: [K, P] final outputs on the training set.
    n_weights: N, the number of weights of one network.
    limbo_max_nd, limbo_delta: the precision-limbo thresholds.
    y_train: [P] labels; enables ``dead_points``.
    epsilon: the margin of Delta = epsilon - y f (``dead_points``).
    dead_points: optional [K, P] bool, dead training points of each member
      (:func:`lossland.nets.dead_points`); a member dead on every point is
      ``dead``.

  Returns:
    list of K class names from :data:`MEMBER_CLASSES`.
  """
  n_delta = np.asarray(n_delta, np.float64).reshape(-1)
  max_delta = np.asarray(max_delta, np.float64).reshape(-1)
  f_train = np.asarray(f_train, np.float64)
  f_train = f_train.reshape(n_delta.shape[0], -1)
  dead = np.zeros(n_delta.shape[0], bool)
  if y_train is not None:
    dead = unsatisfied_dead_points(f_train, y_train, epsilon, dead_points) > 0
  all_dead = np.zeros(n_delta.shape[0], bool)
  if dead_points is not None:
    all_dead = np.asarray(dead_points, bool).reshape(f_train.shape).all(-1)
  out = []
  for k, reason in enumerate(stop_reasons):
    nd, md, f = n_delta[k], max_delta[k], f_train[k]
    if reason == "diverged" or not np.all(np.isfinite(f)) or not np.isfinite(nd):
      out.append("diverged")
    elif f.size and (np.all(f == 0) or all_dead[k]):
      out.append("dead")
    elif nd == 0:
      out.append("sat")
    elif dead[k]:
      out.append("dead_points")
    elif 1 <= nd <= limbo_max_nd and md < limbo_delta:
      out.append("limbo")
    elif reason == "jammed":
      out.append("jammed" if nd > JAMMED_ND_FRACTION * n_weights else "stalled")
    else:
      out.append("not_converged")
  return out


# A member whose descent probe (lossland.optim.kink_newton.descent_probe)
# found the true loss lower by more than this, relative, is not a minimum.
# The force-balanced members of the studies kept on 2026-12-06 gain at most
# 4.2e-11; most members still descending gain 1e-9 or more
# (docs/jamming.md, fourteenth session).
DESCENT_RTOL = 1e-10


def probe_descends(member: dict, rtol: float = DESCENT_RTOL) -> bool:
  """Whether the descent probe at the end of a summary member's finish found
  the loss lower by more than ``rtol``, relative (``descent_gain``; False
  where none was recorded)."""
  gain = member.get("descent_gain")
  return gain is not None and bool(np.isfinite(gain)) and gain < -rtol


def still_descending(member: dict, rtol: float = DESCENT_RTOL) -> bool:
  """Whether a summary member (summary.json's ``members`` entry) is shown
  to be still descending: its Newton finish ran out of iterations
  (``finish_reason`` "max_iter"), or the descent probe at its end found the
  loss lower by more than ``rtol`` (:func:`probe_descends`; summaries
  written before the probe have none)."""
  return member.get("finish_reason") == "max_iter" or probe_descends(member, rtol)


def apply_force_balance(classes, force_residuals, threshold: float | None,
                        finished=None, descending=None) -> list:
  """``jammed`` members not shown to be minima become ``unbalanced`` (issue 20).

  A member that stopped jammed (the training's stall rule, N_Delta > 0.1 N)
  is a jammed *minimum* only when its force balance is measured and closes:
  r_sub <= ``threshold`` (:mod:`lossland.stationarity`; 0 at a minimum of the
  non-smooth loss). Otherwise its loss stalled at a point that is not shown
  to be stationary: class ``unbalanced``. It still stopped with N_Delta > 0,
  so the phase diagram counts it as not sat (the protocol did not satisfy
  it), but the exponents theta and gamma, which describe jammed minima, use
  only ``jammed`` members.

  A member that ran out of steps (``not_converged``) but that a finishing
  stage then brought to force balance is a jammed minimum too, whatever
  stopped its first stages: with ``finished[k]`` true (the member entered
  the finish and has N_Delta > 0.1 N) it becomes ``jammed`` where r_sub <=
  ``threshold`` and stays ``not_converged`` otherwise.

  A small r_sub is not enough where the finish was still descending: a
  Newton finish that ran out of iterations (``descending[k]``, its reason
  ``max_iter``) was still lowering the loss, and r_sub swings by decades
  along such a descent (docs/jamming.md: states with r_sub 3e-7 to 7e-7 at
  a stop went on to lower their loss by 0.1 to 0.3 %, r_sub back at 1e-5 to
  2e-4); so is a member where the descent probe found a lower loss
  (:func:`still_descending`). Such
  a member is not shown to be a minimum whatever its r_sub at the stop:
  ``unbalanced`` (or ``not_converged``). A finish that stopped because r_sub
  reached its own target (``finish_tol``, 1e-10 by default) or because its
  trust region collapsed with no descent found is what shows a minimum.

  Args:
    classes: K class names (:func:`member_classes`).
    force_residuals: K values of r_sub (None or nan where not measured).
    threshold: ``jam_max_residual``; None: no r_sub criterion (only the
      ``descending`` rule applies).
    finished: optional K bools, the members a finishing stage entered whose
      N_Delta exceeds 0.1 N.
    descending: optional K bools, the members still descending
      (:func:`still_descending`).

  Returns:
    the K class names, ``jammed`` replaced by ``unbalanced`` where r_sub is
    missing or above the threshold or the finish was still descending, and
    finished ``not_converged`` members replaced by ``jammed`` where r_sub is
    at most the threshold and the finish was not.
  """
  finished = [False] * len(classes) if finished is None else list(finished)
  descending = [False] * len(classes) if descending is None else list(descending)
  out = []
  for c, r, fin, desc in zip(classes, force_residuals, finished, descending):
    balanced = threshold is None or (r is not None and np.isfinite(r) and r <= threshold)
    if c == "jammed" and (desc or not balanced):
      c = "unbalanced"
    elif c == "not_converged" and fin and threshold is not None and balanced and not desc:
      c = "jammed"
    out.append(c)
  return out


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
