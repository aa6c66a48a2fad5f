"""L-BFGS in the one training loop (optimizer="lbfgs"), starting from given params, the job's polish."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lossland import data, lbfgs, losses, nets, train

LOSS = losses.LossConfig()


def test_lbfgs_direction_is_two_loop_with_gamma_scaling():
  # the dense inverse-BFGS ground truth of both paths is in tests/test_lbfgs.py;
  # here: the trainer's direction is exactly two_loop with H0 = scaling() I,
  # -g with no pair, and a descent direction after a wrap-around (k > m)
  rng = np.random.default_rng(0)
  n, m = 7, 3
  A = rng.normal(size=(n, n))
  A = A @ A.T + n * np.eye(n)
  S, Y, rho = np.zeros((m, n)), np.zeros((m, n)), np.zeros(m)
  for j in range(5):
    s = rng.normal(size=n)
    S[j % m], Y[j % m], rho[j % m] = s, A @ s, 1 / (s @ A @ s)
  g, S, Y, rho = map(jnp.asarray, (rng.normal(size=n), S, Y, rho))
  for k in (jnp.int32(0), jnp.int32(5)):
    got = train.lbfgs_direction(g, S, Y, rho, k)
    want = lbfgs.two_loop(g, S, Y, rho, k, lbfgs.scaling(S, Y, rho, k))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  np.testing.assert_array_equal(np.asarray(train.lbfgs_direction(g, S, Y, rho, jnp.int32(0))),
                                -np.asarray(g))
  assert float(jnp.dot(g, train.lbfgs_direction(g, S, Y, rho, jnp.int32(5)))) < 0


def test_sat_when_over_parametrized():
  ds = data.sphere(jax.random.key(1), 10, 5)
  net = nets.NetConfig(d=5, width=64, depth=2)
  cfg = train.TrainConfig(optimizer="lbfgs", lr=0.1, max_steps=500)
  res = train.train_ensemble([0, 1], ds, net, LOSS, cfg)
  assert res.stop_reasons == ["sat", "sat"], (res.stop_reasons, res.final["n_delta"])
  assert np.all(res.final["loss"] == 0) and np.all(res.steps < 100)


def _hinge_linear():
  # f = x.w / sqrt(d), P = 60 > d = 4 random points: the quadratic hinge loss is
  # convex and C1 in w with a unique minimum, never sat
  ds = data.sphere(jax.random.key(3), 60, 4)
  net = nets.NetConfig(d=4, width=1, depth=0)
  return ds, net


def _newton_hinge_minimum(ds):
  # semismooth Newton on the active set: w = argmin 1/(2P) sum_{Delta > 0} Delta^2
  X = np.asarray(ds.x_train) / 2.0
  y = np.asarray(ds.y_train)
  w = np.zeros(4)
  for _ in range(100):
    act = 1 - y * (X @ w) > 0
    Xa = X[act]
    w_new = np.linalg.solve(Xa.T @ Xa, Xa.T @ y[act])
    if np.array_equal(w_new, w):
      break
    w = w_new
  delta = 1 - y * (X @ w)
  return w, 0.5 * np.mean(np.maximum(delta, 0) ** 2)


def test_stops_jammed_at_the_minimum_of_a_convex_hinge_problem():
  ds, net = _hinge_linear()
  w_ref, loss_ref = _newton_hinge_minimum(ds)
  cfg = train.TrainConfig(optimizer="lbfgs", lr=0.1, max_steps=2000, jam_window=200,
                          jam_rtol=1e-12)
  res = train.train_ensemble([0, 1], ds, net, LOSS, cfg)
  assert res.stop_reasons == ["jammed", "jammed"]
  assert np.all(res.steps < 2000)
  np.testing.assert_allclose(res.final["loss"], loss_ref, rtol=1e-10)
  for k in range(2):
    np.testing.assert_allclose(np.asarray(res.params[0]["w"][k, :, 0]), w_ref, rtol=1e-6,
                               atol=1e-8)


def test_stops_jammed_at_a_minimum_of_an_under_parametrized_relu_net():
  # N = 12 weights, P = 300: jammed; plain gradient descent from the stop
  # cannot lower the loss (a local minimum) and every point stays in place
  ds = data.sphere(jax.random.key(2), 300, 5)
  net = nets.NetConfig(d=5, width=2, depth=1)
  cfg = train.TrainConfig(optimizer="lbfgs", lr=0.1, max_steps=5000, jam_window=500,
                          jam_rtol=1e-12)
  res = train.train_ensemble([0, 1], ds, net, LOSS, cfg)
  assert res.stop_reasons == ["jammed", "jammed"], res.stop_reasons
  assert np.all(res.final["n_delta"] > 0.1 * 12)
  _, apply_fn = nets.make_net(net)
  loss_fn = lambda p: jnp.mean(losses.quadratic_hinge(
      losses.margins(apply_fn(p, ds.x_train), ds.y_train, 1.0)))

  @jax.jit
  def lowest_after_gd(p, lr):   # 300 plain GD steps: the lowest loss seen
    def body(_, c):
      q, low = c
      l, g = jax.value_and_grad(loss_fn)(q)
      return jax.tree_util.tree_map(lambda a, b: a - lr * b, q, g), jnp.minimum(low, l)
    q, low = jax.lax.fori_loop(0, 300, body, (p, loss_fn(p)))
    return jnp.minimum(low, loss_fn(q))
  for k in range(2):
    p = jax.tree_util.tree_map(lambda a: a[k], res.params)
    l0 = float(loss_fn(p))
    np.testing.assert_allclose(l0, res.final["loss"][k], rtol=1e-14)
    lowest = min(float(lowest_after_gd(p, lr)) for lr in (1e-1, 1e-2, 1e-3))
    assert lowest >= l0 * (1 - 1e-8), (l0, lowest)


def test_members_equal_one_by_one_and_resume_is_bitwise(tmp_path):
  ds = data.sphere(jax.random.key(4), 40, 5)
  net = nets.NetConfig(d=5, width=4, depth=2)
  cfg = train.TrainConfig(optimizer="lbfgs", lr=0.1, max_steps=200, chunk_steps=64,
                          jam_window=100, jam_rtol=1e-12)
  n_full = []
  ens = train.train_ensemble([0, 1], ds, net, LOSS, cfg, progress_fn=lambda *a: n_full.append(1))
  # member k = seed k alone up to rounding (batched and unbatched matmuls round
  # differently; line-search decisions amplify it over long runs, so compare
  # the first 40 evaluations)
  short = dataclasses.replace(cfg, max_steps=40)
  ens40 = train.train_ensemble([0, 1], ds, net, LOSS, short)
  for k in range(2):
    one = train.train_ensemble([k], ds, net, LOSS, short)
    assert one.steps[0] == ens40.steps[k] and one.stop_reasons[0] == ens40.stop_reasons[k]
    np.testing.assert_allclose(one.f_train[0], ens40.f_train[k], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(one.history["lr"][0], ens40.history["lr"][k], rtol=1e-7)
  path = str(tmp_path / "ckpt.npz")

  class Stop(Exception):
    pass
  calls = []

  def bomb(*_):
    calls.append(1)
    if len(calls) == 6:
      raise Stop
  with pytest.raises(Stop):
    train.train_ensemble([0, 1], ds, net, LOSS, cfg, progress_fn=bomb,
                         checkpoint_path=path, checkpoint_every=0)
  n_resumed = []
  res = train.train_ensemble([0, 1], ds, net, LOSS, cfg, checkpoint_path=path,
                             checkpoint_every=0, progress_fn=lambda *a: n_resumed.append(1))
  assert len(n_resumed) < len(n_full)   # it resumed from the checkpoint
  np.testing.assert_array_equal(res.steps, ens.steps)
  np.testing.assert_array_equal(res.f_train, ens.f_train)
  for m in train.MEASUREMENTS:
    np.testing.assert_array_equal(res.history[m], ens.history[m])


def test_start_continues_a_run():
  # SGD 100 steps, then 100 more from the result = 200 steps at once
  ds = data.sphere(jax.random.key(5), 30, 5)
  net = nets.NetConfig(d=5, width=6, depth=2)
  cfg = train.TrainConfig(optimizer="sgd", lr=0.05, max_steps=200, stop_at_sat=False,
                          jam_window=1000)
  full = train.train_ensemble([0, 1], ds, net, LOSS, cfg)
  half = train.train_ensemble([0, 1], ds, net, LOSS, dataclasses.replace(cfg, max_steps=100))
  rest = train.train_ensemble([0, 1], ds, net, LOSS, dataclasses.replace(cfg, max_steps=100),
                              start=(half.params, half.params0))
  np.testing.assert_allclose(rest.f_train, full.f_train, rtol=1e-12, atol=1e-14)
  for a, b in zip(jax.tree_util.tree_leaves(rest.params0),
                  jax.tree_util.tree_leaves(full.params0)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(rest.final["w_dist"], full.final["w_dist"], rtol=1e-12)
  with pytest.raises(ValueError, match="leading axis"):
    train.train_ensemble([0], ds, net, LOSS, cfg, start=(half.params, half.params0))


def test_stuck_is_jammed_only_with_unsatisfied_points():
  cfg = train.TrainConfig(optimizer="lbfgs", jam_window=100)
  args = dict(t=7, running=True, loss=0.5, loss0=1.0, finite_grad=True, nd=3,
              checked=True, best=0.5, jam_ref=0.6, lr=1.0, cfg=cfg)
  assert int(train.stop_code(**args)) == train.RUNNING
  assert int(train.stop_code(stuck=True, **args)) == train.JAMMED
  assert int(train.stop_code(stuck=True, **dict(args, nd=0))) == train.SAT
  assert int(train.stop_code(stuck=True, **dict(args, t=cfg.max_steps))) == train.MAX_STEPS


@pytest.mark.parametrize("bad", [
    dict(optimizer="lbfgs", lbfgs_memory=0),
    dict(optimizer="lbfgs", ls_c1=0.9, ls_c2=0.5),
    dict(optimizer="lbfgs", ls_c2=1.0),
    dict(optimizer="lbfgs", ls_min_step=0.0),
    dict(optimizer="lbfgs", schedule="step"),
    dict(optimizer="lbfgs", batch_size=8),
])
def test_bad_lbfgs_configs(bad):
  with pytest.raises(ValueError):
    train.TrainConfig(**bad)


def test_job_polish_continues_only_unfinished_members(tmp_path):
  from lossland import job
  v = dict(dataset="sphere", P=80, d=5, depth=1, width=3, n_seeds=2, max_steps=300,
           lr=1e-2, n_test=0, out_dir=str(tmp_path), plots=False, polish="lbfgs",
           polish_steps=400, polish_jam_window=100, polish_jam_rtol=1e-9)
  with open("/dev/null", "w") as null:
    _, s = job.run_ensemble_job(v, progress=False, stdout=null)
    _, s0 = job.run_ensemble_job(dict(v, polish="none"), progress=False, stdout=null)
  assert s["n_polished"] == 2
  for m, m0 in zip(s["members"], s0["members"]):
    assert m["polished"] and m["stop_before_polish"] == m0["stop_reason"] == "max_steps"
    assert m["loss_before_polish"] == m0["loss"]
    assert m["steps"] == m0["steps"] + m["polish_steps"]
    assert m["loss"] < m0["loss"]
  with pytest.raises(job.JobError, match="polish"):
    job.validate(dict(v, batch_size=8))
  with pytest.raises(job.JobError, match="polish_steps"):
    job.validate(dict(v, polish_steps=0))
