"""The annealed finish (lossland.optim.anneal): the smoothed ReLU against its
closed-form bounds, the levels' parsing, a member that the polish left
jammed and the anneal satisfies exactly (loss 0, checked on the ReLU net), a
satisfied net that it never makes worse, and the job's option and bad input."""
import contextlib
import io
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lossland import data, losses, nets
from lossland.optim import anneal

LOSS = losses.LossConfig("quadratic_hinge")
QUIET = dict(progress=False, stdout=open(os.devnull, "w"))


def test_smoothed_relu_lies_within_its_bound_above_the_relu():
  z = jnp.linspace(-5.0, 5.0, 2001)
  for s in (0.3, 1.0, 7.0):
    for b in (1.0, 10.0, 1e3, 1e5):
      gap = np.asarray(anneal.smoothed_relu(z, s, b) - jax.nn.relu(z))
      assert gap.min() >= -1e-15
      assert gap.max() <= s * math.log(2) / b * (1 + 1e-12)
      assert gap[1000] == pytest.approx(s * math.log(2) / b, rel=1e-12)  # z = 0
  np.testing.assert_array_equal(anneal.smoothed_relu(z, 2.0, math.inf), jax.nn.relu(z))
  # a traced sharpness (the anneal's jitted loss) gives the same values
  f = jax.jit(lambda b: anneal.smoothed_relu(z, 0.5, b))
  np.testing.assert_allclose(f(30.0), anneal.smoothed_relu(z, 0.5, 30.0), rtol=1e-14)


def test_levels_parse_and_refuse_bad_ones():
  assert anneal.parse_levels("10,100,inf") == (10.0, 100.0, math.inf)
  assert anneal.parse_levels("1e3") == (1000.0,)
  for bad in ("", "a,b", "100,10", "10,10", "0,10", "-1,inf", "inf,10"):
    with pytest.raises(ValueError):
      anneal.parse_levels(bad)


def test_unit_scales_are_the_rms_preactivations():
  cfg = nets.NetConfig(d=3, width=5, depth=2, bias=True)
  init_fn, _ = nets.make_net(cfg)
  p = init_fn(jax.random.key(0))
  x = data.sphere(jax.random.key(1), 30, 3, n_test=0).x_train
  h1 = x @ p[0]["w"] / math.sqrt(3) + p[0]["b"]  # the NTK parametrization
  assert cfg.parametrization == "ntk"
  got = anneal.unit_scales(cfg, p, x)
  np.testing.assert_allclose(got[0], np.sqrt(np.mean(np.asarray(h1) ** 2, axis=0)), rtol=1e-12)
  p[1]["w"] = p[1]["w"].at[:, 2].set(0.0)
  p[1]["b"] = p[1]["b"].at[2].set(0.0)
  assert float(anneal.unit_scales(cfg, p, x)[1][2]) == 1.0  # a silent unit: scale 1


def test_anneal_never_makes_a_satisfied_net_worse():
  """A net at loss 0 (trained to sat): the result has loss 0, whatever the
  smoothed levels do on the way (entry params kept, or another sat point)."""
  from lossland import train
  cfg = nets.NetConfig(d=3, width=8, depth=1)
  ds = data.sphere(jax.random.key(2), 20, 3, n_test=0)
  tc = train.TrainConfig(optimizer="adam", lr=0.1, max_steps=3000)
  res = train.train_ensemble([0], ds, cfg, LOSS, tc)
  assert res.stop_reasons[0] == "sat"
  p = jax.tree_util.tree_map(lambda a: jnp.asarray(a[0]), res.params)
  out = anneal.anneal(cfg, p, ds.x_train, ds.y_train, LOSS, levels=(3.0, math.inf), iters=200)
  assert out.loss_before == 0.0 and out.loss_after == 0.0
  _, apply_fn = nets.make_net(cfg)
  delta = LOSS.epsilon - ds.y_train * apply_fn(out.params, ds.x_train)
  assert float(jnp.max(delta)) <= 0.0
  assert out.reason in ("sat", "kept")


_JOB = dict(dataset="sphere", depth=2, width=8, d=4, bias=True, P=120, seed=3, n_seeds=1,
            x64=True, max_steps=3000, lr=1e-2, optimizer="adam", polish="lbfgs",
            polish_steps=2000, polish_jam_window=200, plots=False)


def test_the_anneal_satisfies_a_member_the_polish_left_jammed(tmp_path):
  """L = 2, h = 8, d = 4 with biases, P = 120: member 3 stops jammed after
  Adam and the L-BFGS polish (N_Delta > 0); the anneal brings it to loss 0
  exactly, measured on the ReLU net from the saved params."""
  from lossland import job
  dir_a, s0 = job.run_ensemble_job(dict(_JOB, out_dir=str(tmp_path / "a")), **QUIET)
  m0 = s0["members"][0]
  assert m0["stop_reason"] == "jammed" and m0["n_delta"] > 0 and m0["class"] != "sat"
  # scripts/anneal_probe.py on the saved member gives the same result
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "anneal_probe", os.path.join(os.path.dirname(__file__), "..", "scripts",
                                   "anneal_probe.py"))
  probe = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(probe)
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    assert probe.main(["anneal_probe.py", dir_a, "0"]) == 0
  line = json.loads(buf.getvalue().strip().splitlines()[-1])
  assert line["stage"] == "anneal" and line["reason"] == "sat" and line["loss_after"] == 0.0
  assert line["loss_before"] == pytest.approx(m0["loss"] * 120, rel=1e-10)
  assert probe.main(["anneal_probe.py", dir_a]) == 2
  run_dir, s1 = job.run_ensemble_job(dict(_JOB, out_dir=str(tmp_path / "b"), finish="anneal",
                                          anneal_iters=1000), **QUIET)
  m1 = s1["members"][0]
  assert m1["finished"] and m1["finish_reason"] == "sat"
  assert m1["loss_before_finish"] == pytest.approx(m0["loss"], rel=1e-12)
  assert m1["class"] == "sat" and m1["n_delta"] == 0 and m1["loss"] == 0.0
  cfg = nets.NetConfig(d=4, width=8, depth=2, bias=True)
  with np.load(os.path.join(run_dir, "arrays.npz")) as a:
    p = nets.unravel_fn(cfg, jnp.float64)(jnp.asarray(a["params_final"][0]))
    x, y = jnp.asarray(a["x_train"]), jnp.asarray(a["y_train"])
  assert float(jnp.max(1.0 - y * nets.make_net(cfg)[1](p, x))) <= 0.0


def test_members_at_once_equal_each_member_alone():
  """anneal_members (one vmapped program per level, offsets f0 per member)
  against anneal of each member alone: the same results up to rounding over a
  short run, and the ReLU loss never above the entry's."""
  from lossland import train
  cfg = nets.NetConfig(d=3, width=6, depth=2, bias=True)
  ds = data.sphere(jax.random.key(4), 60, 3, n_test=0)
  tc = train.TrainConfig(optimizer="adam", lr=1e-2, max_steps=300)
  res = train.train_ensemble([0, 1, 2], ds, cfg, LOSS, tc)
  _, apply_fn = nets.make_net(cfg)
  offs = np.stack([np.asarray(apply_fn(jax.tree_util.tree_map(lambda a: a[k], res.params0),
                                       ds.x_train)) for k in range(3)])
  kw = dict(levels=(10.0, math.inf), iters=40)
  got = anneal.anneal_members(cfg, res.params, ds.x_train, ds.y_train, LOSS, offs, **kw)
  for k in range(3):
    p = jax.tree_util.tree_map(lambda a: jnp.asarray(a[k]), res.params)
    alone = anneal.anneal(cfg, p, ds.x_train, ds.y_train, LOSS, f_offset=offs[k], **kw)
    assert got[k].reason == alone.reason and got[k].n_iter == alone.n_iter
    # the batched and single programs round differently; 80 line-search
    # trials amplify that to ~1e-8 (other members differ at order one)
    assert got[k].loss_after == pytest.approx(alone.loss_after, rel=1e-6)
    for u, v in zip(jax.tree_util.tree_leaves(got[k].params),
                    jax.tree_util.tree_leaves(alone.params)):
      np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-7)
    assert got[k].loss_after <= got[k].loss_before
    f = apply_fn(got[k].params, ds.x_train) - offs[k]
    want = float(jnp.sum(LOSS.fn(LOSS.epsilon - ds.y_train * f)))
    assert got[k].loss_after == pytest.approx(want, rel=1e-12)


def test_rounds_repeat_the_anneal_from_the_last_result():
  """rounds > 1 against a plain loop of one-round anneals, each from the last
  result (unit scales measured again): the same losses and round counts;
  min_gain ends the rounds; the loss never rises."""
  from lossland import train
  cfg = nets.NetConfig(d=3, width=6, depth=2, bias=True)
  ds = data.sphere(jax.random.key(4), 60, 3, n_test=0)
  res = train.train_ensemble([0, 1], ds, cfg, LOSS,
                             train.TrainConfig(optimizer="adam", lr=1e-2, max_steps=300))
  x, y = ds.x_train, ds.y_train
  kw = dict(levels=(10.0, math.inf), iters=40)  # few trials: every round gains
  got = anneal.anneal_members(cfg, res.params, x, y, LOSS, rounds=3, min_gain=0.0, **kw)
  for k in range(2):
    q = jax.tree_util.tree_map(lambda a: jnp.asarray(a[k]), res.params)
    first = anneal.anneal(cfg, q, x, y, LOSS, **kw)
    cur, n = first.loss_before, 0
    assert cur > 0
    for _ in range(3):
      o = anneal.anneal(cfg, q, x, y, LOSS, **kw)
      n += 1
      if not o.loss_after < cur:
        break
      q, cur = o.params, o.loss_after
      if cur == 0:
        break
    alone = anneal.anneal(cfg, jax.tree_util.tree_map(lambda a: jnp.asarray(a[k]), res.params),
                          x, y, LOSS, rounds=3, min_gain=0.0, **kw)
    assert got[k].n_rounds == alone.n_rounds == n and n >= 2
    # one member alone runs the loop's programs: the same numbers exactly;
    # two at once round differently (test_members_at_once_equal_each_member_alone),
    # which 3 rounds of 80 line-search trials amplify to ~1e-4
    assert alone.loss_after == pytest.approx(cur, rel=1e-12)
    assert got[k].loss_after == pytest.approx(cur, rel=1e-3)
    assert got[k].loss_after < first.loss_after <= first.loss_before
    assert len(got[k].level_losses) == 2 * n
  # later rounds leave out the first (smoothest) level
  q = jax.tree_util.tree_map(lambda a: jnp.asarray(a[0]), res.params)
  o1 = anneal.anneal(cfg, q, x, y, LOSS, levels=(3.0, 10.0, math.inf), iters=40)
  o2 = anneal.anneal(cfg, o1.params, x, y, LOSS, levels=(10.0, math.inf), iters=40)
  two = anneal.anneal(cfg, q, x, y, LOSS, levels=(3.0, 10.0, math.inf), iters=40, rounds=2,
                      min_gain=0.0)
  assert 0 < o1.loss_after < o1.loss_before and two.n_rounds == 2
  assert two.level_losses == o1.level_losses + o2.level_losses
  assert two.loss_after == min(o1.loss_after, o2.loss_after)
  # a round must gain more than min_gain of the loss to be followed by another
  once = anneal.anneal_members(cfg, res.params, x, y, LOSS, rounds=3, min_gain=1.0, **kw)
  assert [o.n_rounds for o in once] == [1, 1]
  with pytest.raises(ValueError, match="rounds"):
    anneal.anneal_members(cfg, res.params, x, y, LOSS, rounds=0, **kw)


def test_anneal_newton_runs_the_newton_finish_from_the_annealed_state(tmp_path):
  """--finish anneal_newton: the entrants' loss never rises, the reasons are
  the Newton finish's, and the iterations count both stages."""
  from lossland import job
  base = dict(_JOB, P=160, seed=0, n_seeds=2, max_steps=800, polish_steps=400,
              out_dir=str(tmp_path / "a"))
  _, s0 = job.run_ensemble_job(dict(base, finish="anneal", anneal_iters=200), **QUIET)
  stages = []
  _, s1 = job.run_ensemble_job(dict(base, finish="anneal_newton", anneal_iters=200,
                                    finish_iters=30, out_dir=str(tmp_path / "b")), **QUIET,
                               stage_fn=stages.append)
  entered = [m for m in s1["members"] if m["finished"]]
  assert entered
  # its progress: the anneal of the entrants at once, each level, each member's Newton
  assert f"finish: annealing {len(entered)} members at once (at most 1 round of 6 levels)" \
      in stages
  assert sum(t.startswith("anneal b=") for t in stages) >= 1
  assert sum(t.startswith("finish (anneal_newton): member ") for t in stages) == len(entered)
  for m0, m1 in zip(s0["members"], s1["members"]):
    assert m0["finished"] == m1["finished"]
    if m1["finished"]:
      assert m1["finish_reason"] in ("converged", "max_iter", "stuck", "no_unsat", "no_force")
      assert m1["loss"] <= m0["loss"] * (1 + 1e-12)
      assert m0["loss"] <= m1["loss_before_finish"] * (1 + 1e-12)
      assert m1["finish_iterations"] > m0["finish_iterations"] or m0["finish_reason"] == "sat"
  # --anneal_rounds: round 1 is the one-round anneal, later rounds only lower the loss
  _, s2 = job.run_ensemble_job(dict(base, finish="anneal", anneal_iters=200, anneal_rounds=3,
                                    out_dir=str(tmp_path / "c")), **QUIET)
  for m0, m2 in zip(s0["members"], s2["members"]):
    assert m0["finished"] == m2["finished"]
    if m2["finished"]:
      assert m2["loss"] <= m0["loss"] * (1 + 1e-12)
      assert m2["finish_anneal_rounds"] >= (0 if m0["finish_reason"] == "sat" else 1)
      assert m0["finish_anneal_rounds"] == (0 if m0["loss_before_finish"] == 0 else 1)
  assert max(m["finish_anneal_rounds"] for m in s2["members"] if m["finished"]) >= 2


def test_finish_table_counts_a_hand_made_cell(tmp_path, capsys):
  """scripts/finish_table.py on a cell with one member sat by the finish, one
  kept, one lowered to a quarter of its loss, one never entered."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "finish_table", os.path.join(os.path.dirname(__file__), "..", "scripts",
                                   "finish_table.py"))
  table = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(table)
  run = tmp_path / "study" / "sweep" / "cells" / "abc" / "ensemble" / "r1"
  run.mkdir(parents=True)
  members = [
      dict(seed=0, **{"class": "sat"}, n_delta=0, loss=0.0, finished=False),
      dict(seed=1, **{"class": "sat"}, n_delta=0, loss=0.0, finished=True,
           finish_reason="sat", loss_before_finish=0.2, force_residual=None),
      dict(seed=2, **{"class": "unbalanced"}, n_delta=30, loss=0.1, finished=True,
           finish_reason="kept", loss_before_finish=0.1, force_residual=3e-4),
      dict(seed=3, **{"class": "jammed"}, n_delta=40, loss=0.05, finished=True,
           finish_reason="levels", loss_before_finish=0.2, force_residual=1e-8),
      # written before the rule: its Newton finish ran out of iterations
      dict(seed=4, **{"class": "jammed"}, n_delta=40, loss=0.1, finished=True,
           finish_reason="max_iter", loss_before_finish=0.4, force_residual=5e-7)]
  (run / "summary.json").write_text(json.dumps(dict(
      members=members, P=100, n_weights=50,
      member_class_counts={"sat": 2, "unbalanced": 1, "jammed": 2})))
  (run / "config.json").write_text(json.dumps(dict(net=dict(depth=2))))
  assert table.main(["finish_table.py", str(tmp_path / "study")]) == 0
  lines = [json.loads(v) for v in capsys.readouterr().out.strip().splitlines()]
  row, total = lines
  assert row["p_over_n"] == 2.0 and row["entered"] == 4 and row["finished_sat"] == 1
  assert row["kept"] == 1 and row["loss_ratio_median"] == 0.25
  assert row["r_sub_range"] == [1e-8, 3e-4] and row["n_force_balanced"] == 1
  assert row["classes"] == {"sat": 2, "unbalanced": 2, "jammed": 1}
  assert total == dict(total_entered=4, total_finished_sat=1, total_kept=1,
                       total_force_balanced=1)
  assert table.main(["finish_table.py", str(tmp_path / "nothing")]) == 2
