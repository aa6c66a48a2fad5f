"""SQLite database: round trips, de-duplication, PATHSAMPLE export, corrupt files."""
import os
import sqlite3

import numpy as np
import pytest

from lossland.landscape import symmetry
from lossland.landscape.database import (Database, DatabaseError, export_pathsample,
                                         import_pathsample)


def _fill(db, rng, n_min=5, n_ts=4, d=7):
  ids = []
  for i in range(n_min):
    rid, new = db.add_minimum(-1.0 - 0.1 * i + 1e-17 * rng.standard_normal(), rng.standard_normal(d),
                              eigenvalues=np.abs(rng.standard_normal(d)) + 0.1,
                              grad_rms=1e-9 * (i + 1),
                              metrics={'test_accuracy': float(rng.uniform()), 'k': i})
    assert new
    ids.append(rid)
  for j in range(n_ts):
    spectrum = np.concatenate([[-0.3 - j], np.abs(rng.standard_normal(d - 1)) + 0.1])
    db.add_transition_state(-0.5 + 0.01 * j, rng.standard_normal(d), ids[j], ids[j + 1],
                            eigenvalue=-0.3 - j, eigenvector=rng.standard_normal(d),
                            grad_rms=1e-9, eigenvalues=spectrum)
  return ids


def test_round_trip_is_exact(tmp_path):
  rng = np.random.default_rng(0)
  path = str(tmp_path / 'a.sqlite')
  with Database(path) as db:
    _fill(db, rng)
    db.set_meta('cfg', {'lam': 1e-4, 'sizes': [5, 6, 3]})
    mins, tss = db.minima(), db.transition_states()
  with Database(path, create=False) as db2:
    for a, b in zip(mins, db2.minima()):
      assert a.id == b.id and a.energy == b.energy and a.metrics == b.metrics
      assert a.grad_rms == b.grad_rms
      np.testing.assert_array_equal(a.coords, b.coords)
      np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)
    for a, b in zip(tss, db2.transition_states()):
      assert (a.energy, a.min1, a.min2, a.eigenvalue) == (b.energy, b.min1, b.min2, b.eigenvalue)
      np.testing.assert_array_equal(a.coords, b.coords)
      np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)
      np.testing.assert_array_equal(a.eigenvector, b.eigenvector)
    assert db2.get_meta('cfg') == {'lam': 1e-4, 'sizes': [5, 6, 3]}


def test_pathsample_export_import_round_trip(tmp_path):
  rng = np.random.default_rng(1)
  db = Database(':memory:')
  _fill(db, rng)
  export_pathsample(db, str(tmp_path / 'ps'))
  lines = open(tmp_path / 'ps' / 'min.data').read().splitlines()
  assert len(lines) == 5 and len(lines[0].split()) == 6
  # fvib = ln(prod eigenvalues) of the lowest minimum
  low = db.minima()[0]
  assert float(lines[0].split()[1]) == pytest.approx(np.sum(np.log(low.eigenvalues)), rel=1e-15)
  # ts.data: the positive modes only (the unstable one left out)
  t0 = db.transition_states()[0]
  ts_line = open(tmp_path / 'ps' / 'ts.data').read().splitlines()[0].split()
  assert len(ts_line) == 8
  assert float(ts_line[1]) == pytest.approx(np.sum(np.log(t0.eigenvalues[1:])), rel=1e-15)
  db2 = Database(':memory:')
  import_pathsample(str(tmp_path / 'ps'), 7, db2)
  a, b = db.graph_arrays(), db2.graph_arrays()
  np.testing.assert_array_equal(a[1], b[1])  # minimum energies, bit for bit
  np.testing.assert_array_equal(a[2], b[2])  # TS energies
  np.testing.assert_array_equal(a[3], b[3])  # connectivity
  for m1, m2 in zip(db.minima(), db2.minima()):
    np.testing.assert_array_equal(m1.coords, m2.coords)
  for t1, t2 in zip(db.transition_states(), db2.transition_states()):
    np.testing.assert_array_equal(t1.coords, t2.coords)


def test_deduplication_by_energy_and_symmetric_distance():
  sizes = (3, 4, 2)
  rng = np.random.default_rng(2)
  n = 3 * 4 + 4 + 4 * 2 + 2
  w = rng.standard_normal(n)
  w_sym = symmetry.apply_symmetry(w, sizes, [np.array([2, 0, 3, 1])],
                                  [np.array([1., -1., -1., 1.])])
  db = Database(':memory:', energy_tol=1e-6, distance_fn=symmetry.network_distance_fn(sizes),
                distance_tol=1e-6)
  i1, new1 = db.add_minimum(0.5, w)
  i2, new2 = db.add_minimum(0.5 + 1e-9, w_sym)  # a symmetry copy: the same minimum
  i3, new3 = db.add_minimum(0.5, w + 0.1)  # same loss, different point: new
  i4, new4 = db.add_minimum(0.6, w)  # different loss: new
  assert (new1, new2, new3, new4) == (True, False, True, True) and i2 == i1
  assert db.n_minima() == 3
  # Energy-only mode (Wales practice, GEOMDIFFTOL large): same loss = same minimum.
  db_e = Database(':memory:', energy_tol=1e-6)
  db_e.add_minimum(0.5, w)
  assert db_e.add_minimum(0.5 + 1e-7, w + 1.0) == (1, False)


def test_unknown_minimum_in_ts_rejected():
  db = Database(':memory:')
  db.add_minimum(0.0, np.zeros(2))
  with pytest.raises(ValueError, match='unknown minimum'):
    db.add_transition_state(1.0, np.ones(2), 1, 99)


def test_corrupt_or_foreign_files_give_clear_errors(tmp_path):
  garbage = tmp_path / 'garbage.sqlite'
  garbage.write_bytes(b'this is not sqlite' * 100)
  with pytest.raises(DatabaseError, match='not a readable lossland landscape database'):
    Database(str(garbage))
  foreign = tmp_path / 'foreign.sqlite'
  con = sqlite3.connect(str(foreign))
  con.execute('CREATE TABLE t (x)')
  con.commit()
  con.close()
  with pytest.raises(DatabaseError, match='without the lossland landscape schema'):
    Database(str(foreign))
  with pytest.raises(DatabaseError, match='no such database file'):
    Database(str(tmp_path / 'missing.sqlite'), create=False)
  # A truncated database file.
  good = tmp_path / 'good.sqlite'
  with Database(str(good)) as db:
    _fill(db, np.random.default_rng(3), n_min=50, n_ts=40, d=200)
  data = good.read_bytes()
  trunc = tmp_path / 'trunc.sqlite'
  trunc.write_bytes(data[:len(data) // 2])
  with pytest.raises(DatabaseError):
    db = Database(str(trunc))
    db.minima()
  assert not os.path.exists(tmp_path / 'missing.sqlite')


def _double_well_hessian(x, y, k):
  """E = (x^2 - 1)^2 + k y^2 / 2: minima (+-1, 0), TS (0, 0)."""
  return np.array([[12.0 * x ** 2 - 4.0, 0.0], [0.0, k]])


def test_pathsample_fvib_closed_form(tmp_path):
  """Double well E = (x^2-1)^2 + k y^2/2: the minima have Hessian diag(8, k), the TS
  diag(-4, k); PATHSAMPLE's fvib is ln(8k) for the minima and ln(k) for the TS (its
  positive modes), so the harmonic rate prefactor exp(fvib_min - fvib_ts) is 8."""
  k = 3.0
  db = Database(':memory:')
  ids = []
  for x in (-1.0, 1.0):
    ev = np.linalg.eigvalsh(_double_well_hessian(x, 0.0, k))
    ids.append(db.add_minimum(0.0 + 1e-3 * x, [x, 0.0], eigenvalues=ev)[0])
  ev_ts = np.linalg.eigvalsh(_double_well_hessian(0.0, 0.0, k))
  db.add_transition_state(1.0, [0.0, 0.0], ids[0], ids[1], eigenvalue=ev_ts[0],
                          eigenvector=[1.0, 0.0], eigenvalues=ev_ts)
  export_pathsample(db, str(tmp_path))
  mins = [line.split() for line in open(tmp_path / 'min.data')]
  ts = [line.split() for line in open(tmp_path / 'ts.data')]
  for m in mins:
    assert float(m[1]) == pytest.approx(np.log(8 * k), rel=1e-14) and m[2] == '1'
  assert float(ts[0][1]) == pytest.approx(np.log(k), rel=1e-14)
  assert (ts[0][3], ts[0][4]) == ('1', '2')
  assert np.exp(float(mins[0][1]) - float(ts[0][1])) == pytest.approx(8.0, rel=1e-13)


def _schema1_file(path):
  """A database as schema 1 wrote it: TS rows without a spectrum column."""
  con = sqlite3.connect(str(path))
  con.executescript("""
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE minima (id INTEGER PRIMARY KEY, energy REAL NOT NULL, coords BLOB NOT NULL,
      eigenvalues BLOB, grad_rms REAL, metrics TEXT NOT NULL DEFAULT '{}');
    CREATE TABLE transition_states (id INTEGER PRIMARY KEY, energy REAL NOT NULL,
      coords BLOB NOT NULL, min1 INTEGER NOT NULL, min2 INTEGER NOT NULL,
      eigenvalue REAL, eigenvector BLOB, grad_rms REAL);
    CREATE TABLE connect_attempts (min1 INTEGER NOT NULL, min2 INTEGER NOT NULL,
      n_ts_found INTEGER NOT NULL);
    INSERT INTO meta VALUES ('magic', 'lossland.landscape'), ('schema_version', '1');""")
  blob = lambda a: np.asarray(a, '<f8').tobytes()
  for x in (-1.0, 1.0):
    ev = np.linalg.eigvalsh(_double_well_hessian(x, 0.0, 3.0))
    con.execute('INSERT INTO minima (energy, coords, eigenvalues, metrics) VALUES (?,?,?,?)',
                (1e-3 * x, blob([x, 0.0]), blob(ev), '{}'))
  con.execute('INSERT INTO transition_states (energy, coords, min1, min2, eigenvalue) '
              'VALUES (1.0, ?, 1, 2, -4.0)', (blob([0.0, 0.0]),))
  con.commit()
  con.close()


def test_schema1_database_export_fails_clearly_or_recomputes(tmp_path):
  path = tmp_path / 'old.sqlite'
  _schema1_file(path)
  before = path.read_bytes()
  db = Database(str(path), create=False)
  assert db.transition_states()[0].eigenvalues is None  # readable, not modified
  with pytest.raises(DatabaseError, match='no stored full Hessian spectrum.*hessian_eigs_fn'):
    export_pathsample(db, str(tmp_path / 'ps'))
  assert not os.path.exists(tmp_path / 'ps')  # nothing written
  assert path.read_bytes() == before
  calls = []

  def eigs(xs):
    calls.append(len(xs))
    return np.stack([np.linalg.eigvalsh(_double_well_hessian(x, y, 3.0)) for x, y in xs])

  export_pathsample(db, str(tmp_path / 'ps'), hessian_eigs_fn=eigs)
  assert calls == [1]  # only the TS lacked its spectrum
  ts = open(tmp_path / 'ps' / 'ts.data').read().split()
  assert float(ts[1]) == pytest.approx(np.log(3.0), rel=1e-14)
  # Writing a TS upgrades the file to schema 2; its spectrum is stored from then on.
  db.set_ts_eigenvalues(1, [-4.0, 3.0])
  db.close()
  with Database(str(path), create=False) as db2:
    np.testing.assert_array_equal(db2.transition_states()[0].eigenvalues, [-4.0, 3.0])
    assert db2.get_meta('schema_version') == 2


def test_lower_bound_prescreen_gives_same_identities_with_fewer_alignments():
  from lossland.landscape.database import norm_gap
  sizes = (3, 4, 2)
  rng = np.random.default_rng(5)
  n = 3 * 4 + 4 + 4 * 2 + 2
  dist = symmetry.network_distance_fn(sizes)
  calls = []

  def counted(a, b):
    calls.append(1)
    return dist(a, b)

  w = rng.standard_normal(n)
  points = [w, symmetry.apply_symmetry(w, sizes, [np.array([1, 0, 3, 2])],
                                       [np.array([-1., 1., 1., -1.])])]
  points += [rng.standard_normal(n) * s for s in (0.5, 1.0, 2.0)]
  results = {}
  for lb in (None, norm_gap):
    calls.clear()
    db = Database(':memory:', energy_tol=1.0, distance_fn=counted, distance_tol=1e-6,
                  distance_lower_bound=lb)
    results[lb] = ([db.add_minimum(0.5, p) for p in points], len(calls))
  assert results[None][0] == results[norm_gap][0]
  assert [new for _, new in results[None][0]] == [True, False, True, True, True]
  assert results[norm_gap][1] < results[None][1]
