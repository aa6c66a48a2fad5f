"""The seeds' figures, one command each: ``python -m lossland.scripts.figures NAME``.

The top of the library: it composes the studies' presets (lossland.configs),
the studies (lossland.experiments) and the landscape runs (lossland.landscape).

=====================  ========================================  ==========================
NAME                   reads (runs it when absent)               draws
=====================  ========================================  ==========================
phase_diagram          the phase study (lossland.configs.phase)  fraction sat vs P/N with
                                                                 the logistic fits, N* vs
                                                                 P*, N_Delta/N vs P/N
delta_distributions    the phase study                           P+(Delta/sqrt(loss)),
                                                                 P-(-Delta), fits and CIs
hessian_phases         the phase study, then the dense spectra   H, H0, Hp below, at and
                       of its members                            above P*; Hp/sqrt(loss);
                                                                 N_-(Hp)/N vs N_Delta/N
generalization         the generalization study                  test error vs N/N*,
                       (lossland.configs.generalization)         fluctuations vs N
landscapes             landscape runs, depth x number of points  disconnectivity graphs
=====================  ========================================  ==========================

The studies run into ``out_dir`` (default ``runs/figures/<preset>``), which the
figures of one preset share: ``out_dir/sweep`` and ``out_dir/phase/`` (phase),
``out_dir/generalization*`` and ``out_dir/landscape/``. A finished study found
there is reused, so drawing again costs no training (``rerun=True`` runs the
study again; its cells resume from the sweep directory). Each figure goes to
``out_dir/figures/NAME/``: ``NAME.png``, ``NAME.pdf`` and ``NAME.json`` (the
numbers drawn and the run directories they come from; hessian_phases also
``NAME.npz``, the eigenvalues), replacing an earlier drawing only once the new
one is complete.
"""
import dataclasses
import json
import os
import subprocess
import sys
from typing import Callable, NamedTuple

import numpy as np

from lossland import io
from lossland.experiments.options import OptionError, option

PRESETS = ("cpu", "gpu", "paper")


@dataclasses.dataclass(frozen=True)
class FigureConfig:
  """What ``python -m lossland.scripts.figures NAME`` does (fields = flags)."""
  name: str = option("phase_diagram", "the figure", flag=False)
  preset: str = option("cpu", "the studies' preset (cpu: minutes on a CPU; gpu and paper: "
                       "the papers' sizes, for a GPU)", choices=PRESETS)
  out_dir: str = option("", "the studies' directory (default runs/figures/<preset>); an "
                        "existing finished study there is redrawn without training")
  rerun: bool = option(False, "run the study again even when out_dir holds a finished one "
                       "(its cells resume from the sweep directory)")

  def __post_init__(self):
    if self.name not in FIGURES:
      raise OptionError(f"unknown figure {self.name!r}; one of {', '.join(FIGURES)}")
    if self.preset not in PRESETS:
      raise OptionError(f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")

  @property
  def root(self) -> str:
    return self.out_dir or os.path.join("runs", "figures", self.preset)


def latest_run(root: str, script: str, match: Callable | None = None) -> str | None:
  """The newest complete run directory ``root/script/<UTC time>_<hash>`` (staging
  folders start with a dot and never count), optionally the newest whose
  config.json satisfies ``match(config)``."""
  parent = os.path.join(root, script)
  if not os.path.isdir(parent):
    return None
  for name in sorted(os.listdir(parent), reverse=True):
    path = os.path.join(parent, name)
    if name.startswith(".") or not os.path.isfile(os.path.join(path, "summary.json")):
      continue
    if match is not None:
      with open(os.path.join(path, "config.json")) as fh:
        if not match(json.load(fh)):
          continue
    return path
  return None


# ----------------------------------------------------------------------------
# The studies

def _study_run(cfg: FigureConfig, kind: str, presets, run: Callable, log_fn: Callable) -> str:
  """The latest ``kind`` run directory under ``cfg.root``, or, when absent or
  with ``--rerun``, ``run(preset config)``'s (the preset from ``presets``)."""
  found = None if cfg.rerun else latest_run(cfg.root, kind)
  if found:
    log_fn(f"reusing {found}")
    return found
  return run(dataclasses.replace(presets.PRESETS[cfg.preset](), out_dir=cfg.root))


def phase_run(cfg: FigureConfig, log_fn: Callable = print) -> str:
  """The phase run directory of ``cfg`` (run with the preset when absent)."""
  from lossland.configs import phase as presets  # pylint: disable=g-import-not-at-top
  from lossland.experiments import phase_study  # pylint: disable=g-import-not-at-top
  return _study_run(cfg, "phase", presets,
                    lambda c: phase_study.run(c, log_fn=log_fn)["runs"][-1][1], log_fn)


def generalization_run(cfg: FigureConfig, log_fn: Callable = print) -> str:
  """The generalization run directory of ``cfg`` (run with the preset when absent)."""
  from lossland.configs import generalization as presets  # pylint: disable=g-import-not-at-top
  from lossland.experiments import generalization_study  # pylint: disable=g-import-not-at-top
  return _study_run(cfg, "generalization", presets,
                    lambda c: generalization_study.run(c, log_fn=log_fn)[1], log_fn)


# The depth x data grid of Verpoort, Lee & Wales at comparable parameter count
# (scripts/landscape_study.sh; docs/landscape.md): the same at every preset,
# the study is small.
LANDSCAPE_GRID = dict(depths=(1, 2, 3), n_data=(30, 120),
                      flags=dict(n_params=57, bh_chains=16, bh_steps=500, connect_budget=300,
                                 seed=0))


def _landscape_match(depth: int, n_data: int) -> Callable:
  def match(config):
    s = config.get("study_config", {})
    want = dict(LANDSCAPE_GRID["flags"], depth=depth, n_data=n_data)
    flags = config.get("flags", config)
    return all(s.get(k, flags.get(k)) == v for k, v in want.items())
  return match


def landscape_runs(cfg: FigureConfig, log_fn: Callable = print) -> list:
  """The landscape run directories of the grid (each cell run when absent,
  by ``python -m lossland.scripts.landscape`` in a subprocess)."""
  runs = []
  for depth in LANDSCAPE_GRID["depths"]:
    for n in LANDSCAPE_GRID["n_data"]:
      match = _landscape_match(depth, n)
      found = None if cfg.rerun else latest_run(cfg.root, "landscape", match)
      if found is None:
        args = [f"--{k}={v}" for k, v in dict(LANDSCAPE_GRID["flags"], depth=depth,
                                              n_data=n, out_dir=cfg.root).items()]
        log_fn(f"landscape depth={depth} n_data={n}: running")
        subprocess.run([sys.executable, "-m", "lossland.scripts.landscape", *args],
                       check=True, stdout=subprocess.DEVNULL)
        found = latest_run(cfg.root, "landscape", match)
      else:
        log_fn(f"reusing {found}")
      runs.append(found)
  return runs


# ----------------------------------------------------------------------------
# The drawings: fn(source, path_prefix) -> the data drawn (JSON)

def _load_summary(run_dir: str) -> dict:
  with open(os.path.join(run_dir, "summary.json")) as fh:
    return json.load(fh)


def _finite_size(root: str) -> dict | None:
  found = latest_run(root, "phase_sizes")
  return _load_summary(found) if found else None


def draw_phase_diagram(run_dir: str, prefix: str) -> dict:
  from lossland.plots import phase as plots  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(run_dir))
  return plots.phase_diagram_figure(_load_summary(run_dir), prefix, _finite_size(root))


def draw_delta_distributions(run_dir: str, prefix: str) -> dict:
  from lossland.plots import phase as plots  # pylint: disable=g-import-not-at-top
  with np.load(os.path.join(run_dir, "arrays.npz")) as z:
    pos, neg = z["delta_positive"], z["delta_negative"]
    stalled = (z["delta_positive_stalled"], z["delta_negative_stalled"]) \
        if "delta_positive_stalled" in z.files else None
  return plots.delta_distributions_figure(_load_summary(run_dir), pos, neg, prefix, stalled)


def draw_hessian_phases(run_dir: str, prefix: str, log_fn: Callable = print) -> dict:
  from lossland.experiments import hessian_phases  # pylint: disable=g-import-not-at-top
  from lossland.plots import hessian_phases as plots  # pylint: disable=g-import-not-at-top
  result, arrays = hessian_phases.analyze(run_dir, log_fn=log_fn)
  if not result["per_depth"]:
    raise io.InputError(f"{run_dir}: no cell with an analyzable member")
  np.savez(prefix + ".npz", **arrays)
  return {"analysis": result, "drawn": plots.plot(result, arrays, prefix)}


def draw_generalization(run_dir: str, prefix: str) -> dict:
  from lossland.plots import generalization as plots  # pylint: disable=g-import-not-at-top
  summary = _load_summary(run_dir)
  plots.plot_figure(summary, prefix)
  return {k: summary.get(k) for k in ("n_star", "per_n", "fits", "kernel_test_error")}


def draw_landscapes(run_dirs, prefix: str) -> dict:
  from lossland.landscape import report  # pylint: disable=g-import-not-at-top
  panels, table = report.grid_panels(run_dirs)
  report.save_grid(panels, prefix + ".png", n_levels=25, value_label="test acc.", dpi=80)
  report.save_grid(panels, prefix + ".pdf", n_levels=25, value_label="test acc.")
  return {"cells": table}


class Figure(NamedTuple):
  """One figure: ``source(cfg, log_fn)`` gives its run directory (or list of
  them), ``render(source, prefix[, log_fn])`` writes it and returns its data."""
  source: Callable
  render: Callable
  takes_log: bool = False


FIGURES = {
    "phase_diagram": Figure(phase_run, draw_phase_diagram),
    "delta_distributions": Figure(phase_run, draw_delta_distributions),
    "hessian_phases": Figure(phase_run, draw_hessian_phases, takes_log=True),
    "generalization": Figure(generalization_run, draw_generalization),
    "landscapes": Figure(landscape_runs, draw_landscapes),
}


def make_figure(cfg: FigureConfig, log_fn: Callable = print) -> str:
  """Runs (or reuses) the figure's study and draws it; returns the figure's
  directory ``<out_dir>/figures/<name>``."""
  fig = FIGURES[cfg.name]
  source = fig.source(cfg, log_fn)
  parent = os.path.join(cfg.root, "figures")
  os.makedirs(parent, exist_ok=True)
  with io.staged_subdir(parent, cfg.name) as tmp:
    prefix = os.path.join(tmp, cfg.name)
    data = (fig.render(source, prefix, log_fn) if fig.takes_log else fig.render(source, prefix))
    record = {"figure": cfg.name, "preset": cfg.preset, "source": source, "data": data,
              "environment": io.environment()}
    with open(prefix + ".json", "w") as fh:
      fh.write(io.dumps(record, indent=1))
      fh.write("\n")
  return os.path.join(parent, cfg.name)
