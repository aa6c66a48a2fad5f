"""JAX's persistent compilation cache, per user.

Every script turns it on (``lossland.scripts._cli``), and so does each worker
process of a grid (:mod:`lossland.experiments.grid`): a second run of the
same command skips most of its start-up.
"""
import os


def cache_dir() -> str:
  """The per-user directory of JAX's persistent compilation cache."""
  if os.environ.get("LOSSLAND_CACHE_DIR"):
    return os.environ["LOSSLAND_CACHE_DIR"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "lossland", "jax")


def enable_compilation_cache(path: str | None = None) -> str | None:
  """Turns on JAX's persistent compilation cache in ``path`` (default
  :func:`cache_dir`); returns the directory, or None if it cannot be used.

  Every compiled program is cached (minimum compile time 0), so a second run
  of the same command skips most of its start-up. Works on jax 0.10 and 0.11.
  """
  import jax
  path = path or cache_dir()
  try:
    os.makedirs(path, exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
      return None
  except OSError:
    return None
  try:
    jax.config.update("jax_compilation_cache_dir", path)
  except (AttributeError, KeyError, ValueError):  # a jax without the option
    return None
  for name, value in (("jax_persistent_cache_min_compile_time_secs", 0.0),
                      ("jax_persistent_cache_min_entry_size_bytes", 0)):
    try:
      jax.config.update(name, value)
    except (AttributeError, KeyError, ValueError):
      pass
  return path
