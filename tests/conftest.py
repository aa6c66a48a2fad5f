"""Test configuration: float64 by default (the physics needs it); tests that
check float32 behaviour use ``jax.enable_x64(False)``."""
import jax
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture
def key():
  return jax.random.key(0)
