import os

import numpy as np
import pytest

from lossland import io, observables


def test_ensemble_summary_against_plain_loops():
  rng = np.random.default_rng(0)
  f = rng.normal(size=(5, 50))
  y = np.where(rng.random(50) < 0.5, -1.0, 1.0)
  s = observables.ensemble_summary(f, y)
  member = [np.mean([y[i] * f[k, i] <= 0 for i in range(50)]) for k in range(5)]
  np.testing.assert_allclose(s["member_test_errors"], member)
  assert s["mean_test_error"] == pytest.approx(np.mean(member))
  fbar = [np.mean(f[:, i]) for i in range(50)]
  assert s["ensemble_test_error"] == pytest.approx(np.mean([y[i] * fbar[i] <= 0 for i in range(50)]))
  # The unbiased estimator over members: 1/(K-1) sum_k, averaged over points.
  var = np.mean([sum((f[k, i] - fbar[i]) ** 2 for k in range(5)) / 4 for i in range(50)])
  assert s["output_variance"] == pytest.approx(var)
  assert np.isnan(observables.output_variance(f[:1]))


def test_ensemble_of_identical_members_has_no_variance():
  f = np.tile(np.linspace(-1, 1, 11), (3, 1))
  y = np.ones(11)
  s = observables.ensemble_summary(f, y)
  assert s["output_variance"] == pytest.approx(0.0, abs=1e-25)
  assert s["ensemble_test_error"] == s["mean_test_error"]


def test_n_delta_and_error_conventions():
  f = np.array([2.0, 1.0, 0.5, 0.0, -1.0])
  y = np.ones(5)
  assert int(observables.n_delta(f, y, 1.0)) == 3  # Delta = 1 - f > 0 strictly
  assert float(observables.error(f, y)) == pytest.approx(2 / 5)  # f = 0 counts as an error


def test_delta_histograms_normalization():
  rng = np.random.default_rng(1)
  delta = np.concatenate([rng.uniform(1e-3, 1, 300), -rng.uniform(1e-3, 1, 700)])
  bins = observables.log_bins(1e-4, 10, 50)
  h = observables.delta_histograms(delta, loss=0.25, bins=bins)
  widths = np.diff(bins)
  assert np.sum(h["positive"] * widths) == pytest.approx(0.3)
  assert np.sum(h["negative"] * widths) == pytest.approx(0.7)
  # positive side is rescaled by sqrt(loss) = 0.5
  assert h["n_positive"] == 300
  centers = np.sqrt(bins[1:] * bins[:-1])
  mean_pos = np.sum(centers * h["positive"] * widths) / 0.3
  assert 0.9 < mean_pos < 1.1  # E[U(0,1)] / 0.5 = 1 up to binning (0.5 if not rescaled)


def test_run_dirs_are_atomic(tmp_path):
  with pytest.raises(RuntimeError):
    with io.new_run(str(tmp_path), "x", {"a": 1}) as w:
      w.write_json("summary.json", {})
      raise RuntimeError("boom")
  # Nothing left behind, not even the <root>/x folder this call created.
  assert not (tmp_path / "x").exists()
  with io.new_run(str(tmp_path), "x", {"a": 1}) as w:
    w.log([{"step": 0, "loss": float("nan")}])
    w.save_arrays(a=np.arange(3))
    w.write_json("summary.json", {"v": np.float64(1.5), "inf": float("inf")})
  run = io.load_run(w.final_path)
  assert run.summary == {"v": 1.5, "inf": "inf"}
  assert run.metrics() == [{"step": 0, "loss": None}]
  np.testing.assert_array_equal(run.arrays["a"], np.arange(3))
  with pytest.raises(io.RunError, match="not found"):
    io.load_run(str(tmp_path / "nope"))
  (tmp_path / "partial").mkdir()
  (tmp_path / "partial" / "config.json").write_text("{}")
  with pytest.raises(io.RunError, match="incomplete"):
    io.load_run(str(tmp_path / "partial"))


def test_member_classes_by_construction():
  """One member per class and the precedence between them (N = 100 weights)."""
  P, N = 6, 100
  rows = [  # (stop reason, N_delta, max Delta, expected class)
      ("diverged", 3, 0.5, "diverged"),       # by stop reason
      ("jammed", 30, 0.5, "diverged"),        # non-finite outputs beat the rest
      ("jammed", 6, 1.0, "dead"),             # f = 0 everywhere: dead, not jammed
      ("sat", 0, -0.1, "sat"),
      ("max_steps", 0, -0.1, "sat"),          # N_delta = 0 beats max_steps
      ("max_steps", 2, 1e-8, "limbo"),        # few points, Delta at rounding level
      ("jammed", 4, 1e-7, "limbo"),
      ("max_steps", 5, 1e-8, "not_converged"),  # 5 > limbo_max_nd
      ("max_steps", 3, 1e-3, "not_converged"),  # Delta too large for limbo
      ("jammed", 11, 0.2, "jammed"),          # N_delta > 0.1 N
      ("jammed", 10, 0.2, "stalled"),         # N_delta = 0.1 N is not > 0.1 N
      ("jammed", 30, 1.0, "dead_points"),     # an unsatisfied point has f = 0
  ]
  f = np.ones((len(rows), P))
  f[1, 2] = np.nan
  f[2] = 0.0
  f[11, :2] = 0.0   # two dead points (Delta = 1), the others satisfied (y f = 1)
  reasons = [r[0] for r in rows]
  nd = np.array([r[1] for r in rows])
  md = np.array([r[2] for r in rows])
  y = np.ones(P)
  got = observables.member_classes(reasons, nd, md, f, N, y_train=y)
  assert got == [r[3] for r in rows]
  # every class but unbalanced, which only apply_force_balance gives
  assert set(got) == set(observables.MEMBER_CLASSES) - {"unbalanced"}
  # without the labels there is no dead-point test (the old classes)
  assert observables.member_classes(reasons[11:], nd[11:], md[11:], f[11:], N) == ["jammed"]
  # The thresholds are arguments.
  assert observables.member_classes(["max_steps"], [5], [1e-8], f[:1], N,
                                    limbo_max_nd=5) == ["limbo"]
  assert observables.member_classes(["max_steps"], [2], [1e-5], f[:1], N,
                                    limbo_delta=1e-4) == ["limbo"]
  assert observables.member_classes(["diverged"], [0], [0.0], f[:1], N) == ["diverged"]


def test_work_fraction_counts_members_not_steps():
  from lossland import job
  # 19 of 20 members done, the last one at step 10 of 1000: ~95%, not 1%.
  assert job.work_fraction(10, 1000, 1, 19, 20) == pytest.approx((19 + 0.01) / 20)
  assert job.work_fraction(0, 1000, 20, 0, 20) == 0.0
  assert job.work_fraction(1000, 1000, 0, 20, 20) == 1.0
  # groups: 4 done, 4 running half-way, 12 not started
  assert job.work_fraction(50, 100, 4, 4, 20) == pytest.approx(6 / 20)


def test_n_delta_of_an_ensemble_is_per_member():
  f = np.array([[2.0, 1.0, 0.5], [0.0, -1.0, 3.0]])
  y = np.array([1.0, -1.0, 1.0])
  # Delta = 1 - y f: member 0 [-1, 2, 0.5] -> 2; member 1 [1, 0, -2] -> 1 (0 is satisfied)
  np.testing.assert_array_equal(observables.n_delta(f, y, 1.0), [2, 1])
  np.testing.assert_array_equal(observables.n_delta(f, y, 0.0), [1, 0])


@pytest.mark.parametrize("margin,eps", [(None, 1.0), (0.25, 0.25)])
def test_delta_distribution_plot_uses_the_runs_margin(tmp_path, monkeypatch, margin, eps):
  """plots reads the run through io and histograms Delta = eps - y f of the
  healthy members only, with eps from the run's loss config."""
  from lossland.plots import ensemble as plots
  f = np.array([[0.5, -0.2, 2.0], [0.1, 0.3, -0.4], [0.0, 0.0, 0.0]])
  y = np.array([1.0, -1.0, 1.0])
  with io.new_run(str(tmp_path), "ensemble", {},
                  loss={"name": "quadratic_hinge", "margin": margin, "scale": 1.0}) as w:
    w.write_json("summary.json", {"members": [{"class": c} for c in
                                              ("jammed", "sat", "dead")]})
    w.save_arrays(y_train=y, f_train=f, final_loss=np.array([0.3, 0.0, 0.5]))
  seen = []
  orig = observables.delta_histograms
  monkeypatch.setattr(observables, "delta_histograms",
                      lambda d, loss, bins: seen.append((np.asarray(d), loss)) or
                      orig(d, loss, bins))
  path = plots.plot_delta_distribution(w.final_path)
  assert os.path.getsize(path) > 1000
  assert len(seen) == 2  # the dead member is left out
  for k, (delta, loss) in enumerate(seen):
    np.testing.assert_allclose(delta, [eps - y[i] * f[k, i] for i in range(3)])
    assert loss == [0.3, 0.0][k]


def test_dead_points_class_needs_an_unsatisfied_dead_point():
  """Delta = eps - y f by hand: one unsatisfied dead point (f = 0 exactly)
  makes the class, whatever the live points do."""
  y = np.array([1.0, -1.0, 1.0, -1.0])
  f = np.array([[0.0, 0.0, 2.0, -1.5],     # two dead points, the rest satisfied
                [0.0, -1.2, 0.5, -1.0],    # a dead point and a live unsatisfied one
                [0.5, -2.0, 1e-300, -3.0],  # f tiny but not 0: live; no dead point
                [0.0, -2.0, 1.0, -3.0]])   # one dead point
  nd = [2, 2, 2, 1]
  got = observables.member_classes(["jammed"] * 4, nd, [1.0] * 4, f, 10, y_train=y)
  assert got == ["dead_points", "dead_points", "jammed", "dead_points"]
  np.testing.assert_array_equal(observables.unsatisfied_dead_points(f, y), [2, 1, 0, 1])
  # epsilon = 2: a dead point that is satisfied does not count (none can be:
  # y f = 0 < 2); a member whose unsatisfied points are all live stays
  f2 = np.array([[0.5, -2.5, 3.0, -2.0], [0.0, -2.5, 3.0, -2.0]])
  got2 = observables.member_classes(["max_steps"] * 2, [1, 1], [2.0, 2.0], f2, 10,
                                    y_train=y, epsilon=2.0)
  assert got2 == ["not_converged", "dead_points"]
  assert "dead_points" in observables.UNHEALTHY


def test_dead_points_with_the_mask_given():
  """A net with biases: dead points have f = b (not 0); the mask decides."""
  y = np.array([1.0, -1.0, 1.0, -1.0])
  f = np.array([[0.3, 0.3, 2.0, -1.5],     # points 0, 1 unsatisfied, both dead
                [0.3, 0.3, 2.0, -1.5],     # same outputs, point 0 dead, point 1 live
                [1.5, 0.3, 2.0, -1.5],     # the dead point 0 is satisfied (y f = 1.5)
                [0.3, 0.3, 0.3, 0.3]])     # dead everywhere: a dead net
  dead = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], bool)
  nd = [2, 2, 1, 4]
  got = observables.member_classes(["jammed"] * 4, nd, [1.0] * 4, f, 30, y_train=y,
                                   dead_points=dead)
  assert got == ["dead_points", "dead_points", "stalled", "dead"]
  # without the mask none of them has f = 0: nothing is dead
  got = observables.member_classes(["jammed"] * 4, nd, [1.0] * 4, f, 30, y_train=y)
  assert got == ["stalled", "stalled", "stalled", "jammed"]


@pytest.mark.parametrize("cls,r,threshold,want", [
    ("jammed", 1e-8, 1e-6, "jammed"),
    ("jammed", 1e-6, 1e-6, "jammed"),          # at the threshold: balanced
    ("jammed", 2e-6, 1e-6, "unbalanced"),
    ("jammed", None, 1e-6, "unbalanced"),      # not measured: not shown to be a minimum
    ("jammed", float("nan"), 1e-6, "unbalanced"),
    ("jammed", 5e-3, None, "jammed"),          # no criterion
    ("sat", None, 1e-6, "sat"),
    ("stalled", 5e-3, 1e-6, "stalled"),
    ("not_converged", 5e-3, 1e-6, "not_converged"),
    ("dead_points", 5e-3, 1e-6, "dead_points"),
])
def test_apply_force_balance(cls, r, threshold, want):
  assert observables.apply_force_balance([cls], [r], threshold) == [want]
  assert "unbalanced" in observables.MEMBER_CLASSES
  assert "unbalanced" not in observables.UNHEALTHY


@pytest.mark.parametrize("cls,r,finished,want", [
    ("not_converged", 1e-8, True, "jammed"),          # finished to balance: a jammed minimum
    ("not_converged", 1e-6, True, "jammed"),
    ("not_converged", 2e-6, True, "not_converged"),   # the finish did not close it
    ("not_converged", None, True, "not_converged"),
    ("not_converged", 1e-8, False, "not_converged"),  # never finished (or N_Delta <= 0.1 N)
    ("jammed", 1e-8, True, "jammed"),
    ("jammed", 2e-6, True, "unbalanced"),
    ("stalled", 1e-8, True, "stalled"),
    ("dead_points", 1e-8, True, "dead_points"),
])
def test_a_finished_member_out_of_steps_is_jammed_only_when_balanced(cls, r, finished, want):
  assert observables.apply_force_balance([cls], [r], 1e-6, [finished]) == [want]
  assert observables.apply_force_balance([cls], [r], None, [finished]) == [cls]


@pytest.mark.parametrize("cls,r,threshold,finished,want", [
    # a Newton finish that ran out of iterations was still descending: r_sub
    # at its stop is a snapshot (docs/jamming.md, twelfth session)
    ("jammed", 3e-7, 1e-6, True, "unbalanced"),
    ("jammed", 1e-12, 1e-6, True, "unbalanced"),
    ("jammed", 3e-7, None, True, "unbalanced"),        # no r_sub criterion: the rule holds
    ("not_converged", 3e-7, 1e-6, True, "not_converged"),
    ("not_converged", 3e-7, None, True, "not_converged"),
    ("stalled", 3e-7, 1e-6, True, "stalled"),
    ("sat", None, 1e-6, False, "sat"),
])
def test_a_member_whose_finish_was_still_descending_is_not_jammed(cls, r, threshold, finished,
                                                                   want):
  got = observables.apply_force_balance([cls], [r], threshold, [finished], [True])
  assert got == [want]
  # the same member with a finish that stopped on its own (converged, stuck)
  stopped = observables.apply_force_balance([cls], [r], threshold, [finished], [False])
  assert stopped == [{"not_converged": "jammed" if threshold else cls}.get(cls, cls)]
