r"""Run a grid of ensemble jobs that survives SIGKILL and splits across jobs.

    python -m lossland.scripts.sweep --out_dir runs/sweep_jam \
        --dataset sphere --d 10 --depth 2,3 --width 4,8 --P 100,200,400 \
        --n_seeds 8 --max_steps 50000 --plots=false

Takes the options of the ensemble job (``python -m lossland.scripts.ensemble
--help``, :data:`lossland.job.SPEC`); any of them may be a comma list
(``--P 150,300 --width 6,12``) and the grid is their product, in the order
the options are given (the last varies fastest). Each cell is an ensemble run
directory under ``--out_dir/cells/<cell_id>/ensemble/``; each completed cell
is one fsync'd line of ``--out_dir/cells.jsonl``. Run the same command again
after a crash or SIGKILL: finished cells are skipped and the interrupted one
resumes from its checkpoint. ``--shard I/N`` runs the I-th of N disjoint parts
(cluster job arrays, into one shared directory or separate ones); sweeps may
share a directory at the same time. ``--batch_cells`` (default on an
accelerator) trains the cells that differ only in data and members as one
program. ``--dry_run`` lists the cells;
``--report`` prints a table and writes ``report_<metric>.png`` from
``cells.jsonl``. Layout and guarantees: docs/sweeps.md, lossland/sweep.py.

Examples:

    # 4 jobs of a SLURM array on one shared directory
    python -m lossland.scripts.sweep --out_dir $SCRATCH/jam --shard $SLURM_ARRAY_TASK_ID/4 ...
    # what is there, and a report against P/N, one line per depth
    python -m lossland.scripts.sweep --out_dir $SCRATCH/jam --report
"""
import dataclasses
import os
import re
import sys

from lossland.experiments import sweep
from lossland.experiments import options
from lossland.experiments.options import option
from lossland.plots import sweep as sweep_plots
from lossland.scripts import _cli

@dataclasses.dataclass(frozen=True)
class SweepOptions:
  """The sweep's own options (each field is the flag of the same name); every
  other flag is a grid option of the ensemble job."""
  out_dir: str | None = option(None, "Sweep directory (required): cells.jsonl and "
                               "cells/<cell_id>/.")
  shard: str = option("0/1", "Run only the I-th of N round-robin parts of the grid, as I/N "
                      "(0 <= I < N), e.g. $SLURM_ARRAY_TASK_ID/$N.")
  dry_run: bool = option(False, "List the cells (and which are done) and write nothing.")
  report: bool = option(False, "Print a table and write report_<metric>.png into --out_dir "
                        "from cells.jsonl (restricted to the grid if grid options are "
                        "given); runs nothing.")
  report_x: str = option("auto", "x axis of the report figures: an option name, 'N', 'P' or "
                         "'P/N' (auto: P/N when P, width or N is swept, else the first "
                         "swept option).")
  poll_seconds: float = option(2.0, "Wait between looks at cells that another process is "
                               "running.")
  batch_cells: bool | None = option(
      None, "Train the cells that share a network and protocol (they differ in data and "
      "members: P, data seed, seeds) as one program, each with its own run directory, "
      "line and resume; the numbers equal those cell by cell up to rounding. Default: on "
      "an accelerator, off on a CPU (docs/engine.md).")


_SPEC = options.spec_of(SweepOptions)
_cli.define_flags(_SPEC, __name__)

# The sweep's own --out_dir replaces the job's (each cell gets its own).
_NOT_GRID = ("out_dir",)


def _job():
  from lossland.experiments import job
  return job


def _grid_options():
  return {o.name: o for o in _job().SPEC if o.name not in _NOT_GRID}


def _options_help() -> str:
  lines = ["\nGrid options (each may be a comma list; defaults of the ensemble job):"]
  for o in _grid_options().values():
    kind = "|".join(o.choices) if o.type == "enum" else o.type
    lines.append(f"  --{o.name} ({kind}, default {o.default}): {o.help}")
  return "\n".join(lines)


_AXES = {}


def _parse_shard(text: str) -> tuple:
  m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
  if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
    raise _cli.UsageError(f"--shard must be I/N with 0 <= I < N, got {text!r}")
  return int(m.group(1)), int(m.group(2))


def _check_out_dir(path: str):
  probe = os.path.abspath(path)
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise _cli.UsageError(f"--out_dir {path}: {probe} exists and is not a directory")
  if not os.access(probe, os.W_OK | os.X_OK):
    raise _cli.UsageError(f"--out_dir {path}: {probe} is not writable")


def _cells():
  base = {k: v[0] for k, v in _AXES.items() if len(v) == 1}
  axes = {k: v for k, v in _AXES.items() if len(v) > 1}
  return sweep.expand_grid(base, axes), list(axes)


def _dry_run(o, cells, keys, shard_i, shard_n):
  out_dir = o.out_dir
  values, ids = sweep.prepare_cells(cells)
  states = sweep.cell_states(out_dir, ids)
  rows, n_mine, n_done = [], 0, 0
  for k, (v, cid, state) in enumerate(zip(values, ids, states)):
    mine = k % shard_n == shard_i
    n_mine += mine
    n_done += mine and state == "done"
    rows.append((k, cid, "*" if mine else "", sweep.cell_label(v, keys), state))
  w = max(len(r[3]) for r in rows)
  print(f"{'#':>4}  {'cell_id':12}  shard  {'cell':{w}}  state")
  for k, cid, mine, label, state in rows:
    print(f"{k:>4}  {cid:12}  {mine:^5}  {label:{w}}  {state}")
  print(f"{len(cells)} cells; {n_mine} in shard {shard_i}/{shard_n} (*), "
        f"{n_done} of them done; dry run: nothing written")


def _sort_key(v):
  if isinstance(v, (int, float)) and not isinstance(v, bool):
    return (0, v, "")
  return (1, 0, str(v))


def _report(o, cells, grid_given):
  out_dir = o.out_dir
  records = sweep.read_cells(out_dir)
  if not records:
    raise _cli.UsageError(f"no completed cells in {os.path.join(out_dir, sweep.CELLS_FILE)}")
  if grid_given:
    _, ids = sweep.prepare_cells(cells)
    by_id = {r["cell_id"]: r for r in records}
    records = [by_id[c] for c in dict.fromkeys(ids) if c in by_id]
    if not records:
      raise _cli.UsageError(f"none of the {len(ids)} cells of this grid is in "
                            f"{os.path.join(out_dir, sweep.CELLS_FILE)}")
  else:  # file order is completion order: sort by the swept options
    keys = sweep.swept_options(records)
    records.sort(key=lambda r: tuple(_sort_key(r["flags"].get(k)) for k in keys))
  x = o.report_x
  known = set(sweep.swept_options(records)) | {"auto", "P/N", "N", "P"}
  if x not in known:
    raise _cli.UsageError(f"--report_x must be 'auto', 'P/N', 'N', 'P' or a swept "
                          f"option ({', '.join(sorted(known - {'auto', 'P/N', 'N', 'P'})) or 'none'}), "
                          f"got {x!r}")
  print(sweep.report_table(records))
  series = sweep.report_series(records, x)
  paths = sweep_plots.plot_report(series, out_dir)
  x, lines = series["x"], series["line_keys"]
  print(f"{len(records)} cells; figures against {x}"
        + (f", one line per {', '.join(lines)}" if lines else "") + ":")
  for p in paths:
    print(f"  {p}")


def main(argv):
  if len(argv) > 1:
    raise _cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  o = SweepOptions(**_cli.flag_values(_SPEC))
  if not o.out_dir:
    raise _cli.UsageError("--out_dir is required")
  shard_i, shard_n = _parse_shard(o.shard)
  if o.dry_run and o.report:
    raise _cli.UsageError("--dry_run and --report exclude each other")
  if o.poll_seconds <= 0:
    raise _cli.UsageError(f"--poll_seconds must be positive, got {o.poll_seconds}")
  cells, keys = _cells()
  if o.report:
    return _report(o, cells, bool(_AXES))
  if o.dry_run:
    return _dry_run(o, cells, keys, shard_i, shard_n)
  _check_out_dir(o.out_dir)
  values, _ = sweep.prepare_cells(cells)   # bad options: one line, nothing written
  import jax
  jax.config.update("jax_enable_x64", values[0]["x64"])
  n_mine = len(sweep.shard(cells, shard_i, shard_n))
  print(f"lossland sweep: {len(cells)} cells ({' x '.join(f'{len(_AXES[k])} {k}' for k in keys) or 'one cell'}), "
        f"shard {shard_i}/{shard_n}: {n_mine} cells, into {o.out_dir}", flush=True)

  def done(rec, how):
    if how == "recorded":
      return
    m = sweep.cell_metrics(rec)
    print(f"{how} cell {rec['cell_id']} ({sweep.cell_label(rec['flags'], keys)}): "
          f"N={m['N']} P/N={m['P/N']:.3g} sat {m['frac_sat']:.2f} "
          f"test err {m['mean_test_error']:.4f} ensemble {m['ensemble_test_error']:.4f}"
          f" -> {rec['run_dir']}", flush=True)

  from lossland.experiments import grid
  batch = grid.auto_batch_cells() if o.batch_cells is None else o.batch_cells
  records = sweep.run_sweep(cells, o.out_dir, shard=(shard_i, shard_n),
                            progress=True, poll_seconds=o.poll_seconds, on_cell_done=done,
                            batch_cells=batch)
  print(sweep.report_table(records, keys))
  print(f"cells: {os.path.join(o.out_dir, sweep.CELLS_FILE)}")


def _interrupted():
  return "interrupted; run the same command to resume (finished cells are kept)"


if __name__ == "__main__":
  try:
    _AXES, sys.argv = sweep.split_grid_argv(sys.argv, _job().SPEC, exclude=_NOT_GRID)
  except ValueError as e:
    _cli.fail(e)
  __doc__ += _options_help()
  _cli.run(main, interrupted=_interrupted)
