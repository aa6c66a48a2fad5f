"""XLA settings that must be made before jax starts its backend.

GPU command buffers (CUDA graphs): XLA records runs of kernels into one graph
that launches as a unit, which saves the per-kernel launch cost that
dominates small programs (issue 18: a K = 20 ensemble of N = 900 on P = 100
costs about 24 us per step on an H200 whatever the work). XLA's default
records fusions and library calls but not the control flow, so each step of
a ``lax.scan`` (a while loop) still launches its kernels from the host. The
modes of :func:`set_command_buffers`:

* ``xla``: XLA's own default (nothing is set);
* ``off``: no command buffers;
* ``scan``: the default plus while loops and conditionals, so that a whole
  chunk of training steps can run as one graph.

They change how kernels are launched, not what they compute. CPU backends
ignore them. The scripts take ``--command_buffers MODE``
(:mod:`lossland.scripts._cli`); ``scripts/gpu_check.sh`` measures the modes
against each other with the ensemble benchmark.
"""
import os

COMMAND_BUFFER_FLAG = "--xla_gpu_enable_command_buffer"
COMMAND_BUFFERS = {"xla": None, "off": "", "scan": "+WHILE,+CONDITIONAL"}


def backend_started() -> bool:
  """Whether jax has started a backend (XLA has read its flags)."""
  try:
    from jax._src import xla_bridge
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):  # pragma: no cover - other jax versions
    return False


def set_command_buffers(mode: str, environ=None) -> str | None:
  """Sets the GPU command-buffer types in ``XLA_FLAGS`` (module docstring).

  Args:
    mode: one of :data:`COMMAND_BUFFERS`.
    environ: the environment to edit (default ``os.environ``; subprocesses
      inherit it).

  Returns:
    The new ``XLA_FLAGS`` (None where ``mode`` is ``xla`` and nothing changed).

  Raises:
    ValueError: an unknown mode.
    RuntimeError: a mode other than ``xla`` after jax started its backend
      (XLA has read its flags; the setting would be silently ignored).
  """
  if mode not in COMMAND_BUFFERS:
    raise ValueError(f"command buffers must be one of {sorted(COMMAND_BUFFERS)}, got {mode!r}")
  value = COMMAND_BUFFERS[mode]
  if value is None:
    return None
  env = os.environ if environ is None else environ
  if env is os.environ and backend_started():
    raise RuntimeError(f"command buffers {mode!r}: jax has already started its backend; "
                       "set them before the first computation")
  kept = [f for f in env.get("XLA_FLAGS", "").split()
          if not f.startswith(COMMAND_BUFFER_FLAG + "=")]
  env["XLA_FLAGS"] = " ".join(kept + [f"{COMMAND_BUFFER_FLAG}={value}"])
  return env["XLA_FLAGS"]
