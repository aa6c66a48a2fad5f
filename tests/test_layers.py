"""The package's layering, read from the import statements of its source files:
matplotlib only under lossland/plots/ (and the landscape's own figures), no
library module importing the scripts or the analysis importing the figures,
and the old import paths of moved names still working for one release."""
import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "lossland")


def _imports(rel):
  """Every module named by an import statement of lossland/<rel> (also inside functions)."""
  with open(os.path.join(PKG, rel)) as fh:
    tree = ast.parse(fh.read())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      out.add(node.module)
      out |= {f"{node.module}.{a.name}" for a in node.names}
  return out


def _sources():
  for d, _, files in os.walk(PKG):
    for f in files:
      if f.endswith(".py"):
        yield os.path.relpath(os.path.join(d, f), PKG)


def _importers(prefix, skip=()):
  return sorted(rel for rel in _sources() if not rel.startswith(skip)
                and any(m == prefix or m.startswith(prefix + ".") for m in _imports(rel)))


def test_matplotlib_only_in_plots_and_landscape():
  assert _importers("matplotlib", skip=("plots" + os.sep, "landscape" + os.sep)) == []
  # and the package does use it there (the check above reads real imports)
  assert "plots/_agg.py" in [r.replace(os.sep, "/") for r in _importers("matplotlib")]


def test_no_library_module_imports_the_scripts():
  assert _importers("lossland.scripts", skip=("scripts" + os.sep,)) == []


def test_analysis_does_not_import_the_figures():
  for rel in ("phase.py", "generalization.py", "experiments/sweep.py", "fits.py",
              "observables.py"):
    assert not any(m.startswith("lossland.plots") for m in _imports(rel)), rel


def test_importing_the_library_loads_no_matplotlib():
  code = ("import sys, lossland, lossland.plots, lossland.plots.phase, "
          "lossland.plots.sweep, lossland.plots.generalization, lossland.plots.curvature, "
          "lossland.curvature_plots, lossland.progress; "
          "print('matplotlib' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "False"


def test_old_import_paths_still_work():
  from lossland import curvature_plots, plots
  from lossland.plots import curvature, ensemble
  from lossland.progress import Progress
  from lossland.scripts import _cli
  for name in ("plot_training", "plot_test_errors", "plot_delta_distribution", "plot_run"):
    assert getattr(plots, name) is getattr(ensemble, name)
  for name in curvature_plots.__all__:
    assert getattr(curvature_plots, name) is getattr(curvature, name)
  assert _cli.Progress is Progress


# The layers below experiments/ (physics, data, optim, train, analysis, plots).
_BELOW_EXPERIMENTS = ("nets.py", "flax_nets.py", "losses.py", "observables.py", "ntk.py",
                      "lanczos.py", "curvature.py", "dtypes.py", "data.py", "io.py",
                      "checkpoint.py", "progress.py", "compilation_cache.py", "fits.py",
                      "phase.py", "generalization.py", "experiment.py", "optim", "train",
                      "plots")


def test_lower_layers_never_import_experiments_or_configs():
  for prefix in ("lossland.experiments", "lossland.configs", "lossland.job",
                 "lossland.sweep"):
    low = [r for r in _importers(prefix) if r.startswith(_BELOW_EXPERIMENTS)]
    assert low == [], (prefix, low)
  # the experiments do import the layers below (the check reads real imports)
  assert "experiments/phase_study.py" in [
      r.replace(os.sep, "/") for r in _importers("lossland.phase")]


def test_moved_modules_are_the_same_objects_under_their_old_names():
  import lossland
  from lossland import job, sweep
  from lossland.experiments import job as job2, sweep as sweep2
  assert job is job2 and sweep is sweep2 and lossland.job is job2
  assert job.run_ensemble_job.__module__ == "lossland.experiments.job"


def test_figures_keep_a_backend_the_user_chose():
  # Agg when nothing was chosen; a notebook's backend (pyplot imported first,
  # or $MPLBACKEND as Jupyter kernels set it) is kept: switching would close
  # the user's figures.
  code = ("import matplotlib; {pre}from lossland.plots import _agg; "
          "print(_agg.pyplot().get_backend().lower())")
  env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
  cases = [("", env, "agg"),
           ("matplotlib.use('svg'); import matplotlib.pyplot; ", env, "svg"),
           ("", dict(env, MPLBACKEND="pdf"), "pdf")]
  for pre, e, want in cases:
    out = subprocess.run([sys.executable, "-c", code.format(pre=pre)], capture_output=True,
                         text=True, env=e, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-1000:]
    assert out.stdout.strip().endswith(want), (pre, out.stdout)


def test_presets_and_figures_sit_above_the_studies():
  # configs/ builds study configs and figures.py composes presets and studies:
  # the studies, the analysis and everything below never import either.
  for prefix in ("lossland.configs", "lossland.figures"):
    allowed = ("scripts" + os.sep, "configs" + os.sep, "figures.py")
    assert _importers(prefix, skip=allowed) == [], prefix
