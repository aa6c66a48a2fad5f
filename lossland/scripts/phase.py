r"""Jamming phase diagram on random data (1809.09349): P*(N) per depth, N_Delta/N jump, theta, gamma.

    python -m lossland.scripts.phase --preset cpu
    python -m lossland.scripts.phase --preset gpu --out_dir runs/phase_gpu     # one GPU
    python -m lossland.scripts.phase --preset paper --out_dir runs/phase_paper [--shard 0/4]
    python -m lossland.scripts.phase --preset cpu --sizes 300,600   # finite-size check

For each depth L a network of fixed width (N weights) is trained on P random
points for a grid of P/N (ensembles of ``--n_seeds`` members, one sweep cell
each); the grid is then extended until the transition is bracketed and bisected
(``--rounds``), and the fraction sat / (sat + jammed) is fitted by a logistic
curve (lossland.fits.fit_threshold: maximum likelihood, profile-likelihood
CI). Limbo, dead, stalled and not-converged members are counted, never as
jammed. The cells live under ``<out_dir>/sweep`` (lossland.sweep: a second
invocation with the same out_dir skips finished cells; ``--shard I/N`` runs
the I-th part of the initial grid only, no bisection, and a final unsharded
invocation bisects and analyses). The result is a run directory
``<out_dir>/phase/<UTC time>_<hash>/`` with summary.json (per_depth,
depth_spread, theta, theta_ci, gamma, gamma_ci, ...) and figures.

``--workers N`` runs the cells of each batch (the initial grid, each round's
new cells) in N processes on the same sweep directory (N - 1 subprocesses
plus this one; each cell runs once, in whichever process takes its lock
first, with the same seeds, so the records are those of ``--workers 1``).

Presets (``--preset cpu|gpu|paper``) are values in ``lossland/configs/phase.py``
whose docstrings give their commands and runtimes; the flags given explicitly
override them. The study's own flags are the fields of
``lossland.experiments.phase_study.PhaseConfig``; every other flag is an
ensemble-job option (``lossland.job.SPEC``: ``--lr``, ``--polish``,
``--activation``, ...) given to every cell.
"""
import sys

from absl import flags

from lossland.experiments import job
from lossland.configs import phase as presets
from lossland.experiments import options
from lossland.experiments.phase_study import PhaseConfig
from lossland.scripts import _cli

STUDY = options.spec_of(PhaseConfig)
# job options that the study sets per cell, or owns under the same name
_OWNED = {o.name for o in STUDY} | {"P", "width", "depth", "plots", "record_unsat"}
JOB = options.pass_through(job.SPEC, _OWNED)

_PRESET = flags.DEFINE_enum("preset", None, list(presets.PRESETS),
                            "Preset (lossland/configs/phase.py; flags override it).")
_cli.define_flags(STUDY + JOB, __name__)


def config() -> PhaseConfig:
  """The preset (or the defaults) with the given flags applied."""
  given, cell = _cli.given_values(STUDY), _cli.given_values(JOB)
  if _PRESET.value is None:
    return options.build(PhaseConfig, dict(given, job=cell))
  base = presets.PRESETS[_PRESET.value]()
  if {"N", "sizes"} & set(given):  # they replace the preset's widths
    given.setdefault("widths", ())
  return options.override(base, dict(given, job={**base.job, **cell}))


def main(argv):
  if len(argv) > 1:
    raise _cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cfg = config()
  import jax
  jax.config.update("jax_enable_x64", cfg.x64)
  from lossland.experiments import phase_study
  say = lambda m: print(m, file=sys.stderr, flush=True)
  out = phase_study.run(cfg, log_fn=say)
  if out["sharded"]:
    i, n = cfg.shard_index()
    print(f"shard {i}/{n} done; run again without --shard (same --out_dir) to bisect "
          "and analyse")
    return
  for line in phase_study.report_lines(out):
    print(line)


if __name__ == "__main__":
  _cli.run(main)
