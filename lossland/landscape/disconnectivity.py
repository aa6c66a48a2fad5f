"""Disconnectivity graphs (Becker & Karplus, JCP 106, 1495, 1997; Wales, Miller &
Walsh, Nature 394, 758, 1998) from minima and transition-state energies.

Construction (host-side NumPy):
  1. Levels ``E_1 < ... < E_K`` evenly spaced from the lowest to just above the
     highest kept TS energy (or ``e_max``).
  2. Pruning: self-connecting TS and TS above the top level are dropped; only the
     component of the global minimum is kept (the others are reported).
  3. Superbasins at ``E_k``: union-find over the TS with energy below ``E_k``, swept
     in energy order (Kruskal); each set of minima with energy below ``E_k`` is a node.
  4. Tree: a level-k node is the parent of the level-(k-1) nodes it contains; chains
     with a single child are collapsed, so internal nodes are merge points and the
     leaves are minima, drawn down to their own energies. The levels only decide
     which merges are grouped into one node: a node is drawn at the energy of the
     TS that completed its merge (the highest edge of the minimum spanning tree of
     its minima), not rounded up to the level above it.
  5. Layout: each subtree gets a width proportional to its number of leaves; at
     every node on the global minimum's path its branch is put between its
     siblings, which go left or right by increasing lowest energy, each to the
     side holding fewer leaves so far, so the global minimum ends as near the
     centre of the graph as the leaf counts allow (``CENTREGMIN``).
"""

from typing import NamedTuple, Optional, Sequence

import numpy as np


class Node(NamedTuple):
  """A node of the disconnectivity tree.

  Attributes:
    energy: energy of the TS at which the children merge (internal node: the
      highest TS of the minimum spanning tree of its minima) or the minimum's
      energy (leaf).
    minima: sorted tuple of minimum indices (positions in the input arrays) below it.
    children: tuple of child :class:`Node` (empty for a leaf).
    top: energy where the node's vertical line starts (its parent's merge
      energy, or the top level for the root).
  """
  energy: float
  minima: tuple
  children: tuple
  top: float


class DisconnectivityTree(NamedTuple):
  root: Node
  levels: np.ndarray
  kept_minima: tuple  # indices in the global minimum's component
  dropped_minima: tuple  # indices outside it


class UnionFind:
  """Union-find with path halving; the root of a union is the smaller index.

  ``add`` appends new singletons, so a graph that grows (the connect loop's) keeps
  one structure instead of rebuilding it.
  """

  def __init__(self, n):
    self.p = list(range(n))

  def add(self, n: int = 1) -> None:
    """Appends ``n`` singletons (indices ``len .. len + n - 1``)."""
    self.p.extend(range(len(self.p), len(self.p) + n))

  def __len__(self):
    return len(self.p)

  def find(self, i):
    while self.p[i] != i:
      self.p[i] = self.p[self.p[i]]
      i = self.p[i]
    return i

  def union(self, i, j):
    ri, rj = self.find(i), self.find(j)
    if ri != rj:
      self.p[max(ri, rj)] = min(ri, rj)


def _prune(me: np.ndarray, te: np.ndarray, tp: np.ndarray,
           e_max: Optional[float]) -> tuple:
  """Step 2: drops self-connecting TS, TS at or above ``e_max`` and everything
  outside the global minimum's component.

  Returns:
    ``(te, tp, comp, dropped)``: the kept TS energies and pairs, the minima of the
    global minimum's component (ascending list) and the others (tuple).
  """
  gmin = int(np.argmin(me))
  keep = tp[:, 0] != tp[:, 1]
  if e_max is not None:
    keep &= te < e_max
  te, tp = te[keep], tp[keep]
  uf = UnionFind(me.size)
  for a, b in tp:
    uf.union(a, b)
  comp = [i for i in range(me.size) if uf.find(i) == uf.find(gmin)]
  dropped = tuple(i for i in range(me.size) if uf.find(i) != uf.find(gmin))
  in_comp = np.zeros(me.size, bool)
  in_comp[comp] = True
  sel = in_comp[tp[:, 0]] & in_comp[tp[:, 1]]
  return te[sel], tp[sel], comp, dropped


def _levels(me: np.ndarray, te: np.ndarray, comp: list, n_levels: int,
            e_max: Optional[float]) -> np.ndarray:
  """Step 1: the energy levels, from the lowest kept TS to just above the highest
  (or ``e_max``); one level above the component's minima when no TS is kept."""
  if te.size:
    lo, hi = float(te.min()), float(te.max())
    if e_max is None:
      span = max(hi - lo, 1e-12 * max(1.0, abs(hi)))
      e_top = hi + span / max(n_levels - 1, 1)
    else:
      e_top = float(e_max)
    # The lowest level is the lowest kept TS energy (also with e_max, which only
    # drops the TS at or above it); a level counts the TS strictly below it, so at
    # the lowest level every minimum is its own superbasin.
    return np.linspace(lo if lo < e_top else e_top - 1.0, e_top, n_levels)
  e_top = float(me[comp].max()) + 1.0 if e_max is None else float(e_max)
  return np.array([e_top])


def _superbasins(me: np.ndarray, te: np.ndarray, tp: np.ndarray, comp: list,
                 levels: np.ndarray) -> tuple:
  """Step 3: the superbasins at every level, by a union-find sweep over the TS in
  energy order (Kruskal).

  Returns:
    ``(basins, merge_energy)``: ``basins[k]`` lists the sets of minima (sorted
    tuples) with energy below ``levels[k]`` joined by TS below it, k ascending;
    ``merge_energy`` maps every set of several minima to the energy of the TS that
    completed it.
  """
  order = np.argsort(te, kind='stable')
  te, tp = te[order], tp[order]
  uf = UnionFind(me.size)
  t = 0
  basins = []
  formed = {}  # union-find root -> energy of the TS that last merged its set
  merge_energy = {}  # tuple of minima -> energy of the TS that completed it
  for lev in levels:
    while t < te.size and te[t] < lev:
      ra, rb = uf.find(tp[t][0]), uf.find(tp[t][1])
      if ra != rb:
        uf.union(ra, rb)
        formed[uf.find(ra)] = float(te[t])  # sorted sweep: the largest so far
      t += 1
    groups = {}
    for i in comp:
      if me[i] < lev:
        groups.setdefault(uf.find(i), []).append(i)
    level_basins = []
    for root, g in groups.items():
      g = tuple(sorted(g))
      level_basins.append(g)
      if len(g) > 1:
        merge_energy[g] = formed[root]
    basins.append(level_basins)
  return basins, merge_energy


def build_tree(min_energies: Sequence[float], ts_energies: Sequence[float],
               ts_pairs: Sequence[Sequence[int]], n_levels: int = 20,
               e_max: Optional[float] = None) -> DisconnectivityTree:
  """Builds the disconnectivity tree.

  Args:
    min_energies: ``[M]`` minimum energies.
    ts_energies: ``[T]`` TS energies.
    ts_pairs: ``[T, 2]`` indices into ``min_energies`` of the minima each TS joins.
    n_levels: number of energy levels K (>= 2).
    e_max: top level; default slightly above the highest kept TS.

  Returns:
    :class:`DisconnectivityTree`.
  """
  me = np.asarray(min_energies, np.float64)
  te = np.asarray(ts_energies, np.float64).reshape(-1)
  tp = np.asarray(ts_pairs, np.int64).reshape(-1, 2)
  if me.size == 0:
    raise ValueError('no minima')
  gmin = int(np.argmin(me))
  te, tp, comp, dropped = _prune(me, te, tp, e_max)
  levels = _levels(me, te, comp, n_levels, e_max)
  basins, merge_energy = _superbasins(me, te, tp, comp, levels)

  def make(k, members, top):
    """Node for the set ``members`` at level index k, recursing to lower levels;
    ``top`` is the energy of the parent's merge point."""
    kk = k
    while True:
      if len(members) == 1:
        return Node(energy=float(me[members[0]]), minima=members, children=(), top=top)
      # basins[0] holds singletons only (levels[0] is the lowest kept TS energy and
      # a level counts only the TS strictly below it), so kk > 0 here.
      assert kk > 0, 'several minima merged below the lowest level'
      sub = [b for b in basins[kk - 1] if set(b) <= set(members)]
      if len(sub) == 1 and sub[0] == members:
        kk -= 1
        continue
      covered = set(i for b in sub for i in b)
      e_merge = merge_energy[members]
      # Minima above level kk-1 are in no lower basin: they hang from this node.
      kids = tuple(make(kk - 1, b, e_merge) for b in sub) + tuple(
          Node(energy=float(me[i]), minima=(i,), children=(), top=e_merge)
          for i in members if i not in covered)
      return Node(energy=e_merge, minima=members, children=kids, top=top)

  top_members = [b for b in basins[-1] if gmin in b][0]
  root = make(len(levels) - 1, top_members, float(levels[-1]))
  return DisconnectivityTree(root=root, levels=levels, kept_minima=tuple(sorted(comp)),
                             dropped_minima=dropped)


def tree_signature(node: Node, labels=None):
  """Hashable nested form ``frozenset`` of children signatures / leaf index, used to
  compare trees irrespective of child order.

  Args:
    node: a tree node (usually ``tree.root``).
    labels: optional mapping (dict or sequence) from minimum index to the label
      a leaf shows instead of the index (e.g. database ids or hand-made names).
  """
  if not node.children:
    return node.minima[0] if labels is None else labels[node.minima[0]]
  return frozenset(tree_signature(c, labels) for c in node.children)


def layout(tree: DisconnectivityTree, min_energies: Sequence[float],
           center_gmin: bool = True) -> dict:
  """x positions of every node.

  Returns:
    ``{'x': {id(node): x}, 'leaf_x': {minimum index: x}}``; leaves occupy integer
    slots ``0 .. n_leaves - 1``.
  """
  me = np.asarray(min_energies)
  gmin = int(np.argmin(me))
  xs, leaf_x = {}, {}

  def n_leaves(n):
    return 1 if not n.children else sum(n_leaves(c) for c in n.children)

  def gmin_offset(n):
    """(leaves left of the global minimum's leaf, leaves right of it) in n."""
    if not n.children:
      return 0, 0
    left = right = 0
    seen = False
    for c in arrange(n.children):
      if gmin in c.minima:
        lc, rc = gmin_offset(c)
        left, seen = left + lc, True
        right += rc
      elif seen:
        right += n_leaves(c)
      else:
        left += n_leaves(c)
    return left, right

  def arrange(children):
    kids = sorted(children, key=lambda c: me[list(c.minima)].min())
    if not center_gmin or not any(gmin in c.minima for c in kids):
      return kids
    g = [c for c in kids if gmin in c.minima][0]
    others = [c for c in kids if c is not g]
    n_left, n_right = gmin_offset(g)
    left, right = [], []
    for c in others:  # by increasing lowest energy, to the lighter side
      if n_right <= n_left:
        right.append(c)
        n_right += n_leaves(c)
      else:
        left.append(c)
        n_left += n_leaves(c)
    return left[::-1] + [g] + right

  def place(n, x0):
    if not n.children:
      xs[id(n)] = x0
      leaf_x[n.minima[0]] = x0
      return
    x = x0
    for c in arrange(n.children):
      place(c, x)
      x += n_leaves(c)
    xs[id(n)] = float(np.mean([xs[id(c)] for c in n.children]))

  place(tree.root, 0.0)
  return {'x': xs, 'leaf_x': leaf_x}


def plot_disconnectivity(tree: DisconnectivityTree, min_energies: Sequence[float], *,
                         ax=None, values: Optional[Sequence[float]] = None,
                         value_label: str = '', cmap: str = 'viridis',
                         title: str = '', center_gmin: bool = True,
                         ylabel: str = 'loss'):
  """Draws the graph with matplotlib; leaves coloured by ``values`` (one per minimum).

  Returns:
    The matplotlib ``Axes``.
  """
  from lossland.plots import _agg  # the one backend choice
  plt = _agg.pyplot()
  import matplotlib.colors
  from matplotlib.collections import LineCollection

  if ax is None:
    _, ax = plt.subplots(figsize=(6, 5))
  me = np.asarray(min_energies)
  pos = layout(tree, me, center_gmin)['x']
  levels = tree.levels
  dlev = (levels[1] - levels[0]) if len(levels) > 1 else 1.0
  segs, leaf_segs, leaf_vals, leaf_pts = [], [], [], []
  norm = None
  if values is not None:
    v = np.asarray(values, np.float64)
    finite = v[np.isfinite(v)]
    if finite.size:
      norm = matplotlib.colors.Normalize(finite.min(), finite.max() if finite.max() >
                                         finite.min() else finite.min() + 1e-9)

  def draw(n, parent_x):
    x = pos[id(n)]
    # diagonal from the parent's merge point, then vertical down to the node
    bend = max(n.energy, n.top - 0.5 * dlev)
    seg = [(parent_x, n.top), (x, bend), (x, n.energy)]
    if not n.children:
      leaf_segs.append(seg)
      leaf_pts.append((x, n.energy))
      leaf_vals.append(np.nan if values is None else values[n.minima[0]])
    else:
      segs.append(seg)
    for c in n.children:
      draw(c, x)

  root = tree.root
  draw(root, pos[id(root)])
  ax.add_collection(LineCollection(segs, colors='k', linewidths=0.7))
  if norm is not None:
    cm = plt.get_cmap(cmap)
    colors = [cm(norm(v)) if np.isfinite(v) else (0.6, 0.6, 0.6, 1) for v in leaf_vals]
    ax.add_collection(LineCollection(leaf_segs, colors=colors, linewidths=1.0))
    pts = np.array(leaf_pts)
    sc = ax.scatter(pts[:, 0], pts[:, 1], c=leaf_vals, cmap=cmap, norm=norm, s=12,
                    zorder=3)
    plt.colorbar(sc, ax=ax, label=value_label)
  else:
    ax.add_collection(LineCollection(leaf_segs, colors='k', linewidths=0.7))
  n_leaf = len(root.minima)
  ax.set_xlim(-1, max(n_leaf, 1))
  lo = float(me[list(root.minima)].min())
  span = root.top - lo
  ax.set_ylim(lo - 0.05 * span, root.top + 0.02 * span)
  ax.set_xticks([])
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title, fontsize=9)
  return ax
