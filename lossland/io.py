"""Run directories: ``config.json``, ``metrics.jsonl``, ``arrays.npz``, ``summary.json``.

Layout (CONVENTIONS.md): ``<root>/<script>/<UTC time>_<short hash>/``. Everything
is written into a hidden staging directory next to the final one and renamed
into place when complete, so **a run directory that exists is complete**. Jobs
that fail leave nothing behind. Analyses add a sub-directory to a run the same
way (:func:`staged_subdir`). Nothing is pickled: JSON and ``.npz`` only.
"""
import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import zipfile
import time
from typing import Any, Iterable, NamedTuple

import numpy as np

REQUIRED_FILES = ("config.json", "metrics.jsonl", "arrays.npz", "summary.json")


class InputError(ValueError):
  """Bad input the user must fix (an option, a size, a file, a directory).

  The scripts report it as one ``error:`` line with exit status 2
  (``lossland.scripts._cli.run``); other exceptions are bugs and keep their
  traceback.
  """


class RunError(InputError):
  """A run directory is missing, incomplete or unreadable."""


def _jsonable(obj):
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    return {k: _jsonable(v) for k, v in dataclasses.asdict(obj).items()}
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, float) and not np.isfinite(obj):
    return None if np.isnan(obj) else ("inf" if obj > 0 else "-inf")
  if hasattr(obj, "__array__") and hasattr(obj, "shape"):
    return _jsonable(np.asarray(obj))
  return obj


def dumps(obj: Any, **kw) -> str:
  """json.dumps that understands numpy/jax scalars and arrays and dataclasses."""
  return json.dumps(_jsonable(obj), **kw)


def git_revision() -> str | None:
  """The git revision of the lossland checkout, or None outside a checkout."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, check=True,
                         capture_output=True, text=True, timeout=10)
    return out.stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


def environment() -> dict:
  """Library versions, jax backend and x64 state, for config.json."""
  import jax
  import flax
  import optax
  return {
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": getattr(jax.lib, "__version__", None) or _jaxlib_version(),
      "flax": flax.__version__,
      "optax": optax.__version__,
      "numpy": np.__version__,
      "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "x64": bool(jax.config.jax_enable_x64),
      # flags XLA read at start-up (lossland.xla_options, tests/conftest.py)
      "xla_flags": os.environ.get("XLA_FLAGS"),
      "git_revision": git_revision(),
  }


def _jaxlib_version():
  try:
    import jaxlib
    return jaxlib.__version__
  except Exception:  # pragma: no cover
    return None


def run_name(config: dict) -> str:
  """``<UTC time>_<short hash of the config>``."""
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
  digest = hashlib.sha1(dumps(config, sort_keys=True).encode()).hexdigest()[:8]
  return f"{stamp}_{digest}"


class RunWriter:
  """Writes the files of one run into its staging directory."""

  def __init__(self, path: str):
    self.path = path
    self._metrics = open(os.path.join(path, "metrics.jsonl"), "w")

  def write_json(self, name: str, obj: Any):
    with open(os.path.join(self.path, name), "w") as fh:
      fh.write(dumps(obj, indent=2, sort_keys=False))
      fh.write("\n")

  def log(self, records: Iterable[dict]):
    for rec in records:
      self._metrics.write(dumps(rec))
      self._metrics.write("\n")
    self._metrics.flush()

  def save_arrays(self, name: str = "arrays.npz", **arrays):
    with open(os.path.join(self.path, name), "wb") as fh:
      np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})

  def close(self):
    if not self._metrics.closed:
      self._metrics.close()


# Staging directories are named ``.<name>.<host>-<pid>.<random>.tmp`` so that
# those of dead processes (SIGKILL during a write) can be recognized.
STALE_AGE_SECONDS = 7 * 24 * 3600


def _host():
  return "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:32] or "host"


def _staging_prefix(name: str) -> str:
  return f".{name}.{_host()}-{os.getpid()}."


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # someone else's live process
  except OSError:
    return True
  return True


def clean_stale_staging(parent: str, max_age: float = STALE_AGE_SECONDS) -> list:
  """Removes staging directories left in ``parent`` by processes that died.

  A hidden ``.*.tmp`` directory is stale when the process named in it
  (``<host>-<pid>``) ran on this host and is gone, or when it has not been
  modified for ``max_age`` seconds (other hosts, older name formats).

  Returns:
    the removed paths.
  """
  removed = []
  try:
    entries = os.listdir(parent)
  except OSError:
    return removed
  host, now = _host(), time.time()
  for e in entries:
    if not (e.startswith(".") and e.endswith(".tmp")):
      continue
    path = os.path.join(parent, e)
    if not os.path.isdir(path) or os.path.islink(path):
      continue
    stale = None
    for part in e.split("."):
      h, sep, pid = part.rpartition("-")
      if sep and h == host and pid.isdigit():
        stale = int(pid) != os.getpid() and not _pid_alive(int(pid))
        break
    if stale is None:  # another host or an older name: by age only
      try:
        stale = now - os.path.getmtime(path) > max_age
      except OSError:
        continue
    if stale:
      shutil.rmtree(path, ignore_errors=True)
      removed.append(path)
  return removed


def _open_permissions(path):
  # mkdtemp creates 0700; a finished run directory gets the usual mode.
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(path, 0o777 & ~umask)


@contextlib.contextmanager
def new_run(root: str, script: str, config: dict, **sections):
  """Context manager yielding a :class:`RunWriter`; renames into place on success.

  ``config.json`` is written first: ``{"script", "flags": config, **sections,
  "environment"}`` (``sections`` holds e.g. the net/loss/train configs). On
  any exception the staging directory is removed and nothing is left behind
  (nor the ``<root>/<script>`` folder, if this call created it and it is
  empty). Staging folders of processes that died (:func:`clean_stale_staging`)
  are removed first. After the block, ``writer.final_path`` holds the run
  directory.
  """
  parent = os.path.join(root, script)
  made_parent = not os.path.isdir(parent)
  os.makedirs(parent, exist_ok=True)
  clean_stale_staging(parent)
  name = run_name(config)
  try:
    staging = tempfile.mkdtemp(prefix=_staging_prefix(name), suffix=".tmp",
                               dir=parent)
  except BaseException:
    if made_parent:
      _rmdir_quiet(parent)
    raise
  writer = RunWriter(staging)
  try:
    writer.write_json("config.json", {"script": script, "flags": config,
                                      **sections, "environment": environment()})
    yield writer
    writer.close()
    _open_permissions(staging)
    final = os.path.join(parent, name)
    os.rename(staging, final)
    writer.final_path = final
  except BaseException:
    writer.close()
    shutil.rmtree(staging, ignore_errors=True)
    if made_parent:
      _rmdir_quiet(parent)
    raise


def _rmdir_quiet(path):
  try:
    os.rmdir(path)  # only if empty
  except OSError:
    pass


@contextlib.contextmanager
def staged_subdir(run_dir: str, name: str):
  """Yields a staging path that becomes ``run_dir/name`` on success.

  An existing ``run_dir/name`` is replaced only once the new one is complete.
  Stale staging folders of dead processes are removed first.
  """
  clean_stale_staging(run_dir)
  staging = tempfile.mkdtemp(prefix=_staging_prefix(name), suffix=".tmp",
                             dir=run_dir)
  try:
    yield staging
    _open_permissions(staging)
    final = os.path.join(run_dir, name)
    if os.path.exists(final):
      trash = final + ".old." + os.path.basename(staging)
      os.rename(final, trash)
      os.rename(staging, final)
      shutil.rmtree(trash, ignore_errors=True)
    else:
      os.rename(staging, final)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise


class Run(NamedTuple):
  """A loaded run directory."""
  path: str
  config: dict
  summary: dict
  arrays: dict

  def metrics(self) -> list:
    with open(os.path.join(self.path, "metrics.jsonl")) as fh:
      return [json.loads(line) for line in fh if line.strip()]


def load_run(path: str) -> Run:
  """Loads a complete run directory; raises :class:`RunError` otherwise."""
  if not os.path.isdir(path):
    raise RunError(f"run directory not found: {path}")
  missing = [f for f in REQUIRED_FILES if not os.path.isfile(os.path.join(path, f))]
  if missing:
    raise RunError(f"incomplete run directory {path}: missing {', '.join(missing)}")
  try:
    with open(os.path.join(path, "config.json")) as fh:
      config = json.load(fh)
    with open(os.path.join(path, "summary.json")) as fh:
      summary = json.load(fh)
  except (OSError, ValueError) as e:
    raise RunError(f"unreadable run directory {path}: {e}") from e
  npz = os.path.join(path, "arrays.npz")
  try:
    with np.load(npz, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    # numpy reports a non-zip file as "pickled data" needing allow_pickle:
    # never suggest that; say what is wrong.
    raise RunError(f"{npz} is corrupt or truncated "
                   f"({type(e).__name__})") from None
  return Run(path, config, summary, arrays)
