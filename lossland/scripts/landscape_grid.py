"""Grid of disconnectivity graphs (rows: depth, columns: n_data) from landscape runs.

  python -m lossland.scripts.landscape_grid --out grid.png RUN_DIR [RUN_DIR ...]

Reads each run's ``landscape.sqlite`` and ``config.json`` (nothing else) and writes
one PNG plus ``grid.json`` (the summary numbers per cell) next to it.
"""
import dataclasses
import json
import os


from lossland.experiments import options
from lossland.experiments.options import option
from lossland.scripts import _cli

@dataclasses.dataclass(frozen=True)
class GridOptions:
  """The script's options (each field is the flag of the same name)."""
  out: str = option("landscape_grid.png", "output PNG")


_OPTIONS = GridOptions
_SPEC = options.spec_of(GridOptions)
_cli.define_flags(_SPEC, __name__)


def main(argv):
  o = _OPTIONS(**_cli.flag_values(_SPEC))
  runs = argv[1:]
  if not runs:
    raise _cli.UsageError('give at least one run directory')
  out_parent = os.path.dirname(os.path.abspath(o.out))
  if not os.path.isdir(out_parent):
    raise _cli.UsageError(f'--out {o.out}: folder {out_parent} does not exist')
  if os.path.isdir(o.out):
    raise _cli.UsageError(f'--out {o.out} is a directory; give a .png file name')
  if not os.access(out_parent, os.W_OK):
    raise _cli.UsageError(f'--out {o.out}: folder {out_parent} is not writable')
  from lossland.landscape import report
  panels, table = report.grid_panels(runs)
  report.save_grid(panels, o.out, n_levels=25, value_label='test acc.', dpi=110)
  with open(os.path.splitext(o.out)[0] + '.json', 'w') as f:
    json.dump(table, f, indent=2)
  print(o.out)


if __name__ == '__main__':
  _cli.run(main)
