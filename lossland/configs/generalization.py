"""Presets of the generalization study (``python -m lossland.scripts.generalization --preset NAME``).

Each is a :class:`lossland.experiments.generalization_study.GeneralizationConfig`;
the flags a user gives replace its fields. Both follow 1810.09665's runs: the
authors' network (standard parametrization, orthogonal init with gain 1,
zero-init biases, plain ReLU), f itself trained (not f - f0), quadratic hinge
with eps = 1, full-batch Adam whose learning rate is divided by 10 every
``decay_every`` steps, stop at N_Delta = 0 (or jammed).
"""
from lossland.experiments.generalization_study import GeneralizationConfig


def cpu() -> GeneralizationConfig:
  """``python -m lossland.scripts.generalization --preset cpu``

  docs/generalization.md: 1810.09665's protocol shrunk to CPU. Digits parity
  PCA d = 10 (the paper's d), P = 1000, 5 % of the training labels flipped,
  one hidden layer (N = 11 h: N* resolved in steps of 11 weights, ~6 %),
  widths 4..96 (every integer from 15 to 18 around N*), 16 members, lr 1e-3
  / 10 every 10k steps, 30k steps, no member stopped jammed before the last
  learning-rate level, then the L-BFGS polish (at most 5000 evaluations) of
  every member not at N_Delta = 0: below N* they end at (kink) minima, near
  N* most turn sat (probe in docs/generalization.md; ~+20 % CPU). The
  runtime is in docs/generalization.md.
  """
  return GeneralizationConfig(
      dataset="digits", P=1000, d=10, n_test=None, depth=1, label_noise=0.05,
      widths=(4, 8, 11, 13, 15, 16, 17, 18, 20, 23, 28, 40, 64, 96), n_seeds=16,
      max_steps=30_000, lr=1e-3, decay_every=10_000, jam_window=10_000,
      jam_after_decays=True, net="authors", subtract_init=False, polish="lbfgs",
      polish_steps=5000)


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


PRESETS = {"cpu": cpu, "paper": paper, "none": none}
