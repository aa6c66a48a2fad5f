"""Disconnectivity-graph construction and landscape metrics on hand-made databases."""
import numpy as np
import pytest

from lossland.landscape import disconnectivity as dg
from lossland.landscape import metrics
from lossland.landscape.database import Database

# Minima 0..4; 4 is isolated. TS (2, 2) is self-connecting; (1, 3) is redundant.
MIN_E = [0.0, 1.0, 0.5, 2.0, 1.5]
TS = [(1.2, 0, 2), (1.4, 1, 2), (3.0, 0, 3), (3.5, 1, 3), (0.7, 2, 2)]


def _db():
  db = Database(':memory:')
  ids = [db.add_minimum(e, np.full(2, float(i)))[0] for i, e in enumerate(MIN_E)]
  for e, a, b in TS:
    db.add_transition_state(e, np.full(2, e), ids[a], ids[b])
  return db, ids


def test_tree_from_hand_made_database():
  db, ids = _db()
  mid, me, te, tp = db.graph_arrays()
  tree = dg.build_tree(me, te, tp, n_levels=24)
  # graph_arrays orders minima by energy: map back to the hand-made labels.
  label = {k: ids.index(int(m)) for k, m in enumerate(mid)}
  assert dg.tree_signature(tree.root, label) == frozenset(
      {frozenset({frozenset({0, 2}), 1}), 3})
  assert [label[i] for i in tree.dropped_minima] == [4]
  # Merges are drawn at the energies of the TS that cause them (not at the level
  # above): {0,2} at 1.2, 1 joins at 1.4, 3 at 3.0; children hang from there.
  root = tree.root
  assert root.energy == 3.0 and root.top == tree.levels[-1]
  inner = [c for c in root.children if c.children][0]
  assert inner.energy == 1.4 and inner.top == 3.0
  pair = [c for c in inner.children if c.children][0]
  assert pair.energy == 1.2 and pair.top == 1.4
  leaves = {label[c.minima[0]]: c.energy for c in pair.children}
  assert leaves == {0: 0.0, 2: 0.5}
  assert all(c.top == 1.2 for c in pair.children)


def test_merge_at_ts_energy_with_coarse_levels():
  """With 3 levels over [1, 10], the merge at TS 1.3 used to be drawn at the next
  level (5.5); a chain 0-1-2 whose highest TS is 4.0 merges at 4.0."""
  tree = dg.build_tree([0.0, 1.0, 0.5, 2.0], [1.3, 4.0, 10.0],
                       [(0, 1), (1, 2), (2, 3)], n_levels=3)
  root = tree.root
  assert root.energy == 10.0
  inner = [c for c in root.children if c.children][0]
  assert inner.minima == (0, 1, 2) and inner.energy == 4.0


def test_layout_centres_global_minimum():
  me = [0.0, 0.1, 0.2, 0.3, 0.4]
  tp = [(0, i) for i in range(1, 5)]
  tree = dg.build_tree(me, [1.0] * 4, tp, n_levels=5)
  assert len(tree.root.children) == 5
  lay = dg.layout(tree, me, center_gmin=True)
  assert lay['leaf_x'][0] == 2.0
  assert sorted(lay['leaf_x'].values()) == [0.0, 1.0, 2.0, 3.0, 4.0]
  assert dg.layout(tree, me, center_gmin=False)['leaf_x'][0] == 0.0


def test_global_minimum_centred_by_leaf_count():
  """gmin 0 joins a 3-leaf superbasin {1,2,3} and two single minima: it is put
  at the centre of the 6 leaves (slot 2 or 3), not at slot 1 as alternating
  siblings by energy alone would do."""
  db = Database(':memory:')
  ids = [db.add_minimum(e, np.full(2, float(i)))[0]
         for i, e in enumerate([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])]
  for e, a, b in [(1.0, 1, 2), (1.1, 2, 3), (5.0, 0, 1), (5.01, 0, 4), (5.02, 0, 5)]:
    db.add_transition_state(e, np.full(2, e), ids[a], ids[b])
  _, me, te, tp = db.graph_arrays()
  tree = dg.build_tree(me, te, tp, n_levels=10)
  lay = dg.layout(tree, me)
  g = int(np.argmin(me))
  xs = sorted(lay['leaf_x'].values())
  assert xs == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
  assert abs(lay['leaf_x'][g] - 2.5) == 0.5
  assert dg.layout(tree, me, center_gmin=False)['leaf_x'][g] == 0.0


def test_plot_writes_figure(tmp_path):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  db, _ = _db()
  _, me, te, tp = db.graph_arrays()
  tree = dg.build_tree(me, te, tp)
  fig, ax = plt.subplots()
  dg.plot_disconnectivity(tree, me, ax=ax, values=np.linspace(0.5, 1.0, len(me)),
                          value_label='test accuracy')
  fig.savefig(tmp_path / 'g.png')
  assert (tmp_path / 'g.png').stat().st_size > 1000
  assert len(ax.collections) >= 3  # branches, leaves, leaf markers


def test_metrics_by_hand():
  me = np.array(MIN_E)
  te = np.array([t[0] for t in TS])
  tp = np.array([t[1:] for t in TS])
  barrier = metrics.minimax_barriers(me, te, tp)
  np.testing.assert_array_equal(barrier, [0.0, 1.4, 1.2, 3.0, np.inf])
  T = 0.7
  w = np.exp(-me[:4] / T)
  p = w / w.sum()
  expected = p[1] * 1.4 / 1.0 + p[2] * 1.2 / 0.5 + p[3] * 3.0 / 2.0
  assert metrics.frustration_index(me, te, tp, T) == pytest.approx(expected, rel=1e-14)
  assert metrics.funnel_fractions(me, te, tp) == (0.8, 0.8)
  # Downhill = TS minus the higher of its two minima (Verpoort, Lee & Wales), one per
  # TS in TS order; the self-connecting TS (0.7, 2, 2) has none.
  np.testing.assert_allclose(metrics.downhill_barriers(me, te, tp), [0.7, 0.4, 1.0, 1.5],
                             rtol=0, atol=1e-15)
  np.testing.assert_allclose(metrics.uphill_barriers(me, te, tp), [1.2, 0.9, 3.0, 2.5],
                             rtol=0, atol=1e-15)
  m = metrics.landscape_metrics(me, te, tp, temperature=T,
                                per_minimum={'acc': [0.9, 0.8, 0.85, 0.7, 0.6]})
  assert (m['n_minima'], m['n_ts'], m['global_min_loss']) == (5, 5, 0.0)
  assert m['n_connected_to_global_min'] == 4 and m['acc_at_global_min'] == 0.9
  assert m['downhill_barrier_quantiles']['max'] == pytest.approx(1.5, abs=1e-15)
  assert m['downhill_barrier_quantiles']['min'] == pytest.approx(0.4, abs=1e-15)
  assert m['uphill_barrier_quantiles']['max'] == pytest.approx(3.0, abs=1e-15)
  assert m['barrier_over_spread'] == pytest.approx(1.5 / 2.0, abs=1e-15)


def test_funnel_steepest_differs_from_monotonic():
  # 5 (0.8) has a dead-end lower neighbour 6 (0.1) and a path 5 -> 2 -> 0.
  me = np.array([0.0, 0.5, 0.8, 0.1])  # 0=gm, 1='2', 2='5', 3='6'
  tp = np.array([(0, 1), (1, 2), (2, 3)])
  te = np.array([1.0, 0.9, 1.0])
  mono, steep = metrics.funnel_fractions(me, te, tp)
  assert mono == 0.75  # gm, '2', '5'
  assert steep == 0.5  # gm, '2'


def test_minimax_barriers_equal_bottleneck_search_on_random_graphs():
  """Kruskal sweep against a plain bottleneck search: the lowest highest TS over
  paths to the global minimum, by repeated relaxation (Bellman-Ford style)."""
  rng = np.random.default_rng(0)
  for _ in range(20):
    n = int(rng.integers(2, 12))
    me = rng.uniform(0, 1, n)
    t = int(rng.integers(0, 2 * n))
    tp = rng.integers(0, n, (t, 2))
    te = rng.uniform(1, 2, t)
    gm = int(np.argmin(me))
    best = np.full(n, np.inf)
    best[gm] = me[gm]
    for _ in range(n + 1):
      for e, (a, b) in zip(te, tp):
        if a == b:
          continue
        best[a] = min(best[a], max(best[b], e)) if np.isfinite(best[b]) else best[a]
        best[b] = min(best[b], max(best[a], e)) if np.isfinite(best[a]) else best[b]
    best[gm] = me[gm]
    np.testing.assert_array_equal(metrics.minimax_barriers(me, te, tp), best)
