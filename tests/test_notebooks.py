"""The notebooks in notebooks/ run top to bottom, at tiny sizes.

Each notebook's first code cell holds its parameters (tagged "parameters"). The
test inserts a cell right after it that assigns tiny values to some of those
names (papermill's injected-parameters idea, without papermill), executes the
notebook with nbclient in a kernel of this interpreter, and checks what the
notebook's own last cell asserts (independent recomputations: N_Delta from the
outputs, H0 + Hp = H, the NTK against J J^T, the Müller–Brown energies) plus a
few values read back from an extra cell appended at the end.

One test per notebook, so pytest-xdist runs them in parallel (``-n 2``). The
kernel is started from a kernelspec written into a temporary folder whose argv is
``sys.executable -m ipykernel_launcher``: the venv's Python, not whatever
"python3" kernel a machine has installed. It inherits this process's environment
(tests/conftest.py's XLA settings) plus MPLBACKEND=Agg and the repository on
PYTHONPATH.
"""
import ast
import json
import os
import pathlib
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
COLAB = "https://colab.research.google.com/github/lossland/lossland/blob/main/notebooks/{}.ipynb"
KERNEL = "lossland-notebook-test"
CELL_TIMEOUT = 600  # seconds per cell; pytest-timeout (setup.cfg) bounds the whole test

# Tiny sizes: names assigned here must exist in the notebook's parameters cell.
TINY = {
    "quickstart": dict(P=40, D=4, WIDTH=8, DEPTH=1, N_SEEDS=3, MAX_STEPS=300),
    "jamming": dict(D=3, WIDTH=4, DEPTH=1, P_OVER_N=(1.0, 3.0), N_SEEDS=2, ADAM_STEPS=300,
                    DECAY_EVERY=100, POLISH_STEPS=100),
    "generalization": dict(P=30, D=4, WIDTHS=(2, 16), N_SEEDS=2, MAX_STEPS=200, N_TEST=40,
                           N_NTK=8),
    "landscape": dict(N_DATA=12, N_PARAMS=20, BH_CHAINS=2, BH_STEPS=4, CONNECT_BUDGET=2),
}

# Values read back after the run: name -> Python expression in the notebook.
READ_BACK = {
    "quickstart": {"reasons": "res.stop_reasons", "classes": "classes",
                   "n_members": "len(res.seeds)", "summary": "summary"},
    "jamming": {"Ps": "Ps", "N": "N", "stats": "stats",
                "rows": "[{k: r[k] for k in ('n_delta', 'rank_h0', 'n_negative_hp')} "
                        "for r in spec.rows]"},
    "generalization": {"widths": "[r['h'] for r in rows]", "to_inf": "[r['to_inf'] for r in rows]",
                       "ensemble": "[r['ensemble'] for r in rows]", "kernel": "kernel"},
    "landscape": {"e_min": "sorted(map(float, e_min))", "e_ts": "sorted(map(float, e_ts))",
                  "n_minima": "net_summary['n_minima']", "n_ts": "net_summary['n_ts']"},
}


def _load(name):
  return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def _first_code_cell(nb):
  return next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")


def _assigned_names(source):
  names = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Assign):
      for t in node.targets:
        for n in ast.walk(t):
          if isinstance(n, ast.Name):
            names.add(n.id)
  return names


def _kernel_manager(tmp_path):
  spec_dir = tmp_path / "kernels" / KERNEL
  spec_dir.mkdir(parents=True)
  path = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
  spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
          "display_name": "lossland notebook test", "language": "python",
          "env": {"MPLBACKEND": "Agg", "PYTHONPATH": path}}
  (spec_dir / "kernel.json").write_text(json.dumps(spec))
  ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
  return KernelManager(kernel_name=KERNEL, kernel_spec_manager=ksm)


def _run(name, tmp_path):
  """Executes the notebook at its tiny sizes; returns the read-back values."""
  nb = _load(name)
  i = _first_code_cell(nb)
  override = "\n".join(f"{k} = {v!r}" for k, v in TINY[name].items())
  nb.cells.insert(i + 1, nbformat.v4.new_code_cell(override))
  expr = "{" + ", ".join(f"{k!r}: {v}" for k, v in READ_BACK[name].items()) + "}"
  nb.cells.append(nbformat.v4.new_code_cell(
      f"import json as _json\nprint('READ_BACK' + _json.dumps({expr}, default=float))"))
  client = NotebookClient(nb, km=_kernel_manager(tmp_path), timeout=CELL_TIMEOUT,
                          resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
  assert "READ_BACK" in text, text
  assert "all checks passed" in "".join(
      o.get("text", "") for o in nb.cells[-2].outputs if o.output_type == "stream")
  return json.loads(text.split("READ_BACK", 1)[1])


def test_notebooks_are_clean_and_set_up_for_colab():
  names = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
  assert names == sorted(TINY), names
  for name in names:
    nb = _load(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), name
    assert COLAB.format(name) in nb.cells[0].source, name
    params = code[0]
    assert "parameters" in params.metadata.get("tags", []), name
    missing = set(TINY[name]) - _assigned_names(params.source)
    assert not missing, f"{name}: the test overrides {missing}, not in its parameters cell"
    setup = [c.source for c in code if "pip" in c.source]
    assert len(setup) == 1 and 'if "google.colab" in sys.modules:' in setup[0], name
    assert "jax[cuda12]" in setup[0] or "lossland[cuda12]" in setup[0], name


@pytest.mark.parametrize("name", ["landscape", "jamming", "generalization", "quickstart"])
def test_notebook_runs_at_tiny_sizes(name, tmp_path):
  out = _run(name, tmp_path)
  if name == "quickstart":
    assert out["n_members"] == TINY[name]["N_SEEDS"] == len(out["reasons"])
    assert len(out["classes"]) == out["n_members"]
    s = out["summary"]
    assert 0 <= s["ensemble_test_error"] <= 1 and 0 <= s["mean_test_error"] <= 1
  elif name == "jamming":
    assert out["Ps"] == [round(r * out["N"]) for r in TINY[name]["P_OVER_N"]]
    assert all(r["rank_h0"] <= r["n_delta"] for r in out["rows"])
    assert all(r["n_negative_hp"] <= TINY[name]["WIDTH"] for r in out["rows"])
  elif name == "generalization":
    assert out["widths"] == list(TINY[name]["WIDTHS"])
    # the empirical NTK at init approaches the infinite-width one as h grows
    assert out["to_inf"][-1] < out["to_inf"][0]
    assert 0 <= out["kernel"]["kernel_test_error"] <= 1
  else:  # landscape: Müller–Brown at the notebook's own sizes has its textbook points
    assert len(out["e_min"]) == 3 and len(out["e_ts"]) == 2, out
    assert abs(out["e_min"][0] - (-146.69952)) < 1e-3
    assert out["n_minima"] >= 1 and out["n_ts"] >= 0
