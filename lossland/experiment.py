"""Loading an ensemble run directory back into networks, losses and data.

The ensemble job (``python -m lossland.scripts.ensemble``) writes, besides the
flags, the frozen configs ``net``, ``loss`` and ``train`` into ``config.json``
and these arrays into ``arrays.npz``:

=====================  ===========================  ==============================
key                    shape                        meaning
=====================  ===========================  ==============================
seeds                  [K]                          member seeds
params_final           [K, n_params]                final parameters, flattened
params_init            [K, n_params]                initial parameters, flattened
x_train, y_train       [P, d], [P]                  training set (labels +-1)
x_test, y_test         [n_test, d], [n_test]        test set
f_train, f_test        [K, P], [K, n_test]          final outputs of every member
history_step           [M]                          measurement steps
history_<name>         [K, M]                       measurements, NaN after a stop
stop_code              [K]                          see train.STOP_REASONS
=====================  ===========================  ==============================

Flattening is :func:`jax.flatten_util.ravel_pytree` of the params list
(:func:`lossland.nets.flatten_members`, :func:`lossland.nets.unravel_fn`).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lossland import data as data_lib
from lossland import io
from lossland import losses
from lossland import nets


class Ensemble(NamedTuple):
  """A trained ensemble, ready for analysis.

  Attributes:
    path: the run directory.
    net: NetConfig.
    loss: LossConfig.
    subtract_init: whether the trained function is f(w) - f(w0).
    seeds: [K] member seeds.
    params: params pytree with a leading [K] axis (final).
    params0: params pytree with a leading [K] axis (initial).
    data: the Dataset used for training and testing.
    summary: summary.json contents.
    config: config.json contents.
  """
  path: str
  net: nets.NetConfig
  loss: losses.LossConfig
  subtract_init: bool
  seeds: np.ndarray
  params: list
  params0: list
  data: data_lib.Dataset
  summary: dict
  config: dict

  @property
  def n_members(self) -> int:
    return int(self.seeds.shape[0])

  def member(self, k: int) -> tuple:
    """(params, params0) of member k."""
    take = lambda t: jax.tree_util.tree_map(lambda a: a[k], t)
    return take(self.params), take(self.params0)

  def output_fn(self):
    """fn(params, params0, x) -> f, the function that was trained."""
    _, apply_fn = nets.make_net(self.net)
    return nets.output_fn(apply_fn, self.subtract_init)


def load_ensemble(path: str) -> Ensemble:
  """Loads a run directory written by the ensemble job.

  Raises:
    io.RunError: the directory is missing, incomplete or not an ensemble run.
  """
  run = io.load_run(path)
  cfg = run.config
  for section in ("net", "loss", "train"):
    if section not in cfg:
      raise io.RunError(f"{path} is not an ensemble run (config.json has no "
                        f"'{section}' section)")
  needed = ("seeds", "params_final", "params_init", "x_train", "y_train",
            "x_test", "y_test")
  missing = [k for k in needed if k not in run.arrays]
  if missing:
    raise io.RunError(f"incomplete run directory {path}: arrays.npz lacks "
                      f"{', '.join(missing)}")
  net_cfg = nets.NetConfig(**cfg["net"])
  loss_cfg = losses.LossConfig(**cfg["loss"])
  a = run.arrays
  dtype = a["params_final"].dtype
  if dtype == np.float64 and not jax.config.jax_enable_x64:
    dtype = np.float32  # analysing an x64 run without x64: values are rounded
  unravel = nets.unravel_fn(net_cfg, dtype)
  n = nets.n_params(net_cfg)
  if a["params_final"].shape[-1] != n:
    raise io.RunError(f"{path}: params have {a['params_final'].shape[-1]} "
                      f"entries but the net has {n}")
  to_tree = lambda flat: jax.vmap(unravel)(jnp.asarray(flat, dtype))
  ds = data_lib.Dataset(*(jnp.asarray(a[k], dtype) for k in
                          ("x_train", "y_train", "x_test", "y_test")))
  return Ensemble(path=path, net=net_cfg, loss=loss_cfg,
                  subtract_init=bool(cfg["train"].get("subtract_init", False)),
                  seeds=a["seeds"], params=to_tree(a["params_final"]),
                  params0=to_tree(a["params_init"]), data=ds,
                  summary=run.summary, config=cfg)
