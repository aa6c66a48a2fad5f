r"""Test error, ensembles and NTK fluctuations vs width across the jamming point.

    python -m lossland.scripts.generalization --preset cpu

Trains K members per width h (the sweep engine, resumable: rerunning the same
command skips finished widths) on one fixed data set, then records per N the
single-net, ensemble and early-stopped test errors, the output variance, the
NTK fluctuation at init and its drift during training, the fraction of sat
members; N* (frac_sat = 1/2), power-law fits above N* with bootstrap CIs, and
the infinite-width NTK asymptote (lossland/generalization.py). Writes
``<out_dir>/generalization/<UTC time>_<hash>/`` (config.json, metrics.jsonl,
arrays.npz, summary.json, two PNG figures); the member runs live in
``<out_dir>/generalization_sweeps/<hash>/``.

Both presets follow 1810.09665's runs: the authors' network (``--net
authors``: standard parametrization, orthogonal init with gain 1, zero-init
biases, plain ReLU), f itself trained (not f - f0), quadratic hinge with
eps = 1, full-batch Adam whose learning rate is divided by 10 every
``--decay_every`` steps, stop at N_Delta = 0 (or jammed: no progress over
``--jam_window`` steps). ``cpu``: digits parity, PCA d = 10, P = 1000 with 5 %
of the training labels flipped (``--label_noise``; the test labels stay
clean), one hidden layer, widths 4..96 (N = 11 h, every integer from 15 to 18
around N*), 16 members, lr 1e-3 / 10 every 10k steps, 30k steps, no member
stopped jammed before the last learning-rate level, then the L-BFGS polish
(at most 5000 evaluations) of every member not at N_Delta = 0. ``paper``:
MNIST parity, PCA d = 10, L = 5, P = 10k, widths 1 to ~3000, lr 1e-4 / 10
every 250k steps, 500k steps (needs ``--data_dir`` with the MNIST files and
a GPU). Other flags override the preset; ``--preset none`` uses only the
flags.

Polish (``--polish lbfgs``, ``--polish_steps``; on in ``cpu``, off in the
other presets): after the Adam stage every member that did not reach
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
import hashlib
import json
import os
import sys

from absl import flags

from lossland.scripts import _cli

_PRESET = flags.DEFINE_enum("preset", "cpu", ["cpu", "paper", "none"], "Preset grid.")
_WIDTHS = flags.DEFINE_list("widths", None, "Widths h (comma-separated); overrides the preset.")
_DATASET = flags.DEFINE_string("dataset", None, "Dataset of the ensemble job (digits, sphere, teacher, mnist, ...).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Directory of the image files (mnist etc.).")
_P = flags.DEFINE_integer("P", None, "Training points.")
_D = flags.DEFINE_integer("d", None, "Input dimension.")
_N_TEST = flags.DEFINE_integer("n_test", None, "Test points.")
_DEPTH = flags.DEFINE_integer("depth", None, "Hidden layers L.")
_N_SEEDS = flags.DEFINE_integer("n_seeds", None, "Members K per width.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", None, "Maximum steps per member.")
_LR = flags.DEFINE_float("lr", None, "Adam learning rate.")
_DECAY_EVERY = flags.DEFINE_integer("decay_every", None, "Divide the Adam learning rate by 10 every this many steps (0: constant).")
_JAM_WINDOW = flags.DEFINE_integer("jam_window", None, "Jamming rule window in steps (the trainer's stall rule).")
_POLISH = flags.DEFINE_enum("polish", None, ["none", "lbfgs"], "After Adam, continue every member that did not reach N_Delta = 0 with this optimizer (the ensemble job's polish stage: lbfgs = L-BFGS until jammed, docs/jamming.md); default from the preset.")
_POLISH_STEPS = flags.DEFINE_integer("polish_steps", None, "Most gradient evaluations of the polish (default from the preset).")
_NET = flags.DEFINE_enum("net", None, ["authors", "lossland"], "authors: nn_jamming's network (standard parametrization, orthogonal init with gain 1, zero-initialized biases, plain ReLU; 1810.09665); lossland: NTK parametrization, normal init, no biases, ReLU * sqrt 2.")
_LABEL_NOISE = flags.DEFINE_float("label_noise", None, "Fraction of the training labels flipped (keyed by --data_seed; test labels clean); default from the preset.")
_DATA_SEED = flags.DEFINE_integer("data_seed", 0, "Seed of synthetic data and of the label noise.")
_ALPHA = flags.DEFINE_float("alpha", 1.0, "Output scale alpha.")
_SUBTRACT_INIT = flags.DEFINE_boolean("subtract_init", None, "Train f(w) - f(w0) (its N -> infinity limit is the kernel flow from 0); default from the preset.")
_N_NTK = flags.DEFINE_integer("n_ntk", 50, "Test points on which the empirical NTKs are computed.")
_N_BOOT = flags.DEFINE_integer("n_boot", 1000, "Bootstrap replicates of the fits.")
_KERNEL_MAX_STEPS = flags.DEFINE_integer("kernel_max_steps", 200_000, "Steps of the infinite-width hinge flow.")
_X64 = flags.DEFINE_boolean("x64", True, "float64.")
_OUT_DIR = flags.DEFINE_string("out_dir", "runs", "Root of run directories.")

# nn_jamming's network as the authors ran it (lossland.nets.authors_net)
_AUTHORS_NET = dict(parametrization="standard", init="orthogonal_gain1", bias=True,
                    normalize_activation=False)
_LOSSLAND_NET = dict(parametrization="ntk", init="normal", bias=False,
                     normalize_activation=True)
_PLOTS = flags.DEFINE_boolean("plots", True, "Write the figures.")

PRESETS = {
    # docs/generalization.md: 1810.09665's protocol (their network, f not
    # subtracted, quadratic hinge eps = 1, full-batch Adam with the learning
    # rate divided by 10 at fixed steps, stop at N_Delta = 0) shrunk to CPU.
    # Digits parity PCA d = 10 (the paper's d), P = 1000, 5 % of the training
    # labels flipped, one hidden layer (N = 11 h: N* resolved in steps of
    # 11 weights, ~6 %); docs/generalization.md has the probes that led here.
    "cpu": dict(dataset="digits", P=1000, d=10, n_test=None, depth=1, label_noise=0.05,
                widths=[4, 8, 11, 13, 15, 16, 17, 18, 20, 23, 28, 40, 64, 96], n_seeds=16,
                max_steps=30_000, lr=1e-3, decay_every=10_000, jam_window=10_000,
                jam_after_decays=True, net="authors", subtract_init=False,
                # then L-BFGS from every member not at N_Delta = 0: below N*
                # they end at (kink) minima, near N* most turn sat (probe in
                # docs/generalization.md; ~+20 % CPU)
                polish="lbfgs", polish_steps=5000),
    # 1810.09665 Fig. 2 (nn_jamming/nips2018.md): adam0 = lr 1e-4 / 10 every 250k
    "paper": dict(dataset="mnist", P=10_000, d=10, n_test=None, depth=5,
                  widths=[1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 100, 150,
                          250, 400, 700, 1000, 1700, 3000],
                  n_seeds=8, max_steps=500_000, lr=1e-4, decay_every=250_000,
                  jam_window=250_000, net="authors", subtract_init=False, label_noise=0.0,
                  polish="none", polish_steps=5000),
    "none": dict(dataset="digits", P=400, d=16, n_test=None, depth=3,
                 widths=[4, 8, 16], n_seeds=4, max_steps=20_000, lr=1e-2,
                 decay_every=0, jam_window=2000, net="lossland", subtract_init=True,
                 label_noise=0.0, polish="none", polish_steps=5000),
}


def _grid():
  p = dict(PRESETS[_PRESET.value])
  for name, flag in (("dataset", _DATASET), ("P", _P), ("d", _D), ("n_test", _N_TEST),
                     ("depth", _DEPTH), ("n_seeds", _N_SEEDS),
                     ("max_steps", _MAX_STEPS), ("lr", _LR),
                     ("decay_every", _DECAY_EVERY), ("jam_window", _JAM_WINDOW),
                     ("net", _NET), ("subtract_init", _SUBTRACT_INIT),
                     ("label_noise", _LABEL_NOISE), ("polish", _POLISH),
                     ("polish_steps", _POLISH_STEPS)):
    if flag.value is not None:
      p[name] = flag.value
  if _WIDTHS.value is not None:
    try:
      p["widths"] = [int(w) for w in _WIDTHS.value]
    except ValueError:
      raise _cli.UsageError(f"--widths must be integers, got {_WIDTHS.value}")
  if not p["widths"] or min(p["widths"]) < 1:
    raise _cli.UsageError("--widths must be positive integers")
  for name in ("P", "d", "depth", "n_seeds", "max_steps", "jam_window", "polish_steps"):
    if p[name] < 1:
      raise _cli.UsageError(f"--{name} must be positive, got {p[name]}")
  if not 0 <= p["label_noise"] < 0.5:
    raise _cli.UsageError(f"--label_noise must be in [0, 0.5), got {p['label_noise']}")
  if p["decay_every"] < 0:
    raise _cli.UsageError(f"--decay_every must be >= 0, got {p['decay_every']}")
  schedule = (dict(schedule="step", decay_every=p["decay_every"], decay_factor=0.1)
              if p["decay_every"] else dict(schedule="constant"))
  if _N_NTK.value < 1:
    raise _cli.UsageError(f"--n_ntk must be positive, got {_N_NTK.value}")
  if p["n_seeds"] < 2:
    raise _cli.UsageError("--n_seeds must be at least 2 (ensembles and fluctuations)")
  base = dict(dataset=p["dataset"], P=p["P"], d=p["d"], depth=p["depth"],
              n_seeds=p["n_seeds"], seed=0, max_steps=p["max_steps"], lr=p["lr"],
              x64=_X64.value, alpha=_ALPHA.value, subtract_init=p["subtract_init"],
              jam_window=p["jam_window"], plots=False, **schedule,
              **(_AUTHORS_NET if p["net"] == "authors" else _LOSSLAND_NET))
  if p["n_test"] is not None:
    base["n_test"] = p["n_test"]
  if _DATA_DIR.value:
    base["data_dir"] = _DATA_DIR.value
  if p.get("jam_after_decays"):
    base["jam_after_decays"] = True
  if p["polish"] != "none":
    # only when on: the cells (and the sweep digest) of unpolished runs stay
    # those of the runs made before the option existed
    base.update(polish=p["polish"], polish_steps=p["polish_steps"])
  if _DATA_SEED.value:
    base["data_seed"] = _DATA_SEED.value
  noisy = None
  if p["label_noise"]:
    # the job's own option; only when on, so that the cells (and the sweep
    # digest) of clean runs stay those of the runs made before it existed
    base["label_noise"] = p["label_noise"]
    # config.json's "data": what the noisy data set is (its "data_file" was
    # the prepared .npz that the cells read before the job had the option)
    noisy = {k: base.get(k) for k in ("dataset", "P", "d", "n_test", "data_dir", "x64",
                                      "label_noise")}
    noisy["data_seed"] = _DATA_SEED.value
  cells = [dict(base, width=w) for w in sorted(set(p["widths"]))]
  return base, cells, noisy


def _check_data(cell):
  """Builds the cells' data set once, so that unusable sizes or files fail
  before anything is written (every cell builds the same one)."""
  import jax
  from lossland import job
  values = job.validate(dict(cell))
  job.make_data(values, jax.numpy.float64 if values["x64"] else jax.numpy.float32)


def main(argv):
  if len(argv) > 1:
    raise _cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  base, cells, noisy = _grid()
  import jax
  jax.config.update("jax_enable_x64", bool(_X64.value))
  from lossland import experiment, generalization, io, job, losses
  from lossland.plots import generalization as generalization_plots

  for c in cells:  # bad options fail before anything is written
    try:
      job.validate(dict(c))
    except ValueError as e:
      raise _cli.UsageError(str(e))
  try:
    _check_data(cells[0])
  except ValueError as e:
    raise _cli.UsageError(str(e))
  digest = hashlib.sha1(json.dumps(cells, sort_keys=True).encode()).hexdigest()[:12]
  sweep_dir = os.path.join(_OUT_DIR.value, "generalization_sweeps", digest)
  print(f"lossland generalization: {len(cells)} widths x {base['n_seeds']} members "
        f"on {base['dataset']} P={base['P']} d={base['d']} depth={base['depth']}; "
        f"sweep directory {sweep_dir}", flush=True)
  records = generalization.run_width_sweep(cells, sweep_dir)
  per_n = []
  for rec in records:
    row = generalization.analyze_run(rec["run_dir"], n_ntk=_N_NTK.value)
    per_n.append(row)
    print(f"h={row['width']:5d} N={row['N']:8d} sat={row['frac_sat']:.2f} "
          f"test={row['mean_test_error']:.4f}+-{row['sem_test_error']:.4f} "
          f"ens={row['ensemble_test_error']:.4f} early={row['early_stop_test_error']:.4f} "
          f"var={row['output_variance']:.3g} dTheta0={row['ntk_fluctuation']:.3g} "
          f"drift={row['ntk_drift']:.3g} |f|^2={row['output_norm']:.3g} "
          f"max|grad| (not sat)={row['max_grad_norm']:.2g}"
          + (f" polished={row['n_polished']}" if row["n_polished"] else ""), flush=True)
  ens = experiment.load_ensemble(max(per_n, key=lambda r: r["N"])["run_dir"])
  lc = ens.loss
  kernel = generalization.kernel_test_error(ens.net, ens.data, lc,
                                            max_steps=_KERNEL_MAX_STEPS.value)
  summary = generalization.summarize(per_n, kernel, n_boot=_N_BOOT.value)
  flags_dict = {f.name: f.value for f in
                flags.FLAGS.get_key_flags_for_module(sys.modules[__name__])}
  import numpy as np
  with io.new_run(_OUT_DIR.value, "generalization", flags_dict, cells=cells,
                  sweep_dir=sweep_dir, data=noisy) as w:
    w.log([{k: v for k, v in r.items()} for r in per_n])
    w.save_arrays(**{k: np.asarray([r[k] for r in summary["per_n"]], np.float64)
                     for k in generalization.PER_N_KEYS})
    w.write_json("summary.json", summary)
    if _PLOTS.value:
      generalization_plots.plot(summary, os.path.join(w.path, "generalization"))
  print(f"N* = {summary['n_star']}; kernel (N -> inf) test error = "
        f"{summary['kernel_test_error']}")
  print(f"cusp: {summary['cusp']}")
  for k, f in summary["fits"].items():
    print(f"fit {k}: exponent {f.get('exponent')} CI {f.get('ci')} "
          f"(expected {summary['expected_exponents'][k]})")
  print(f"run directory: {w.final_path}")


if __name__ == "__main__":
  _cli.run(main)
