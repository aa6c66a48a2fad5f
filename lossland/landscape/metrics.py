"""Landscape metrics from minima and transition-state energies (host-side NumPy).

* counts of minima and TS, distributions of minimum energies and of barriers;
* the frustration index of de Souza, Stevenson, Niblett, Farrell & Wales,
  JCP 146, 124103 (2017):
  ``f(T) = sum_{a != gm} p_a(T) (E†_a - E_gm) / (E_a - E_gm)`` with
  ``p_a ∝ exp(-(E_a - E_gm) / T)`` normalised over all minima of the global
  minimum's component (gm included) and ``E†_a`` the highest TS on the minimax
  path from ``a`` to the global minimum. Harmonic vibrational factors are left out
  (they are optional in the paper; network minima have no rigid-body modes to
  remove, and including them mixes curvature with topology).
* barriers of each TS joining two different minima: downhill ``E_ts - max`` of its
  two minima (Verpoort, Lee & Wales 2020) and, separately, uphill ``E_ts - min``;
* funnel fraction: the fraction of minima (gm included) from which a sequence
  minimum–TS–minimum with strictly decreasing minimum energies reaches the global
  minimum (the monotonic-sequence basin of Berry & Kunz, PRL 74, 3951, 1995), plus
  the stricter variant that always steps to the lowest lower neighbour.
"""

from typing import Optional

import numpy as np

from lossland.landscape.disconnectivity import UnionFind


def minimax_barriers(min_energies, ts_energies, ts_pairs) -> np.ndarray:
  """``E†_a``: for each minimum, the lowest possible highest-TS energy on a path to
  the global minimum (``+inf`` if disconnected, ``E_gm`` for the gm itself).

  Kruskal sweep: TS in increasing energy; when a TS merges a component into the
  global minimum's, every minimum of that component gets that TS energy.
  """
  me = np.asarray(min_energies, np.float64)
  te = np.asarray(ts_energies, np.float64).reshape(-1)
  tp = np.asarray(ts_pairs, np.int64).reshape(-1, 2)
  gm = int(np.argmin(me))
  out = np.full(me.size, np.inf)
  out[gm] = me[gm]
  uf = UnionFind(me.size)
  members = {i: [i] for i in range(me.size)}
  for t in np.argsort(te, kind='stable'):
    a, b = (uf.find(int(x)) for x in tp[t])
    if a == b:
      continue
    g = uf.find(gm)
    if a == g or b == g:
      for i in members[b if a == g else a]:
        out[i] = te[t]
    uf.union(a, b)
    root = uf.find(a)
    members[root] = members.pop(a) + members.pop(b)
  return out


def frustration_index(min_energies, ts_energies, ts_pairs, temperature: float) -> float:
  """Frustration index f(T) of de Souza et al. (2017), module docstring.

  Only minima connected to the global minimum contribute. Returns 0 for a landscape
  with a single connected minimum.
  """
  me = np.asarray(min_energies, np.float64)
  gm = int(np.argmin(me))
  barrier = minimax_barriers(me, ts_energies, ts_pairs)
  conn = np.isfinite(barrier)
  e = me[conn] - me[gm]
  w = np.exp(-e / temperature)
  p = w / w.sum()
  others = conn.copy()
  others[gm] = False
  idx = np.nonzero(conn)[0]
  f = 0.0
  for k, i in enumerate(idx):
    if i == gm:
      continue
    gap = me[i] - me[gm]
    if gap <= 0:
      continue  # degenerate with the global minimum: no defined ratio
    f += p[k] * (barrier[i] - me[gm]) / gap
  return float(f)


def funnel_fractions(min_energies, ts_energies, ts_pairs) -> tuple:
  """``(monotonic_fraction, steepest_fraction)``; see module docstring.

  Both count the global minimum itself and divide by the total number of minima.
  """
  me = np.asarray(min_energies, np.float64)
  tp = np.asarray(ts_pairs, np.int64).reshape(-1, 2)
  n = me.size
  gm = int(np.argmin(me))
  nbrs = [set() for _ in range(n)]
  for a, b in tp:
    if a != b:
      nbrs[a].add(int(b))
      nbrs[b].add(int(a))
  in_msb = np.zeros(n, bool)
  in_msb[gm] = True
  for i in np.argsort(me, kind='stable'):
    if i != gm and any(me[j] < me[i] and in_msb[j] for j in nbrs[i]):
      in_msb[i] = True
  steep = np.zeros(n, bool)
  for i in range(n):
    j, seen = i, set()
    while j != gm and j not in seen:
      seen.add(j)
      lower = [k for k in nbrs[j] if me[k] < me[j]]
      if not lower:
        break
      j = min(lower, key=lambda k: me[k])
    steep[i] = j == gm
  return float(in_msb.mean()), float(steep.mean())


def _ts_ends(min_energies, ts_energies, ts_pairs) -> tuple:
  """``(E_ts, E_low, E_high)`` over the TS joining two different minima."""
  me = np.asarray(min_energies, np.float64)
  te = np.asarray(ts_energies, np.float64).reshape(-1)
  tp = np.asarray(ts_pairs, np.int64).reshape(-1, 2)
  keep = tp[:, 0] != tp[:, 1]
  e1, e2 = me[tp[keep, 0]], me[tp[keep, 1]]
  return te[keep], np.minimum(e1, e2), np.maximum(e1, e2)


def downhill_barriers(min_energies, ts_energies, ts_pairs) -> np.ndarray:
  """``E_ts - max(E_min1, E_min2)``, one per TS joining two different minima, ``[T']``.

  The barrier seen from the higher of the two minima (the downhill direction), as
  Verpoort, Lee & Wales (PNAS 2020) report barriers; the uphill barrier from the
  lower minimum is :func:`uphill_barriers`.
  """
  te, _, high = _ts_ends(min_energies, ts_energies, ts_pairs)
  return te - high


def uphill_barriers(min_energies, ts_energies, ts_pairs) -> np.ndarray:
  """``E_ts - min(E_min1, E_min2)``, one per TS joining two different minima, ``[T']``."""
  te, low, _ = _ts_ends(min_energies, ts_energies, ts_pairs)
  return te - low


def _quantiles(a):
  a = np.asarray(a, np.float64)
  if a.size == 0:
    return None
  q = np.quantile(a, [0.0, 0.25, 0.5, 0.75, 1.0])
  return {'min': float(q[0]), 'q25': float(q[1]), 'median': float(q[2]),
          'q75': float(q[3]), 'max': float(q[4]), 'mean': float(a.mean())}


def landscape_metrics(min_energies, ts_energies, ts_pairs, *, temperature: float,
                      per_minimum: Optional[dict] = None) -> dict:
  """All summary numbers of one landscape.

  Args:
    min_energies: ``[M]``.
    ts_energies: ``[T]``.
    ts_pairs: ``[T, 2]`` indices into ``min_energies``.
    temperature: temperature of the frustration index (loss units).
    per_minimum: optional ``{name: [M] values}`` (e.g. test accuracy) summarised too.

  Returns:
    A JSON-serialisable dict.
  """
  me = np.asarray(min_energies, np.float64)
  te = np.asarray(ts_energies, np.float64).reshape(-1)
  gm = int(np.argmin(me))
  barrier = minimax_barriers(me, te, ts_pairs)
  conn = np.isfinite(barrier)
  mono, steep = funnel_fractions(me, te, ts_pairs)
  down = downhill_barriers(me, te, ts_pairs)
  up = uphill_barriers(me, te, ts_pairs)
  gap = me - me[gm]
  out = {
      'n_minima': int(me.size),
      'n_ts': int(te.size),
      'n_connected_to_global_min': int(conn.sum()),
      'global_min_loss': float(me[gm]),
      'min_loss_quantiles': _quantiles(me),
      'loss_gap_quantiles': _quantiles(gap[np.arange(me.size) != gm]),
      'downhill_barrier_quantiles': _quantiles(down),
      'uphill_barrier_quantiles': _quantiles(up),
      'barrier_to_global_min_quantiles': _quantiles(
          (barrier - me)[conn & (np.arange(me.size) != gm)]),
      'frustration': frustration_index(me, te, ts_pairs, temperature),
      'frustration_temperature': float(temperature),
      'funnel_fraction': mono,
      'funnel_fraction_steepest': steep,
      'min_losses': me.tolist(),
      'downhill_barriers': down.tolist(),
      'uphill_barriers': up.tolist(),
  }
  max_down = float(down.max()) if down.size else 0.0
  spread = float(me.max() - me.min())
  out['barrier_over_spread'] = max_down / spread if spread > 0 else None
  for name, vals in (per_minimum or {}).items():
    v = np.asarray(vals, np.float64)
    out[f'{name}_quantiles'] = _quantiles(v[np.isfinite(v)])
    out[f'{name}_at_global_min'] = float(v[gm])
    if np.isfinite(v).sum() > 2 and np.std(v[np.isfinite(v)]) > 0:
      ok = np.isfinite(v)
      out[f'{name}_loss_correlation'] = float(np.corrcoef(me[ok], v[ok])[0, 1])
  return out
