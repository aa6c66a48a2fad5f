"""Atomic checkpoints of any pytree of arrays (PRNG keys included), no pickle.

``save(path, tree, meta)`` writes the leaves of ``tree`` and a JSON ``meta``
dict into one ``.npz`` file: first to ``<path>.<pid>.tmp``, flushed and
fsync'd, then renamed over ``path`` with :func:`os.replace`, so a reader (or a
job restarted after SIGKILL) sees either the previous checkpoint or the new
one, never half a file. ``restore(path, like)`` reads it back into the
structure of ``like`` (arrays or anything with ``shape`` and ``dtype``),
checking that every leaf has the expected shape and dtype; PRNG key leaves are
stored as their raw ``key_data`` and re-wrapped with the key implementation of
the corresponding leaf of ``like``. Arrays come back as host numpy arrays (keys
as jax key arrays); the caller places them on devices.

Nothing is pickled: the file holds numeric arrays and one unicode string (the
JSON of ``meta``), and it is read with ``allow_pickle=False``.
"""
import contextlib
import json
import os
import signal
import threading
from typing import Any

import jax
import numpy as np

_META = "__meta__"
_FORMAT = "lossland-checkpoint-1"


def _is_key(leaf) -> bool:
  dtype = getattr(leaf, "dtype", None)
  return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def save(path: str, tree: Any, meta: dict | None = None) -> None:
  """Writes ``tree`` (a pytree of arrays) and ``meta`` (JSON-able) atomically.

  Args:
    path: the checkpoint file (conventionally ``*.npz``).
    tree: a pytree whose leaves are jax or numpy arrays (PRNG keys allowed).
    meta: a JSON-serializable dict stored alongside (e.g. a fingerprint).
  """
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  arrays = {}
  for i, leaf in enumerate(leaves):
    arrays[f"leaf_{i}"] = np.asarray(
        jax.random.key_data(leaf) if _is_key(leaf) else leaf)
  header = {"format": _FORMAT, "n_leaves": len(leaves), "treedef": str(treedef),
            "meta": meta or {}}
  arrays[_META] = np.asarray(json.dumps(header))
  tmp = f"{path}.{os.getpid()}.tmp"
  with _sigint_deferred():
    try:
      with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)


@contextlib.contextmanager
def _sigint_deferred():
  """Holds back Ctrl-C (SIGINT) while a checkpoint is written.

  A KeyboardInterrupt raised inside ``np.savez`` leaves its zip writer open,
  and closing it then raises ``ValueError`` in place of the interrupt (seen
  as a resume that exits 1 instead of 130). In the main thread the signal
  is recorded and re-raised as KeyboardInterrupt once the file is complete
  and renamed; elsewhere (signal handlers can only be set there) nothing
  changes.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  caught = []
  previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
  if caught and previous is not signal.SIG_IGN:
    if callable(previous):
      previous(signal.SIGINT, None)   # default_int_handler raises KeyboardInterrupt
    else:
      raise KeyboardInterrupt


def remove(path: str) -> None:
  """Removes the checkpoint ``path`` and the partial files (``path.<pid>.tmp``)
  that processes killed while writing it left behind (live writers' are
  kept)."""
  from lossland import io
  folder, base = os.path.split(path)
  for name in os.listdir(folder or ".") if os.path.isdir(folder or ".") else ():
    pid = name[len(base) + 1:-len(".tmp")]
    if name.startswith(base + ".") and name.endswith(".tmp") and pid.isdigit() \
        and not io._pid_alive(int(pid)):
      os.remove(os.path.join(folder, name))
  if os.path.exists(path):
    os.remove(path)


def read_meta(path: str) -> dict:
  """The ``meta`` dict of a checkpoint (ValueError if unreadable)."""
  return _load(path, meta_only=True)[0]["meta"]


def _load(path, meta_only=False):
  try:
    with np.load(path, allow_pickle=False) as z:
      if _META not in z.files:
        raise ValueError("not a lossland checkpoint")
      header = json.loads(str(z[_META]))
      if header.get("format") != _FORMAT:
        raise ValueError(f"unknown checkpoint format {header.get('format')!r}")
      if meta_only:
        return header, None
      arrays = [z[f"leaf_{i}"] for i in range(header["n_leaves"])]
  except (OSError, ValueError, EOFError, KeyError) as e:
    raise ValueError(f"unreadable checkpoint {path}: {e}") from e
  except Exception as e:  # zipfile.BadZipFile and friends of a truncated file
    raise ValueError(f"unreadable checkpoint {path}: {e}") from e
  return header, arrays


def restore(path: str, like: Any) -> tuple:
  """Reads a checkpoint written by :func:`save` into the structure of ``like``.

  Args:
    path: the checkpoint file.
    like: a pytree with the structure, shapes and dtypes expected (arrays or
      ``jax.ShapeDtypeStruct``; key leaves must be key arrays).

  Returns:
    ``(tree, meta)``: host numpy leaves (key leaves as jax key arrays) and the
    stored meta dict.

  Raises:
    ValueError: unreadable file, or a structure/shape/dtype mismatch.
  """
  header, arrays = _load(path)
  leaves, treedef = jax.tree_util.tree_flatten(like)
  if len(leaves) != len(arrays) or str(treedef) != header["treedef"]:
    raise ValueError(f"checkpoint {path} holds a different structure "
                     f"({len(arrays)} leaves, expected {len(leaves)})")
  out = []
  for i, (leaf, a) in enumerate(zip(leaves, arrays)):
    if _is_key(leaf):
      impl = jax.random.key_impl(leaf)
      key = jax.random.wrap_key_data(a, impl=impl)
      if key.shape != tuple(leaf.shape):
        raise ValueError(f"checkpoint {path}: leaf {i} has shape {key.shape}, "
                         f"expected {tuple(leaf.shape)}")
      out.append(key)
      continue
    if a.shape != tuple(leaf.shape) or a.dtype != np.dtype(leaf.dtype):
      raise ValueError(f"checkpoint {path}: leaf {i} is {a.dtype}{list(a.shape)}, "
                       f"expected {np.dtype(leaf.dtype)}{list(leaf.shape)}")
    out.append(a)
  return jax.tree_util.tree_unflatten(treedef, out), header["meta"]
