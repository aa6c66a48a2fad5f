"""Resumable grids of ensemble runs that survive SIGKILL and split across jobs.

A *cell* is one set of options of the ensemble job (:mod:`lossland.job`), e.g.
``{"dataset": "sphere", "P": 300, "width": 8, "depth": 3, "n_seeds": 8}``;
a *sweep* runs a list of cells (usually :func:`expand_grid`) into one
directory and records each finished cell as one line of ``cells.jsonl``::

  OUT/cells.jsonl                        one JSON line per completed cell
  OUT/cells.jsonl.lock                   flock held while appending a line
  OUT/cells/<cell_id>/.lock              flock held by the process running the cell
  OUT/cells/<cell_id>/cell.json          the cell's validated options
  OUT/cells/<cell_id>/ensemble/<run>/    the cell's run directory (complete once it exists)
  OUT/cells/<cell_id>/ensemble/.checkpoint_<digest>.npz   the in-flight cell's checkpoint
  OUT/cells/<cell_id>/ensemble/.checkpoint_batch_<digest>.npz   batch_cells: the in-flight
                                         program's, in its first cell

A line of ``cells.jsonl`` is ``{"cell_id", "flags", "run_dir", "summary"}``:
``flags`` holds every option of the cell (validated, defaults filled in),
``summary`` the cell's ``summary.json``; ``run_dir`` and ``flags["out_dir"]``
are stored relative to ``OUT`` (the directory can be moved) and
:func:`read_cells` returns them joined with ``OUT``.

Guarantees (tests/test_sweep.py):

* **Restart after SIGKILL at any moment.** Cells already in ``cells.jsonl``
  are skipped; the in-flight cell resumes from its checkpoint (the job resumes
  by itself when called again with the same options and ``out_dir``); a cell
  whose run directory was renamed into place before the process died is
  adopted, not re-run; a torn last line of ``cells.jsonl`` is ignored by
  readers and cut off by the next writer. A cell is never recorded twice.
* **Several processes on one directory** (``shard``, cluster job arrays, or
  two sweeps started by hand): a non-blocking ``fcntl.flock`` per cell means
  one process runs a cell while the others skip it and come back to it later;
  appends to ``cells.jsonl`` hold a second lock and are ``fsync``'d. flock
  locks are dropped by the kernel when a process dies, so a killed process
  never blocks the others; they need a file system with working ``flock``
  (local disks; NFS v4 and Lustre with ``-o flock``).
"""
import contextlib
import errno
import fcntl
import itertools
import json
import hashlib
import os
import re
import shutil
import sys
import time
import warnings
from typing import Callable, Iterable, Sequence

from lossland import io

# Options that change neither the numbers of a cell nor where they come from
# (where the data are cached, what is drawn): left out of its id, so that a
# restart may change them. The job's checkpoint ignores the same ones
# (``job.NON_KEY_OPTIONS``; the sweep does not import the job, so a test
# keeps the two lists equal).
IGNORED_OPTIONS = ("out_dir", "plots", "resume", "checkpoint_every", "data_dir",
                   "finish_workers")

CELLS_FILE = "cells.jsonl"


class CellsFailed(io.InputError):
  """Some cells of a sweep failed on bad input (``io.InputError``, e.g. the
  job's "every member diverged").

  The other cells ran and were recorded; a restart retries the failed ones.

  Attributes:
    records: records of the cells of the shard that completed, in grid order.
    failures: list of (cell values, error message).
  """

  def __init__(self, records, failures, keys=None):
    self.records, self.failures = records, failures
    values, msg = failures[0]
    super().__init__(f"{len(failures)} cell(s) failed; first: cell "
                     f"{cell_id(values)} ({cell_label(values, keys)}): {msg}")


def expand_grid(base: dict, axes: dict) -> list:
  """The product grid: ``base`` with every combination of the ``axes`` values.

  Args:
    base: options shared by every cell.
    axes: option name -> non-empty list of values. The order is that of
      ``itertools.product`` over the axes in their given order (the last axis
      varies fastest), so the same arguments always give the same list.

  Returns:
    list of dicts, one per cell (``len = prod(len(v) for v in axes.values())``).
  """
  for name, vals in axes.items():
    if not isinstance(vals, (list, tuple)) or not vals:
      raise ValueError(f"axis {name!r} needs a non-empty list of values, got {vals!r}")
  names = list(axes)
  return [dict(base, **dict(zip(names, combo)))
          for combo in itertools.product(*(axes[n] for n in names))]


def _canon(v) -> str:
  return io.dumps(v, sort_keys=True)


def _job_defaults() -> dict:
  try:
    from lossland.experiments import job
  except ImportError:  # pragma: no cover
    return {}
  return job.defaults()


def identity(values: dict, defaults: dict | None = None) -> dict:
  """The options that identify a cell: all but :data:`IGNORED_OPTIONS` and
  those equal to the job's default (``job.defaults()``).

  Leaving defaults out keeps ids stable when the job gains an option (its
  default reproduces the old behaviour). A *changed* default is caught by
  :func:`run_sweep`, which compares every recorded cell's full options with
  the current ones.
  """
  defaults = _job_defaults() if defaults is None else defaults
  return {k: v for k, v in values.items()
          if k not in IGNORED_OPTIONS
          and not (k in defaults and _canon(defaults[k]) == _canon(v))}


def cell_id(values: dict) -> str:
  """A stable 12-hex-digit id of a cell: a hash of :func:`identity`.

  Pass validated values (``job.validate``: types normalized, e.g. ``P=300.0``
  becomes ``300``); giving an option at its default value or leaving it out
  gives the same id.
  """
  return hashlib.sha1(_canon(identity(values)).encode()).hexdigest()[:12]


def _mismatch(recorded: dict, values: dict) -> str | None:
  """The first option (not ignored) whose recorded value differs, as text."""
  for k in sorted(set(recorded) & set(values)):
    if k not in IGNORED_OPTIONS and _canon(recorded[k]) != _canon(values[k]):
      return f"{k}={recorded[k]!r} there, {values[k]!r} now"
  return None


def shard(cells: Sequence, i: int, n: int) -> list:
  """The i-th of n disjoint parts of ``cells`` (round robin: cells i, i+n, ...).

  Round robin spreads cheap and expensive cells (small and large P) evenly
  over the parts; the parts together are exactly ``cells``.
  """
  _check_shard(i, n)
  return [c for k, c in enumerate(cells) if k % n == i]


def _check_shard(i, n):
  if not (isinstance(i, int) and isinstance(n, int)) or n < 1 or not 0 <= i < n:
    raise ValueError(f"shard must be I/N with 0 <= I < N, got {i}/{n}")


class _Ledger:
  """Incremental reader of ``cells.jsonl``: parses only the bytes added since
  the last read, and only whole lines (a line is complete once its newline is
  written; a torn last line after SIGKILL has none)."""

  def __init__(self, out_dir: str):
    self.out_dir = out_dir
    self.path = os.path.join(out_dir, CELLS_FILE)
    self.records = {}   # cell_id -> record, first line wins
    self.order = []
    self._offset = 0

  def refresh(self):
    try:
      with open(self.path, "rb") as fh:
        fh.seek(self._offset)
        data = fh.read()
    except FileNotFoundError:
      return self
    end = data.rfind(b"\n")
    if end < 0:
      return self
    for line in data[:end].split(b"\n"):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
        cid = rec["cell_id"]
      except (ValueError, KeyError, TypeError):
        warnings.warn(f"{self.path}: skipping an unreadable line")
        continue
      if cid not in self.records:
        self.records[cid] = self._resolve(rec)
        self.order.append(cid)
    self._offset += end + 1
    return self

  def _resolve(self, rec):
    rec = dict(rec)
    if rec.get("run_dir") is not None:
      rec["run_dir"] = os.path.join(self.out_dir, rec["run_dir"])
    flags = rec.get("flags")
    if isinstance(flags, dict) and isinstance(flags.get("out_dir"), str):
      rec["flags"] = dict(flags, out_dir=os.path.join(self.out_dir, flags["out_dir"]))
    return rec


def read_cells(out_dir: str) -> list:
  """The records of ``out_dir/cells.jsonl``, in the order they were written.

  Tolerates a torn last line (a process killed while appending) and skips,
  with a warning, any other unreadable line; if a cell appears twice the
  first line wins. ``run_dir`` and ``flags["out_dir"]`` are joined with
  ``out_dir``. A missing file gives ``[]``.
  """
  ledger = _Ledger(out_dir).refresh()
  return [ledger.records[c] for c in ledger.order]


@contextlib.contextmanager
def _flock(path: str, blocking: bool):
  """Yields True with an exclusive flock on ``path`` held, or False if
  ``blocking`` is False and another process holds it."""
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError as e:
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        yield False
        return
      raise
    yield True
  finally:
    os.close(fd)  # also releases the lock


def _fsync_dir(path):
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _append_record(out_dir: str, rec: dict):
  """Appends one line to cells.jsonl under its lock, flushed and fsync'd.

  A torn last line (no newline: its writer was killed) is cut off first, so
  that the new line starts on a line of its own.
  """
  path = os.path.join(out_dir, CELLS_FILE)
  line = (json.dumps(io._jsonable(rec), sort_keys=False) + "\n").encode()
  with _flock(path + ".lock", blocking=True):
    created = not os.path.exists(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
    try:
      size = os.fstat(fd).st_size
      if size and os.pread(fd, 1, size - 1) != b"\n":
        os.ftruncate(fd, _end_of_last_line(fd, size))
      view = memoryview(line)
      while view:
        view = view[os.write(fd, view):]
      os.fsync(fd)
    finally:
      os.close(fd)
    if created:
      _fsync_dir(out_dir)


def _end_of_last_line(fd, size, block=1 << 16) -> int:
  """The offset just past the last newline of the first ``size`` bytes (0 if none)."""
  end = size
  while end > 0:
    start = max(0, end - block)
    k = os.pread(fd, end - start, start).rfind(b"\n")
    if k >= 0:
      return start + k + 1
    end = start
  return 0


def _complete_runs(ensemble_dir: str) -> list:
  """Run directories in ``ensemble_dir`` (a directory that exists is complete)."""
  try:
    names = sorted(os.listdir(ensemble_dir))
  except FileNotFoundError:
    return []
  return [os.path.join(ensemble_dir, n) for n in names
          if not n.startswith(".")
          and os.path.isfile(os.path.join(ensemble_dir, n, "summary.json"))]


def _clean_leftovers(ensemble_dir: str, keep_checkpoints: bool):
  """Removes what killed processes left in a cell (called with its lock held,
  so nobody is writing there): hidden staging directories and temporary
  files, and the checkpoint once the run directory exists."""
  try:
    names = os.listdir(ensemble_dir)
  except FileNotFoundError:
    return
  for n in names:
    p = os.path.join(ensemble_dir, n)
    if n.startswith(".") and n.endswith(".tmp"):
      if os.path.isdir(p):
        shutil.rmtree(p, ignore_errors=True)
      else:
        with contextlib.suppress(FileNotFoundError):
          os.remove(p)
    elif not keep_checkpoints and n.startswith(".checkpoint_"):
      with contextlib.suppress(FileNotFoundError):
        os.remove(p)


def _checkpoints(ensemble_dir: str) -> list:
  try:
    return [n for n in os.listdir(ensemble_dir)
            if n.startswith(".checkpoint_") and n.endswith(".npz")]
  except FileNotFoundError:
    return []


def cell_states(out_dir: str, ids: Sequence[str]) -> list:
  """State of each cell id in ``out_dir`` (reads only): "done" (in
  cells.jsonl), "run dir (not yet recorded)", "checkpoint" (interrupted,
  will resume) or "todo"."""
  done = set(_Ledger(out_dir).refresh().records) if os.path.isdir(out_dir) else set()
  out = []
  for cid in ids:
    ens = os.path.join(out_dir, "cells", cid, "ensemble")
    out.append("done" if cid in done else
               "run dir (not yet recorded)" if _complete_runs(ens) else
               "checkpoint" if _checkpoints(ens) else "todo")
  return out


def _write_json_atomic(path, obj):
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as fh:
    fh.write(io.dumps(obj, indent=2, sort_keys=True) + "\n")
  os.replace(tmp, path)


def cell_label(values: dict, keys=None) -> str:
  """``"P=300 depth=3"``: the values of ``keys`` (default: all options)."""
  keys = sorted(values) if keys is None else keys
  return " ".join(f"{k}={values[k]}" for k in keys if k in values) or "(defaults)"


def _fmt_seconds(s: float) -> str:
  s = int(round(s))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  return f"{s // 3600}h{s % 3600 // 60:02d}m"


class _GridProgress:
  """One progress display for the whole grid on stderr: cells done / total,
  the current cell, elapsed time, ETA. Rewrites one line on a terminal,
  prints a line per event otherwise (logs of batch jobs)."""

  def __init__(self, total: int, keys, enabled: bool, stream=None):
    self.total, self.keys, self.enabled = total, keys, enabled
    self.stream = stream or sys.stderr
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.t0 = time.time()
    self.done = 0
    self.ran, self.ran_seconds = 0, 0.0
    self._len = 0

  def _eta(self):
    left = self.total - self.done
    if not left:
      return "0s"
    if not self.ran:
      return "?"
    return _fmt_seconds(self.ran_seconds / self.ran * left)

  def show(self, what: str):
    if not self.enabled:
      return
    n = 20
    bar = int(round(n * self.done / max(self.total, 1)))
    line = (f"sweep [{'#' * bar}{'.' * (n - bar)}] {self.done}/{self.total} cells"
            f" | {what} | {_fmt_seconds(time.time() - self.t0)} elapsed,"
            f" ETA {self._eta()}")
    if self.tty:
      pad = max(0, self._len - len(line))
      self.stream.write("\r" + line + " " * pad)
      self._len = len(line)
    else:
      self.stream.write(line + "\n")
    self.stream.flush()

  def close(self):
    if self.enabled and self.tty:
      self.stream.write("\n")
      self.stream.flush()


def _default_validate(values: dict) -> dict:
  from lossland.experiments import job
  return job.validate(values)


def _check_x64(values: dict):
  import jax
  if bool(jax.config.jax_enable_x64) != bool(values["x64"]):
    raise ValueError(f"the cell has x64={values['x64']} but jax_enable_x64 is "
                     f"{bool(jax.config.jax_enable_x64)}: call "
                     f"jax.config.update('jax_enable_x64', {values['x64']}) first")


def _default_run_cell(values: dict, stage_fn=None):
  from lossland.experiments import job
  _check_x64(values)
  with open(os.devnull, "w") as sink:
    return job.run_ensemble_job(values, progress=False, stdout=sink, stage_fn=stage_fn)


# the sweep's line shows what a cell run by this function is doing
_default_run_cell.takes_stage_fn = True


def _default_run_batch(values_list: list, stage_fn=None) -> list:
  from lossland.experiments import batch
  _check_x64(values_list[0])   # one key: one x64
  with open(os.devnull, "w") as sink:
    return batch.run_ensemble_jobs(values_list, progress=False, stdout=sink,
                                   stage_fn=stage_fn)


_default_run_batch.takes_stage_fn = True


def _default_batch_key(values: dict):
  from lossland.experiments import batch
  return batch.batch_key(values)


def _batch_fns(batch_cells: bool, run_cell_fn, run_batch_fn, batch_key_fn) -> tuple:
  """``(run_batch_fn, batch_key_fn)`` of :func:`run_sweep`: both None without
  ``batch_cells``, the ensemble job's by default."""
  if not batch_cells:
    return None, None
  if run_cell_fn is None:
    return _default_run_batch, _default_batch_key
  if run_batch_fn is None or batch_key_fn is None:
    raise ValueError("batch_cells with a custom run_cell_fn needs run_batch_fn and "
                     "batch_key_fn")
  return run_batch_fn, batch_key_fn


def _batches(pending: list, key_fn: Callable | None) -> list:
  """``pending`` (cell id, values) pairs as groups to run together: those of
  one key, in the order of their first cell (each alone without ``key_fn``
  or with key None)."""
  if key_fn is None:
    return [[p] for p in pending]
  groups = {}
  for n, (cid, v) in enumerate(pending):
    k = key_fn(v)
    groups.setdefault(("alone", n) if k is None else ("key", k), []).append((cid, v))
  return list(groups.values())


def varying_keys(cells: Iterable[dict]) -> list:
  """Options whose value differs between the cells (the swept axes), in the
  order they first appear (for :func:`expand_grid` cells: the axes' order)."""
  cells = list(cells)
  keys = list(dict.fromkeys(k for c in cells for k in c))
  return [k for k in keys
          if len({io.dumps(c.get(k), sort_keys=True) for c in cells}) > 1]


def prepare_cells(cells: Sequence[dict], validate_fn: Callable | None = None):
  """Validates every cell (fills defaults): returns (values list, id list).

  Raises the first ValueError of ``validate_fn`` (default ``job.validate``)
  prefixed with the cell, before anything runs.
  """
  validate_fn = validate_fn or _default_validate
  out, ids = [], []
  for c in cells:
    try:
      v = validate_fn(dict(c))
    except ValueError as e:
      raise type(e)(f"cell {cell_label(c, None)}: {e}") from e
    out.append(v)
    ids.append(cell_id(v))
  return out, ids


def release_compiled():
  """Drops jax's compiled programs (``jax.clear_caches``) after a cell.

  Every compiled XLA CPU program keeps its own memory mappings (~1500 for a
  cell's trainer and polish, measured with /proc/self/maps). A process that
  ran a few dozen cells of different shapes (the phase search with
  ``--sizes``) reached Linux's vm.max_map_count (65530) and aborted with
  "LLVM ERROR: Unable to allocate section memory". Cells seldom share
  shapes (P differs), so dropping the programs costs little recompilation.
  """
  import jax
  jax.clear_caches()


def run_sweep(cells: Sequence[dict], out_dir: str, shard: tuple = (0, 1),
              run_cell_fn: Callable | None = None, progress: bool = True,
              validate_fn: Callable | None = None,
              poll_seconds: float = 2.0, on_cell_done: Callable | None = None,
              batch_cells: bool = False, run_batch_fn: Callable | None = None,
              batch_key_fn: Callable | None = None) -> list:
  """Runs the cells of one shard into ``out_dir``; resumable, safe to share.

  Each cell becomes an ensemble run directory ``out_dir/cells/<cell_id>/
  ensemble/<run>`` and, once complete, one line of ``out_dir/cells.jsonl``
  (module docstring). Cells already recorded are skipped, so calling this
  again (after a crash, or with more cells, e.g. an adaptive bisection) runs
  only what is missing. A cell held by another process is skipped and
  waited for at the end.

  Args:
    cells: list of option dicts of the ensemble job (see :func:`expand_grid`).
    out_dir: the sweep directory (created).
    shard: (I, N): run only the I-th of N round-robin parts (:func:`shard`).
    run_cell_fn: ``fn(values) -> (run_dir, summary)`` runs one cell whose
      validated options are ``values`` (``values["out_dir"]`` is the cell's
      directory); default ``job.run_ensemble_job`` without its own output,
      which requires ``jax_enable_x64`` to equal every cell's ``x64``
      (the library never switches it).
    progress: one progress display for the grid on stderr.
    validate_fn: ``fn(values) -> values`` filling defaults and raising
      ValueError on bad options; default ``job.validate``.
    poll_seconds: wait between looks at cells held by other processes.
    on_cell_done: optional ``fn(record, how)`` called once for each cell of
      the shard as it is found complete; ``how`` is "recorded" (already in
      cells.jsonl, by an earlier or another process), "adopted" (its run
      directory existed without its line) or "ran" (by this call).
    batch_cells: run the pending cells of one ``batch_key_fn`` as one
      program (default: the job's ``experiments.batch`` functions), each
      with its own run directory, line and lock; equal up to rounding.
    run_batch_fn, batch_key_fn: with a custom ``run_cell_fn``: ``fn([values])
      -> [(run_dir, summary) or io.InputError]`` and ``fn(values) -> key or
      None`` (None: never batched).

  Returns:
    the records (as :func:`read_cells`) of the shard's cells, in grid order.

  Raises:
    ValueError: a cell does not validate (nothing runs), or the cells
      disagree on ``x64``.
    CellsFailed: some cells raised ``io.InputError`` (bad input, e.g. every
      member diverged) while running; the others ran and were recorded. Any
      other exception stops the sweep at once (a restart resumes it).
  """
  run_batch_fn, batch_key_fn = _batch_fns(batch_cells, run_cell_fn, run_batch_fn,
                                          batch_key_fn)
  mine, run_cell_fn = _shard_cells(cells, shard, run_cell_fn, validate_fn)
  os.makedirs(os.path.join(out_dir, "cells"), exist_ok=True)
  ledger = _Ledger(out_dir).refresh()
  keys = varying_keys(cells)   # the caller's order, e.g. the command line's
  unique = list(dict((c, v) for v, c in mine).items())  # first of duplicates
  bar = _GridProgress(len(unique), keys, progress)
  bar.done = sum(c in ledger.records for c, _ in unique)
  pending = [(c, v) for c, v in unique if c not in ledger.records]
  if bar.done:
    bar.show(f"{bar.done} already done")
  run = _ShardRun(out_dir, ledger, bar, keys, run_cell_fn, on_cell_done, run_batch_fn)
  run.report_recorded(unique)
  try:
    run.complete_all(pending, batch_key_fn, poll_seconds)
    if run.failures:
      bar.show(f"{len(run.failures)} cell(s) failed")
    else:
      bar.show("all cells of this shard done")
  finally:
    bar.close()
  ledger.refresh()
  records = [ledger.records[c] for _, c in mine if c in ledger.records]
  if run.failures:
    raise CellsFailed(records, run.failures, keys)
  return records


def _shard_cells(cells, shard: tuple, run_cell_fn, validate_fn) -> tuple:
  """Validates every cell and takes this shard's part of them.

  Returns:
    ([(values, cell id)] of the shard in grid order, the run_cell_fn to use:
    the default one once the cells' ``x64`` is checked against jax's).
  """
  i, n = shard
  values, ids = prepare_cells(cells, validate_fn)
  _check_shard(i, n)
  mine = [(v, c) for k, (v, c) in enumerate(zip(values, ids)) if k % n == i]
  if run_cell_fn is None:
    import jax
    x64s = {bool(v["x64"]) for v, _ in mine}
    if len(x64s) > 1:
      raise io.InputError("all cells of a sweep must share x64 (the process-wide "
                       "jax_enable_x64)")
    if x64s and x64s != {bool(jax.config.jax_enable_x64)}:
      raise io.InputError(f"the cells have x64={x64s.pop()} but jax_enable_x64 is "
                       f"{bool(jax.config.jax_enable_x64)}; the caller sets it "
                       f"(jax.config.update('jax_enable_x64', ...))")
    run_cell_fn = _default_run_cell
  return mine, run_cell_fn


def _check_same_options(cid, v, recorded, where):
  """Refuses a cell recorded (at ``where``) with other options than ``v``."""
  diff = _mismatch(recorded, v)
  if diff:
    raise io.InputError(
        f"cell {cid} in {where} has other options than the same cell now "
        f"({diff}): a default of the job changed; use a new sweep directory")


class _ShardRun:
  """The cells of one :func:`run_sweep` call as they complete: each is found
  recorded, or adopted or run under its lock and then recorded.

  Attributes:
    failures: (cell values, message) of the cells that raised io.InputError.
  """

  def __init__(self, out_dir: str, ledger: _Ledger, bar: _GridProgress, keys,
               run_cell_fn: Callable, on_cell_done: Callable | None,
               run_batch_fn: Callable | None = None):
    self.out_dir, self.ledger, self.bar, self.keys = out_dir, ledger, bar, keys
    self.run_cell_fn, self.on_cell_done = run_cell_fn, on_cell_done
    self.run_batch_fn = run_batch_fn
    self.failures = []

  def report_recorded(self, cells):
    """Checks the (cell id, values) already in cells.jsonl; tells on_cell_done."""
    for cid, v in cells:
      if cid in self.ledger.records:
        _check_same_options(cid, v, self.ledger.records[cid]["flags"],
                            os.path.join(self.out_dir, CELLS_FILE))
        if self.on_cell_done:
          self.on_cell_done(self.ledger.records[cid], "recorded")

  def finish(self, cid, v, how):
    """Counts a cell found in cells.jsonl as done; tells on_cell_done."""
    _check_same_options(cid, v, self.ledger.records[cid]["flags"],
                        os.path.join(self.out_dir, CELLS_FILE))
    self.bar.done += 1
    if self.on_cell_done:
      self.on_cell_done(self.ledger.records[cid], how)

  def complete_all(self, pending: list, batch_key_fn, poll_seconds: float):
    """Completes every (cell id, values) of ``pending`` (in groups of one
    ``batch_key_fn``), waiting for those other processes hold."""
    while pending:
      held = []
      for group in _batches(pending, batch_key_fn):
        held += self.visit_group(group)
      pending = held
      if pending:
        self.bar.show(f"waiting for {len(pending)} cell(s) held by other processes")
        time.sleep(poll_seconds)

  def visit_group(self, group: list) -> list:
    """Completes the cells of ``group`` (one program for those left to run);
    returns the (cell id, values) that other processes hold."""
    if len(group) == 1 or self.run_batch_fn is None:
      return [(cid, v) for cid, v in group if not self.visit(cid, v)]
    held, todo = [], []
    with contextlib.ExitStack() as locks:
      for cid, v in group:
        self.ledger.refresh()
        if cid in self.ledger.records:
          self.finish(cid, v, "recorded")
          continue
        cell_dir = os.path.join(self.out_dir, "cells", cid)
        os.makedirs(cell_dir, exist_ok=True)
        if not locks.enter_context(_flock(os.path.join(cell_dir, ".lock"), blocking=False)):
          held.append((cid, v))
          continue
        self.ledger.refresh()  # it may have completed while we took the lock
        if cid in self.ledger.records:
          self.finish(cid, v, "recorded")
          continue
        ens_dir = os.path.join(cell_dir, "ensemble")
        _clean_leftovers(ens_dir, keep_checkpoints=True)
        runs = _complete_runs(ens_dir)
        if runs:
          self._record(cid, v, cell_dir, *self._adopt(cid, v, runs), "adopted")
        else:
          todo.append((cid, v, cell_dir))
      if len(todo) == 1:
        self._complete(*todo[0])
      elif todo:
        self._run_batch(todo)
    return held

  def _run_batch(self, todo: list):
    """With the cells' locks held: runs them as one program; records each."""
    vals = [dict(v, out_dir=cell_dir) for _, v, cell_dir in todo]
    for x in vals:
      _write_json_atomic(os.path.join(x["out_dir"], "cell.json"), x)
    resuming = any(_checkpoints(os.path.join(d, "ensemble")) for _, _, d in todo)
    self.bar.show(f"running {len(todo)} cells in one program"
                  + (" from its checkpoint" if resuming else "") + ": "
                  + ", ".join(cell_label(v, self.keys) for _, v, _ in todo))
    t0 = time.time()
    stage = {}
    if getattr(self.run_batch_fn, "takes_stage_fn", False):
      stage["stage_fn"] = lambda text: self.bar.show(f"{len(todo)} cells in one program: {text}")
    try:
      outs = self.run_batch_fn(vals, **stage)
    except io.InputError as e:
      outs = [e] * len(todo)
    finally:
      release_compiled()
    self.bar.ran_seconds += time.time() - t0
    for (cid, v, cell_dir), o in zip(todo, outs):
      if isinstance(o, io.InputError):
        self.failures.append((v, str(o)))
        self.bar.show(f"cell {cid} failed: {' '.join(str(o).split())}")
        continue
      self.bar.ran += 1
      self._record(cid, v, cell_dir, *o, "ran")

  def visit(self, cid, v) -> bool:
    """Completes the cell unless another process holds it (then False).

    A cell that failed (``failures``) counts as visited: it is retried by a
    restart, not by this call.
    """
    self.ledger.refresh()
    if cid in self.ledger.records:
      self.finish(cid, v, "recorded")
      return True
    cell_dir = os.path.join(self.out_dir, "cells", cid)
    os.makedirs(cell_dir, exist_ok=True)
    with _flock(os.path.join(cell_dir, ".lock"), blocking=False) as got:
      if not got:
        return False
      self.ledger.refresh()  # it may have completed while we took the lock
      if cid in self.ledger.records:
        self.finish(cid, v, "recorded")
      else:
        self._complete(cid, v, cell_dir)
    return True

  def _complete(self, cid, v, cell_dir):
    """With the cell's lock held: adopts its finished run or runs it; records it."""
    ens_dir = os.path.join(cell_dir, "ensemble")
    _clean_leftovers(ens_dir, keep_checkpoints=True)
    runs = _complete_runs(ens_dir)
    if runs:
      run_dir, summary = self._adopt(cid, v, runs)
      how = "adopted"
    else:
      ran = self._run(cid, v, cell_dir, ens_dir)
      if ran is None:
        return
      (run_dir, summary), how = ran, "ran"
    self._record(cid, v, cell_dir, run_dir, summary, how)

  def _record(self, cid, v, cell_dir, run_dir, summary, how):
    """Appends the cell's line to cells.jsonl; drops its leftovers."""
    flags = dict(v, out_dir=os.path.relpath(cell_dir, self.out_dir))
    rec = {"cell_id": cid, "flags": flags,
           "run_dir": os.path.relpath(run_dir, self.out_dir), "summary": summary}
    _append_record(self.out_dir, rec)
    _clean_leftovers(os.path.join(cell_dir, "ensemble"), keep_checkpoints=False)
    self.ledger.refresh()
    self.finish(cid, v, how)
    self.bar.show(f"finished cell {cid} ({cell_label(v, self.keys)})")

  def _adopt(self, cid, v, runs) -> tuple:
    """(run_dir, summary) of the run a killed process completed but never recorded."""
    if len(runs) > 1:
      warnings.warn(f"cell {cid} has {len(runs)} run directories; "
                    f"recording the first, {runs[0]}")
    run_dir = runs[0]
    with open(os.path.join(run_dir, "summary.json")) as fh:
      summary = json.load(fh)
    config = os.path.join(run_dir, "config.json")
    if os.path.isfile(config):
      with open(config) as fh:
        _check_same_options(cid, v, json.load(fh).get("flags", {}), run_dir)
    self.bar.show(f"adopting finished run of cell {cid} ({cell_label(v, self.keys)})")
    return run_dir, summary

  def _run(self, cid, v, cell_dir, ens_dir):
    """(run_dir, summary) of the cell run now (resuming its checkpoint), or
    None if it failed on bad input (added to ``failures``)."""
    vals = dict(v, out_dir=cell_dir)
    _write_json_atomic(os.path.join(cell_dir, "cell.json"), vals)
    resuming = " from its checkpoint" if _checkpoints(ens_dir) else ""
    self.bar.show(f"running cell {cid} ({cell_label(v, self.keys)}){resuming}")
    t0 = time.time()
    stage = {}
    if getattr(self.run_cell_fn, "takes_stage_fn", False):
      label = cell_label(v, self.keys)
      stage["stage_fn"] = lambda text: self.bar.show(f"cell {cid} ({label}): {text}")
    try:
      run_dir, summary = self.run_cell_fn(vals, **stage)
    except io.InputError as e:
      self.failures.append((v, str(e)))
      self.bar.show(f"cell {cid} failed: {' '.join(str(e).split())}")
      return None
    finally:
      release_compiled()
    self.bar.ran += 1
    self.bar.ran_seconds += time.time() - t0
    return run_dir, summary


# -- command lines: comma lists of the job's options ---------------------------

_BOOL_WORDS = r"(?:true|false|t|f|yes|no|1|0)"


def _parse_list(o, text: str) -> list:
  from lossland.experiments import job
  items = [t.strip() for t in str(text).split(",")]
  if not str(text).strip() or any(not t for t in items):
    raise io.InputError(f"--{o.name}: empty element in the list {text!r}")
  vals = []
  for t in items:
    v = job.parse_value(o.name, t) if o.name in job.OPTIONS else t
    if o.type == "enum" and v not in o.choices:
      raise io.InputError(f"--{o.name} must be one of {', '.join(o.choices)}, got {t!r}")
    if v in vals:
      raise io.InputError(f"--{o.name} lists {t!r} twice")
    vals.append(v)
  if o.name == "x64" and len(vals) > 1:
    raise io.InputError("--x64 cannot be a comma list: all cells of a sweep share "
                        "the process's float64 setting (run two sweeps)")
  return vals


def split_grid_argv(argv: Sequence[str], spec, exclude: Sequence[str] = ("out_dir",)) -> tuple:
  """Takes the job's options out of a command line, each as a comma list.

  Accepts ``--name=a,b``, ``--name a,b`` and ``-name ...``; for booleans
  ``--name``, ``--noname``, ``--name=true,false`` and ``--name true,false``.
  Each element is converted with the option's type (``job.parse_value``).
  Everything else (the caller's own flags, unknown flags, positional
  arguments, all after ``--``) is left in order for the flag parser.

  Args:
    argv: the command line, program name first.
    spec: options with ``name``, ``type`` and ``choices`` (``job.SPEC``).
    exclude: options of ``spec`` that stay with the caller (the sweep's own
      ``--out_dir``).

  Returns:
    (axes: dict option -> list of values, in command-line order;
     the remaining argv).

  Raises:
    io.InputError: a bad element, an empty list or element, a value listed
      twice, an option given twice, a comma list for x64, a missing value.
  """
  opts = {o.name: o for o in spec if o.name not in exclude}
  axes, rest = {}, [argv[0]]
  k = 1
  while k < len(argv):
    tok = argv[k]
    k += 1
    if tok == "--":
      rest.extend(argv[k - 1:])
      break
    m = re.fullmatch(r"--?([A-Za-z_][A-Za-z0-9_]*)(=(.*))?", tok, re.S)
    if not m:
      rest.append(tok)
      continue
    name, text = m.group(1), m.group(3)
    if name in opts:
      o = opts[name]
      if text is None:
        if o.type == "bool":
          # absl takes no separate value for a boolean; a list of bool words
          # after it is taken as its value (--x64 true,false).
          nxt = argv[k] if k < len(argv) else ""
          if re.fullmatch(rf"(?i){_BOOL_WORDS}(\s*,\s*{_BOOL_WORDS})+", nxt):
            text, k = nxt, k + 1
          else:
            text = "true"
        else:
          if k >= len(argv):
            raise io.InputError(f"--{name} needs a value")
          text, k = argv[k], k + 1
    elif (name.startswith("no") and name[2:] in opts and opts[name[2:]].type == "bool"
          and text is None):
      o, text = opts[name[2:]], "false"
    else:
      rest.append(tok)
      continue
    if o.name in axes:
      raise io.InputError(f"--{o.name} given twice (use one comma list)")
    axes[o.name] = _parse_list(o, text)
  return axes, rest


# -- reports: a table and the figures' numbers from cells.jsonl ----------

METRICS = {
    "frac_sat": "fraction of healthy members with loss 0 (class sat)",
    "n_delta_over_n": "mean N_Delta / N of the healthy members",
    "mean_test_error": "mean test error of the healthy members",
    "ensemble_test_error": "test error of the ensemble predictor",
}

# Options that set P and N: a report against P/N absorbs them.
_SIZE_OPTIONS = ("P", "width", "N")


def cell_metrics(rec: dict) -> dict:
  """Numbers of one record for tables and figures.

  Returns:
    dict with ``N`` (weights), ``P``, ``P/N``, ``n_members``, ``n_healthy``,
    ``frac_sat`` (members of class ``sat`` over healthy members; runs written
    before member classes existed: stop reason ``sat`` over all members),
    ``frac_jammed`` (the authors' N_Delta > 0.1 N over healthy members),
    ``n_delta_over_n`` (mean over healthy members), ``mean_test_error``,
    ``ensemble_test_error``, ``wall_seconds``.
  """
  s = rec["summary"]
  members = s.get("members", [])
  healthy = [m for m in members if m.get("class") not in ("diverged", "dead")]
  n_h = s.get("n_healthy", len(healthy)) or 0
  if "member_class_counts" in s:
    n_sat = s["member_class_counts"].get("sat", 0)
  else:
    n_sat = s.get("stop_reason_counts", {}).get("sat", 0)
    n_h = s.get("n_members", len(members))
  nan = float("nan")
  N, P = s.get("n_weights"), s.get("P")
  nd = [m["n_delta_over_n"] for m in healthy if m.get("n_delta_over_n") is not None]
  return {
      "N": N, "P": P, "P/N": P / N if N and P else nan,
      "n_members": s.get("n_members", len(members)), "n_healthy": n_h,
      "frac_sat": n_sat / n_h if n_h else nan,
      "frac_jammed": s.get("n_jammed_nd_over_0.1N", 0) / n_h if n_h else nan,
      "n_delta_over_n": sum(nd) / len(nd) if nd else nan,
      "mean_test_error": _num(s.get("mean_test_error")),
      "ensemble_test_error": _num(s.get("ensemble_test_error")),
      "wall_seconds": _num(s.get("wall_seconds")),
  }


def _num(x):
  return float("nan") if x is None or isinstance(x, str) else float(x)


def swept_options(records) -> list:
  """The options that differ between records (their ``flags``), ignored ones aside."""
  keys = varying_keys({k: v for k, v in r["flags"].items()
                       if k not in IGNORED_OPTIONS} for r in records)
  return keys


def report_table(records: Sequence[dict], keys: Sequence[str] | None = None) -> str:
  """A text table, one row per record: id, the swept options, N, P/N, the
  fraction of sat members, mean N_Delta/N, mean and ensemble test errors."""
  keys = swept_options(records) if keys is None else list(keys)
  header = ["cell_id", *keys, "N", "P/N", "healthy", "frac_sat", "N_delta/N",
            "mean_test_err", "ens_test_err", "wall_s"]
  rows = []
  for r in records:
    m = cell_metrics(r)
    rows.append([r["cell_id"], *(r["flags"].get(k) for k in keys), m["N"],
                 f"{m['P/N']:.3g}", f"{m['n_healthy']}/{m['n_members']}",
                 f"{m['frac_sat']:.3f}", f"{m['n_delta_over_n']:.4f}",
                 f"{m['mean_test_error']:.4f}", f"{m['ensemble_test_error']:.4f}",
                 f"{m['wall_seconds']:.1f}"])
  widths = [max(len(str(h)), *(len(str(row[i])) for row in rows)) if rows else len(str(h))
            for i, h in enumerate(header)]
  fmt = "  ".join(f"{{:>{w}}}" for w in widths)
  return "\n".join([fmt.format(*header)] + [fmt.format(*map(str, row)) for row in rows])


def report_axes(records: Sequence[dict], x: str = "auto") -> tuple:
  """(x, line keys) of the report figures.

  ``x="auto"``: ``P/N`` when P, width or N is swept (jamming and
  generalization sweeps), else the first swept option. The line keys are the
  swept options that ``x`` does not absorb (``P/N`` absorbs P, width and N;
  ``N`` absorbs width and N): one line per combination of their values.
  """
  swept = swept_options(records)
  if x == "auto":
    x = "P/N" if any(k in swept for k in _SIZE_OPTIONS) or not swept else swept[0]
  absorbed = {"P/N": _SIZE_OPTIONS, "N": ("width", "N"), "P": ("P",)}.get(x, (x,))
  return x, [k for k in swept if k not in absorbed]


def _x_value(rec, x):
  m = cell_metrics(rec)
  if x in ("P/N", "N", "P"):
    return m[x]
  v = rec["flags"].get(x)
  return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def report_series(records: Sequence[dict], x: str = "auto",
                  metrics: Sequence[str] = tuple(METRICS)) -> dict:
  """The numbers of the report figures: each metric against ``x``, one line
  per value of the other swept options (:func:`report_axes`); drawn by
  :func:`lossland.plots.sweep.plot_report`.

  Returns:
    dict with ``x`` (``"auto"`` resolved), ``line_keys`` (the options that
    split the lines), ``numeric`` (every x value is a float: each line's
    points are sorted by x; otherwise the x values are categories, in record
    order), ``x_values`` (of every record, in order) and ``metrics``
    {metric: {"title", "lines": {label: [(x value, metric value), ...]}}},
    the labels ``"k=v, ..."`` of the line keys ("" when there are none).
  """
  x, line_keys = report_axes(records, x)
  groups = {}
  for r in records:
    label = ", ".join(f"{k}={r['flags'].get(k)}" for k in line_keys)
    groups.setdefault(label, []).append(r)
  xs_all = [_x_value(r, x) for r in records]
  numeric = all(isinstance(v, float) for v in xs_all)
  per_metric = {}
  for metric in metrics:
    lines = {}
    for label, recs in groups.items():
      pts = [(_x_value(r, x), cell_metrics(r)[metric]) for r in recs]
      if numeric:
        pts.sort(key=lambda p: p[0])
      lines[label] = pts
    per_metric[metric] = {"title": METRICS.get(metric, metric), "lines": lines}
  return {"x": x, "line_keys": line_keys, "numeric": numeric, "x_values": xs_all,
          "metrics": per_metric}
