"""The arrays of an ensemble run directory: written and loaded back here.

The ensemble job (:func:`lossland.job.run_ensemble_job`, ``python -m
lossland.scripts.ensemble``) writes, besides the options, the frozen configs
``net``, ``loss`` and ``train`` into ``config.json`` and, through
:func:`save_ensemble`, these arrays into ``arrays.npz``:

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
final_<name>           [K]                          measurements at the stop
steps                  [K]                          steps done by each member
stop_code              [K]                          see train.STOP_REASONS
history_unsat          [K, M, P] bool               Delta > 0 per point (record_unsat only)
history_running        [K, M] bool                  member running (record_unsat only)
label_flipped          [P] bool                     training labels flipped (label_noise > 0 only)
=====================  ===========================  ==============================

With a polish stage (job option ``polish`` not ``none``) the job adds the
polish's own histories, on its own measurement grid of M2 points counted in
gradient evaluations (docs/data.md): ``polish_history_step`` [M2],
``polish_history_<name>`` [K, M2] (NaN where not polished or stopped),
``polish_history_running`` [K, M2] bool, ``polish_history_unsat`` [K, M2, P]
bool (record_unsat only), ``polished`` [K] bool, ``polish_steps`` [K],
``steps_before_polish`` [K] and ``stop_code_before_polish`` [K]; then
``steps`` = ``steps_before_polish`` + ``polish_steps``.

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


def save_ensemble(writer: io.RunWriter, seeds, res, ds: data_lib.Dataset,
                  extra: dict | None = None):
  """Writes a trained ensemble into a run being written (the layout above).

  Args:
    writer: the :class:`lossland.io.RunWriter` of :func:`lossland.io.new_run`.
    seeds: [K] member seeds.
    res: the :class:`lossland.train.EnsembleResult` of ``train_ensemble``.
    ds: the Dataset it was trained on.
    extra: further arrays for arrays.npz (the job's polish histories and
      flipped-label mask); a key that clashes with the layout is an error.

  Also appends to ``metrics.jsonl`` one record per member and measurement step
  (``{"seed", "step", <measurements>}``) and one ``"final": True`` record per
  member with its stop reason.
  """
  from lossland import train
  records = []
  for k, s in enumerate(seeds):
    for j, step in enumerate(res.history_step):
      if np.isnan(res.history["loss"][k, j]):
        continue
      records.append({"seed": int(s), "step": int(step),
                      **{m: float(res.history[m][k, j]) for m in train.MEASUREMENTS}})
    records.append({"seed": int(s), "step": int(res.steps[k]), "final": True,
                    "stop_reason": res.stop_reasons[k],
                    **{m: float(res.final[m][k]) for m in train.MEASUREMENTS}})
  writer.log(records)
  unsat = {}
  if getattr(res, "history_unsat", None) is not None:
    # which points are unsatisfied at each measurement (record_unsat): the
    # avalanches of lossland.phase
    unsat = {"history_unsat": np.asarray(res.history_unsat, bool),
             "history_running": np.asarray(res.history_running, bool)}
  arrays = dict(
      **unsat,
      seeds=np.asarray(seeds),
      params_final=nets.flatten_members(res.params),
      params_init=nets.flatten_members(res.params0),
      x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test,
      f_train=res.f_train, f_test=res.f_test, stop_code=res.stop_code,
      steps=res.steps, history_step=res.history_step,
      **{f"history_{m}": res.history[m] for m in train.MEASUREMENTS},
      **{f"final_{m}": res.final[m] for m in train.MEASUREMENTS})
  clash = sorted(set(arrays) & set(extra or {}))
  if clash:
    raise ValueError(f"arrays.npz keys written twice: {clash}")
  writer.save_arrays(**arrays, **(extra or {}))


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

  def curvature_inputs(self, members=None, at: str = "final",
                       chunk_size: int | None = None) -> tuple:
    """What :func:`lossland.curvature.spectra` takes, for some members.

    Args:
      members: member indices (default all).
      at: "final" (trained) or "init" parameters.
      chunk_size: data chunk size of the curvature functions (None: all P).

    Returns:
      (fns, params, batch): :func:`lossland.curvature.curvature_fns` of the
      trained function and loss, the params pytree with a leading [K'] axis,
      and the training set as :class:`lossland.curvature.Examples`, shared
      ([P, ...]) or, with subtract_init, one per member ([K', P, ...]) with
      the offset f(w0_k; x).
    """
    from lossland import curvature  # pylint: disable=g-import-not-at-top
    if at not in ("final", "init"):
      raise ValueError(f"at must be 'final' or 'init', got {at!r}")
    idx = np.arange(self.n_members) if members is None else np.asarray(
        members, np.int64).reshape(-1)
    take = lambda t: jax.tree_util.tree_map(lambda a: a[idx], t)
    params0 = take(self.params0)
    params = params0 if at == "init" else take(self.params)
    x, y = self.data.x_train, self.data.y_train
    _, apply_fn = nets.make_net(self.net, dtype=x.dtype)
    fns = curvature.curvature_fns(apply_fn, self.loss, chunk_size=chunk_size)
    if not self.subtract_init:
      return fns, params, curvature.examples(x, y)
    offset = jax.jit(jax.vmap(apply_fn, in_axes=(0, None)))(params0, x)
    k = offset.shape[0]
    batch = curvature.examples(jnp.broadcast_to(x, (k,) + x.shape),
                               jnp.broadcast_to(y, (k,) + y.shape), offset)
    return fns, params, batch


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
