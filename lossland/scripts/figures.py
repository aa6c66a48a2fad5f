r"""The seeds' figures, one command each.

    python -m lossland.scripts.figures phase_diagram          # jamming: sat fraction, N* vs P*, N_Delta/N
    python -m lossland.scripts.figures delta_distributions    # Delta's power laws near P*
    python -m lossland.scripts.figures hessian_phases         # H, H0, Hp below, at and above P*
    python -m lossland.scripts.figures generalization         # test error and fluctuations vs N/N*
    python -m lossland.scripts.figures landscapes             # disconnectivity graphs, depth x data
    python -m lossland.scripts.figures phase_diagram --preset gpu   # the papers' sizes, on a GPU

Each figure reads its study from ``--out_dir`` (default
``runs/figures/<preset>``) and runs it there first when it is absent (the
phase, generalization and landscape studies with the preset's settings;
the first three figures share one phase study). A finished study is reused:
drawing again costs no training (``--rerun`` runs it again, resuming its
cells). The figure lands in ``<out_dir>/figures/NAME/`` as PNG, PDF and JSON
(the numbers drawn and the run directories they come from). See
lossland/figures.py.
"""
import sys

from lossland import figures
from lossland.experiments import options
from lossland.scripts import _cli

_SPEC = [o for o in options.spec_of(figures.FigureConfig) if o.name != "name"]
_cli.define_flags(_SPEC, __name__)


def main(argv):
  if len(argv) != 2:
    raise _cli.UsageError(f"give one figure: {', '.join(figures.FIGURES)}")
  cfg = figures.FigureConfig(name=argv[1], **_cli.flag_values(_SPEC))
  import jax
  jax.config.update("jax_enable_x64", True)
  say = lambda m: print(m, file=sys.stderr, flush=True)
  path = figures.make_figure(cfg, log_fn=say)
  print(path)


if __name__ == "__main__":
  _cli.run(main)
