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
# faster there (docs/jamming.md, the probes). A member left with loss > 0
# that classifies every point is scaled to sat (the job's --scale_to_sat:
# the loss falls to 0 along its output scale, so it is one exact step from
# sat, not at a minimum; docs/jamming.md, the twenty-second session).
_PROTOCOL = dict(max_steps=60_000, lr=1e-2, schedule="step", decay_every=20_000,
                 decay_factor=0.1, min_lr=1e-4, jam_window=2000, jam_rtol=1e-3,
                 jam_after_decays=True, optimizer="adam", polish="lbfgs",
                 polish_steps=50_000, polish_jam_window=1000, polish_jam_rtol=1e-6,
                 scale_to_sat=True)


def cpu() -> PhaseConfig:
  """``python -m lossland.scripts.phase --preset cpu``

  Sphere data in d = 4, L = 2, 3, 4 hidden layers of h = 16 units with biases
  (N = 336, 592, 848 weights, biases not counted, as the authors), P/N in
  {1.0, 1.5, 2.0} then 2 bisection rounds, 6 members, Adam lr 1e-3 divided by
  10 every 20k steps down to 1e-4, at most 60k steps (hand-over at 1e-4 once
  the best loss gains < 0.1 % in 2000 steps), then an L-BFGS polish of every
  member not sat (at most 50k evaluations; stopped jammed when the best loss
  gains < 1e-6 in 1000 evaluations or the line search finds no descent),
  then every member left with loss > 0 that classifies every point scaled
  to sat (--scale_to_sat: 3 of 84 members in its run of 2026-12-07), 2
  workers: 22 min 45 s wall on the idle 2-core machine (docs/jamming.md).

  Why these nets (issue 20, item 3; docs/jamming.md, "two sources of dead
  points"): a member with an unsatisfied dead point (a hidden layer all off
  for an input) is never sat and leaves the counts. Thin first layers with
  h ~ d leave a cap of the input sphere that no unit covers (Wendel: h
  half-spaces through the origin of R^d always leave one when h <= d), and
  the descent switches the last hidden layer off for some points of thin or
  deep bias-free nets. Its run has no dead-point member in 78; without the
  biases 6 of 78 (17 % at L = 3), and the earlier preset (d = h = 12, 10, 9,
  lr 1e-2, no biases) lost 58 of its 90.

  A member that stops jammed is class jammed only if force-balanced (r_sub
  <= 1e-6), else unbalanced (issue 20). The preset runs no finishing
  stage: ``--finish decay_newton`` ends at minima of the loss for some of
  the N = 336 members deep in the jammed phase (1 to 6 min each), not yet
  near P* or at N = 592 within 3000 iterations (17 to 21 min per member
  there), so for the preset's 11 to 17 entrants per depth it would take
  about a day of CPU (docs/jamming.md, "the decay route")."""
  return PhaseConfig(depths=(2, 3, 4), widths=(16, 16, 16), d=4, p_over_n=(1.0, 1.5, 2.0),
                     rounds=2, n_seeds=6, job=dict(_PROTOCOL, lr=1e-3, bias=True),
                     auto_workers=True, preset="cpu")


def gpu() -> PhaseConfig:
  """``python -m lossland.scripts.phase --preset gpu --out_dir runs/phase_gpu``

  The paper's three nets (N = 7750, 7854, 8040) with the cpu preset's
  protocol at Adam lr 1e-2 and without biases (the cpu preset's values
  before the dead-point probes of issue 20), P/N in {2.5, 3.0, 3.5} then 2
  rounds of a parallel bisection with 3 new P/N per depth, 8 members, the
  cells of one depth and round trained as one program (--batch_cells, on by
  default on an accelerator), and the engine layout measured fastest on an
  H200 (wgrad_split=64, pad_to=8: 168 us per member-step in float64 at L =
  3, docs/engine.md). Not yet run: from that step cost a cell's 8 members
  take about 1.5 min of Adam plus up to about as long of polish, so the 18
  to 27 cells take 30 to 60 min if the device gives no gain to batched
  cells; the batched gain on a GPU is not measured."""
  return PhaseConfig(depths=(2, 3, 5), widths=(62, 51, 40), p_over_n=(2.5, 3.0, 3.5),
                     rounds=2, n_seeds=8, bisect_points=3,
                     job=dict(_PROTOCOL, wgrad_split=64, pad_to=8), preset="gpu")


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
                              jam_window=100_000, jam_after_decays=True, optimizer="adam",
                              scale_to_sat=True),
                     preset="paper")


PRESETS = {"cpu": cpu, "gpu": gpu, "paper": paper}
