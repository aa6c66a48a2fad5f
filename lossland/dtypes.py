"""The one place that says which float dtype library code uses by default.

Library functions keep the dtype they are given; when they create arrays from
nothing (inits, data, Lanczos vectors) and no dtype is passed, they use JAX's
default float: float32, or float64 once the caller has run
``jax.config.update("jax_enable_x64", True)`` (scripts and tests do; the library
never does).
"""
import jax.numpy as jnp


def float_dtype(dtype=None):
  """``dtype`` if given, else JAX's current default float dtype."""
  return jnp.dtype(dtype) if dtype is not None else jnp.zeros(()).dtype
