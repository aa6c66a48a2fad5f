"""A user's own energy in the landscape engine: dtype and shape checks, basin-hopping
that stops at a target and resumes exactly, the calibrated temperature, the example."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lossland import landscape as ls
from lossland.landscape import explorer as E
from lossland.landscape import potentials
from lossland.landscape.database import Database
from lossland.landscape.minimize import CPU_VMAP_CHUNK

jax.config.update('jax_enable_x64', True)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MB_GLOBAL = -146.69951720995402


def _mb():
  return E.make_explorer(potentials.muller_brown(), E.ExplorerConfig(temperature=None))


def _x0(seed, n):
  return jax.random.uniform(jax.random.key(seed), (n, 2), jnp.float64,
                            jnp.array([-1.5, -0.5]), jnp.array([1.2, 2.0]))


@pytest.mark.parametrize('x0,match', [
    (np.zeros(2, np.float32), r'shape \[n_chains, D\]'),
    (np.zeros((3, 2), np.float32), 'float64'),
    (np.zeros(2), r'shape \[n_chains, D\]'),
    (np.zeros((1, 2, 2)), r'shape \[n_chains, D\]'),
])
def test_bad_coordinates_are_refused(x0, match):
  """float32 used to run, report a best energy and store 0 minima; a 1-D x0 gave
  an IndexError deep inside."""
  ex = _mb()
  db = Database(':memory:')
  with pytest.raises(ValueError, match=match):
    E.basin_hopping(db, ex, jax.random.key(0), x0, n_steps=10)
  with pytest.raises(ValueError, match=match):
    E.add_minima(db, ex, x0)
  assert db.n_minima() == 0


def test_split_run_equals_one_run_and_target_stop():
  ex = _mb()
  db1, db2 = Database(':memory:', energy_tol=1e-6), Database(':memory:', energy_tol=1e-6)
  key = jax.random.key(3)
  one = E.basin_hopping(db1, ex, key, _x0(3, 2), n_steps=20)
  first = E.basin_hopping(db2, ex, key, _x0(3, 2), n_steps=10)
  second = E.basin_hopping(db2, ex, key, None, n_steps=10, state=first['state'])
  for a, b in zip(jax.tree_util.tree_leaves(one['state']),
                  jax.tree_util.tree_leaves(second['state'])):
    np.testing.assert_array_equal(a, b)
  assert second['total_steps'] == one['total_steps'] == [20, 20]
  assert sorted(m.energy for m in db1.minima()) == sorted(m.energy for m in db2.minima())
  # The calibrated temperature is set once and kept by the resumed chains.
  assert first['temperature'] == second['temperature'] == one['temperature']
  assert 10 < one['temperature'][0] < 200  # MB rises are ~30-70 energy units
  # Stop at a target: the best known minimum of the long run, reached early.
  db3 = Database(':memory:', energy_tol=1e-6)
  stop = E.basin_hopping(db3, ex, key, _x0(3, 2), n_steps=40,
                         target_energy=one['best_energy'])
  assert stop['reached_target'] and stop['n_steps_done'] <= 20
  assert stop['best_energy'] <= one['best_energy'] + 1e-6


def test_calibrated_temperature_follows_the_energy_scale():
  """T from trial moves scales with the energy: E -> 1000 E gives T -> 1000 T."""
  f = potentials.muller_brown()
  temps = []
  for scale in (1.0, 1000.0):
    ex = E.make_explorer(lambda x, s=scale: s * f(x), E.ExplorerConfig())
    state, _ = ex.bh_init(_x0(0, 4), 0.5, 1.0)
    keys = jax.random.split(jax.random.key(1), 4)
    temps.append(E.calibrate_temperature(ex, state, keys, 10, min_rise=1e-6 * scale))
  assert temps[1] == pytest.approx(1000 * temps[0], rel=1e-6)


def test_muller_brown_example_runs(tmp_path):
  out = subprocess.run([sys.executable, 'examples/muller_brown.py',
                        str(tmp_path / 'mb.png')], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert out.returncode == 0, out.stderr[-2000:]
  assert '3 minima' in out.stdout and '2 TS' in out.stdout and 'connected: True' in out.stdout
  assert '-146.7' in out.stdout
  assert (tmp_path / 'mb.png').stat().st_size > 5000


def test_public_exports():
  for name in ('disconnectivity', 'metrics', 'build_tree', 'plot_disconnectivity',
               'landscape_metrics', 'basin_hopping', 'calibrate_temperature', 'report',
               'symmetry'):
    assert hasattr(ls, name), name


def test_report_figure_and_summary_of_a_hand_made_database(tmp_path):
  """Three minima joined by two TS: the summary is landscape_metrics of the stored
  energies with the per-minimum values, and the figure is written."""
  db = Database(':memory:')
  for e, acc in ((0.0, 0.9), (1.0, 0.8), (0.5, None)):
    i, _ = db.add_minimum(e, np.full(2, e))
    if acc is not None:
      db.update_metrics(i, {'test_accuracy': acc})
  db.add_transition_state(2.0, np.ones(2), 1, 2)
  db.add_transition_state(1.5, 2 * np.ones(2), 1, 3)
  graph = ls.report.read_graph(db)
  energy = {1: 0.0, 2: 1.0, 3: 0.5}
  acc = {1: 0.9, 2: 0.8, 3: np.nan}
  np.testing.assert_array_equal(graph.min_energies, [energy[i] for i in graph.ids])
  assert set(graph.per_minimum) == {'test_accuracy'}  # nobody has train_accuracy
  np.testing.assert_array_equal(graph.per_minimum['test_accuracy'], [acc[i] for i in graph.ids])
  summary = ls.report.figure_and_summary(graph, str(tmp_path), 'hand-made', temperature=0.3)
  pos = {int(i): k for k, i in enumerate(graph.ids)}
  ref = ls.landscape_metrics([energy[i] for i in graph.ids], [2.0, 1.5],
                             [[pos[1], pos[2]], [pos[1], pos[3]]], temperature=0.3,
                             per_minimum={'test_accuracy': [acc[i] for i in graph.ids]})
  assert summary.pop('tree_dropped_minima') == 0
  for k in ('n_minima', 'n_ts', 'n_connected_to_global_min', 'global_min_loss',
            'frustration', 'funnel_fraction', 'test_accuracy_quantiles',
            'test_accuracy_at_global_min', 'barrier_to_global_min_quantiles'):
    assert summary[k] == ref[k], k
  assert summary['n_connected_to_global_min'] == 3 and summary['global_min_loss'] == 0.0
  assert summary['test_accuracy_at_global_min'] == 0.9
  assert (tmp_path / 'disconnectivity.png').stat().st_size > 5000


def test_chains_in_vmapped_chunks_equal_the_whole_batch_vmapped():
  """The CPU default (chains and quenches in vmapped chunks) against the
  accelerator path (the whole batch vmapped): the same minima, moves and
  acceptances, up to rounding."""
  default = E.make_explorer(potentials.muller_brown(), E.ExplorerConfig())
  assert default.vmap_chunk == (CPU_VMAP_CHUNK if jax.default_backend() == 'cpu' else 0)
  runs = []
  for chunk in (0, 2):  # 4 chains: two chunks of 2 (remainders: test_landscape_minimize)
    ex = E.make_explorer(potentials.muller_brown(), E.ExplorerConfig(vmap_chunk=chunk))
    assert ex.vmap_chunk == chunk
    state, rec0 = ex.bh_init(_x0(5, 4), 0.5, 50.0)
    state, rec = ex.bh_run(state, jax.random.split(jax.random.key(2), 4), 8)
    runs.append((rec0, rec, state))
  (r0a, ra, sa), (r0b, rb, sb) = runs
  for a, b in ((r0a, r0b), (ra, rb)):
    np.testing.assert_array_equal(a.accepted, b.accepted)
    np.testing.assert_array_equal(a.converged, b.converged)
    np.testing.assert_allclose(a.energy, b.energy, rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.x, b.x, rtol=0, atol=1e-7)
  np.testing.assert_allclose(sa.best_energy, sb.best_energy, rtol=0, atol=1e-9)
  assert np.asarray(ra.accepted).any() and len(np.unique(np.round(ra.energy, 3))) >= 2
