"""The descent probe (lossland.optim.kink_newton.descent_probe) against ground
truth: a saddle whose negative curvature is known in closed form, a stalled
state that is not a minimum and the minimum the finish reaches from it (one-
sided differences and the finish's own later descent as the references), and
the ReLU rescaling directions it leaves out."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from lossland import data, losses, nets
from lossland.optim import kink_newton
from tests.test_kink_newton import LOSS, _jammed_relu, _loss, _seed1_stall


def test_probe_finds_the_descent_of_a_saddle_that_has_no_gradient():
  """A tanh net at w = 0: every gradient vanishes (tanh(0) = 0 and the
  output weights are 0), and the Hessian couples the two layers,
  [[0, M], [M^T, 0]]: a saddle with lambda_min = -lambda_max. The gradient
  and Newton lines are empty; a soft mode must find the descent, and the
  loss lower by about lambda_min t^2 / 2 there (checked on the dense
  Hessian)."""
  cfg = nets.NetConfig(d=3, width=4, depth=1, activation="tanh")
  init_fn, apply_fn = nets.make_net(cfg)
  p = jax.tree_util.tree_map(jnp.zeros_like, init_fn(jax.random.key(0)))
  ds = data.sphere(jax.random.key(1), 12, 3, n_test=0)
  x, y = ds.x_train, ds.y_train
  flat, unravel = ravel_pytree(p)
  L = lambda v: jnp.sum(LOSS.fn(losses.margins(apply_fn(unravel(v), x), y, 1.0)))
  assert float(jnp.linalg.norm(jax.grad(L)(flat))) == 0.0
  ev = np.linalg.eigvalsh(np.asarray(jax.hessian(L)(flat)))
  assert ev[0] < -1e-3 and ev[0] == pytest.approx(-ev[-1], rel=1e-10)
  pr = kink_newton.descent_probe(cfg, p, x, y, LOSS, steps=np.logspace(-4, -2, 5))
  assert pr.descends() and pr.line.startswith("mode ") and pr.step == pytest.approx(1e-2)
  assert pr.min_curvature == pytest.approx(-1.0, rel=1e-10)
  assert pr.restore_gain == 0.0  # no kinks: nothing to restore
  # steps in units of 1 at w = 0: the loss there is lower by |lambda_min| t^2 / 2
  t = pr.step
  assert pr.gain * float(L(flat)) == pytest.approx(0.5 * ev[0] * t * t, rel=0.05)


def test_probe_finds_no_descent_at_the_finished_minimum_and_one_at_the_stall():
  """Seed 1's stall (test_kink_newton): the polish stopped on a saddle at
  r_sub 3e-4, the probe finds the loss lower nearby (the finish then
  lowers it further); at the minimum the
  finish reaches from it (r_sub 1e-12, no descent direction by one-sided
  differences in test_kink_newton) it finds nothing beyond observables.DESCENT_RTOL,
  and moving the state onto its kink manifold changes its loss only by
  rounding."""
  cfg, params, ds = _seed1_stall()
  x, y = ds.x_train, ds.y_train
  before = kink_newton.descent_probe(cfg, params, x, y, LOSS)
  assert before.descends() and before.gain < -1e-7 and before.step > 0
  out = kink_newton.finish(cfg, params, x, y, LOSS, tol=1e-10, max_iter=400)
  assert out.converged
  _, apply_fn = nets.make_net(cfg)
  L = _loss(apply_fn, x, y)
  assert (L(out.params) - L(params)) / L(params) < before.gain  # the finish goes further
  after = kink_newton.descent_probe(cfg, out.params, x, y, LOSS)
  assert not after.descends(), after
  assert after.n_trials >= 2 * 8  # every line tried at least once
  assert after.min_curvature > -1e-10
  assert abs(after.restore_gain) < 1e-12


def test_probe_finds_the_descent_that_a_longer_finish_takes():
  """Seed 0: a finish of 40 iterations stops while still descending
  (max_iter); the probe at its stop finds a lower loss, and so does a
  longer finish from there (the independent reference)."""
  cfg, params, ds = _jammed_relu(0)
  x, y = ds.x_train, ds.y_train
  _, apply_fn = nets.make_net(cfg)
  short = kink_newton.finish(cfg, params, x, y, LOSS, tol=1e-10, max_iter=40)
  assert short.reason == "max_iter"
  pr = kink_newton.descent_probe(cfg, short.params, x, y, LOSS)
  assert pr.descends()
  L = _loss(apply_fn, x, y)
  more = kink_newton.finish(cfg, short.params, x, y, LOSS, tol=1e-10, max_iter=200)
  assert L(more.params) < L(short.params) * (1 + pr.gain / 10)


def test_rescaling_generators_are_flat_directions_of_a_relu_net():
  """Each column moves one hidden unit along its rescaling orbit: the
  outputs' directional derivative vanishes (jvp), for nets with and without
  biases; one column per hidden unit."""
  for bias in (False, True):
    cfg = nets.NetConfig(d=3, width=5, depth=2, bias=bias)
    init_fn, apply_fn = nets.make_net(cfg)
    p = init_fn(jax.random.key(3))
    if bias:
      p = [dict(layer, b=0.1 * jnp.arange(layer["b"].size, dtype=layer["b"].dtype))
           for layer in p]
    x = data.sphere(jax.random.key(1), 30, 3, n_test=0).x_train
    G = kink_newton.rescaling_generators(cfg, p)
    flat, unravel = ravel_pytree(p)
    assert G.shape == (flat.size, 2 * 5)
    f = lambda v: apply_fn(unravel(v), x)
    for j in range(G.shape[1]):
      _, df = jax.jvp(f, (flat,), (jnp.asarray(G[:, j]),))
      assert float(jnp.max(jnp.abs(df))) < 1e-12 * float(jnp.max(jnp.abs(f(flat))))
    assert np.linalg.matrix_rank(G) == 2 * 5


def test_probe_bad_arguments():
  cfg, params, ds = _seed1_stall()
  for kw in (dict(n_modes=-1), dict(steps=[]), dict(steps=[1e-3, 1e-4]), dict(steps=[0, 1e-3])):
    with pytest.raises(ValueError):
      kink_newton.descent_probe(cfg, params, ds.x_train, ds.y_train, LOSS, **kw)


def test_finish_escapes_a_collapsed_trust_region_that_the_probe_can_leave(monkeypatch):
  """Where the trust region collapses with no step accepted, the finish asks
  the descent probe: without the escape it stops "stuck" where it is; with
  it (the default) it restarts from the probe's lower point. Every trust-
  region step is rejected here (a stand-in for a model that fails along a
  direction, docs/jamming.md), so each collapse is one with no step
  accepted and every decrease is the escape's: at seed 1's stall (r_sub 3e-4,
  the probe finds the loss lower) the finish escapes, ends lower by at least
  the first probe's gain, and stops either "stuck" where the probe finds
  nothing beyond observables.DESCENT_RTOL (that probe is returned, so the
  caller need not run it again) or out of iterations."""
  cfg, params, ds = _seed1_stall()
  x, y = ds.x_train, ds.y_train
  _, apply_fn = nets.make_net(cfg)
  L = _loss(apply_fn, x, y)
  first = kink_newton.descent_probe(cfg, params, x, y, LOSS)
  assert first.descends()

  def reject(self, m):
    self.radius *= 0.25
    return -1.0, None
  monkeypatch.setattr(kink_newton._Search, "_step", reject)
  plain = kink_newton.finish(cfg, params, x, y, LOSS, tol=1e-10, max_iter=200, escape=False)
  assert plain.reason == "stuck" and plain.n_escapes == 0 and plain.n_steps == 0
  assert plain.probe is None  # no escape, no probe
  assert L(plain.params) == L(params)
  logs = []
  out = kink_newton.finish(cfg, params, x, y, LOSS, tol=1e-10, max_iter=200, log_fn=logs.append)
  assert out.n_escapes >= 1 and out.n_restarts == out.n_escapes and out.n_steps == 0
  assert sum("descent probe found" in t for t in logs) == out.n_escapes
  assert L(out.params) <= L(params) * (1 + first.gain)
  assert out.reason in ("stuck", "max_iter", "converged")
  if out.reason == "stuck":
    assert not kink_newton.descent_probe(cfg, out.params, x, y, LOSS).descends()
  # at the minimum the finish reaches (steps not rejected: test above) the
  # escape's probe finds nothing: "stuck", that probe returned with the params
  monkeypatch.undo()
  minimum = kink_newton.finish(cfg, params, x, y, LOSS, tol=1e-10, max_iter=400).params
  monkeypatch.setattr(kink_newton._Search, "_step", reject)
  at_min = kink_newton.finish(cfg, minimum, x, y, LOSS, tol=1e-14, max_iter=200)
  assert at_min.reason == "stuck" and at_min.n_escapes == 0 and at_min.probe is not None
  again = kink_newton.descent_probe(cfg, at_min.params, x, y, LOSS)
  assert not again.descends() and at_min.probe.gain == again.gain


def test_the_finish_runs_its_host_linear_algebra_on_one_blas_thread():
  """kink_newton.host_blas: one BLAS thread for nets of at most
  ONE_BLAS_THREAD_MAX_N weights (measured faster there, BUILD_NOTES.md),
  no change above, the previous limit back on exit; the finish's iterations
  run under it (seen from its log callback)."""
  from threadpoolctl import threadpool_info, threadpool_limits

  def blas_threads():
    return {d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"}
  if not blas_threads():
    pytest.skip("no BLAS library visible to threadpoolctl")
  with threadpool_limits(limits=2, user_api="blas"):
    outer = blas_threads()
    with kink_newton.host_blas(kink_newton.ONE_BLAS_THREAD_MAX_N):
      assert blas_threads() == {1}
    assert blas_threads() == outer
    with kink_newton.host_blas(kink_newton.ONE_BLAS_THREAD_MAX_N + 1):
      assert blas_threads() == outer
    cfg, params, ds = _seed1_stall()
    seen = []
    kink_newton.finish(cfg, params, ds.x_train, ds.y_train, LOSS, tol=1e-10, max_iter=25,
                       log_fn=lambda line: seen.append(blas_threads()))
    assert seen and all(t == {1} for t in seen)
    assert blas_threads() == outer
