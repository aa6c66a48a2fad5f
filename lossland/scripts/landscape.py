r"""Loss-landscape explorer for tanh networks (Verpoort, Lee & Wales, PNAS 2020).

  python -m lossland.scripts.landscape --depth 2 --n_data 60 --bh_steps 40 \
      --connect_budget 30 --seed 0 --out_dir runs

writes ``runs/landscape/<UTC time>_<hash>/`` with ``config.json``, ``landscape.sqlite``,
``disconnectivity.png``, ``summary.json`` (``n_minima``, ``n_ts``, ``global_min_loss``,
``frustration``, ``funnel_fraction``, ...), ``metrics.jsonl`` (progress lines),
``arrays.npz`` (minimum/TS losses and TS pairs) and ``pathsample/`` (min.data,
ts.data, points.min, points.ts).

``--from_db FILE`` skips the search and re-analyses an existing database (metrics and
graph only). Bad flags or a corrupt database: one line on stderr, exit status 2,
nothing written.
"""

import dataclasses
import os
import shutil
import sys

from absl import flags

from lossland.scripts import _cli

_DATASET = flags.DEFINE_enum('dataset', 'digits', ['digits', 'synthetic'], 'data set')
_N_CLASSES = flags.DEFINE_integer('n_classes', 3, 'number of classes')
_D = flags.DEFINE_integer('d', 5, 'input dimension (PCA components for digits)')
_N_DATA = flags.DEFINE_integer('n_data', 60, 'training points P')
_DEPTH = flags.DEFINE_integer('depth', 1, 'hidden layers')
_WIDTH = flags.DEFINE_integer('width', 0, 'hidden width (0: match --n_params)')
_N_PARAMS = flags.DEFINE_integer('n_params', 57, 'target parameter count when width=0')
_LAM = flags.DEFINE_float('lam', 1e-3, 'L2 coefficient lambda')
_BH_CHAINS = flags.DEFINE_integer('bh_chains', 8, 'basin-hopping chains (vmapped)')
_BH_STEPS = flags.DEFINE_integer('bh_steps', 30, 'basin-hopping steps per chain')
_BH_T = flags.DEFINE_float('bh_temperature', 1e-3, 'Metropolis temperature')
_BH_STEP = flags.DEFINE_float('bh_step', 1.0, 'initial basin-hopping step')
_BUDGET = flags.DEFINE_integer('connect_budget', 20, 'DNEB/HEF connect attempts')
_REFINE = flags.DEFINE_boolean('connect_refine', True,
                               'once connected, use the rest of the budget on '
                               'alternative paths (PATHSAMPLE-style)')
_GTOL = flags.DEFINE_float('gtol', 1e-8, 'RMS-gradient tolerance of stationary points')
_FT = flags.DEFINE_float('frustration_temperature', 0.01, 'T of the frustration index')
_SEED = flags.DEFINE_integer('seed', 0, 'PRNG seed')
_OUT = flags.DEFINE_string('out_dir', 'runs', 'root of run directories')
_FROM_DB = flags.DEFINE_string('from_db', None, 're-analyse this database instead')


def _config():
  from lossland.landscape.study import StudyConfig
  return StudyConfig(dataset=_DATASET.value, n_classes=_N_CLASSES.value, d=_D.value,
                     n_data=_N_DATA.value, depth=_DEPTH.value, width=_WIDTH.value,
                     n_params=_N_PARAMS.value, lam=_LAM.value, bh_chains=_BH_CHAINS.value,
                     bh_steps=_BH_STEPS.value, bh_temperature=_BH_T.value,
                     bh_step=_BH_STEP.value, connect_budget=_BUDGET.value,
                     connect_refine=_REFINE.value,
                     gtol=_GTOL.value, frustration_temperature=_FT.value, seed=_SEED.value)


def _reanalyse(path, cfg, out_dir):
  """Metrics and graph of an existing database (copied into the run directory)."""
  from lossland.landscape import report
  from lossland.landscape.database import Database, DatabaseError
  try:
    db = Database(path, create=False)
    graph = report.read_graph(db)
  except DatabaseError as e:
    raise _cli.UsageError(str(e)) from None
  db.close()
  if len(graph.ids) == 0:
    raise _cli.UsageError(f'{path}: database holds no minima')
  summary = report.figure_and_summary(graph, out_dir, title=os.path.basename(path),
                                      temperature=cfg.frustration_temperature,
                                      n_levels=cfg.n_levels)
  shutil.copyfile(path, os.path.join(out_dir, 'landscape.sqlite'))
  return summary


def _check_out_dir(out_dir):
  """UsageError unless ``out_dir`` is, or can be created as, a writable directory
  (probed with a temporary file that is removed at once)."""
  import tempfile
  path = os.path.abspath(out_dir)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  if not os.path.isdir(path):
    raise _cli.UsageError(f'--out_dir {out_dir}: {path} exists and is not a directory')
  try:
    fd, probe = tempfile.mkstemp(prefix='.probe.', dir=path)
  except OSError:
    raise _cli.UsageError(f'--out_dir {out_dir}: {path} is not writable') from None
  os.close(fd)
  os.remove(probe)


def main(argv):
  if len(argv) > 1:
    raise _cli.UsageError(f'unexpected arguments: {argv[1:]}')
  cfg = _config()
  cfg.validate()
  _check_out_dir(_OUT.value)
  if _FROM_DB.value is not None and not os.path.isfile(_FROM_DB.value):
    raise _cli.UsageError(f'--from_db: no such file {_FROM_DB.value}')
  if _FROM_DB.value is not None:
    # Fail before creating anything if the file is not a landscape database.
    from lossland.landscape.database import Database, DatabaseError
    try:
      Database(_FROM_DB.value, create=False).close()
    except DatabaseError as e:
      raise _cli.UsageError(str(e)) from None

  print(f'landscape: depth={cfg.depth} n_data={cfg.n_data} bh {cfg.bh_chains}x'
        f'{cfg.bh_steps} steps, connect budget {cfg.connect_budget}; loading data '
        'and compiling (about a minute the first time)...', file=sys.stderr, flush=True)
  import jax
  jax.config.update('jax_enable_x64', True)
  from lossland import io
  from lossland.landscape.study import run_study

  flag_values = {f: getattr(flags.FLAGS, f) for f in
                 ('dataset', 'n_classes', 'd', 'n_data', 'depth', 'width', 'n_params',
                  'lam', 'bh_chains', 'bh_steps', 'bh_temperature', 'bh_step',
                  'connect_budget', 'connect_refine', 'gtol', 'frustration_temperature',
                  'seed', 'out_dir', 'from_db')}
  with io.new_run(_OUT.value, 'landscape', flag_values,
                  study_config=dataclasses.asdict(cfg)) as run:
    def progress(line):
      print(line, file=sys.stderr, flush=True)
      run.log([{'progress': line}])

    if _FROM_DB.value is not None:
      summary = _reanalyse(_FROM_DB.value, cfg, run.path)
    else:
      summary = run_study(cfg, run.path, progress=progress)
    from lossland.landscape.database import Database
    db = Database(os.path.join(run.path, 'landscape.sqlite'), create=False)
    _, me, te, tp = db.graph_arrays()
    db.close()
    run.save_arrays(min_losses=me, ts_losses=te, ts_pairs=tp)
    run.write_json('summary.json', summary)
  keys = ('n_minima', 'n_ts', 'global_min_loss', 'frustration', 'funnel_fraction')
  print(' '.join(f'{k}={summary[k]}' for k in keys))
  print(run.final_path)


if __name__ == '__main__':
  _cli.run(main)
