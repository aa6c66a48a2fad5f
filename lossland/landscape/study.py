"""The Verpoort–Lee–Wales study for one (depth, width, n_data, λ): data → network
loss → basin-hopping → connect loop → metrics and disconnectivity graph.

Used by ``python -m lossland.scripts.landscape``; everything here is a library
function of a frozen :class:`StudyConfig` and writes only into the directory it is
given.
"""

import dataclasses
import os
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lossland import dtypes
from lossland import data as data_lib
from lossland import nets
from lossland.landscape import potentials, report, symmetry
from lossland.landscape.database import Database, export_pathsample
from lossland.landscape.explorer import (ExplorerConfig, basin_hopping, connect_database,
                                         make_explorer)


def _option(default, help: str, choices: tuple = ()):
  """A :class:`StudyConfig` field; its ``help`` (and ``choices``) document it and
  are the flag of the same name of ``python -m lossland.scripts.landscape``."""
  return dataclasses.field(default=default, metadata={'help': help, 'choices': choices})


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """One landscape run. Each field is documented by its ``help`` (field metadata),
  which is also the help of the script's flag of the same name (:func:`flag_spec`).
  """
  dataset: str = _option('digits', "'digits' (scikit-learn digits, PCA-whitened "
                         "on the training points) or 'synthetic' (Gaussian blobs)",
                         ('digits', 'synthetic'))
  n_classes: int = _option(3, 'number of classes (digits 0 .. n_classes-1)')
  d: int = _option(5, 'input dimension (PCA components for digits)')
  n_data: int = _option(60, 'training points P (the rest of the classes: test set)')
  n_test: int = _option(0, 'test points (0: all remaining, at most 500)')
  depth: int = _option(1, 'hidden layers')
  width: int = _option(0, 'hidden units per layer (0: parameter count closest to '
                       'n_params)')
  n_params: int = _option(57, 'target parameter count (weights and biases) when '
                          'width=0')
  lam: float = _option(1e-3, 'L2 coefficient lambda on every parameter')
  bh_chains: int = _option(8, 'basin-hopping chains (vmapped)')
  bh_steps: int = _option(30, 'basin-hopping steps per chain')
  bh_temperature: float = _option(1e-3, 'Metropolis temperature (loss units)')
  bh_step: float = _option(1.0, 'initial basin-hopping step (adapted)')
  connect_budget: int = _option(20, 'maximum DNEB/HEF connect attempts')
  connect_refine: bool = _option(True, 'once connected, spend the rest of the budget '
                                 'on alternative paths between minima not yet joined '
                                 'by a TS (PATHSAMPLE-style)')
  gtol: float = _option(1e-8, 'RMS-gradient tolerance of stationary points')
  frustration_temperature: float = _option(0.01, 'T of the frustration index')
  n_levels: int = _option(25, 'disconnectivity levels')
  seed: int = _option(0, "PRNG seed (data for 'synthetic', starting points, "
                      'basin-hopping)')

  def validate(self):
    for f in dataclasses.fields(self):
      choices = f.metadata['choices']
      if choices and getattr(self, f.name) not in choices:
        raise ValueError(f'{f.name} must be one of {choices}, got {getattr(self, f.name)!r}')
    checks = [('n_classes', self.n_classes >= 2), ('d', self.d >= 1),
              ('n_data', self.n_data >= self.n_classes), ('depth', self.depth >= 1),
              ('width', self.width >= 0), ('n_params', self.n_params >= 1),
              ('lam', self.lam >= 0), ('bh_chains', self.bh_chains >= 1),
              ('bh_steps', self.bh_steps >= 0), ('bh_temperature', self.bh_temperature > 0),
              ('bh_step', self.bh_step > 0), ('connect_budget', self.connect_budget >= 0),
              ('gtol', self.gtol > 0), ('n_levels', self.n_levels >= 2),
              ('frustration_temperature', self.frustration_temperature > 0),
              ('n_test', self.n_test >= 0)]
    for name, ok in checks:
      if not ok:
        raise ValueError(f'invalid {name}={getattr(self, name)!r}')
    if self.dataset == 'digits' and self.n_classes > 10:
      raise ValueError('digits has 10 classes')


def flag_spec() -> tuple:
  """The options of :class:`StudyConfig` for ``lossland.scripts._cli.define_flags``:
  one :class:`lossland.experiments.options.Option` per field (name, type, default,
  help, choices)."""
  from lossland.experiments import options
  return options.spec_of(StudyConfig)


def width_for_params(d: int, depth: int, n_out: int, n_params: int) -> int:
  """Hidden width whose parameter count (weights and biases) is closest to
  ``n_params`` (the smaller width on a tie).

  With biases the count is ``(L-1) h^2 + (d + n_out + L) h + n_out``: the weight
  count of ``nets.width_for_n`` for input dimension ``d + L`` plus ``n_out``, so
  its closed form applies to ``n_params - n_out``.
  """
  return nets.width_for_n(n_params - n_out, d + depth, depth, n_out)


def make_data(cfg: StudyConfig, dtype=None) -> tuple:
  """``(x_train [P, d], y_train [P], x_test, y_test)`` as NumPy arrays, inputs
  float64 (``'synthetic'``: drawn in ``dtype``, default jax's default float),
  labels int.

  Raises:
    lossland.data.DataError: too few points for the split or the PCA.

  Digits: classes 0..K-1 take turns (:func:`lossland.data.interleave_classes`,
  balanced part only), so the first P points are balanced; fixed order, no RNG.
  The whitening PCA is fitted on the training points.
  """
  if cfg.dataset == 'digits':
    images, labels = data_lib.load_digits_raw()
    order, n_balanced = data_lib.interleave_classes(labels, range(cfg.n_classes))
    order = order[:n_balanced]
    if cfg.n_data >= order.size:
      raise data_lib.DataError(f'n_data={cfg.n_data} leaves no test points '
                       f'({order.size} digits of {cfg.n_classes} classes)')
    tr, te = order[:cfg.n_data], order[cfg.n_data:]
    te = te[:cfg.n_test or 500]
    if cfg.d > min(cfg.n_data - 1, 64):
      raise data_lib.DataError(f'd={cfg.d} PCA components need more than {cfg.n_data} '
                               'points')
    mean, comp, scale = data_lib.pca_whiten(images[tr], cfg.d)
    xtr = data_lib.apply_pca(images[tr], mean, comp, scale)
    xte = data_lib.apply_pca(images[te], mean, comp, scale)
    return xtr, labels[tr], xte, labels[te]
  dt = dtypes.float_dtype(dtype)
  k_c, k_x, _ = jax.random.split(jax.random.key(cfg.seed), 3)
  n = cfg.n_data + (cfg.n_test or 500)
  centers = 1.5 * jax.random.normal(k_c, (cfg.n_classes, cfg.d), dt)
  y = np.arange(n) % cfg.n_classes
  x = np.asarray(centers[y] + jax.random.normal(k_x, (n, cfg.d), dt), np.float64)
  return x[:cfg.n_data], y[:cfg.n_data], x[cfg.n_data:], y[cfg.n_data:]


def explorer_config(cfg: StudyConfig, n_params: int) -> ExplorerConfig:
  """Engine settings for network losses of order 1e-2 with λ = 1e-3, whose minima
  differ by ~1e-4 and whose barriers are ~1e-6–1e-3.

  ``max_erise`` (1e-6, OPTIM's ``MAXERISE``) is far below the barriers, so a
  push-off quench cannot climb over a neighbouring barrier into another basin; the
  HEF tolerance is the minima's ``gtol``; ``pushoff`` 0.02 leaves the TS region
  (curvatures ~1e-3) and is enlarged to 0.08 if its quenches fail.
  """
  return ExplorerConfig(gtol=cfg.gtol, bh_gtol=1e-5, temperature=cfg.bh_temperature,
                        step_size=cfg.bh_step, max_step=0.5, max_erise=1e-6,
                        neb_images=12, neb_k=1.0, neb_dt=0.05, neb_gtol=1e-6,
                        neb_max_iter=1000, n_climb=3, max_uphill=0.1, pushoff=0.02,
                        hef_max_iter=150, evcut=1e-7, n_lanczos=min(40, n_params))


ENERGY_TOL = 1e-8  # identity of stationary points (the database's, used by the drivers)


def _accuracy_metrics_fn(net, data: tuple, dtype) -> Callable[[np.ndarray], dict]:
  """The per-minimum metrics of the study: ``w [N] -> {'test_accuracy',
  'train_accuracy'}`` of the network loss ``net`` on ``data = (x_train, y_train,
  x_test, y_test)``."""
  xtr, ytr, xte, yte = data
  acc = jax.jit(net.accuracy_fn)
  xtr_j, ytr_j, xte_j, yte_j = (jnp.asarray(xtr, dtype), jnp.asarray(ytr),
                                jnp.asarray(xte, dtype), jnp.asarray(yte))

  def metrics_fn(w):
    w = jnp.asarray(w)
    return {'test_accuracy': float(acc(w, xte_j, yte_j)),
            'train_accuracy': float(acc(w, xtr_j, ytr_j))}

  return metrics_fn


def _open_database(out_dir: str, cfg: StudyConfig, sizes: tuple, net,
                   distance_fn: Callable) -> Database:
  """Creates ``out_dir/landscape.sqlite`` with the study's identity tolerances and
  the meta data that say how to read its coordinates (config, layer sizes,
  ``NetConfig``, layout)."""
  db_path = os.path.join(out_dir, 'landscape.sqlite')
  db = Database(db_path, energy_tol=ENERGY_TOL, distance_fn=distance_fn,
                distance_tol=1e-3)
  db.set_meta('study_config', dataclasses.asdict(cfg))
  db.set_meta('layer_sizes', list(sizes))
  db.set_meta('net_config', dataclasses.asdict(net.net))
  db.set_meta('coords_layout', 'ravel_pytree(nets params): per layer b, then w row-major')
  return db


def run_study(cfg: StudyConfig, out_dir: str,
              progress: Optional[Callable[[str], None]] = None,
              data: Optional[tuple] = None) -> dict:
  """Runs one landscape study and writes ``landscape.sqlite``, ``disconnectivity.png``
  and ``pathsample/`` into ``out_dir`` (which must exist).

  Everything is computed in jax's default float dtype, which the caller chooses;
  the engine's tolerances need float64 (``jax_enable_x64``, as the script does).
  The flat coordinates stored in the database (and ``points.min``/``points.ts``)
  are ``ravel_pytree`` of ``nets`` params (per layer b then w); the database's meta
  ``net_config`` holds the ``NetConfig``.

  Args:
    cfg: the study.
    out_dir: an existing directory.
    progress: called with one line of text per stage.
    data: ``make_data(cfg)`` if the caller has it already (the script loads it
      before creating the run directory, so that bad sizes write nothing).

  Returns:
    The summary dict (also the content of ``summary.json``, written by the caller).
  """
  cfg.validate()
  dtype = dtypes.float_dtype()
  if dtype != jnp.float64:
    raise ValueError(f'the landscape study needs float64 (its tolerances are below '
                     f'{dtype} resolution): enable jax_enable_x64')
  t0 = time.time()
  say = progress or (lambda s: None)
  xtr, ytr, xte, yte = data if data is not None else make_data(cfg)
  width = cfg.width or width_for_params(cfg.d, cfg.depth, cfg.n_classes, cfg.n_params)
  sizes = (cfg.d,) + (width,) * cfg.depth + (cfg.n_classes,)
  net = potentials.make_network_loss(jnp.asarray(xtr, dtype), jnp.asarray(ytr), sizes,
                                     cfg.lam)
  say(f'network {sizes}: N={net.n_params} parameters, P={len(ytr)}, test={len(yte)}')

  metrics_fn = _accuracy_metrics_fn(net, (xtr, ytr, xte, yte), dtype)
  ex_cfg = explorer_config(cfg, net.n_params)
  align = lambda a, b: symmetry.align_network(a, b, net.net)
  dist = symmetry.network_distance_fn(net.net)
  ex = make_explorer(net.loss_fn, ex_cfg, align_fn=align, distance_fn=dist)

  db = _open_database(out_dir, cfg, sizes, net, dist)

  key = jax.random.key(cfg.seed)
  k_init, k_bh = jax.random.split(key)
  x0 = jax.vmap(net.init_fn)(jax.random.split(k_init, cfg.bh_chains))
  say(f'basin-hopping: {cfg.bh_chains} chains x {cfg.bh_steps} steps (the first '
      'chunk includes compilation)')
  bh = basin_hopping(db, ex, k_bh, x0, cfg.bh_steps, chunk=10, metrics_fn=metrics_fn,
                     progress=say)
  bh.pop('state')
  n_min_bh = db.n_minima()
  say(f'connect loop: {n_min_bh} minima, budget {cfg.connect_budget} attempts (the '
      'first attempt compiles DNEB and HEF)')
  conn = connect_database(db, ex, cfg.connect_budget, metrics_fn=metrics_fn,
                          refine=cfg.connect_refine, progress=say)

  say('metrics, disconnectivity graph and PATHSAMPLE export')
  summary = report.figure_and_summary(
      report.read_graph(db), out_dir, temperature=cfg.frustration_temperature, n_levels=cfg.n_levels,
      title=f'{cfg.dataset} depth={cfg.depth} h={width} N={net.n_params} '
            f'P={len(ytr)} λ={cfg.lam:g}')
  summary.update({
      'layer_sizes': list(sizes), 'n_params': net.n_params, 'n_data': len(ytr),
      'n_test': len(yte), 'n_minima_from_basin_hopping': n_min_bh,
      'basin_hopping': bh, 'connect': conn, 'seconds': time.time() - t0,
      'max_grad_rms_minima': float(max(m.grad_rms for m in db.minima())),
      'max_grad_rms_ts': float(max([t.grad_rms for t in db.transition_states()],
                                   default=0.0)),
  })
  export_pathsample(db, os.path.join(out_dir, 'pathsample'), evcut=ex_cfg.evcut)
  db.close()
  return summary
