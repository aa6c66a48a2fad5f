"""How many points sit at the hinge's margin, per member of ensemble runs.

    python scripts/margin_census.py RUN_DIR [RUN_DIR ...]

Each RUN_DIR is an ensemble run directory (``experiment.load_ensemble``) of
the quadratic hinge without subtract_init. For every member
that ends with unsatisfied points, prints one JSON line: the run's N, P, the
member, its class and r_sub, N_Delta / N, and for t = 1e-4, 1e-3, 1e-2 the
number of points, in units of N, with |Delta| < t sqrt(sum Delta_+^2) (both
sides of the margin; the scale is sqrt(2 loss), as the exponent fits
rescale Delta). Points that close to Delta = 0 carry no force (the hinge's
derivative vanishes there) and are the weakly active constraints of
docs/jamming.md, "where the descent goes". Writes nothing.
"""
import json
import sys

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from lossland import experiment, io, losses, nets, phase  # noqa: E402

THRESHOLDS = (1e-4, 1e-3, 1e-2)


def census(delta: np.ndarray, n_weights: int) -> dict:
  """N_Delta / N and the near-margin counts / N of one member's Delta [P]."""
  scale = float(np.sqrt(np.sum(np.maximum(delta, 0.0) ** 2)))
  near = {f"{t:g}": float(np.sum(np.abs(delta) < t * scale)) / n_weights for t in THRESHOLDS}
  return dict(n_delta_over_n=float(np.sum(delta > 0)) / n_weights, near_margin_over_n=near)


def main(argv):
  if len(argv) < 2:
    print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
    return 2
  for run in argv[1:]:
    try:
      ens = experiment.load_ensemble(run)
    except io.RunError as e:
      print(f"margin_census: {e}", file=sys.stderr)
      return 2
    if ens.loss.name != "quadratic_hinge" or ens.subtract_init:
      print(f"margin_census: {run}: needs the quadratic hinge without subtract_init",
            file=sys.stderr)
      return 2
    apply_fn = nets.make_net(ens.net)[1]
    n_weights = int(ens.summary["n_weights"])  # N as in P/N (weights, not biases)
    f = np.asarray(jax.vmap(apply_fn, in_axes=(0, None))(ens.params, ens.data.x_train))
    deltas = np.asarray(losses.margins(f, ens.data.y_train[None, :], ens.loss.epsilon))
    for k, m in enumerate(ens.summary["members"]):
      if not m.get("n_delta"):
        continue
      print(json.dumps(dict(run=run, N=n_weights, P=int(deltas.shape[1]), member=k,
                            member_class=phase.member_class(m) if "class" in m else None,
                            r_sub=m.get("force_residual"),
                            **census(deltas[k], n_weights))), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
