"""Force balance and the minimum-norm subgradient (lossland.stationarity)
against ground truth: a minimum found by scipy, one-sided finite differences
at a kink, a brute-force scan of the slope, and a hand-made kink point."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from lossland import data, losses, nets, stationarity

LOSS = losses.LossConfig("quadratic_hinge")


def _total_loss(apply_fn, x, y):
  return lambda p: jnp.sum(LOSS.fn(losses.margins(apply_fn(p, x), y, LOSS.epsilon)))


def test_force_residual_vanishes_at_a_minimum_and_not_elsewhere():
  """The convex hinge problem: a linear model (depth 0, N = d = 5) on P = 40
  random labels cannot fit them; its minimum (loss > 0) is found by scipy's
  trust-region Newton on the dense Hessian (piecewise quadratic: exact)."""
  from scipy.optimize import minimize
  cfg = nets.NetConfig(d=5, width=1, depth=0)
  init_fn, apply_fn = nets.make_net(cfg)
  ds = data.sphere(jax.random.key(1), 40, 5, n_test=0)
  p0 = init_fn(jax.random.key(2))
  flat0, unravel = ravel_pytree(p0)
  L = _total_loss(apply_fn, ds.x_train, ds.y_train)
  f = jax.jit(lambda v: L(unravel(v)))
  g = jax.jit(jax.grad(lambda v: L(unravel(v))))
  hess = jax.jit(jax.hessian(lambda v: L(unravel(v))))
  r0 = stationarity.force_residual(apply_fn, p0, ds.x_train, ds.y_train, LOSS)
  assert r0 > 0.05
  opt = minimize(lambda v: float(f(v)), np.asarray(flat0), jac=lambda v: np.asarray(g(v)),
                 hess=lambda v: np.asarray(hess(v)), method="trust-exact",
                 options=dict(gtol=1e-13, maxiter=500))
  p = unravel(jnp.asarray(opt.x))
  st = stationarity.stationarity(cfg, apply_fn, p, ds.x_train, ds.y_train, LOSS)
  assert st.n_unsat > cfg.d  # loss > 0: a jammed minimum
  assert st.force_residual_smooth < 1e-12, (st, opt.message)
  assert st.force_residual == st.force_residual_smooth and st.n_kink == 0  # no kinks
  # smooth activations: r_sub = r, no kinks counted
  cfg2 = nets.NetConfig(d=5, width=4, depth=1, activation="softplus")
  init2, apply2 = nets.make_net(cfg2)
  st2 = stationarity.stationarity(cfg2, apply2, init2(jax.random.key(3)), ds.x_train,
                                  ds.y_train, LOSS)
  assert st2.force_residual == st2.force_residual_smooth > 0.05 and st2.n_kink == 0


def test_scale_residual_is_the_slope_along_the_output_scale():
  """scale_residual against ground truth: minus the central difference of
  the loss along f -> c f (the last layer's weights and bias scaled by c:
  a ReLU net's output scales exactly) over the plain sum of
  |ell'(Delta) y f|; with an offset the margins are those of f - off while
  only f scales; 0 at the convex problem's minimum (scipy's, as above); > 0
  where every unsatisfied point is classified right (growing outputs lower
  the loss); nan with no unsatisfied point."""
  from scipy.optimize import minimize
  cfg = nets.NetConfig(d=4, width=8, depth=2, bias=True)
  init_fn, apply_fn = nets.make_net(cfg)
  params = init_fn(jax.random.key(4))
  ds = data.sphere(jax.random.key(5), 40, cfg.d, n_test=0)
  x, y = ds.x_train, ds.y_train
  off = 0.3 * jax.random.normal(jax.random.key(6), (40,), x.dtype)

  def scaled(c):
    return params[:-1] + [jax.tree_util.tree_map(lambda a: c * a, params[-1])]
  for o in (0.0, off):
    total = lambda c: float(jnp.sum(LOSS.fn(losses.margins(
        apply_fn(scaled(c), x) - o, y, LOSS.epsilon))))
    h = 1e-6
    dlogc = (total(1 + h) - total(1 - h)) / (2 * h)
    f = np.asarray(apply_fn(params, x))
    delta = LOSS.epsilon - np.asarray(y) * (f - np.asarray(o))
    den = np.sum(np.abs(np.maximum(delta, 0) * np.asarray(y) * f))
    assert den > 0
    got = stationarity.scale_residual(apply_fn, params, x, y, LOSS, o)
    assert got == pytest.approx(-dlogc / den, rel=1e-6, abs=1e-9)
  # the convex hinge problem's minimum (a linear model: f scales with w)
  lin = nets.NetConfig(d=5, width=1, depth=0)
  init_l, apply_l = nets.make_net(lin)
  dl = data.sphere(jax.random.key(1), 40, 5, n_test=0)
  flat0, unravel = ravel_pytree(init_l(jax.random.key(2)))
  L = _total_loss(apply_l, dl.x_train, dl.y_train)
  opt = minimize(jax.jit(lambda v: L(unravel(v))), np.asarray(flat0),
                 jac=jax.jit(jax.grad(lambda v: L(unravel(v)))),
                 hess=jax.jit(jax.hessian(lambda v: L(unravel(v)))), method="trust-exact",
                 options=dict(gtol=1e-13, maxiter=500))
  at_min = stationarity.scale_residual(apply_l, unravel(jnp.asarray(opt.x)), dl.x_train,
                                       dl.y_train, LOSS)
  assert abs(at_min) < 1e-10
  assert abs(stationarity.scale_residual(apply_l, unravel(flat0), dl.x_train, dl.y_train,
                                         LOSS)) > 1e-2
  # every point classified right, some within the margin: > 0
  f = apply_fn(params, x)
  yr = jnp.sign(f)
  assert np.any(np.abs(np.asarray(f)) < 1)
  assert stationarity.scale_residual(apply_fn, params, x, yr, LOSS) == pytest.approx(1.0)
  big = scaled(2.0 / float(jnp.min(jnp.abs(f))))  # every y f >= 2: none unsatisfied
  assert math.isnan(stationarity.scale_residual(apply_fn, big, x, yr, LOSS))


def _kinked_net(seed=0):
  """A ReLU net with training point 0 on a kink of unit 0 of layer 1 (its input
  projected orthogonal to that unit's weights), every point unsatisfied."""
  cfg = nets.NetConfig(d=4, width=8, depth=2)
  init_fn, apply_fn = nets.make_net(cfg)
  params = init_fn(jax.random.key(seed))
  x = np.array(data.sphere(jax.random.key(seed + 1), 12, 4, n_test=0).x_train)
  w = np.asarray(params[0]["w"][:, 0])
  x[0] -= (x[0] @ w) / (w @ w) * w
  x = jnp.asarray(x)
  f = apply_fn(params, x)
  y = -jnp.sign(f)  # Delta = 1 + |f| > 0 everywhere
  return cfg, apply_fn, params, x, y


def test_kink_slopes_give_the_one_sided_derivatives():
  cfg, apply_fn, params, x, y = _kinked_net()
  unsat = np.ones(x.shape[0], bool)
  kinks = stationarity.kink_pairs(cfg, params, x, unsat)
  assert kinks[0][0, 0] and sum(k.sum() for k in kinks) == 1
  flat, unravel = ravel_pytree(params)
  L = _total_loss(apply_fn, x, y)
  grad_at, jac_at, K = stationarity._slope_grad_fn(cfg, params, x, y, LOSS, kinks)
  assert K == 1
  # the slope 1[z > 0] (z is 0 to rounding, of either sign) is the plain gradient
  z00 = nets.preactivations(cfg, params, x[:1])[0][0, 0]
  assert abs(float(z00)) < 1e-14
  np.testing.assert_allclose(grad_at(jnp.array([float(z00 > 0)])),
                             ravel_pytree(jax.grad(L)(params))[0], rtol=1e-12, atol=1e-14)
  # one kink: g is affine in the slope
  g0, g1, gh = (np.asarray(grad_at(jnp.array([s]))) for s in (0.0, 1.0, 0.5))
  np.testing.assert_allclose(gh, (g0 + g1) / 2, rtol=1e-10, atol=1e-13)
  # and its Jacobian in the slope is the difference of the one-sided gradients
  # (the padded slots of the bucket are dropped)
  np.testing.assert_allclose(np.asarray(jac_at(jnp.array([0.3])))[:, 0], g1 - g0,
                             rtol=1e-10, atol=1e-13)
  # the one-sided directional derivative along v uses slope 1 if v switches
  # the unit on (dz > 0), 0 if it keeps it off
  rng = np.random.default_rng(0)
  z_of = lambda v: nets.preactivations(cfg, unravel(v), x[:1])[0][0, 0]
  for _ in range(4):
    v = rng.normal(size=flat.shape)
    h = 1e-7
    fd = (float(L(unravel(flat + h * v))) - float(L(unravel(flat)))) / h
    on = float(z_of(flat + h * v)) > 0
    want = (g1 if on else g0) @ v
    assert fd == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_r_sub_is_the_minimum_over_the_slope():
  cfg, apply_fn, params, x, y = _kinked_net(seed=3)
  st = stationarity.stationarity(cfg, apply_fn, params, x, y, LOSS)
  assert st.n_kink == 1 and st.exact and st.n_unsat == x.shape[0]
  den = stationarity.force_norm_sum(apply_fn, params, x, y, LOSS)
  kinks = stationarity.kink_pairs(cfg, params, x, np.ones(x.shape[0], bool))
  grad_at, _, _ = stationarity._slope_grad_fn(cfg, params, x, y, LOSS, kinks)
  scan = min(float(np.linalg.norm(grad_at(jnp.array([s])))) for s in np.linspace(0, 1, 2001))
  assert st.force_residual <= scan / den + 1e-12
  assert st.force_residual >= scan / den - 1e-6 * st.force_residual_smooth
  assert st.force_residual <= st.force_residual_smooth


def test_weight_decay_adds_its_force_to_the_record():
  """With weight_decay mu the record is that of F = L + mu|w|^2/2: r =
  |grad L + mu w| / (sum |Delta grad Delta| + mu |w|), and r_sub the
  minimum of |g(s) + mu w| over the slope (a scan), same denominator;
  mu = 0 gives the loss's record; mu < 0 is refused."""
  cfg, apply_fn, params, x, y = _kinked_net(seed=3)
  mu = 0.3
  flat = ravel_pytree(params)[0]
  den = stationarity.force_norm_sum(apply_fn, params, x, y, LOSS) + mu * float(
      jnp.linalg.norm(flat))
  g_loss = jax.grad(_total_loss(apply_fn, x, y))(params)
  r_smooth = float(jnp.linalg.norm(ravel_pytree(g_loss)[0] + mu * flat)) / den
  st = stationarity.stationarity(cfg, apply_fn, params, x, y, LOSS, weight_decay=mu)
  assert st.n_kink == 1 and st.exact
  assert st.force_residual_smooth == pytest.approx(r_smooth, rel=1e-12)
  kinks = stationarity.kink_pairs(cfg, params, x, np.ones(x.shape[0], bool))
  grad_at, _, _ = stationarity._slope_grad_fn(cfg, params, x, y, LOSS, kinks)
  scan = min(float(np.linalg.norm(grad_at(jnp.array([s])) + mu * flat))
             for s in np.linspace(0, 1, 2001))
  assert st.force_residual <= scan / den + 1e-12
  assert st.force_residual >= scan / den - 1e-6 * st.force_residual_smooth
  plain = stationarity.stationarity(cfg, apply_fn, params, x, y, LOSS)
  assert stationarity.stationarity(cfg, apply_fn, params, x, y, LOSS,
                                   weight_decay=0.0) == plain
  assert st.force_residual != plain.force_residual
  with pytest.raises(ValueError, match="weight_decay"):
    stationarity.stationarity(cfg, apply_fn, params, x, y, LOSS, weight_decay=-1.0)


@pytest.mark.parametrize("bias,offset,n_out", [(False, False, 1), (True, True, 1),
                                                (False, False, 2)])
def test_slope_jacobian_is_the_derivative_of_the_slope_gradient(bias, offset, n_out):
  """dg/ds, built one point per kink pair (frozen_derivs.slope_jacobian on
  the straight-through net; jax.jacfwd for several outputs), equals
  ``jax.jacfwd`` of the gradient over all points (the definition) at random
  slopes, with many kink pairs, several on one point and in both hidden
  layers (g is then not affine in s); the padded slots of the bucket are
  zero columns."""
  cfg = nets.NetConfig(d=4, width=6, depth=2, bias=bias, n_out=n_out)
  init_fn, apply_fn = nets.make_net(cfg)
  params = init_fn(jax.random.key(7))
  ds = data.sphere(jax.random.key(8), 30, cfg.d, n_test=0)
  x, y = ds.x_train, ds.y_train
  if n_out == 2:
    y = jnp.stack([y, -y], axis=1)
  off = 0.1 * jax.random.normal(jax.random.key(9), (30,), x.dtype) if offset else 0.0
  kinks = stationarity.kink_pairs(cfg, params, x, np.ones(30, bool), rtol=0.5)
  per_point = sum(k.sum(-1) for k in kinks)
  assert per_point.max() >= 2 and all(k.sum() > 0 for k in kinks)
  grad_at, jac_at, K = stationarity._slope_grad_fn(cfg, params, x, y, LOSS, kinks, off)
  assert K == int(per_point.sum())
  s = jnp.asarray(np.random.default_rng(1).uniform(size=K), x.dtype)
  want = np.asarray(jax.jacfwd(grad_at)(s))
  assert np.abs(want).max() > 1e-3
  np.testing.assert_allclose(np.asarray(jac_at(s)), want, rtol=1e-11, atol=1e-13)
  pk = stationarity.padded_kinks([np.nonzero(k) for k in kinks], x.shape[0])
  assert pk.pad > K
  w = ravel_pytree(params)[0]
  s_pad = jnp.zeros(pk.pad, x.dtype).at[pk.real].set(s)
  full = np.asarray(stationarity._SLOPE_JAC(cfg, LOSS, w, s_pad, x, y, jnp.asarray(off, x.dtype),
                                            [jnp.asarray(k) for k in kinks], pk.pts, pk.units))
  padding = np.setdiff1d(np.arange(pk.pad), pk.real)
  assert padding.size and not np.any(full[:, padding])


def test_r_sub_compiles_once_per_kink_bucket():
  """The slope gradient and its Jacobian are module-level jits of padded kink
  indices: states of one net with other kink pairs (same size bucket) reuse
  the compilation instead of tracing a fresh closure per call."""
  sizes = lambda: (stationarity._SLOPE_GRAD._cache_size(),
                   stationarity._SLOPE_JAC._cache_size())
  cfg, apply_fn, params, x, y = _kinked_net(seed=0)
  st = stationarity.stationarity(cfg, apply_fn, params, x, y, LOSS)
  assert st.n_kink == 1
  before = sizes()
  for seed in (3, 5):
    cfg, apply_fn, params, x, y = _kinked_net(seed=seed)
    st = stationarity.stationarity(cfg, apply_fn, params, x, y, LOSS)
    assert st.n_kink == 1 and np.nonzero(
        stationarity.kink_pairs(cfg, params, x, np.ones(12, bool))[0])[1][0] == 0
  assert sizes() == before


def test_r_sub_vanishes_at_a_hand_made_kink_point_where_r_does_not():
  """f(x) = relu(x_1) (d = 2, one unit, w1 = e_1, w2 = 1, relu*sqrt2, NTK).
  B = (1/2, 0), y = +1 and C = (c, 1/2), y = -1 with c (1 + c) = 1/4 balance
  the forces on w2 and on w1's first component; A = (0, 1 + c), y = +1 sits on
  the kink (z = 0, Delta = 1) and balances w1's second component with the
  ReLU slope 1/2. The usual slope 0 leaves a force (0, (1 + c)/2) on w1."""
  cfg = nets.NetConfig(d=2, width=1, depth=1)
  _, apply_fn = nets.make_net(cfg)
  params = [{"w": jnp.array([[1.0], [0.0]])}, {"w": jnp.array([[1.0]])}]
  c = (math.sqrt(2) - 1) / 2
  x = jnp.array([[0.0, 1 + c], [0.5, 0.0], [c, 0.5]])
  y = jnp.array([1.0, 1.0, -1.0])
  np.testing.assert_allclose(apply_fn(params, x), [0.0, 0.5, c], atol=1e-15)
  st = stationarity.stationarity(cfg, apply_fn, params, x, y, LOSS)
  assert st.n_unsat == 3 and st.n_kink == 1 and st.exact
  assert st.force_residual_smooth > 0.2
  assert st.force_residual < 1e-12
  # without the kink pair (tolerance below the exact 0 is impossible): r
  assert stationarity.force_residual(apply_fn, params, x, y, LOSS) == pytest.approx(
      st.force_residual_smooth, rel=1e-12)


def test_no_unsatisfied_point_gives_nan():
  cfg = nets.NetConfig(d=2, width=1, depth=1)
  _, apply_fn = nets.make_net(cfg)
  params = [{"w": jnp.array([[1.0], [0.0]])}, {"w": jnp.array([[4.0]])}]
  x = jnp.array([[1.0, 0.0]])
  st = stationarity.stationarity(cfg, apply_fn, params, x, jnp.array([1.0]), LOSS)
  assert st.n_unsat == 0 and math.isnan(st.force_residual)


def test_the_job_reports_the_force_balance_of_its_unsat_members(tmp_path):
  """summary.json: r_sub <= r for every healthy member with N_Delta > 0 (None
  for the sat ones), the same numbers as recomputed from the run directory."""
  import io as _io
  from lossland import experiment
  from lossland.experiments import job
  # a loose stall rule (5 % over 50 steps): a member stops jammed far from
  # force balance (class unbalanced), the others at max_steps
  values = dict(dataset="sphere", P=300, d=4, n_test=0, depth=2, width=12, n_seeds=3,
                max_steps=400, lr=0.02, jam_window=50, jam_rtol=0.05, plots=False,
                resume=False, out_dir=str(tmp_path))
  out = _io.StringIO()
  run_dir, s = job.run_ensemble_job(values, progress=False, stdout=out)
  assert s["kink_rtol"] == job.KINK_RTOL
  header = next(l for l in out.getvalue().splitlines() if l.lstrip().startswith("seed"))
  assert "r_sub" in header.split()
  ens = experiment.load_ensemble(run_dir)
  _, apply_fn = nets.make_net(ens.net)
  arrays = np.load(f"{run_dir}/arrays.npz")
  checked = 0
  for k, m in enumerate(s["members"]):
    if m["n_delta"] == 0 or m["class"] in ("dead", "diverged", "dead_points"):
      assert m["force_residual"] is None and m["scale_residual"] is None
      assert np.isnan(arrays["force_residual"][k]) and arrays["n_kink"][k] == -1
      assert np.isnan(arrays["scale_residual"][k])
      continue
    assert arrays["force_residual"][k] == m["force_residual"]
    assert arrays["force_residual_smooth"][k] == m["force_residual_smooth"]
    assert arrays["n_kink"][k] == m["n_kink"]
    assert arrays["scale_residual"][k] == m["scale_residual"]
    params = jax.tree_util.tree_map(lambda a: a[k], ens.params)
    assert m["scale_residual"] == pytest.approx(stationarity.scale_residual(
        apply_fn, params, ens.data.x_train, ens.data.y_train, LOSS), rel=1e-9)
    st = stationarity.stationarity(ens.net, apply_fn, params, ens.data.x_train,
                                   ens.data.y_train, LOSS, kink_rtol=job.KINK_RTOL)
    assert m["force_residual"] == pytest.approx(st.force_residual, rel=1e-9)
    assert m["force_residual_smooth"] == pytest.approx(st.force_residual_smooth, rel=1e-9)
    assert m["n_kink"] == st.n_kink and m["force_residual"] <= m["force_residual_smooth"]
    checked += 1
  assert checked >= 1  # P/N = 300/204: members stop with N_Delta > 0
  # issue 20: a member that stopped jammed is class jammed only if force-balanced
  assert s["jam_max_residual"] == job.defaults()["jam_max_residual"] == 1e-6
  stopped = [m for m in s["members"] if m["stop_reason"] == "jammed"
             and m["class"] in ("jammed", "unbalanced")]
  assert stopped
  for m in stopped:
    assert m["class"] == ("jammed" if m["force_residual"] <= 1e-6 else "unbalanced"), m
  assert s["member_class_counts"].get("unbalanced", 0) == sum(
      m["class"] == "unbalanced" for m in s["members"]) >= 1
  n_bal = s["member_class_counts"].get("jammed", 0)
  assert (f"force-balanced (r_sub <= 1e-06, class jammed): {n_bal} of the {len(stopped)} "
          "that stopped jammed") in out.getvalue()


def test_force_norm_sum_is_the_plain_sum_over_points_whatever_the_chunk():
  """The denominator of r against a plain loop over the points (one jax.grad
  per point), with chunks that divide P, that do not (the last one padded)
  and that exceed it."""
  cfg, apply_fn, params, x, y = _kinked_net(seed=2)
  delta = np.asarray(losses.margins(apply_fn(params, x), y, LOSS.epsilon))
  want = 0.0
  for mu in range(x.shape[0]):
    g = ravel_pytree(jax.grad(lambda p: apply_fn(p, x[mu:mu + 1])[0])(params))[0]
    want += abs(float(jax.grad(LOSS.fn)(delta[mu]))) * float(np.linalg.norm(g))
  for chunk in (1, 4, 5, 12, 256):
    got = stationarity.force_norm_sum(apply_fn, params, x, y, LOSS, chunk=chunk)
    assert got == pytest.approx(want, rel=1e-12), chunk
