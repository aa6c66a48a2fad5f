"""SQLite database of minima and transition states, with PATHSAMPLE export.

Host-side (NumPy + the standard library's ``sqlite3``). Coordinates and eigenvalues
are stored as raw little-endian float64 bytes, per-minimum metrics as JSON (Python
writes floats with ``repr``), so a round trip is exact.

De-duplication follows the Wales-group practice (PATHSAMPLE ``EDIFFTOL`` /
``GEOMDIFFTOL``): a new stationary point is the same as a stored one if their energies
differ by less than ``energy_tol`` and, when a ``distance_fn`` is given, their distance
(e.g. the symmetry-invariant network distance of :mod:`lossland.landscape.symmetry`)
is below ``distance_tol``.

PATHSAMPLE files (``min.data``, ``ts.data``, ``points.min``, ``points.ts``) follow the
PATHSAMPLE manual: one line per minimum ``E fvib point-group-order Ix Iy Iz``; one line
per TS ``E fvib order min1 min2 Ix Iy Iz`` with 1-based minimum indices; ``points.*``
are headerless float64 records of length D. ``fvib`` is the log product of the
*positive* Hessian eigenvalues (squared normal-mode frequencies, unit masses): all
non-zero modes of a minimum, all but the unstable mode of a TS (pele's
``thermodynamics.logproduct_freq2``, which writes the same files). The harmonic rate
through a TS then uses ``exp(fvib_min - fvib_ts)``, so each TS stores its full
Hessian spectrum (schema 2).
"""

import json
import os
import sqlite3
from typing import Callable, NamedTuple, Optional

import numpy as np

SCHEMA_VERSION = 2
_READABLE_VERSIONS = ('1', '2')  # 1: no TS spectra (column added on first TS write)
_MAGIC = 'lossland.landscape'

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS minima (
  id INTEGER PRIMARY KEY, energy REAL NOT NULL, coords BLOB NOT NULL,
  eigenvalues BLOB, grad_rms REAL, metrics TEXT NOT NULL DEFAULT '{}');
CREATE INDEX IF NOT EXISTS minima_energy ON minima(energy);
CREATE TABLE IF NOT EXISTS transition_states (
  id INTEGER PRIMARY KEY, energy REAL NOT NULL, coords BLOB NOT NULL,
  min1 INTEGER NOT NULL REFERENCES minima(id), min2 INTEGER NOT NULL REFERENCES minima(id),
  eigenvalue REAL, eigenvector BLOB, grad_rms REAL, eigenvalues BLOB);
CREATE INDEX IF NOT EXISTS ts_energy ON transition_states(energy);
CREATE TABLE IF NOT EXISTS connect_attempts (
  min1 INTEGER NOT NULL, min2 INTEGER NOT NULL, n_ts_found INTEGER NOT NULL);
"""


class DatabaseError(Exception):
  """A database file is missing, corrupt or not a lossland landscape database."""


class Minimum(NamedTuple):
  id: int
  energy: float
  coords: np.ndarray
  eigenvalues: Optional[np.ndarray]
  grad_rms: Optional[float]
  metrics: dict


class TransitionState(NamedTuple):
  id: int
  energy: float
  coords: np.ndarray
  min1: int
  min2: int
  eigenvalue: Optional[float]
  eigenvector: Optional[np.ndarray]
  grad_rms: Optional[float]
  eigenvalues: Optional[np.ndarray] = None  # full Hessian spectrum (schema 2)


def _to_blob(a) -> Optional[bytes]:
  if a is None:
    return None
  return np.ascontiguousarray(np.asarray(a, dtype='<f8')).tobytes()


def norm_gap(a, b) -> float:
  """``| |a| - |b| |``: a lower bound of ``|a - T b|`` for every orthogonal T.

  Hidden-unit permutations and sign flips act on a network's flat parameter vector
  as signed permutation matrices, so this bounds the symmetry-aligned distance
  (:func:`lossland.landscape.symmetry.network_distance_fn`) from below, whatever
  copy the alignment picks. Pass it as ``distance_lower_bound`` to
  :class:`Database` and :func:`lossland.landscape.explorer.make_explorer` (or set it
  as the distance function's ``lower_bound`` attribute, which both pick up).
  """
  return abs(float(np.linalg.norm(a)) - float(np.linalg.norm(b)))


def _opt_float(v) -> Optional[float]:
  return None if v is None else float(v)


def _from_blob(b) -> Optional[np.ndarray]:
  if b is None:
    return None
  return np.frombuffer(b, dtype='<f8').copy()


class Database:
  """Minima and transition states in one SQLite file.

  Args:
    path: file name, or ``':memory:'``.
    energy_tol: two stationary points are candidates for identity when their
      energies differ by less than this.
    distance_fn: optional ``(coords_a, coords_b) -> float`` distance; when given, a
      candidate is the same point only if the distance is below ``distance_tol``.
    distance_tol: see ``distance_fn``.
    distance_lower_bound: optional cheap ``(a, b) -> float`` never above
      ``distance_fn`` (e.g. :func:`norm_gap` for network symmetries); a candidate
      whose bound is at least ``distance_tol`` is told apart without calling
      ``distance_fn``. Default: ``distance_fn.lower_bound`` if that exists.
    create: create the file when it does not exist. With ``create=False`` a missing
      file raises :class:`DatabaseError`.

  Raises:
    DatabaseError: the file is not an SQLite database, or it is one without the
      lossland schema, or its schema version is unknown.
  """

  def __init__(self, path: str, energy_tol: float = 1e-7,
               distance_fn: Optional[Callable[[np.ndarray, np.ndarray], float]] = None,
               distance_tol: float = 1e-3, create: bool = True,
               distance_lower_bound: Optional[Callable[[np.ndarray, np.ndarray], float]]
               = None):
    self.path = path
    self.energy_tol = float(energy_tol)
    self.distance_fn = distance_fn
    self.distance_tol = float(distance_tol)
    self.distance_lower_bound = (distance_lower_bound if distance_lower_bound is not None
                                 else getattr(distance_fn, 'lower_bound', None))
    self._version = SCHEMA_VERSION
    exists = path == ':memory:' or os.path.exists(path)
    if not exists and not create:
      raise DatabaseError(f'{path}: no such database file')
    try:
      self.conn = sqlite3.connect(path)
      tables = {r[0] for r in self.conn.execute(
          "SELECT name FROM sqlite_master WHERE type='table'")}
      if tables:
        self._check_existing(tables)
      else:
        self.conn.executescript(_SCHEMA)
        self.conn.executemany('INSERT INTO meta VALUES (?, ?)',
                              [('magic', _MAGIC), ('schema_version', str(SCHEMA_VERSION))])
        self.conn.commit()
    except sqlite3.DatabaseError as e:
      raise DatabaseError(
          f'{path}: not a readable lossland landscape database ({e})') from None

  def _check_existing(self, tables):
    need = {'meta', 'minima', 'transition_states', 'connect_attempts'}
    if not need <= tables:
      raise DatabaseError(f'{self.path}: SQLite file without the lossland landscape '
                          f'schema (missing tables {sorted(need - tables)})')
    meta = dict(self.conn.execute('SELECT key, value FROM meta'))
    if meta.get('magic') != _MAGIC or meta.get('schema_version') not in _READABLE_VERSIONS:
      raise DatabaseError(f'{self.path}: unknown landscape database version {meta}')
    self._version = int(meta['schema_version'])
    ok = self.conn.execute('PRAGMA quick_check').fetchone()[0]
    if ok != 'ok':
      raise DatabaseError(f'{self.path}: SQLite integrity check failed: {ok}')

  # -- context manager ------------------------------------------------------
  def close(self):
    self.conn.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  # -- metadata -------------------------------------------------------------
  def set_meta(self, key: str, value) -> None:
    """Stores a JSON-serialisable value under ``key`` (e.g. the run config)."""
    self.conn.execute('INSERT OR REPLACE INTO meta VALUES (?, ?)', (key, json.dumps(value)))
    self.conn.commit()

  def get_meta(self, key: str, default=None):
    row = self.conn.execute('SELECT value FROM meta WHERE key = ?', (key,)).fetchone()
    return default if row is None else json.loads(row[0])

  # -- minima ---------------------------------------------------------------
  def _find(self, table: str, energy: float, coords: np.ndarray) -> Optional[int]:
    rows = self.conn.execute(
        f'SELECT id, coords FROM {table} WHERE energy BETWEEN ? AND ? '
        'ORDER BY ABS(energy - ?)',
        (energy - self.energy_tol, energy + self.energy_tol, energy)).fetchall()
    for rid, blob in rows:
      if self.distance_fn is None:
        return rid
      other = _from_blob(blob)
      if (self.distance_lower_bound is not None and
          self.distance_lower_bound(coords, other) >= self.distance_tol):
        continue  # told apart without the (costly) symmetry alignment
      if self.distance_fn(coords, other) < self.distance_tol:
        return rid
    return None

  def _ts_columns(self) -> set:
    return {r[1] for r in self.conn.execute('PRAGMA table_info(transition_states)')}

  def _upgrade(self) -> None:
    """Schema 1 -> 2 (TS spectra), done on the first TS write, never on reading."""
    if 'eigenvalues' not in self._ts_columns():
      self.conn.execute('ALTER TABLE transition_states ADD COLUMN eigenvalues BLOB')
    self.conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                      (str(SCHEMA_VERSION),))
    self._version = SCHEMA_VERSION

  def _add(self, table: str, energy, coords, columns: dict, commit: bool) -> tuple:
    """Inserts a stationary point unless an equal one is stored: ``(id, is_new)``."""
    energy = float(energy)
    coords = np.asarray(coords, dtype=np.float64)
    rid = self._find(table, energy, coords)
    if rid is not None:
      return rid, False
    row = {'energy': energy, 'coords': _to_blob(coords), **columns}
    cur = self.conn.execute(
        f'INSERT INTO {table} ({", ".join(row)}) VALUES ({", ".join("?" * len(row))})',
        tuple(row.values()))
    if commit:
      self.conn.commit()
    return cur.lastrowid, True

  def add_minimum(self, energy: float, coords, eigenvalues=None, grad_rms=None,
                  metrics: Optional[dict] = None, commit: bool = True) -> tuple:
    """Adds a minimum unless an equal one is stored.

    Args:
      energy: loss at the minimum.
      coords: ``[D]`` coordinates.
      eigenvalues: Hessian eigenvalues, optional; :func:`export_pathsample` needs
        the full spectrum ``[D]``.
      grad_rms: RMS gradient at ``coords``, optional.
      metrics: per-minimum values, e.g. ``{'test_accuracy': 0.93}``.
      commit: commit the transaction (batch inserts pass False and call
        :meth:`commit`).

    Returns:
      ``(id, is_new)``.
    """
    return self._add('minima', energy, coords, {
        'eigenvalues': _to_blob(eigenvalues), 'grad_rms': _opt_float(grad_rms),
        'metrics': json.dumps(metrics or {})}, commit)

  def add_transition_state(self, energy: float, coords, min1: int, min2: int,
                           eigenvalue=None, eigenvector=None, grad_rms=None,
                           commit: bool = True, eigenvalues=None) -> tuple:
    """Adds a transition state joining minima ``min1`` and ``min2`` (database ids).

    Args:
      energy, coords, grad_rms, commit: as for :meth:`add_minimum`.
      min1, min2: database ids of the two minima.
      eigenvalue: the negative Hessian eigenvalue; eigenvector: its ``[D]`` vector.
      eigenvalues: the full Hessian spectrum ``[D]`` (needed by
        :func:`export_pathsample`).

    Returns:
      ``(id, is_new)``.
    """
    for m in (min1, min2):
      if self.conn.execute('SELECT 1 FROM minima WHERE id = ?', (int(m),)).fetchone() is None:
        raise ValueError(f'transition state refers to unknown minimum {m}')
    if self._version != SCHEMA_VERSION:
      self._upgrade()
    return self._add('transition_states', energy, coords, {
        'min1': int(min1), 'min2': int(min2), 'eigenvalue': _opt_float(eigenvalue),
        'eigenvector': _to_blob(eigenvector), 'grad_rms': _opt_float(grad_rms),
        'eigenvalues': _to_blob(eigenvalues)}, commit)

  def set_ts_eigenvalues(self, ts_id: int, eigenvalues) -> None:
    """Stores the full Hessian spectrum of a TS (e.g. recomputed for an old file)."""
    if self._version != SCHEMA_VERSION:
      self._upgrade()
    self.conn.execute('UPDATE transition_states SET eigenvalues = ? WHERE id = ?',
                      (_to_blob(eigenvalues), int(ts_id)))
    self.conn.commit()

  def commit(self):
    self.conn.commit()

  def update_metrics(self, min_id: int, metrics: dict) -> None:
    """Merges ``metrics`` into the stored metrics of a minimum."""
    old = self.get_minimum(min_id).metrics
    old.update(metrics)
    self.conn.execute('UPDATE minima SET metrics = ? WHERE id = ?', (json.dumps(old), min_id))
    self.conn.commit()

  def record_attempt(self, min1: int, min2: int, n_ts_found: int) -> None:
    self.conn.execute('INSERT INTO connect_attempts VALUES (?, ?, ?)',
                      (int(min1), int(min2), int(n_ts_found)))
    self.conn.commit()

  def attempts(self) -> list:
    return self.conn.execute('SELECT min1, min2, n_ts_found FROM connect_attempts').fetchall()

  # -- queries --------------------------------------------------------------
  @staticmethod
  def _minimum(row) -> Minimum:
    return Minimum(id=row[0], energy=row[1], coords=_from_blob(row[2]),
                   eigenvalues=_from_blob(row[3]), grad_rms=row[4], metrics=json.loads(row[5]))

  @staticmethod
  def _ts(row) -> TransitionState:
    return TransitionState(id=row[0], energy=row[1], coords=_from_blob(row[2]), min1=row[3],
                           min2=row[4], eigenvalue=row[5], eigenvector=_from_blob(row[6]),
                           grad_rms=row[7], eigenvalues=_from_blob(row[8]))

  def minima(self) -> list:
    """All minima, ordered by energy."""
    return [self._minimum(r) for r in self.conn.execute(
        'SELECT id, energy, coords, eigenvalues, grad_rms, metrics FROM minima '
        'ORDER BY energy, id')]

  def get_minimum(self, min_id: int) -> Minimum:
    r = self.conn.execute('SELECT id, energy, coords, eigenvalues, grad_rms, metrics '
                          'FROM minima WHERE id = ?', (int(min_id),)).fetchone()
    if r is None:
      raise KeyError(min_id)
    return self._minimum(r)

  def transition_states(self) -> list:
    """All transition states, ordered by energy."""
    spectra = 'eigenvalues' if 'eigenvalues' in self._ts_columns() else 'NULL'
    return [self._ts(r) for r in self.conn.execute(
        'SELECT id, energy, coords, min1, min2, eigenvalue, eigenvector, grad_rms, '
        f'{spectra} FROM transition_states ORDER BY energy, id')]

  def n_minima(self) -> int:
    return self.conn.execute('SELECT COUNT(*) FROM minima').fetchone()[0]

  def n_transition_states(self) -> int:
    return self.conn.execute('SELECT COUNT(*) FROM transition_states').fetchone()[0]

  def minima_after(self, min_id: int) -> list:
    """``[(id, energy)]`` of the minima with database id above ``min_id``, by id."""
    return self.conn.execute('SELECT id, energy FROM minima WHERE id > ? ORDER BY id',
                             (int(min_id),)).fetchall()

  def ts_pairs_after(self, ts_id: int) -> list:
    """``[(id, min1, min2)]`` of the TS with database id above ``ts_id``, by id."""
    return self.conn.execute('SELECT id, min1, min2 FROM transition_states WHERE id > ? '
                             'ORDER BY id', (int(ts_id),)).fetchall()

  def graph_arrays(self) -> tuple:
    """Arrays for graph algorithms.

    Returns:
      ``(min_ids [M], min_energies [M], ts_energies [T], ts_pairs [T, 2])`` where
      ``ts_pairs`` holds positions into ``min_ids`` (not database ids).
    """
    mins = self.conn.execute('SELECT id, energy FROM minima ORDER BY energy, id').fetchall()
    ids = np.array([m[0] for m in mins], dtype=np.int64)
    energies = np.array([m[1] for m in mins], dtype=np.float64)
    pos = {int(i): k for k, i in enumerate(ids)}
    ts = self.conn.execute(
        'SELECT energy, min1, min2 FROM transition_states ORDER BY energy, id').fetchall()
    ts_e = np.array([t[0] for t in ts], dtype=np.float64)
    pairs = np.array([[pos[t[1]], pos[t[2]]] for t in ts], dtype=np.int64).reshape(-1, 2)
    return ids, energies, ts_e, pairs


# ----------------------------------------------------------------------------
# PATHSAMPLE files
# ----------------------------------------------------------------------------

def log_product_positive(eigenvalues, evcut: float) -> float:
  """``fvib``: ln of the product of the Hessian eigenvalues above ``evcut``.

  The positive modes only: zero modes (``|λ| <= evcut``) and the unstable mode of a
  transition state are left out, as PATHSAMPLE expects (pele's
  ``logproduct_freq2``). For a minimum that is every non-zero mode.
  """
  ev = np.asarray(eigenvalues, np.float64)
  return float(np.sum(np.log(ev[ev > evcut])))


def _spectra(points, kind: str, hessian_eigs_fn) -> list:
  """Full spectra of ``points`` (stored, or recomputed by ``hessian_eigs_fn``)."""
  out = [p.eigenvalues if p.eigenvalues is not None and
         p.eigenvalues.size == p.coords.size else None for p in points]
  missing = [k for k, e in enumerate(out) if e is None]
  if missing and hessian_eigs_fn is None:
    raise DatabaseError(
        f'{len(missing)} {kind} (first: id {points[missing[0]].id}) have no stored full '
        'Hessian spectrum (a database written before schema 2, or points added without '
        'eigenvalues): pass hessian_eigs_fn (e.g. an Explorer\'s hessian_eigs) to '
        'recompute them')
  if missing:
    ev = np.asarray(hessian_eigs_fn(np.stack([points[k].coords for k in missing])))
    for k, e in zip(missing, ev):
      out[k] = np.asarray(e, np.float64)
  return out


def export_pathsample(db: Database, directory: str, evcut: float = 1e-7,
                      hessian_eigs_fn: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                      ) -> None:
  """Writes ``min.data``, ``ts.data``, ``points.min``, ``points.ts`` for PATHSAMPLE.

  Minima are written in energy order; TS lines refer to them by 1-based line number.
  Energies are written with 17 significant digits, so nothing is lost. ``fvib`` is
  :func:`log_product_positive` of each point's full Hessian spectrum: all non-zero
  modes of a minimum, the positive modes of a TS (its negative mode left out). The
  point-group order is 1 and the moments of inertia are 0, as for a network loss.

  Points whose full spectrum is not stored (databases of schema 1 stored only the
  negative eigenvalue of a TS) are recomputed with ``hessian_eigs_fn`` when it is
  given; otherwise nothing is written and :class:`DatabaseError` is raised.

  Args:
    db: the database.
    directory: output directory (created if needed).
    evcut: eigenvalues with modulus at most this are zero modes (PATHSAMPLE EVCUT).
    hessian_eigs_fn: optional ``[B, D] -> [B, D]`` dense spectra, for missing ones.

  Raises:
    DatabaseError: a spectrum is missing and ``hessian_eigs_fn`` is None.
  """
  mins, tss = db.minima(), db.transition_states()
  min_ev = _spectra(mins, 'minima', hessian_eigs_fn)
  ts_ev = _spectra(tss, 'transition states', hessian_eigs_fn)
  index = {m.id: k + 1 for k, m in enumerate(mins)}
  min_lines = [f'{m.energy!r:>24} {log_product_positive(e, evcut)!r:>24} 1 0.0 0.0 0.0\n'
               for m, e in zip(mins, min_ev)]
  ts_lines = [f'{t.energy!r:>24} {log_product_positive(e, evcut)!r:>24} 1 '
              f'{index[t.min1]:6d} {index[t.min2]:6d} 0.0 0.0 0.0\n'
              for t, e in zip(tss, ts_ev)]
  os.makedirs(directory, exist_ok=True)
  for name, lines in (('min.data', min_lines), ('ts.data', ts_lines)):
    with open(os.path.join(directory, name), 'w') as f:
      f.writelines(lines)
  for name, points in (('points.min', mins), ('points.ts', tss)):
    with open(os.path.join(directory, name), 'wb') as f:
      for p in points:
        f.write(_to_blob(p.coords))


def import_pathsample(directory: str, n_coords: int, db: Database) -> list:
  """Reads PATHSAMPLE files into ``db``; the inverse of :func:`export_pathsample`.

  Returns:
    Database ids of the minima in ``min.data`` order.

  Raises:
    DatabaseError: malformed files (wrong column count, bad index, short points file).
  """
  def read(name, ncol):
    rows = []
    with open(os.path.join(directory, name)) as f:
      for ln, line in enumerate(f, 1):
        parts = line.split()
        if not parts:
          continue
        if len(parts) != ncol:
          raise DatabaseError(f'{name} line {ln}: expected {ncol} columns, got {len(parts)}')
        rows.append(parts)
    return rows

  def points(name, n):
    a = np.fromfile(os.path.join(directory, name), dtype='<f8')
    if a.size != n * n_coords:
      raise DatabaseError(f'{name}: {a.size} numbers, expected {n} x {n_coords}')
    return a.reshape(n, n_coords)

  mrows = read('min.data', 6)
  trows = read('ts.data', 8)
  mx = points('points.min', len(mrows))
  tx = points('points.ts', len(trows))
  ids = [db.add_minimum(float(r[0]), x, commit=False)[0] for r, x in zip(mrows, mx)]
  for r, x in zip(trows, tx):
    i1, i2 = int(r[3]), int(r[4])
    if not (1 <= i1 <= len(ids) and 1 <= i2 <= len(ids)):
      raise DatabaseError(f'ts.data refers to minimum {i1} or {i2} of {len(ids)}')
    db.add_transition_state(float(r[0]), x, ids[i1 - 1], ids[i2 - 1], commit=False)
  db.commit()
  return ids
