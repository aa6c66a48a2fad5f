"""Test configuration: float64 by default (the physics needs it); tests that
check float32 behaviour use ``jax.enable_x64(False)``.

On a GPU (docs/reliability.md, "GPU readiness audit"): pytest-xdist runs
several worker processes on one device, and each would preallocate 75 % of
its memory on first use, so the second worker runs out of memory. Unless the
caller says otherwise, the workers (and the script subprocesses, which
inherit ``os.environ``) allocate on demand. This must happen before jax
creates its backend; on CPU it changes nothing.
"""
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402  (after the allocator setting)
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)


@pytest.fixture
def key():
  return jax.random.key(0)


@pytest.fixture
def on_cpu():
  """``with on_cpu():`` runs jax code on the CPU device.

  For tests that compare numbers computed in this process with those of a
  ``JAX_PLATFORMS=cpu`` subprocess: on a GPU the two sides would otherwise
  run on different backends, whose float64 results agree only to rounding
  (different matmul and transcendental kernels), not to the tests' 1e-10 or
  exact counts. On a CPU-only machine this is the default device: no change.
  """
  cpu = jax.devices("cpu")[0]
  return lambda: jax.default_device(cpu)
