"""Moved to :mod:`lossland.optim.fire`; this name stays for one release."""
from lossland.optim.fire import FireConfig, FireState, fire_init, fire_step  # noqa: F401
