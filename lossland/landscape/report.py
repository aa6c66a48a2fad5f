"""The disconnectivity figure and summary numbers of a landscape database: one
helper for the study (:func:`lossland.landscape.study.run_study`), the re-analysis
of ``python -m lossland.scripts.landscape --from_db`` and the grid of
``python -m lossland.scripts.landscape_grid``.
"""

import json
import os
from typing import NamedTuple, Optional, Sequence

import numpy as np

from lossland.io import InputError
from lossland.landscape import disconnectivity, metrics

# Per-minimum values the study stores (``Database.update_metrics``).
PER_MINIMUM = ('test_accuracy', 'train_accuracy')


class Graph(NamedTuple):
  """Minima, transition states and per-minimum values of a database.

  Attributes:
    ids: ``[M]`` database ids of the minima.
    min_energies: ``[M]``.
    ts_energies: ``[T]``.
    ts_pairs: ``[T, 2]`` indices into ``min_energies``.
    per_minimum: ``{name: [M] values}`` for the names of :data:`PER_MINIMUM` that at
      least one minimum has (NaN where a minimum lacks it).
  """
  ids: np.ndarray
  min_energies: np.ndarray
  ts_energies: np.ndarray
  ts_pairs: np.ndarray
  per_minimum: dict


def read_graph(db, names: Sequence[str] = PER_MINIMUM) -> Graph:
  """The graph of ``db`` (a :class:`lossland.landscape.Database`) with the
  per-minimum values ``names`` read from each minimum's stored metrics."""
  ids, me, te, tp = db.graph_arrays()
  mins = {m.id: m for m in db.minima()}
  values = {}
  for name in names:
    v = np.array([mins[i].metrics.get(name, np.nan) for i in ids], np.float64)
    if np.isfinite(v).any():
      values[name] = v
  return Graph(ids, me, te, tp, values)


def summarize(graph: Graph, temperature: float) -> dict:
  """:func:`lossland.landscape.metrics.landscape_metrics` of the graph, with its
  per-minimum values summarised too (a JSON-serialisable dict)."""
  return metrics.landscape_metrics(graph.min_energies, graph.ts_energies, graph.ts_pairs,
                                   temperature=temperature, per_minimum=graph.per_minimum)


def draw(graph: Graph, ax, title: str = '', n_levels: int = 25,
         color_by: str = 'test_accuracy', value_label: Optional[str] = None):
  """Builds the disconnectivity tree and draws it on ``ax``, leaves coloured by the
  per-minimum value ``color_by`` (uncoloured if the graph lacks it).

  Returns:
    The :class:`lossland.landscape.disconnectivity.DisconnectivityTree`.
  """
  tree = disconnectivity.build_tree(graph.min_energies, graph.ts_energies, graph.ts_pairs,
                                    n_levels=n_levels)
  values = graph.per_minimum.get(color_by)
  label = value_label if value_label is not None else color_by.replace('_', ' ')
  disconnectivity.plot_disconnectivity(tree, graph.min_energies, ax=ax, values=values,
                                       value_label=label if values is not None else '',
                                       title=title)
  return tree


def save_figure(graph: Graph, path: str, title: str = '', n_levels: int = 25,
                figsize=(6, 5), dpi: int = 120):
  """:func:`draw` into a new figure saved as ``path`` (PNG).

  Returns:
    The disconnectivity tree.
  """
  from lossland.plots import _agg  # the one backend choice
  plt = _agg.pyplot()
  fig, ax = plt.subplots(figsize=figsize)
  try:
    tree = draw(graph, ax, title=title, n_levels=n_levels)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
  finally:
    plt.close(fig)
  return tree


def save_grid(cells, path: str, n_levels: int = 25, value_label: str = 'test acc.',
              dpi: int = 110):
  """:func:`draw` of several graphs on one grid of panels, saved as ``path`` (PNG).

  Args:
    cells: ``(row, column, graph, title)`` per panel; the rows are the sorted
      distinct ``row`` values (e.g. depths), the columns the sorted ``column``
      values (e.g. n_data); a grid position without a cell stays empty.
    path: the PNG to write.
    n_levels: disconnectivity levels of every panel.
    value_label: the colour bar's label.
    dpi: of the PNG.
  """
  from lossland.plots import _agg  # the one backend choice
  plt = _agg.pyplot()
  rows = sorted({c[0] for c in cells})
  cols = sorted({c[1] for c in cells})
  fig, axes = plt.subplots(len(rows), len(cols), figsize=(4.5 * len(cols), 3.8 * len(rows)),
                           squeeze=False)
  try:
    for row, col, graph, title in cells:
      draw(graph, axes[rows.index(row)][cols.index(col)], n_levels=n_levels,
           value_label=value_label, title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
  finally:
    plt.close(fig)


def counts(graph: Graph) -> str:
  """``'M min, T TS'`` for figure titles."""
  return f'{len(graph.min_energies)} min, {len(graph.ts_energies)} TS'


def figure_and_summary(graph: Graph, out_dir: str, title: str, temperature: float,
                       n_levels: int = 25) -> dict:
  """Writes ``out_dir/disconnectivity.png`` (titled ``'{title}: M min, T TS'``) and
  returns the summary of the graph (:func:`summarize` plus ``tree_dropped_minima``).

  Args:
    graph: from :func:`read_graph`, with at least one minimum.
    out_dir: an existing directory.
    title: the figure title's start.
    temperature: of the frustration index.
    n_levels: disconnectivity levels.
  """
  summary = summarize(graph, temperature)
  tree = save_figure(graph, os.path.join(out_dir, 'disconnectivity.png'),
                     title=f'{title}: {counts(graph)}', n_levels=n_levels)
  summary['tree_dropped_minima'] = len(tree.dropped_minima)
  return summary


def _summary(run_dir: str) -> dict:
  with open(os.path.join(run_dir, "summary.json")) as fh:
    return json.load(fh)


def grid_panels(run_dirs) -> tuple:
  """(panels, table) of a grid of landscape runs for
  :func:`save_grid` and its JSON table.

  Raises:
    io.InputError: a directory is not a landscape run or holds no minima.
  """
  from lossland.landscape.database import Database, DatabaseError  # pylint: disable=g-import-not-at-top
  panels, table = [], []
  for r in run_dirs:
    try:
      with open(os.path.join(r, "config.json")) as fh:
        cfg = json.load(fh)["study_config"]
      summ = _summary(r)
      db = Database(os.path.join(r, "landscape.sqlite"), create=False)
      graph = read_graph(db)
    except (OSError, KeyError, ValueError, DatabaseError) as e:
      raise InputError(f"{r}: not a landscape run directory ({e})") from None
    db.close()
    if len(graph.ids) == 0:
      raise InputError(f"{r}: its database holds no minima")
    depth, n = cfg["depth"], cfg["n_data"]
    panels.append((depth, n, graph,
                   f"depth {depth}, P={n}: {counts(graph)}, "
                   f"f={summ['frustration']:.2f}, funnel={summ['funnel_fraction']:.2f}"))
    table.append({"run": r, "depth": depth, "n_data": n,
                  **{k: summ.get(k) for k in ("n_minima", "n_ts", "global_min_loss",
                                              "frustration", "funnel_fraction",
                                              "n_connected_to_global_min",
                                              "downhill_barrier_quantiles",
                                              "barrier_to_global_min_quantiles",
                                              "test_accuracy_quantiles", "seconds")},
                  "n_components": summ.get("connect", {}).get("n_components"),
                  "n_connect_attempts": summ.get("connect", {}).get("n_attempts")})
  return panels, table
