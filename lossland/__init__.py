"""lossland: the physics of deep-learning loss landscapes, in JAX.

Pure functions define the networks (:mod:`lossland.nets`), the losses of the
margin Delta = epsilon - y f (:mod:`lossland.losses`) and the data
(:mod:`lossland.data`); :mod:`lossland.train` trains whole ensembles of
initializations as one jitted, vmapped program with per-member stop reasons
(sat / jammed / max_steps / diverged); :mod:`lossland.observables` measures
them. :mod:`lossland.curvature` and :mod:`lossland.lanczos` give the Hessian
and its split H = H0 + Hp, dense and matrix-free; :mod:`lossland.landscape`
explores minima and transition states. :mod:`lossland.ntk` gives empirical and
infinite-width kernels; :mod:`lossland.experiments` runs
ensemble jobs (``experiments.job``), resumable grids of them
(``experiments.sweep``) and studies (the phase diagram, the generalization
curve; presets in :mod:`lossland.configs`); :mod:`lossland.phase` and
:mod:`lossland.generalization` analyse jamming and generalization sweeps. Importing lossland has no side effects (float64 is switched on by the
caller: ``jax.config.update("jax_enable_x64", True)``).
"""
from lossland import checkpoint
from lossland import curvature
from lossland import data
from lossland import experiment
from lossland import experiments
from lossland import fire
from lossland import fits
from lossland import generalization
from lossland import io
from lossland import job
from lossland import lanczos
from lossland import losses
from lossland import nets
from lossland import ntk
from lossland import observables
from lossland import optim
from lossland import phase
from lossland import sweep
from lossland import train
from lossland.data import DataError, Dataset
from lossland.losses import LossConfig
from lossland.nets import NetConfig, make_net, n_params, n_weights, width_for_n
from lossland.train import TrainConfig, train_ensemble

__version__ = "0.1.0"

__all__ = [
    "checkpoint", "curvature", "data", "experiment", "experiments", "fire", "fits", "generalization", "io", "job",
    "lanczos", "losses", "nets", "ntk", "observables", "phase", "sweep", "train",
    "DataError", "Dataset", "LossConfig", "NetConfig", "TrainConfig", "make_net",
    "n_params", "n_weights", "train_ensemble", "width_for_n",
]
