"""Presets of the generalization study (``python -m lossland.scripts.generalization --preset NAME``).

Each is a :class:`lossland.experiments.generalization_study.GeneralizationConfig`;
the flags a user gives replace its fields. All follow 1810.09665's runs: the
authors' network (standard parametrization, orthogonal init with gain 1,
zero-init biases, plain ReLU), f itself trained (not f - f0), quadratic hinge
with eps = 1, full-batch Adam whose learning rate is divided by 10 every
``decay_every`` steps, stop at N_Delta = 0 (or jammed).
"""
import dataclasses

from lossland.experiments.generalization_study import GeneralizationConfig

# The cpu preset's widths up to ~6 N* (N* ~ 170-210, h* ~ 16-19; every
# integer from 15 to 18 around N*) and beyond: 128 bridges the near-N*
# regime to the tail, 192..768 are N/N* ~ 10-50, where the fluctuations'
# power laws are fitted (fit_min_n_over_n_star = 10).
NEAR_WIDTHS = (4, 8, 11, 13, 15, 16, 17, 18, 20, 23, 28, 40, 64, 96)
TAIL_WIDTHS = (128, 192, 256, 384, 512, 768)


def cpu() -> GeneralizationConfig:
  """``python -m lossland.scripts.generalization --preset cpu``

  docs/generalization.md: 1810.09665's protocol shrunk to CPU. Digits parity
  PCA d = 10 (the paper's d), P = 1000, 5 % of the training labels flipped,
  one hidden layer (N = 11 h: N* resolved in steps of 11 weights, ~6 %),
  widths 4..768 (every integer from 15 to 18 around N*; 192..768 are the
  tail N >= 10 N* where the exponents are fitted), 16 members, lr 1e-3
  / 10 every 10k steps, 30k steps, no member stopped jammed before the last
  learning-rate level, then the L-BFGS polish (at most 5000 evaluations) of
  every member not at N_Delta = 0: below N* they end at (kink) minima, near
  N* most turn sat (probe in docs/generalization.md; ~+20 % CPU). Runtime
  (docs/generalization.md, "The tail fit"): 58 min 14 s wall, 2121 s user
  CPU on the shared 2-core machine at load 5-12 (the cells run one after
  another on about one core: about 35 min on an idle machine, an estimate). Widths up to 96 alone (the preset before issue 19): 15 min wall,
  827 s CPU.
  """
  return GeneralizationConfig(
      dataset="digits", P=1000, d=10, n_test=None, depth=1, label_noise=0.05,
      widths=NEAR_WIDTHS + TAIL_WIDTHS, n_seeds=16,
      max_steps=30_000, lr=1e-3, decay_every=10_000, jam_window=10_000,
      jam_after_decays=True, net="authors", subtract_init=False, polish="lbfgs",
      polish_steps=5000)


def gpu() -> GeneralizationConfig:
  """``python -m lossland.scripts.generalization --preset gpu``

  The cpu preset with the tail extended to N/N* ~ 100-130 (widths 1024,
  1536, 2048: N = 11 h up to 22 528), for a machine with an accelerator;
  everything else as ``cpu`` (the cpu preset's widths are trained again: the
  sweep directory is named by all cells). Not run (no GPU in the session that
  wrote it). On the 2-core CPU the three added widths would add an
  estimated ~40 min wall at load 5 (cost per step ~ h, 7000-9000 Adam steps
  to N_Delta = 0 at every h >= 128; h = 384 took 195 s).
  """
  return dataclasses.replace(cpu(), widths=NEAR_WIDTHS + TAIL_WIDTHS + (1024, 1536, 2048))


def paper() -> GeneralizationConfig:
  """``python -m lossland.scripts.generalization --preset paper --data_dir DIR``

  1810.09665 Fig. 2 (nn_jamming/nips2018.md): MNIST parity, PCA d = 10,
  L = 5, P = 10k, widths 1 to ~3000, adam0 = lr 1e-4 / 10 every 250k steps,
  500k steps. Needs the MNIST files and a GPU; not run.
  """
  return GeneralizationConfig(
      dataset="mnist", P=10_000, d=10, n_test=None, depth=5,
      widths=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 100, 150, 250, 400, 700, 1000,
              1700, 3000),
      n_seeds=8, max_steps=500_000, lr=1e-4, decay_every=250_000, jam_window=250_000,
      net="authors", subtract_init=False, label_noise=0.0, polish="none", polish_steps=5000)


def none() -> GeneralizationConfig:
  """``python -m lossland.scripts.generalization --preset none [flags]``

  The defaults of :class:`GeneralizationConfig` (digits, P = 400, d = 16,
  L = 3, widths 4, 8, 16, 4 members, lossland's network, f - f0 trained):
  only the flags given.
  """
  return GeneralizationConfig()


PRESETS = {"cpu": cpu, "gpu": gpu, "paper": paper, "none": none}
