r"""Test error, ensembles and NTK fluctuations vs width across the jamming point.

    python -m lossland.scripts.generalization --preset cpu

Trains K members per width h (the sweep engine, resumable: rerunning the same
command skips finished widths) on one fixed data set, then records per N the
single-net, ensemble and early-stopped test errors, the output variance, the
NTK fluctuation at init and its drift during training, the fraction of sat
members; N* (frac_sat = 1/2), power-law fits with bootstrap CIs on the tail
N >= ``--fit_min_n_over_n_star`` N* (default 10) and, separately, on the
near-N* regime below it, and the infinite-width NTK asymptote
(lossland/generalization.py). Writes ``<out_dir>/generalization/<UTC
time>_<hash>/`` (config.json, metrics.jsonl, arrays.npz, summary.json, the
figure generalization.png and .pdf: lossland.plots.generalization.plot_figure);
the member runs live in ``<out_dir>/generalization_sweeps/<hash>/``.

Presets (``--preset cpu|gpu|paper|none``) are values in
``lossland/configs/generalization.py`` whose docstrings give their commands;
the flags given explicitly override them. The study's flags are the fields of
``lossland.experiments.generalization_study.GeneralizationConfig``; every other
flag is an ensemble-job option (``lossland.job.SPEC``) given to every cell.

The presets follow 1810.09665's runs: the authors' network (``--net
authors``: standard parametrization, orthogonal init with gain 1, zero-init
biases, plain ReLU), f itself trained (not f - f0), quadratic hinge with
eps = 1, full-batch Adam whose learning rate is divided by 10 every
``--decay_every`` steps, stop at N_Delta = 0 (or jammed: no progress over
``--jam_window`` steps). ``cpu``: digits parity, PCA d = 10, P = 1000 with 5 %
of the training labels flipped (``--label_noise``; the test labels stay
clean), one hidden layer, widths 4..768 (N = 11 h, every integer from 15 to 18
around N*, 192..768 the tail N >= 10 N*), 16 members, lr 1e-3 / 10 every 10k
steps, 30k steps, no member stopped jammed before the last learning-rate
level, then the L-BFGS polish (at most 5000 evaluations) of every member not
at N_Delta = 0. ``gpu``: the
cpu preset with widths 1024, 1536, 2048 added (N/N* up to ~100-130). ``paper``:
MNIST parity, PCA d = 10, L = 5, P = 10k, widths 1 to ~3000, lr 1e-4 / 10
every 250k steps, 500k steps (needs ``--data_dir`` with the MNIST files and
a GPU). Other flags override the preset; ``--preset none`` uses only the
flags.

Polish (``--polish lbfgs``, ``--polish_steps``; on in ``cpu`` and ``gpu``,
off in the other presets): after the Adam stage every member that did not reach
N_Delta = 0 is continued with the ensemble job's L-BFGS polish until it
stops jammed (no descent, or the best loss fell by less than 1e-6 over 500
evaluations) or runs out of evaluations, so that the members end at minima
of the loss (on ReLU kinks, where the one-sided |grad L| need not vanish:
docs/generalization.md has the probe near N* and the minimum check). The
options enter the cells only when the polish is on, so unpolished sweeps
keep their directories (``--polish none`` reproduces the runs made before).

Label noise (``--label_noise``) is the ensemble job's option of the same
name, given to every cell (only when it is not 0, so that clean sweeps keep
their directories): each cell flips the same round(label_noise * P) training
labels, drawn with ``lossland.data.label_noise_key(jax.random.key(data_seed))``
-- the draw this script made before, when it wrote the noisy data set to a
prepared .npz that every cell read back; the numbers are the same
(docs/generalization.md), the sweep directories are new.
"""
import sys

from absl import flags

from lossland.experiments import job
from lossland.configs import generalization as presets
from lossland.experiments import options
from lossland.experiments.generalization_study import GeneralizationConfig
from lossland.scripts import _cli

STUDY = options.spec_of(GeneralizationConfig)
# job options that the study sets per cell (or from --net), or owns by name
_OWNED = {o.name for o in STUDY} | {"width", "parametrization", "init", "bias",
                                    "normalize_activation", "schedule", "decay_factor"}
JOB = options.pass_through(job.SPEC, _OWNED)

_PRESET = flags.DEFINE_enum("preset", "cpu", list(presets.PRESETS),
                            "Preset (lossland/configs/generalization.py; flags override it).")
_cli.define_flags(STUDY + JOB, __name__)


def config() -> GeneralizationConfig:
  """The preset with the given flags applied."""
  base = presets.PRESETS[_PRESET.value]()
  return options.override(base, dict(_cli.given_values(STUDY),
                                     job={**base.job, **_cli.given_values(JOB)}))


def main(argv):
  if len(argv) > 1:
    raise _cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cfg = config()
  import jax
  jax.config.update("jax_enable_x64", cfg.x64)
  from lossland.experiments import generalization_study
  summary, run_dir = generalization_study.run(cfg, log_fn=lambda m: print(m, flush=True))
  for line in generalization_study.report_lines(summary, run_dir):
    print(line)


if __name__ == "__main__":
  _cli.run(main)
