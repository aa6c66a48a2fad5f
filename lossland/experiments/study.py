"""One study engine: rounds of cells, one analysis, one run directory.

A grid-shaped experiment (the jamming phase diagram, the generalization
curve) is a :class:`Study`, a triple of functions:

* ``propose(records) -> cells``: the cells to run next, given every
  ``(cell, record)`` pair measured so far (``[]``: nothing more to run);
  the first call gets ``[]`` and returns the initial grid; later calls may
  bracket, bisect or refine.
* ``analyze(records) -> (result, extras)``: the study's numbers (a JSON
  dict for summary.json) and ``extras``: ``"arrays"`` (for arrays.npz),
  ``"log"`` (rows for metrics.jsonl) and anything the plot needs.
* ``plot(result, extras, run_path) -> figures`` (or None): the figures,
  written into the run directory.

:func:`run_study` runs the rounds with any ``run_cells`` (usually
:func:`lossland.experiments.grid.run_cells`: sweep directory, shards,
workers, resume) and writes ``<out_dir>/<name>/<UTC time>_<hash>/``.
Sharded runs stop after the initial grid (:func:`run_rounds` with
``n_rounds=0``) and analyze nothing.
"""
from typing import Callable, NamedTuple, Sequence

from lossland import io


class Study(NamedTuple):
  """A grid-shaped experiment: ``propose``, ``analyze``, ``plot`` (see the module)."""
  propose: Callable
  analyze: Callable
  plot: Callable | None = None


def run_rounds(propose: Callable, run_cells: Callable, n_rounds: int,
               log_fn: Callable | None = None, describe: Callable = str) -> list:
  """Runs the initial grid and up to ``n_rounds`` proposed rounds.

  Args:
    propose: ``fn(pairs) -> cells`` (see :class:`Study`).
    run_cells: ``fn(cells) -> records`` (same order).
    n_rounds: rounds after the initial grid.
    log_fn: optional ``fn(str)``, one line per round.
    describe: ``fn(cell) -> str`` for that line.

  Returns:
    every ``(cell, record)`` pair, in the order run.
  """
  pairs = []
  for rnd in range(n_rounds + 1):
    cells = list(propose(pairs))
    if not cells:
      break
    if log_fn:
      log_fn(f"round {rnd}: {len(cells)} cell(s): " + ", ".join(map(describe, cells)))
    pairs.extend(zip(cells, run_cells(cells)))
  return pairs


def write_run(out_dir: str, name: str, config: dict, result: dict, extras: dict,
              plot: Callable | None = None, run_info: dict | None = None) -> str:
  """Writes a study's run directory; returns its path.

  ``config`` goes to config.json (with ``run_info``'s entries), ``extras["log"]``
  to metrics.jsonl, ``extras["arrays"]`` to arrays.npz, ``result`` to
  summary.json (with ``"figures"`` when ``plot`` returns them).
  """
  with io.new_run(out_dir, name, config, **(run_info or {})) as w:
    if extras.get("log") is not None:
      w.log(extras["log"])
    if extras.get("arrays"):
      w.save_arrays(**extras["arrays"])
    figures = plot(result, extras, w.path) if plot is not None else None
    if figures is not None:
      result["figures"] = figures
    w.write_json("summary.json", result)
  return w.final_path


def run_study(study: Study, run_cells: Callable, *, n_rounds: int, out_dir: str,
              name: str, config: dict, plots: bool = True, log_fn: Callable | None = None,
              describe: Callable = str, run_info: dict | None = None,
              analyze: bool = True):
  """Rounds of cells, the analysis and the run directory of one study.

  Args:
    study: the :class:`Study`.
    run_cells: ``fn(cells) -> records``.
    n_rounds: rounds after the initial grid.
    out_dir, name: the run directory goes under ``<out_dir>/<name>/``.
    config: the settings for config.json.
    plots: call ``study.plot``.
    log_fn, describe: see :func:`run_rounds`.
    run_info: more entries of config.json (e.g. the cells).
    analyze: False: run the cells only (a shard) and return None.

  Returns:
    ``(result, run_dir)``, or None when ``analyze`` is False.
  """
  pairs = run_rounds(study.propose, run_cells, n_rounds, log_fn, describe)
  if not analyze:
    return None
  result, extras = study.analyze(pairs)
  run_dir = write_run(out_dir, name, config, result, extras,
                      study.plot if plots else None, run_info)
  return result, run_dir


def records_by(pairs: Sequence, key: Callable) -> dict:
  """Groups ``(cell, record)`` pairs by ``key(cell)``: dict key -> records,
  each group in the order run."""
  out = {}
  for cell, rec in pairs:
    out.setdefault(key(cell), []).append(rec)
  return out
