"""Presets of the jamming phase diagram (``python -m lossland.scripts.phase --preset NAME``).

Each is a :class:`lossland.experiments.phase_study.PhaseConfig`; the flags a
user gives replace its fields, and job flags (``--lr``, ``--polish``, ...)
replace entries of its ``job`` (the protocol every cell runs).
"""
from lossland.experiments.phase_study import PhaseConfig

# docs/jamming.md: fixed step decays (a plateau schedule decayed the lr of
# slowly descending L = 3 members early and stopped them jammed); a stall at a
# large lr is Adam's noise floor, so members stop jammed only at the last lr
# level (train.final_lr_level). Adam hands over to an L-BFGS polish once it
# stalls at its last lr level: per gradient evaluation L-BFGS descends much
# faster there (docs/jamming.md, the probes).
_PROTOCOL = dict(max_steps=60_000, lr=1e-2, schedule="step", decay_every=20_000,
                 decay_factor=0.1, min_lr=1e-4, jam_window=2000, jam_rtol=1e-3,
                 jam_after_decays=True, optimizer="adam", polish="lbfgs",
                 polish_steps=50_000, polish_jam_window=1000, polish_jam_rtol=1e-6)


def cpu() -> PhaseConfig:
  """``python -m lossland.scripts.phase --preset cpu``

  Sphere data, L = 2, 3, 4 with d = h = 12, 10, 9 (N = 300, 310, 333), P/N in
  {1.25, 1.75, 2.25} then 2 bisection rounds, 6 members, Adam lr 1e-2 divided
  by 10 every 20k steps down to 1e-4, at most 60k steps (hand-over at 1e-4 once
  the best loss gains < 0.1 % in 2000 steps), then an L-BFGS polish of every
  member not sat (at most 50k evaluations; jammed when the best loss gains
  < 1e-6 in 1000 evaluations or the line search finds no descent), 2 workers:
  6 min 15 s wall on an idle 2-core machine with a warm compilation cache
  (docs/jamming.md), measured before the job measured the force balance of
  every unsatisfied member (about 1 s each on 2 cores, 4 s for the first).

  A member that stops jammed is class jammed only if force-balanced (r_sub
  <= 1e-6), else unbalanced (issue 20). Dead points: with these thin
  bias-free layers most members lose a point to a layer switched off
  (docs/jamming.md); the same study on h = 16 nets (``--widths 16 --d 4``,
  N = 336, 592, 848: 20 min wall, 1796 s CPU) has fewer (0, 20 and 17 % per
  depth) but its P* lies at or below the grid's lowest P/N for L = 3, 4."""
  return PhaseConfig(depths=(2, 3, 4), widths=(12, 10, 9), p_over_n=(1.25, 1.75, 2.25),
                     rounds=2, n_seeds=6, job=_PROTOCOL, auto_workers=True, preset="cpu")


def gpu() -> PhaseConfig:
  """``python -m lossland.scripts.phase --preset gpu --out_dir runs/phase_gpu``

  The paper's three nets (N = 7750, 7854, 8040) with the cpu preset's protocol,
  P/N in {2.5, 3.0, 3.5} then 2 bisection rounds, 8 members, and the engine
  layout measured fastest on an H200 (wgrad_split=64, pad_to=8: 168 us per
  member-step in float64 at L = 3, docs/engine.md). Not yet run: from that step
  cost a cell takes about 1.5 min of Adam plus up to about as long of polish,
  so the 15 to 21 cells of a run take about 30 to 50 min, one after another."""
  return PhaseConfig(depths=(2, 3, 5), widths=(62, 51, 40), p_over_n=(2.5, 3.0, 3.5),
                     rounds=2, n_seeds=8, job=dict(_PROTOCOL, wgrad_split=64, pad_to=8),
                     preset="gpu")


def paper() -> PhaseConfig:
  """``python -m lossland.scripts.phase --preset paper --out_dir runs/phase_paper [--shard 0/4]``

  L = 2, d = h = 62 (N = 7750); L = 3, d = h = 51 (N = 7854); L = 5,
  d = h = 40 (N = 8040); P/N 2.0 to 4.0 by 0.25; 8 members; Adam lr 1e-4
  divided by 10 every 250k steps, 2M steps (the authors' adam0). Not run: about
  2 GPU-hours at today's step cost (issue 18)."""
  return PhaseConfig(depths=(2, 3, 5), widths=(62, 51, 40),
                     p_over_n=(2.0, 2.25, 2.5, 2.75, 3.0, 3.25, 3.5, 3.75, 4.0),
                     rounds=2, n_seeds=8,
                     job=dict(max_steps=2_000_000, lr=1e-4, schedule="step",
                              jam_window=100_000, jam_after_decays=True, optimizer="adam"),
                     preset="paper")


PRESETS = {"cpu": cpu, "gpu": gpu, "paper": paper}
