"""Test error, ensembles and NTK fluctuations vs width (1810.09665, 1901.01608)
as a study: one cell per width on one fixed data set, the per-N analysis of
:mod:`lossland.generalization`, the infinite-width kernel asymptote, the fits
and the figures.

:class:`GeneralizationConfig` holds the settings (its fields are the flags of
``python -m lossland.scripts.generalization``); ``job`` holds further
ensemble-job options given to every cell; the presets are values in
:mod:`lossland.configs.generalization`. The member runs live in
``<out_dir>/generalization_sweeps/<digest of the cells>/``.
"""
import dataclasses
import hashlib
import json
import os
from typing import Callable

import numpy as np

from lossland import experiment, generalization
from lossland.experiments import job
from lossland.experiments import study
from lossland.experiments.options import OptionError, check_fields, option

# nn_jamming's network as the authors ran it (lossland.nets.authors_net)
NETS = {
    "authors": dict(parametrization="standard", init="orthogonal_gain1", bias=True,
                    normalize_activation=False),
    "lossland": dict(parametrization="ntk", init="normal", bias=False,
                     normalize_activation=True),
}


@dataclasses.dataclass(frozen=True)
class GeneralizationConfig:
  """The settings of one generalization study (each field is a flag)."""
  widths: tuple[int, ...] = option((4, 8, 16), "Widths h (comma-separated).")
  dataset: str = option("digits", "Dataset of the ensemble job (digits, sphere, teacher, "
                        "mnist, ...).")
  data_dir: str | None = option(None, "Directory of the image files (mnist etc.).")
  P: int = option(400, "Training points.")
  d: int = option(16, "Input dimension.")
  n_test: int | None = option(None, "Test points.")
  depth: int = option(3, "Hidden layers L.")
  n_seeds: int = option(4, "Members K per width.")
  max_steps: int = option(20_000, "Maximum steps per member.")
  lr: float = option(1e-2, "Adam learning rate.")
  decay_every: int = option(0, "Divide the Adam learning rate by 10 every this many steps "
                            "(0: constant).")
  jam_window: int = option(2000, "Jamming rule window in steps (the trainer's stall rule).")
  jam_after_decays: bool = option(False, "Stop jammed only at the last learning-rate level.")
  polish: str = option("none", "After Adam, continue every member that did not reach "
                       "N_Delta = 0 with this optimizer (the ensemble job's polish stage: "
                       "lbfgs = L-BFGS until jammed, docs/jamming.md).", ("none", "lbfgs"))
  polish_steps: int = option(5000, "Most gradient evaluations of the polish.")
  net: str = option("lossland", "authors: nn_jamming's network (standard parametrization, "
                    "orthogonal init with gain 1, zero-initialized biases, plain ReLU; "
                    "1810.09665); lossland: NTK parametrization, normal init, no biases, "
                    "ReLU * sqrt 2.", tuple(NETS))
  label_noise: float = option(0.0, "Fraction of the training labels flipped (keyed by "
                              "--data_seed; test labels clean).")
  data_seed: int = option(0, "Seed of synthetic data and of the label noise.")
  alpha: float = option(1.0, "Output scale alpha.")
  subtract_init: bool = option(True, "Train f(w) - f(w0) (its N -> infinity limit is the "
                               "kernel flow from 0).")
  n_ntk: int = option(50, "Test points on which the empirical NTKs are computed.")
  n_boot: int = option(1000, "Bootstrap replicates of the fits.")
  fit_min_n_over_n_star: float = option(
      10.0, "The power laws are fitted on the tail N >= this times N* (the near-N* "
      "regime N* < N below it is fitted separately); at least 1.")
  kernel_max_steps: int = option(200_000, "Steps of the infinite-width hinge flow.")
  x64: bool = option(True, "float64.")
  out_dir: str = option("runs", "Root of run directories.")
  plots: bool = option(True, "Write the figures.")
  job: dict = option({}, "Further ensemble-job options of every cell.", flag=False)

  def __post_init__(self):
    if not self.widths or min(self.widths) < 1:
      raise OptionError("--widths must be positive integers")
    for name in ("P", "d", "depth", "n_seeds", "max_steps", "jam_window", "polish_steps",
                 "n_ntk"):
      if getattr(self, name) < 1:
        raise OptionError(f"--{name} must be positive, got {getattr(self, name)}")
    if not 0 <= self.label_noise < 0.5:
      raise OptionError(f"--label_noise must be in [0, 0.5), got {self.label_noise}")
    if self.n_seeds < 2:
      raise OptionError("--n_seeds must be at least 2 (ensembles and fluctuations)")
    check_fields(self, (("decay_every", self.decay_every >= 0),
                        ("n_boot", self.n_boot >= 0),
                        ("fit_min_n_over_n_star", self.fit_min_n_over_n_star >= 1),
                        ("kernel_max_steps", self.kernel_max_steps >= 1)))


def cells(config: GeneralizationConfig) -> list:
  """One ensemble-job cell per width (sorted, distinct), validated by the job.

  Options enter a cell only when they differ from what the runs made before
  them used (the polish, label noise, data seed), so that their sweep
  directories (named by a digest of the cells) are found again.

  Raises:
    ValueError (lossland.job.JobError): an option the job rejects.
  """
  schedule = (dict(schedule="step", decay_every=config.decay_every, decay_factor=0.1)
              if config.decay_every else dict(schedule="constant"))
  base = dict(dataset=config.dataset, P=config.P, d=config.d, depth=config.depth,
              n_seeds=config.n_seeds, seed=0, max_steps=config.max_steps, lr=config.lr,
              x64=config.x64, alpha=config.alpha, subtract_init=config.subtract_init,
              jam_window=config.jam_window, plots=False, **schedule, **NETS[config.net])
  if config.n_test is not None:
    base["n_test"] = config.n_test
  if config.data_dir:
    base["data_dir"] = config.data_dir
  if config.jam_after_decays:
    base["jam_after_decays"] = True
  if config.polish != "none":
    base.update(polish=config.polish, polish_steps=config.polish_steps)
  if config.data_seed:
    base["data_seed"] = config.data_seed
  if config.label_noise:
    base["label_noise"] = config.label_noise
  base.update({k: v for k, v in config.job.items() if v is not None})
  out = [dict(base, width=w) for w in sorted(set(config.widths))]
  for c in out:
    job.validate(dict(c))
  return out


def noisy_data(config: GeneralizationConfig, cell: dict) -> dict | None:
  """config.json's ``"data"`` of a noisy run: what its data set is."""
  if not config.label_noise:
    return None
  noisy = {k: cell.get(k) for k in ("dataset", "P", "d", "n_test", "data_dir", "x64",
                                    "label_noise")}
  noisy["data_seed"] = config.data_seed
  return noisy


def check_data(cell: dict):
  """Builds the cells' data set once, so that unusable sizes or files fail
  before anything is written (every cell builds the same one)."""
  import jax
  values = job.validate(dict(cell))
  job.make_data(values, jax.numpy.float64 if values["x64"] else jax.numpy.float32)


def sweep_dir(config: GeneralizationConfig, cell_list) -> str:
  """``<out_dir>/generalization_sweeps/<digest of the cells>``."""
  digest = hashlib.sha1(json.dumps(cell_list, sort_keys=True).encode()).hexdigest()[:12]
  return os.path.join(config.out_dir, "generalization_sweeps", digest)


def _row_line(row) -> str:
  return (f"h={row['width']:5d} N={row['N']:8d} sat={row['frac_sat']:.2f} "
          f"test={row['mean_test_error']:.4f}+-{row['sem_test_error']:.4f} "
          f"ens={row['ensemble_test_error']:.4f} early={row['early_stop_test_error']:.4f} "
          f"var={row['output_variance']:.3g} dTheta0={row['ntk_fluctuation']:.3g} "
          f"drift={row['ntk_drift']:.3g} |f|^2={row['output_norm']:.3g} "
          f"max|grad| (not sat)={row['max_grad_norm']:.2g}"
          + (f" polished={row['n_polished']}" if row["n_polished"] else ""))


def generalization_study(config: GeneralizationConfig, cell_list,
                         log_fn: Callable = print) -> study.Study:
  """The :class:`lossland.experiments.study.Study`: every width at once, then
  the per-N rows, the kernel asymptote of the widest net and the fits."""
  def propose(pairs):
    return [] if pairs else list(cell_list)

  def analyze(pairs):
    per_n = []
    for _, rec in pairs:
      row = generalization.analyze_run(rec["run_dir"], n_ntk=config.n_ntk)
      per_n.append(row)
      log_fn(_row_line(row))
    ens = experiment.load_ensemble(max(per_n, key=lambda r: r["N"])["run_dir"])
    kernel = generalization.kernel_test_error(ens.net, ens.data, ens.loss,
                                              max_steps=config.kernel_max_steps)
    summary = generalization.summarize(
        per_n, kernel, n_boot=config.n_boot,
        fit_min_n_over_n_star=config.fit_min_n_over_n_star)
    arrays = {k: np.asarray([r[k] for r in summary["per_n"]], np.float64)
              for k in generalization.PER_N_KEYS}
    return summary, {"log": [dict(r) for r in per_n], "arrays": arrays}

  def plot(summary, extras, path):
    from lossland.plots import generalization as generalization_plots
    generalization_plots.plot_figure(summary, os.path.join(path, "generalization"))

  return study.Study(propose, analyze, plot)


def config_dict(config: GeneralizationConfig) -> dict:
  """The config as JSON (lists for tuples), for config.json."""
  return {k: list(v) if isinstance(v, tuple) else v
          for k, v in dataclasses.asdict(config).items()}


def run(config: GeneralizationConfig, log_fn: Callable = print) -> tuple:
  """Runs (or resumes) the whole study; returns ``(summary, run_dir)``.

  Every cell and the data set are checked before anything is written.
  """
  from lossland.experiments import sweep
  cell_list = cells(config)
  check_data(cell_list[0])
  where = sweep_dir(config, cell_list)
  log_fn(f"lossland generalization: {len(cell_list)} widths x {config.n_seeds} members "
         f"on {config.dataset} P={config.P} d={config.d} depth={config.depth}; "
         f"sweep directory {where}")
  return study.run_study(
      generalization_study(config, cell_list, log_fn),
      lambda cs: sweep.run_sweep(cs, where), n_rounds=0, out_dir=config.out_dir,
      name="generalization", config=config_dict(config), plots=config.plots,
      run_info=dict(cells=cell_list, sweep_dir=where,
                    data=noisy_data(config, cell_list[0])))


def report_lines(summary: dict, run_dir: str) -> list:
  """The lines the script prints at the end."""
  lines = [f"N* = {summary['n_star']}; kernel (N -> inf) test error = "
           f"{summary['kernel_test_error']}", f"cusp: {summary['cusp']}"]
  grid = summary.get("expected_exponents_grid") or {}
  for name, key, where in (
      ("tail", "fits", f"N >= {summary['fit_min_n_over_n_star']} N* = "
                       f"{summary['tail_n_min']}"),
      ("near N*", "fits_near_n_star", "N* < N below the tail"),
      ("above N*", "fits_above_n_star", "every N > N*")):
    lines.append(f"fits, {name} ({where}):")
    for k, f in summary[key].items():
      lines.append(f"  {k}: exponent {f.get('exponent')} CI {f.get('ci')} "
                   f"over N = {f.get('fitted_N')} (papers, N ~ h^2 L: "
                   f"{summary['expected_exponents'][k]}; this grid: {grid.get(k)})")
  lines.append(f"run directory: {run_dir}")
  return lines
