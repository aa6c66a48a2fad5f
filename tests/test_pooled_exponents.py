"""scripts/pooled_exponents.py on a hand-made phase study: only the
force-balanced members of the cells in the band are pooled, the fits are
lossland.phase's on exactly those samples, and bad input exits 2."""
import contextlib
import importlib.util
import io
import json
import os

import numpy as np

from lossland import phase


def _tool():
  spec = importlib.util.spec_from_file_location(
      "pooled_exponents",
      os.path.join(os.path.dirname(__file__), "..", "scripts", "pooled_exponents.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _study(root, rng):
  """Two cells of depth 1 (N = 10; P/N = 1.0 and 2.0; P*/N = 1.0): member 0
  jammed, member 1 unbalanced, member 2 sat."""
  sweep = os.path.join(root, "sweep")
  expected = []
  os.makedirs(sweep)
  with open(os.path.join(sweep, "cells.jsonl"), "w") as fh:
    for c, P in enumerate((10, 20)):
      run = os.path.join("cells", f"c{c}", "ensemble", "RUN")
      os.makedirs(os.path.join(sweep, run))
      y = np.where(rng.random(P) < 0.5, -1.0, 1.0)
      delta = np.stack([rng.uniform(-1, 1, P) for _ in range(3)])
      delta[2] = -np.abs(delta[2])
      np.savez(os.path.join(sweep, run, "arrays.npz"), f_train=(1.0 - delta) * y, y_train=y)
      loss = [float(0.5 * np.sum(np.maximum(d, 0) ** 2) / P) for d in delta]
      members = [dict(seed=k, **{"class": cl}, loss=loss[k])
                 for k, cl in enumerate(("jammed", "unbalanced", "sat"))]
      rec = dict(cell_id=f"c{c}", flags=dict(P=P, depth=1, margin=None), run_dir=run,
                 summary=dict(P=P, n_weights=10, members=members))
      fh.write(json.dumps(rec) + "\n")
      expected.append(delta[0])
  os.makedirs(os.path.join(root, "phase", "T"))
  with open(os.path.join(root, "phase", "T", "summary.json"), "w") as fh:
    json.dump(dict(per_depth={"1": dict(p_star_over_n=1.0)}, gap_floor=1e-4), fh)
  return expected


def _run(tool, argv):
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    rc = tool.main(argv)
  return rc, [json.loads(t) for t in buf.getvalue().strip().splitlines()]


def test_pooled_exponents_take_the_band_and_the_jammed_members(tmp_path):
  rng = np.random.default_rng(0)
  expected = _study(str(tmp_path), rng)
  tool = _tool()
  rc, lines = _run(tool, ["pooled_exponents.py", str(tmp_path), "-0.1", "0.1"])
  assert rc == 0 and len(lines) == 1
  out = lines[0]
  assert out["cells"] == [dict(p_over_n=1.0, distance=0.0, members=1)] and out["n_members"] == 1
  d = expected[0]  # the jammed member of the cell at P*/N only
  pos = d[d > 0] / np.sqrt(0.5 * np.sum(np.maximum(d, 0) ** 2) / d.size)
  ref = phase.fit_exponent(pos, np.zeros(pos.size), n_boot=500, x_floor=1e-4)
  assert out["n_theta_samples"] == ref["n_samples"] == int(np.sum(pos > 1e-4))
  assert out["theta"] == ref["exponent"] and out["theta_cdf"] == ref["exponent_cdf"]
  rc, lines = _run(tool, ["pooled_exponents.py", str(tmp_path), "-1", "2"])
  assert rc == 0 and lines[0]["n_members"] == 2 and len(lines[0]["cells"]) == 2
  rc, lines = _run(tool, ["pooled_exponents.py", str(tmp_path), "0.5", "0.9"])
  assert rc == 0 and lines[0]["n_members"] == 0 and lines[0]["theta"] is None
  # a given P*/N moves the band: 1.9 puts the cell P/N = 2.0 at distance 0.053
  rc, lines = _run(tool, ["pooled_exponents.py", str(tmp_path), "-0.1", "0.1", "1.9"])
  assert rc == 0 and lines[0]["p_star_given"] and lines[0]["p_star_over_n"] == 1.9
  assert [c["p_over_n"] for c in lines[0]["cells"]] == [2.0] and lines[0]["n_members"] == 1
  assert not _run(tool, ["pooled_exponents.py", str(tmp_path), "-0.1", "0.1"])[1][0][
      "p_star_given"]
  # two studies pooled: the second's cells (other seeds, here a copy) join the band
  import shutil
  shutil.copytree(tmp_path, tmp_path / "more")
  rc, lines = _run(tool, ["pooled_exponents.py", f"{tmp_path},{tmp_path / 'more'}", "-0.1",
                          "0.1"])
  assert rc == 0 and lines[0]["n_members"] == 2 and len(lines[0]["cells"]) == 2
  assert lines[0]["n_theta_samples"] == 2 * ref["n_samples"]
  assert tool.main(["pooled_exponents.py", f"{tmp_path},{tmp_path / 'none'}", "0", "1"]) == 2
  assert tool.main(["pooled_exponents.py", str(tmp_path), "0", "1", "-2"]) == 2
  assert tool.main(["pooled_exponents.py", str(tmp_path), "0", "1", "x"]) == 2
  assert tool.main(["pooled_exponents.py", str(tmp_path), "x", "1"]) == 2
  assert tool.main(["pooled_exponents.py", str(tmp_path), "1", "0"]) == 2
  assert tool.main(["pooled_exponents.py", str(tmp_path / "none"), "0", "1"]) == 2
  assert tool.main(["pooled_exponents.py"]) == 2
