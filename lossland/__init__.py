"""lossland: the physics of deep-learning loss landscapes, in JAX.

Pure functions define the networks (:mod:`lossland.nets`), the losses of the
margin Delta = epsilon - y f (:mod:`lossland.losses`) and the data
(:mod:`lossland.data`); :mod:`lossland.train` trains whole ensembles of
initializations as one jitted, vmapped program with per-member stop reasons
(sat / jammed / max_steps / diverged); :mod:`lossland.observables` measures
them. :mod:`lossland.curvature` and :mod:`lossland.lanczos` give the Hessian
and its split H = H0 + Hp, dense and matrix-free; :mod:`lossland.landscape`
explores minima and transition states. Importing lossland has no side effects (float64 is switched on by the
caller: ``jax.config.update("jax_enable_x64", True)``).
"""
from lossland import curvature
from lossland import data
from lossland import experiment
from lossland import io
from lossland import lanczos
from lossland import losses
from lossland import nets
from lossland import observables
from lossland import train
from lossland.data import Dataset
from lossland.losses import LossConfig
from lossland.nets import NetConfig, make_net, n_params, n_weights, width_for_n
from lossland.train import TrainConfig, train_ensemble

__version__ = "0.1.0"

__all__ = [
    "curvature", "data", "experiment", "io", "lanczos", "losses", "nets", "observables", "train",
    "Dataset", "LossConfig", "NetConfig", "TrainConfig", "make_net",
    "n_params", "n_weights", "train_ensemble", "width_for_n",
]
