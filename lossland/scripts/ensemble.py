r"""Train an ensemble of initializations in parallel and compare it with its members.

    python -m lossland.scripts.ensemble --n_seeds 20

Trains ``n_seeds`` networks that differ only in their initialization (member k
uses seed ``--seed + k``) on the same data, as one jitted, vmapped program, and
reports each member (stop reason, steps, loss, N_Delta, train and test error)
and the ensemble predictor fbar = mean_k f_k. The default (real handwritten
digits bundled with scikit-learn, parity labels, PCA to d = 16, P = 400, a
3-hidden-layer ReLU net of width 12, i.e. N = 492 weights, about three times the
jamming point (at width 6, N = 174, most members jam), the quadratic hinge
loss, full-batch Adam) takes about 1 to 2 minutes on a 2-core CPU.

Writes ``<out_dir>/ensemble/<UTC time>_<hash>/`` with config.json,
metrics.jsonl, arrays.npz, summary.json and figures (see lossland/experiment.py
for the arrays, lossland/job.py for the options and the member classes).
The options are those of :data:`lossland.job.SPEC`; the job itself is
:func:`lossland.job.run_ensemble_job`, which sweeps call in-process.
Examples:

    # random data near the jamming transition, depth 3, float64
    python -m lossland.scripts.ensemble --dataset sphere --P 2000 --d 20 \
        --depth 3 --N 2000 --max_steps 100000 --n_seeds 8
    # 5 % of the training labels flipped (keyed by --data_seed; test labels clean)
    python -m lossland.scripts.ensemble --label_noise 0.05 --data_seed 1
    # your own data (e.g. MNIST saved as x_train, y_train, x_test, y_test)
    python -m lossland.scripts.ensemble --dataset npz --data_file mnist.npz \
        --P 10000 --d 10 --depth 5 --width 30
"""
import sys

from absl import flags

from lossland.experiments import job
from lossland.scripts import _cli

_FLAGS = _cli.define_flags(job.SPEC, __name__)


def main(argv):
  if len(argv) > 1:
    raise _cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  values = job.validate(_cli.flag_values(job.SPEC))
  import jax
  jax.config.update("jax_enable_x64", values["x64"])
  job.run_ensemble_job(values, progress=True, stdout=sys.stdout)


def _interrupted():
  if flags.FLAGS["resume"].value:
    return "interrupted; run the same command to resume"
  return "interrupted (--noresume: nothing was kept)"


if __name__ == "__main__":
  _cli.run(main, interrupted=_interrupted)
