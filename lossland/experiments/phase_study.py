"""The jamming phase diagram (1809.09349) as a study: P*(N) per depth by
bracketing and bisection over P at fixed N, then the analysis of
:func:`lossland.phase.analyze` (logistic fits, N_Delta/N at jamming, theta,
gamma, avalanches) and its figures.

:class:`PhaseConfig` holds the study's settings (its fields are the flags of
``python -m lossland.scripts.phase``); ``job`` holds the ensemble-job options
given to every cell (the training protocol, the net); the presets are values
in :mod:`lossland.configs.phase`. :func:`run` runs a whole study: one phase
run directory per size, and with several ``sizes`` a ``phase_sizes`` run
directory comparing them (:func:`lossland.phase.finite_size`).
"""
import dataclasses
import math
import os
from typing import Callable, Sequence

from lossland import nets, phase
from lossland.experiments import finish_from, grid, job, study
from lossland.experiments.options import OptionError, check_fields, option

# Job options of the ``net`` choices (docs/jamming.md, "The authors' networks").
NETS = {
    "default": {},
    "authors": dict(parametrization="standard", init="orthogonal_gain1",
                    normalize_activation=False, bias=True),
}

# Job options that every cell carries even at the job's default (a cell's id
# leaves defaults out, so this only fixes what config.json shows).
_ALWAYS = ("max_steps", "lr", "schedule", "optimizer", "jam_window")


@dataclasses.dataclass(frozen=True)
class PhaseConfig:
  """The settings of one phase-diagram study (each field is a flag)."""
  depths: tuple[int, ...] = option((), "Depths L (hidden layers).")
  widths: tuple[int, ...] = option((), "Width h per depth (one value: every depth; d = h "
                                   "unless --d).")
  N: tuple[int, ...] = option((), "Target weight count per depth (sets the width; instead "
                              "of --widths).")
  sizes: tuple[int, ...] = option(
      (), "Finite-size check: target weight counts N; the whole search runs at each (d = h "
      "per depth, or --d), one phase run directory per size, plus a phase_sizes run "
      "directory with P*/N and the depth spread vs N (instead of --N / --widths).")
  d: int | None = option(None, "Input dimension (default: d = h per depth).")
  p_over_n: tuple[float, ...] = option((), "Initial grid of P/N.")
  rounds: int = option(2, "Bracketing/bisection rounds after the grid.")
  n_seeds: int = option(8, "Members per cell.")
  seed: int = option(0, "Seed of member 0.")
  dataset: str = option("sphere", "Training data.", ("sphere", "digits", "mnist",
                                                     "fashion_mnist", "cifar10", "npz"))
  data_file: str | None = option(None, "--dataset npz file.")
  net: str = option(
      "default", "Network: default (lossland's: NTK parametrization, ReLU*sqrt2, no biases, "
      "normal init) or authors (nn_jamming's: standard parametrization, plain ReLU, biases "
      "zero at init, orthogonal gain 1; nets.authors_net); job flags such as --bias "
      "override it.", tuple(NETS))
  x64: bool = option(True, "float64 (recommended near jamming).")
  out_dir: str = option("runs/phase_run", "Sweep cells and the phase run directory go here.")
  shard: str = option("0/1", "I/N: run the I-th of N parts of the initial grid only.")
  n_boot: int = option(500, "Bootstrap replicates of the exponent fits.")
  gap_floor: float = option(
      phase.GAP_FLOOR, "Exponent fits leave out Delta / sqrt(loss) (Delta > 0) and -Delta (Delta < 0) at "
      "or below this: points at the margin, zero up to the accuracy of a force-balanced "
      "state (counted as n_below_floor; docs/jamming.md). 0: fit every sample.")
  plots: bool = option(True, "Write PNG figures.")
  workers: int | None = option(
      None, "Processes that run the cells of each batch (the initial grid, each bisection "
      "round's new cells) concurrently; default 1, with --preset cpu on a CPU min(2, cpu "
      "count). The results do not depend on it. On a GPU the workers share the device: "
      "start with XLA_PYTHON_CLIENT_PREALLOCATE=false.")
  batch_cells: bool | None = option(
      None, "Train the new cells of one depth in each batch (the initial grid, each "
      "round) as one program, each with its own run directory, line and resume; the "
      "numbers equal those cell by cell up to rounding. Default: on an accelerator, off "
      "on a CPU (no gain there: docs/engine.md).")
  bisect_points: int = option(
      1, "New P/N per depth in each bracketing/bisection round: k points split the "
      "bracket into k + 1 parts (a parallel bisection; with --batch_cells one program per "
      "depth and round).")
  finish_from: str | None = option(
      None, "Continue the finishing stage of the study in this out_dir, run with the same "
      "options but the finish's own (e.g. a smaller --finish_iters): each cell it has "
      "continues that cell's finish for --finish_iters more iterations per member (the "
      "ensemble job's --finish_from) instead of training again; cells it lacks (new P/N "
      "of the bisection) run whole. Needs --finish and another --out_dir.")
  job: dict = option({}, "Ensemble-job options of every cell (the protocol).", flag=False)
  auto_workers: bool = option(False, "workers=None means lossland.experiments.grid."
                              "auto_workers() (else 1).", flag=False)
  preset: str | None = option(None, "The preset this config came from.", flag=False)

  def __post_init__(self):
    if not self.depths:
      raise OptionError("give --preset or --depths")
    lists = (("depths", self.depths), ("widths", self.widths), ("N", self.N),
             ("sizes", self.sizes), ("p_over_n", self.p_over_n))
    for name, vals in lists:
      if any(v <= 0 for v in vals):
        raise OptionError(f"--{name} must be positive, got {','.join(map(str, vals))}")
    if self.sizes and (self.N or self.widths):
      raise OptionError("--sizes replaces --N and --widths; give one of them")
    if self.N and len(self.N) not in (1, len(self.depths)):
      raise OptionError(f"--N needs 1 or {len(self.depths)} values, got {len(self.N)}")
    if not (self.sizes or self.N) and len(self.widths) not in (1, len(self.depths)):
      raise OptionError(f"need one width per depth ({len(self.depths)}): --widths or --N")
    if not self.p_over_n:
      raise OptionError("--p_over_n needs positive values")
    if self.finish_from is not None:
      if self.job.get("finish", "none") == "none":
        raise OptionError("--finish_from continues a finishing stage: give --finish")
      if os.path.abspath(self.finish_from) == os.path.abspath(self.out_dir):
        raise OptionError("--finish_from needs another --out_dir than the study it "
                          "continues")
    self.shard_index()
    check_fields(self, (("rounds", self.rounds >= 0), ("n_seeds", self.n_seeds > 0),
                        ("n_boot", self.n_boot >= 0),
                        ("bisect_points", 1 <= self.bisect_points <= 64),
                        ("gap_floor", math.isfinite(self.gap_floor) and self.gap_floor >= 0),
                        ("workers", self.workers is None or self.workers > 0),
                        ("d", self.d is None or self.d > 0)))

  def shard_index(self) -> tuple:
    """``(i, n)`` of ``shard``."""
    try:
      i, n = (int(t) for t in self.shard.split("/"))
      if not (n >= 1 and 0 <= i < n):
        raise ValueError
    except ValueError:
      raise OptionError(f"--shard must be I/N with 0 <= I < N, got {self.shard}") from None
    return i, n

  def batched(self) -> bool:
    return grid.auto_batch_cells() if self.batch_cells is None else self.batch_cells

  def n_workers(self) -> int:
    if self.workers is not None:
      return self.workers
    return grid.auto_workers() if self.auto_workers else 1


def _d_eq_h(n_target: int, depth: int) -> int:
  # d = h: N = L h^2 + h
  return min(range(1, 2000), key=lambda h: abs(nets.n_weights(h, h, depth) - n_target))


def widths_for(config: PhaseConfig, n_target: int | None = None) -> list:
  """One width per depth: the nearest to ``n_target`` weights (d = h, or
  ``config.d``), or from ``config.N``, or ``config.widths``."""
  def nearest(n, L):
    return nets.width_for_n(n, config.d, L) if config.d else _d_eq_h(n, L)
  if n_target is not None:
    return [nearest(n_target, L) for L in config.depths]
  if config.N:
    ns = list(config.N) * (len(config.depths) if len(config.N) == 1 else 1)
    return [nearest(n, L) for n, L in zip(ns, config.depths)]
  return list(config.widths) * (len(config.depths) if len(config.widths) == 1 else 1)


def cell_groups(config: PhaseConfig, widths: Sequence[int]) -> list:
  """The cell template of every depth at these widths, validated by the job.

  Each is an ensemble-job options dict without ``P``, plus ``"_N"``, its
  weight count.

  Raises:
    ValueError (lossland.job.JobError): an option the job rejects.
  """
  defaults = job.defaults()
  groups = []
  for L, h in zip(config.depths, widths):
    d = config.d or h
    base = {"dataset": config.dataset, "d": d, "depth": L, "width": h,
            "n_seeds": config.n_seeds, "seed": config.seed,
            **{k: defaults[k] for k in _ALWAYS}, "x64": config.x64,
            **NETS[config.net],
            # the protocol; explicit job options override the net's
            **{k: v for k, v in config.job.items() if v is not None},
            "plots": False,
            # which points are unsatisfied at each measurement: avalanches
            "record_unsat": True}
    if config.dataset == "sphere":
      base["n_test"] = 0
    if config.data_file:
      base["data_file"] = config.data_file
    base["_N"] = nets.n_weights(d, h, L)
    groups.append(base)
  for g in groups:
    job.configs(job.validate(dict(_base(g), P=100)))
  return groups


def _base(group: dict) -> dict:
  return {k: v for k, v in group.items() if not k.startswith("_")}


def _cell(group: dict, x: float) -> dict:
  return dict(_base(group), P=max(2, int(round(x * group["_N"]))))


def _group_of(groups, cell) -> int:
  rest = {k: v for k, v in cell.items() if k != "P"}
  return next(i for i, g in enumerate(groups) if _base(g) == rest)


def transition_proposer(groups: Sequence[dict], x_init: Sequence[float],
                        rel_tol: float = 0.03, n_points: int = 1) -> Callable:
  """A study's ``propose`` for bracketing and bisection over P at fixed N.

  The first call gives the initial grid ``x_init`` (P = round(x N)) of every
  group; each later call gives, per group, the next ``n_points`` P/N of
  :func:`lossland.phase.propose_points` from that group's records. P values
  already measured are not proposed again.
  """
  def propose(pairs):
    recs = [dict() for _ in groups]
    for c, r in pairs:
      recs[_group_of(groups, c)][c["P"]] = r
    if not pairs:
      todo = [(i, _cell(g, x)) for i, g in enumerate(groups) for x in x_init]
    else:
      todo = []
      for i, g in enumerate(groups):
        xs = phase.propose_points([phase.cell_stats(r) for r in recs[i].values()],
                                  n_points, rel_tol=rel_tol)
        todo += [(i, _cell(g, x)) for x in xs]
    seen = set()
    out = []
    for i, c in todo:
      if c["P"] not in recs[i] and (i, c["P"]) not in seen:
        seen.add((i, c["P"]))
        out.append(c)
    return out
  return propose


def _describe(cell) -> str:
  return f"L={cell.get('depth')} P={cell['P']}"


def search_transition(groups: Sequence[dict], x_init: Sequence[float],
                      run_cells_fn: Callable, n_rounds: int = 3,
                      rel_tol: float = 0.03, log_fn: Callable | None = None) -> list:
  """Bracketing and bisection over P at fixed N, for several groups at once.

  Args:
    groups: one base cell per group (e.g. per depth): options of the ensemble
      job without ``P``, plus ``"_N"``, the group's weight count N (turns P/N
      into P; keys starting with "_" are not passed to the job).
    x_init: initial P/N grid (every group).
    run_cells_fn: ``fn(cells) -> records`` (same order), e.g. sweep.run_sweep.
    n_rounds: bracketing/bisection rounds after the initial grid.
    rel_tol: stop bisecting a group when its bracket is this narrow.
    log_fn: optional ``fn(str)``.

  Returns:
    per group, the list of its records (all P measured), sorted by P.
  """
  pairs = study.run_rounds(transition_proposer(groups, x_init, rel_tol), run_cells_fn,
                           n_rounds, log_fn, _describe)
  recs = [dict() for _ in groups]
  for c, r in pairs:
    recs[_group_of(groups, c)][c["P"]] = r
  return [[r[p] for p in sorted(r)] for r in recs]


def phase_study(config: PhaseConfig, groups: Sequence[dict], sweep_dir: str,
                rel_tol: float = 0.03) -> study.Study:
  """The :class:`lossland.experiments.study.Study` of one size's groups."""
  def analyze(pairs):
    by_depth = {}
    for i, g in enumerate(groups):
      recs = {c["P"]: r for c, r in pairs if _group_of(groups, c) == i}
      by_depth[g["depth"]] = [recs[p] for p in sorted(recs)]
    result = phase.analyze(by_depth, n_boot=config.n_boot, gap_floor=config.gap_floor)
    samples = result.pop("_samples")
    result["settings"] = _settings(config, groups)
    result["preset"] = config.preset
    result["sweep_dir"] = sweep_dir
    extras = {"samples": samples,
              "log": [{"depth": L, **c} for L, v in result["per_depth"].items()
                      for c in v["cells"]],
              "arrays": dict(delta_positive=samples["positive"],
                             delta_negative=samples["negative"],
                             delta_positive_stalled=samples["positive_stalled"],
                             delta_negative_stalled=samples["negative_stalled"],
                             avalanche_sizes=samples["avalanche_sizes"])}
    return result, extras

  def plot(result, extras, path):
    from lossland.plots import phase as phase_plots
    return phase_plots.plot_all({**result, "_samples": extras["samples"]}, path)

  return study.Study(transition_proposer(groups, config.p_over_n, rel_tol,
                                         config.bisect_points), analyze, plot)


def _settings(config: PhaseConfig, groups) -> dict:
  """The resolved settings for summary.json: the study's fields, the cells'
  job options and the widths."""
  s = {k: v for k, v in config_dict(config).items() if k not in ("shard", "job")}
  s.update({k: v for k, v in config.job.items()})
  s["widths"] = [g["width"] for g in groups]
  s["workers"] = config.n_workers()
  s["batch_cells"] = config.batched()
  return s


def config_dict(config: PhaseConfig) -> dict:
  """The config as JSON (lists for tuples), for config.json."""
  return {k: list(v) if isinstance(v, tuple) else v
          for k, v in dataclasses.asdict(config).items()}


def run(config: PhaseConfig, log_fn: Callable = print) -> dict:
  """Runs a whole phase study (every size); returns what it wrote.

  Every cell of every size is validated before anything runs (a bad option
  raises ValueError and nothing is written).

  Returns:
    ``{"runs": [(result, run_dir) per size], "finite_size": (fs, run_dir) or
    None, "sharded": bool}`` (``runs`` empty for a shard).
  """
  sizes = config.sizes or (None,)
  groups_per_size = [cell_groups(config, widths_for(config, n)) for n in sizes]
  i, n = config.shard_index()
  sweep_dir = os.path.join(config.out_dir, "sweep")
  workers = config.n_workers()
  batch = config.batched()
  run_cells = lambda cells: grid.run_cells(cells, sweep_dir, shard=(i, n), workers=workers,
                                           log_fn=log_fn, batch_cells=batch)
  if config.finish_from is not None:
    run_cells = finish_from.continuing(run_cells, finish_from.study_runs(config.finish_from),
                                       log_fn)
  runs = []
  for n_target, groups in zip(sizes, groups_per_size):
    if n_target is not None:
      log_fn(f"size N ~ {n_target}: widths {[g['width'] for g in groups]}")
    out = study.run_study(phase_study(config, groups, sweep_dir), run_cells,
                          n_rounds=config.rounds if n == 1 else 0, out_dir=config.out_dir,
                          name="phase", config=config_dict(config), plots=config.plots,
                          log_fn=log_fn, describe=_describe, analyze=n == 1)
    if out is not None:
      runs.append(out)
  fs = None
  if n == 1 and len(sizes) > 1:
    fs = _finite_size(config, runs)
  return {"runs": runs, "finite_size": fs, "sharded": n > 1}


def _finite_size(config: PhaseConfig, runs) -> tuple:
  fs = phase.finite_size([r for r, _ in runs])
  fs["run_dirs"] = [p for _, p in runs]

  def plot(result, extras, path):
    from lossland.plots import phase as phase_plots
    return os.path.basename(phase_plots.plot_finite_size(result,
                                                         os.path.join(path, "p_star_vs_n.png")))
  path = study.write_run(config.out_dir, "phase_sizes", config_dict(config), fs, {},
                         plot if config.plots else None)
  return fs, path


def _fmt(v) -> str:
  return "None" if v is None else f"{v:.3f}"


def _avalanche_line(a) -> str:
  """The report's line on the avalanches of the converged runs near P*."""
  if a is None:
    return "avalanches of converged runs near P*: none recorded"
  d = a["distribution"]
  verdict = d.get("favored") or d.get("reason")
  return (f"avalanches of converged runs near P*: {a['n_members']} members, "
          f"{a['n_nonzero']} nonzero sizes, mean {a['mean']:.2f}, max {a['max']}; "
          f"power law vs exponential: {verdict}"
          + ("" if d.get("vuong_z") is None else
             f" (Vuong z {d['vuong_z']:.2f}, p {d['p_value']:.3g})"))


def _ci(ci) -> str:
  lo, hi = ci or (None, None)
  return f"[{_fmt(lo)}, {_fmt(hi)}]"


def _exponent_line(result: dict) -> str:
  """The report's line on theta and gamma: those of the force-balanced
  jammed members near P* (the summary's), or why there are none, and those
  of the states that stopped without force balance, labelled as such."""
  if result["theta"] is None and result["gamma"] is None:
    head = ("theta, gamma: none (no force-balanced jammed member in the cell nearest P* "
            "of a depth whose P* was found)")
  else:
    head = (f"theta {_fmt(result['theta'])} {_ci(result['theta_ci'])}, gamma "
            f"{_fmt(result['gamma'])} {_ci(result['gamma_ci'])} (force-balanced jammed "
            "members of the cell nearest P*)")
  if result.get("theta_stalled") is None and result.get("gamma_stalled") is None:
    return head
  return (head + f"; of the unbalanced states, not minima: theta "
          f"{_fmt(result.get('theta_stalled'))} {_ci(result.get('theta_stalled_ci'))}, gamma "
          f"{_fmt(result.get('gamma_stalled'))} {_ci(result.get('gamma_stalled_ci'))}")


def _finish_note(fin: dict) -> str:
  """How many members the finish entered, how many of them ran out of
  iterations (and of those, how many are force-balanced with no descent the
  probe finds) and how many more the descent probe found descending (still
  descending, so never jammed); "" without a finish."""
  if not fin.get("entered"):
    return ""
  probe = (f", {fin['probe_descends']} more found descending by the descent probe"
           if fin.get("probe_descends") else "")
  near = (f"; {fin['balanced_max_iter']} of them force-balanced, with no descent the probe "
          "finds" if fin.get("balanced_max_iter") else "")
  return (f"; finish: {fin['entered']} entered, {fin.get('max_iter', 0)} ran out of "
          f"iterations (still descending: more --finish_iters may settle them{near}){probe}")


def _scale_note(sc: dict, n_scaled: int = 0) -> str:
  """The members the job scaled to sat (``n_scaled``), the output scale's
  residual of the members left with loss > 0 that are not jammed minima
  (how many would lower their loss with larger outputs) and how many
  members left with loss > 0 misclassify no point; "" where there is
  nothing to say."""
  out = (f"; {n_scaled} sat by scaling the last layer (they classified every point)"
         if n_scaled else "")
  if not sc.get("n_measured"):
    return out
  return out + (f"; loss > 0, not jammed: {sc['n_positive']} of {sc['n_measured']} still "
                f"gain from larger outputs (scale residual median {sc['median']:+.2g}), "
                f"{sc['n_zero_error']} misclassify no point (sat once the last layer is "
                "scaled up: --scale_to_sat)")


def report_lines(out: dict) -> list:
  """The lines the script prints for :func:`run`'s result."""
  lines = []
  for result, run_dir in out["runs"]:
    for L, v in result["per_depth"].items():
      lo, hi = v["p_star_ci"]
      ulo, uhi = v.get("p_star_ci_unbalanced_sat") or (None, None)
      side = v.get("p_star_unbalanced_sat_outside")
      upper = f"{_fmt(v.get('p_star_over_n_unbalanced_sat'))} [{_fmt(ulo)}, {_fmt(uhi)}]"
      if side is not None and v.get("p_star_over_n_unbalanced_sat") is None:
        where = "above the largest" if side[0] == ">" else "below the smallest"
        upper = f"{side[0]} {side[1]:.3g}, {where} P/N measured"
      lines.append(f"L={L} h={v['width']} N={v['N']}: P*/N = {_fmt(v['p_star_over_n'])} "
                   f"[{_fmt(lo)}, {_fmt(hi)}] (unbalanced members as sat: {upper}), "
                   f"N_Delta/N at jamming {_fmt(v['nd_over_n_at_jamming'])}, "
                   f"classes {v['counts']}" + _finish_note(v.get("finish") or {})
                   + _scale_note(v.get("scale_residual") or {}, v.get("n_scaled_to_sat", 0)))
    lines.append(f"depth spread {_fmt(result['depth_spread'])}")
    lines.append(_exponent_line(result))
    lines.append(_avalanche_line(result.get("avalanches_converged")))
    lines.append(f"run directory: {run_dir}")
  if out["finite_size"] is not None:
    fs, path = out["finite_size"]
    lines.append("finite size: N " + ", ".join(f"{n:.0f}" for n in fs["sizes"]) +
                 "; depth spread " + ", ".join(_fmt(v) for v in fs["depth_spread"]) +
                 f"; slope of log spread vs log N {_fmt(fs['spread_slope'])}")
    ext = fs.get("extrapolation") or {}
    for L, e in ext.get("per_depth", {}).items():
      ci = e.get("p_inf_ci") or [None, None]
      lines.append(f"L={L}: P*/N extrapolated to N -> inf ({ext.get('model_name')}) "
                   f"{_fmt(e.get('p_inf'))} [{_fmt(ci[0])}, {_fmt(ci[1])}]"
                   + ("" if e.get("p_inf") is not None else f" ({e.get('reason')})"))
    sp = ext.get("spread") or {}
    if sp.get("spread") is not None:
      lines.append(f"spread of the extrapolated P*/N over depths {_fmt(sp['spread'])}, "
                   "one common limit: p = " + ("None" if sp.get("p_value") is None
                                                 else f"{sp['p_value']:.3g}"))
    lines.append(f"run directory: {path}")
  return lines
