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
import subprocess
import tempfile
from typing import Any, Iterable, NamedTuple

import numpy as np

REQUIRED_FILES = ("config.json", "metrics.jsonl", "arrays.npz", "summary.json")


class RunError(ValueError):
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
  any exception the staging directory is removed and nothing is left behind.
  After the block, ``writer.final_path`` holds the run directory.
  """
  parent = os.path.join(root, script)
  os.makedirs(parent, exist_ok=True)
  name = run_name(config)
  staging = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent)
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
    raise


@contextlib.contextmanager
def staged_subdir(run_dir: str, name: str):
  """Yields a staging path that becomes ``run_dir/name`` on success.

  An existing ``run_dir/name`` is replaced only once the new one is complete.
  """
  staging = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=run_dir)
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
    with np.load(os.path.join(path, "arrays.npz"), allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except (OSError, ValueError, EOFError) as e:
    raise RunError(f"unreadable run directory {path}: {e}") from e
  return Run(path, config, summary, arrays)
