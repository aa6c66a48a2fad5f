"""scripts/member_table.py on a small ensemble job: one row per healthy
member with N_Delta > 0, its numbers recomputed from the run's params, the
scale residual recomputed where summary.json lacks it, and bad input exits 2."""
import contextlib
import importlib.util
import io
import json
import os

import jax
import numpy as np
import pytest

from lossland import experiment, losses, nets, stationarity


def _tool():
  spec = importlib.util.spec_from_file_location(
      "member_table", os.path.join(os.path.dirname(__file__), "..", "scripts", "member_table.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _rows(tool, *dirs):
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert tool.main(["member_table.py", *dirs]) == 0
  return [json.loads(l) for l in out.getvalue().splitlines()]


def test_member_table_rows_match_the_run(tmp_path):
  from lossland.experiments import job
  values = dict(dataset="sphere", P=300, d=4, n_test=0, depth=2, width=12, n_seeds=3,
                max_steps=300, lr=0.02, plots=False, resume=False,
                out_dir=str(tmp_path / "study" / "ensemble"))
  run_dir, s = job.run_ensemble_job(values, progress=False, stdout=io.StringIO())
  tool = _tool()
  rows = _rows(tool, str(tmp_path / "study"))
  want = [m for m in s["members"] if m["n_delta"] > 0 and m["force_residual"] is not None]
  assert len(rows) == len(want) >= 1
  ens = experiment.load_ensemble(run_dir)
  x, y = ens.data.x_train, np.asarray(ens.data.y_train)
  apply_fn = nets.cached_apply_fn(ens.net, x.dtype)
  for row, m in zip(rows, want):
    assert row["seed"] == m["seed"] and row["class"] == m["class"] and row["depth"] == 2
    assert row["n_delta"] == m["n_delta"] and row["r_sub"] == m["force_residual"]
    assert row["scale_residual"] == m["scale_residual"]
    # no finish in this job: the finish's fields are null, as in summary.json
    assert (row["finish_reason"], row["finish_iterations"], row["descent_gain"]) == (
        m.get("finish_reason"), m.get("finish_iterations"), m.get("descent_gain"))
    k = s["members"].index(m)
    params = jax.tree_util.tree_map(lambda a: a[k], ens.params)
    f = np.asarray(apply_fn(params, x))
    assert row["misclassified"] == int(np.sum(y * f <= 0))
    assert row["output_rms"] == pytest.approx(float(np.sqrt(np.mean(f ** 2))))
    # the best output scale: no c on a fine grid does better, and the loss there
    # is (1 - gain) times the member's
    L = lambda c: float(np.sum(np.maximum(1 - c * y * f, 0) ** 2))
    grid = np.linspace(0.2, 5, 20001)
    assert min(L(c) for c in grid) >= L(row["scale_c"]) * (1 - 1e-12)
    assert abs(row["scale_c"] - grid[np.argmin([L(c) for c in grid])]) < 1e-3
    assert L(row["scale_c"]) == pytest.approx((1 - row["scale_gain"]) * L(1.0), rel=1e-9)
  # a run written before summary.json had the field: recomputed from the params
  path = os.path.join(run_dir, "summary.json")
  old = json.load(open(path))
  for m in old["members"]:
    m.pop("scale_residual", None)
  with open(path, "w") as fh:
    json.dump(old, fh)
  for j, m in enumerate(old["members"]):  # a finished run's fields are passed through
    m.update(finish_reason="max_iter", finish_iterations=1000 + j, descent_gain=-1e-7 * (j + 1))
  with open(path, "w") as fh:
    json.dump(old, fh)
  again = _rows(tool, run_dir)  # the run directory itself
  for a, b in zip(again, rows):
    assert a["scale_residual"] == pytest.approx(b["scale_residual"], rel=1e-12, abs=1e-15)
    j = [m["seed"] for m in old["members"]].index(a["seed"])
    assert (a["finish_reason"], a["finish_iterations"], a["descent_gain"]) == (
        "max_iter", 1000 + j, -1e-7 * (j + 1))
  k = s["members"].index(want[0])
  params = jax.tree_util.tree_map(lambda a: a[k], ens.params)
  assert again[0]["scale_residual"] == pytest.approx(
      stationarity.scale_residual(apply_fn, params, x, y, losses.LossConfig()), rel=1e-12)


def test_best_scale_satisfies_a_separable_set_and_matches_a_hand_case():
  """Every point classified right (b > 0): the best c satisfies every margin
  (loss 0, c = max a / b); one point on each side: the closed form."""
  tool = _tool()
  b, a = np.array([0.5, 2.0, 0.25]), np.ones(3)
  c, v = tool.best_scale(b, a)
  assert v == pytest.approx(0.0, abs=1e-20) and c == pytest.approx(4.0, rel=1e-9)
  # (1 - c)^2 + (1 + c / 2)^2 for c in [0, 1]: slope -1 + 5 c / 2, zero at c = 2/5
  c, v = tool.best_scale(np.array([1.0, -0.5]), np.ones(2))
  assert c == pytest.approx(0.4, rel=1e-9) and v == pytest.approx(0.6 ** 2 + 1.2 ** 2)


def test_member_table_bad_input_exits_2(tmp_path, capsys):
  tool = _tool()
  assert tool.main(["member_table.py"]) == 2
  assert tool.main(["member_table.py", str(tmp_path)]) == 2
  assert "no ensemble run below" in capsys.readouterr().err
