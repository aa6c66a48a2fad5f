"""``--scale_to_sat``: members that classify every training point, scaled to
sat along their output scale (lossland.train.finish.scale_to_sat)."""
import dataclasses
import io as stdio
import math
import os

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

jax.config.update("jax_enable_x64", True)

from lossland import experiment, io, nets, stationarity  # noqa: E402
from lossland.experiments import batch, finish_from, job  # noqa: E402
from lossland.optim import kink_newton  # noqa: E402
from lossland.train import finish  # noqa: E402
import cli_runner  # noqa: E402

# Adam stopped by its step budget at 60 steps: three of the six members
# classify every point with loss > 0, three misclassify some.
BASE = dict(dataset="digits", P=60, d=6, depth=2, width=8, n_seeds=6, max_steps=60,
            plots=False, resume=False)


def _quiet():
  return stdio.StringIO()


def _run(tmp_path, name, **kw):
  return job.run_ensemble_job(dict(BASE, out_dir=str(tmp_path / name), **kw),
                              progress=False, stdout=_quiet())


def test_sat_scale_is_the_least_factor_that_satisfies_every_margin():
  b = np.array([0.5, 0.25, 2.0])
  a = np.ones(3)
  c = stationarity.sat_scale(b, a)
  assert c == 4.0
  assert np.all(a - c * b <= 0) and np.max(a - c * b) == 0      # tight at one point
  assert np.max(a - 0.999 * c * b) > 0                          # any less leaves it
  off = np.array([0.3, -0.1, 0.0])                              # f = c g - off, y = 1
  assert stationarity.sat_scale(b, 1.0 + off) == pytest.approx(max((1 + off) / b))
  assert stationarity.sat_scale(np.array([2.0, 4.0]), np.ones(2)) == 0.5  # sat already
  for bad in ([0.5, -0.1, 2.0], [0.5, 0.0, 2.0], [0.5, np.nan, 2.0], []):
    assert math.isnan(stationarity.sat_scale(np.array(bad), np.ones(len(bad))))
  assert math.isnan(stationarity.sat_scale(b, np.array([1.0, np.inf, 1.0])))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  """The same members without and with the step."""
  tmp = tmp_path_factory.mktemp("scale")
  return _run(tmp, "off"), _run(tmp, "on", scale_to_sat=True)


def test_members_that_classify_every_point_are_scaled_to_sat(pair):
  """A member with loss > 0 and no misclassified point becomes sat: its last
  layer (weights and bias) times c, every other layer as it was, its outputs
  times c, every margin satisfied and one tight (the least c), its test
  error unchanged; members with a misclassified point stay as they were."""
  (off_dir, off), (on_dir, on) = pair
  a, b = experiment.load_ensemble(off_dir), experiment.load_ensemble(on_dir)
  y = np.asarray(a.data.y_train)
  n_scaled = n_kept = 0
  for k, (m0, m1) in enumerate(zip(off["members"], on["members"])):
    (p0, _), (p1, _) = a.member(k), b.member(k)
    f0 = np.asarray(nets.make_net(a.net)[1](p0, a.data.x_train))
    f1 = np.asarray(nets.make_net(b.net)[1](p1, b.data.x_train))
    if m0["loss"] > 0 and m0["train_error"] == 0:
      n_scaled += 1
      c = m1["sat_scale"]
      assert c > 1 and m0["class"] == "not_converged" and m1["class"] == "sat"
      assert m1["loss"] == 0 and m1["n_delta"] == 0 and m1["test_error"] == m0["test_error"]
      for l0, l1 in zip(p0[:-1], p1[:-1]):
        np.testing.assert_array_equal(l0["w"], l1["w"])
      np.testing.assert_array_equal(c * p0[-1]["w"], p1[-1]["w"])
      np.testing.assert_allclose(f1, c * f0, rtol=1e-12)
      np.testing.assert_allclose(io.load_run(on_dir).arrays["f_train"][k], f1, rtol=1e-12)
      margins = y * f1
      assert margins.min() >= 1.0 and margins.min() - 1.0 < 1e-12
    else:
      n_kept += 1
      assert m1["sat_scale"] is None and m1["class"] == m0["class"]
      np.testing.assert_array_equal(f0, f1)
      assert m1["loss"] == m0["loss"]
  assert n_scaled >= 2 and n_kept >= 2, (n_scaled, n_kept)
  assert on["n_scaled_to_sat"] == n_scaled and "n_scaled_to_sat" not in off
  assert on["member_class_counts"]["sat"] == off["member_class_counts"].get("sat", 0) + n_scaled
  scales = io.load_run(on_dir).arrays["sat_scale"]
  want = [np.nan if m["sat_scale"] is None else m["sat_scale"] for m in on["members"]]
  np.testing.assert_array_equal(scales, want)
  assert "sat_scale" not in io.load_run(off_dir).arrays


def test_the_report_says_how_many_were_scaled(tmp_path):
  out = _quiet()
  _, s = job.run_ensemble_job(dict(BASE, n_seeds=2, out_dir=str(tmp_path)), progress=False,
                              stdout=out)
  assert "scaled to sat" not in out.getvalue()
  out = _quiet()
  _, s = job.run_ensemble_job(dict(BASE, n_seeds=2, scale_to_sat=True,
                                   out_dir=str(tmp_path)), progress=False, stdout=out)
  assert s["n_scaled_to_sat"] >= 1
  assert (f"scaled to sat: {s['n_scaled_to_sat']} member(s) that classify every training "
          "point" in out.getvalue())


def test_a_net_trained_as_f_minus_f0_is_scaled_on_its_own_output(tmp_path):
  """With --subtract_init only f(w) scales: c satisfies the margins of
  c f(w) - f(w0), every one of them, one tight."""
  run_dir, s = _run(tmp_path, "sub", subtract_init=True, max_steps=150, scale_to_sat=True)
  ens = experiment.load_ensemble(run_dir)
  apply_fn = nets.make_net(ens.net)[1]
  y = np.asarray(ens.data.y_train)
  scaled = [k for k, m in enumerate(s["members"]) if m["sat_scale"] is not None]
  assert scaled
  for k in scaled:
    p, p0 = ens.member(k)
    margins = y * (np.asarray(apply_fn(p, ens.data.x_train))
                   - np.asarray(apply_fn(p0, ens.data.x_train)))
    assert margins.min() >= 1.0 and margins.min() - 1.0 < 1e-12
    assert s["members"][k]["class"] == "sat"


def test_factors_of_two_stages_multiply(monkeypatch):
  """A member scaled after the polish and again after the finish has the
  product of the two factors; off, the stage returns res and None."""
  import lossland.train.finish as fin
  monkeypatch.setattr(fin, "scale_to_sat",
                      lambda res, *a, **k: (res, [1.5, 3.0, np.nan, np.nan]))
  v = job.validate(dict(BASE, scale_to_sat=True))
  j = job.Job(None, None, None, None, 0, [0, 1, 2, 3], None)
  _, got = job.scale_stage(v, j, "res", None, before=[2.0, np.nan, 4.0, np.nan])
  np.testing.assert_array_equal(got, [3.0, 3.0, 4.0, np.nan])
  assert job.scale_stage(dict(v, scale_to_sat=False), j, "res", None) == ("res", None)


def test_a_continued_finish_keeps_the_runs_factors(pair):
  """--finish_from reads RUN's sat_scale, which the continued run carries."""
  _, (on_dir, on) = pair
  v = job.validate(dict(BASE, scale_to_sat=True, finish="newton", finish_from=on_dir,
                        out_dir="unused"))
  prev = finish_from.load(v, job.prepare_job(v, lambda *a: None))
  want = [np.nan if m["sat_scale"] is None else m["sat_scale"] for m in on["members"]]
  np.testing.assert_array_equal(prev.sat_scales, want)


def test_jobs_in_one_program_scale_as_each_alone(tmp_path):
  vals = [dict(BASE, scale_to_sat=True, n_seeds=3, out_dir=str(tmp_path / "b0")),
          dict(BASE, scale_to_sat=True, n_seeds=3, seed=3, out_dir=str(tmp_path / "b1"))]
  out = batch.run_ensemble_jobs(vals, progress=False, stdout=_quiet())
  n = 0
  for v, (_, summary) in zip(vals, out):
    _, ref = job.run_ensemble_job(dict(v, out_dir=v["out_dir"] + "_alone"), progress=False,
                                  stdout=_quiet())
    for m, r in zip(summary["members"], ref["members"]):
      assert m["class"] == r["class"]
      assert (m["sat_scale"] is None) == (r["sat_scale"] is None)
      if r["sat_scale"] is not None:
        n += 1
        assert m["sat_scale"] == pytest.approx(r["sat_scale"], rel=1e-6)
  assert n >= 1


def test_a_run_without_the_step_continued_with_it(pair, tmp_path):
  """--finish_from RUN --scale_to_sat on a RUN without the step (the option
  may differ): the members the continued finish leaves classifying every
  point are scaled to sat; continuing that run without the step keeps its
  factors."""
  (off_dir, off), _ = pair
  run_dir, s = _run(tmp_path, "cont", finish="newton", finish_iters=1, finish_from=off_dir,
                    scale_to_sat=True)
  ens = experiment.load_ensemble(run_dir)
  y = np.asarray(ens.data.y_train)
  scaled = [m["sat_scale"] is not None for m in s["members"]]
  assert sum(scaled) >= 2
  for k, m in enumerate(s["members"]):
    p, _ = ens.member(k)
    margins = y * np.asarray(nets.make_net(ens.net)[1](p, ens.data.x_train))
    if scaled[k]:
      assert m["class"] == "sat" and margins.min() >= 1.0 > margins.min() - 1e-12
    elif m["n_delta"] > 0:
      assert margins.min() <= 0   # a misclassified (or dead) point: not scaled
  _, again = _run(tmp_path, "again", finish="newton", finish_iters=1, finish_from=run_dir)
  assert [m["sat_scale"] for m in again["members"]] == [m["sat_scale"] for m in s["members"]]


def test_the_newton_finish_stops_where_the_net_classifies_every_point(pair):
  """stop_separable: the finish stops "separable" at the first accepted
  step after which y g > 0 everywhere, on the path it takes without the
  stop (same iterate), one iteration after a point was still
  misclassified; a net that classifies every point stops at entry."""
  (off_dir, off), _ = pair
  ens = experiment.load_ensemble(off_dir)
  x, y = ens.data.x_train, np.asarray(ens.data.y_train)
  apply_fn = nets.make_net(ens.net)[1]
  margin = lambda p: float(np.min(y * np.asarray(apply_fn(p, x))))
  flat = lambda p: ravel_pytree(p)[0]
  n = 0
  for k, m in enumerate(off["members"]):
    if m["train_error"] == 0 or m["class"] == "dead_points":
      continue
    p, _ = ens.member(k)
    got = kink_newton.finish(ens.net, p, x, y, ens.loss, max_iter=300, stop_separable=True)
    assert got.reason == "separable" and margin(got.params) > 0, got.reason
    same = kink_newton.finish(ens.net, p, x, y, ens.loss, max_iter=got.n_iter)
    np.testing.assert_array_equal(flat(same.params), flat(got.params))
    if got.n_iter > 1:
      before = kink_newton.finish(ens.net, p, x, y, ens.loss, max_iter=got.n_iter - 1)
      assert margin(before.params) <= 0
    again = kink_newton.finish(ens.net, got.params, x, y, ens.loss, stop_separable=True)
    assert again.reason == "separable" and again.n_iter == 0
    n += 1
  assert n >= 2


def test_the_job_finish_hands_separable_members_to_the_scaling(tmp_path):
  """--finish newton --scale_to_sat: members the finish leaves classifying
  every point (finish_reason "separable") end sat, scaled."""
  _, s = _run(tmp_path, "fin", finish="newton", finish_iters=300, scale_to_sat=True)
  sep = [m for m in s["members"] if m.get("finish_reason") == "separable"]
  assert len(sep) >= 2
  assert all(m["class"] == "sat" and m["sat_scale"] > 1 for m in sep)


def test_only_hinge_losses_scale_and_bad_use_exits_2(tmp_path, pair):
  """A loss that is not 0 wherever the margins hold has no sat state to
  scale to: the option is refused with one line and exit 2, nothing
  written, and scale_to_sat leaves such an ensemble alone. Runs made
  before the option keep their checkpoint identity (off is the old
  behaviour)."""
  r = cli_runner.run("lossland.scripts.ensemble", ["--out_dir", str(tmp_path), "--scale_to_sat",
                     "--loss", "squared", "--P", "30", "--d", "4"], timeout=300,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert r.returncode == 2, r.stderr
  err = r.stderr.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: --scale_to_sat needs a hinge loss"), err
  assert not os.listdir(tmp_path)
  job.validate(dict(BASE, scale_to_sat=True, loss="hinge"))
  base = job.validate(dict(BASE))
  assert "scale_to_sat" not in job.key_values(base)
  assert job.key_values(dict(base, scale_to_sat=True))["scale_to_sat"] is True
  (off_dir, off), _ = pair
  v = job.validate(dict(BASE, finish="newton", finish_from=off_dir, out_dir="unused"))
  j = job.prepare_job(v, lambda *a: None)
  res = finish_from.load(v, j).res
  squared = dataclasses.replace(j.loss, name="squared")
  same, scales = finish.scale_to_sat(res, j.ds, j.net, squared, j.cfg)
  assert same is res and all(math.isnan(c) for c in scales)
  _, scales = finish.scale_to_sat(res, j.ds, j.net, j.loss, j.cfg)
  assert sum(math.isfinite(c) for c in scales) >= 2
