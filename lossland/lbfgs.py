"""Moved to :mod:`lossland.optim.lbfgs`; this name stays for one release."""
from lossland.optim.lbfgs import scaling, two_loop  # noqa: F401
