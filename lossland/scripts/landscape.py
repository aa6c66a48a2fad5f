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

from lossland.experiments import options
from lossland.experiments.options import option
from lossland.landscape import study
from lossland.scripts import _cli

_SPEC = study.flag_spec()
_cli.define_flags(_SPEC, __name__)  # one flag per StudyConfig field


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """Where the run goes (each field is the flag of the same name); the study's
  own options are :class:`lossland.landscape.study.StudyConfig`'s fields."""
  out_dir: str = option('runs', 'root of run directories')
  from_db: str | None = option(None, 're-analyse this database instead')


_RUN_SPEC = options.spec_of(RunOptions)
_cli.define_flags(_RUN_SPEC, __name__)


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
  cfg = study.StudyConfig(**_cli.flag_values(_SPEC))
  cfg.validate()
  o = RunOptions(**_cli.flag_values(_RUN_SPEC))
  _check_out_dir(o.out_dir)
  if o.from_db is not None and not os.path.isfile(o.from_db):
    raise _cli.UsageError(f'--from_db: no such file {o.from_db}')
  if o.from_db is not None:
    # Fail before creating anything if the file is not a landscape database.
    from lossland.landscape.database import Database, DatabaseError
    try:
      Database(o.from_db, create=False).close()
    except DatabaseError as e:
      raise _cli.UsageError(str(e)) from None

  import jax
  jax.config.update('jax_enable_x64', True)
  from lossland import io
  data = study.make_data(cfg) if o.from_db is None else None  # bad sizes: exit 2
  print(f'landscape: depth={cfg.depth} n_data={cfg.n_data} bh {cfg.bh_chains}x'
        f'{cfg.bh_steps} steps, connect budget {cfg.connect_budget}; compiling '
        '(about a minute the first time)...', file=sys.stderr, flush=True)

  flag_values = {**_cli.flag_values(_SPEC), **_cli.flag_values(_RUN_SPEC)}
  with io.new_run(o.out_dir, 'landscape', flag_values,
                  study_config=dataclasses.asdict(cfg)) as run:
    def progress(line):
      print(line, file=sys.stderr, flush=True)
      run.log([{'progress': line}])

    if o.from_db is not None:
      summary = _reanalyse(o.from_db, cfg, run.path)
    else:
      summary = study.run_study(cfg, run.path, progress=progress, data=data)
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
