"""What the minima of the kink-free control are like, member by member.

    python scripts/smooth_census.py CONTROL.json [CONTROL.json ...]

CONTROL.json: outputs of ``scripts/decay_control.py`` that keep the
members' params (those written since the eighteenth session). For each
member's final state, one JSON line with

* ``theta``: the member's own density exponent of Delta/sqrt(loss) > 0
  (``phase.fit_exponent`` as the control fits it, one member);
* ``near_above``, ``near_below``: points with 0 < Delta <= 1e-2 sqrt(loss)
  and with -1e-2 sqrt(loss) <= Delta < 0 (a pile-up at the margin shows as
  many above, few below);
* ``loss`` (mean 1/2 Delta_+^2), ``decay_share`` (mu|w|^2/2 over F, both
  summed over the points), ``w_norm``;
* ``z_abs_median`` and ``bend_fraction``: the median |z| of the hidden
  pre-activations over (unit, point) pairs, and the fraction with |z| < 1,
  where a softplus or tanh unit bends (a net whose pairs all sit at |z| >> 1
  acts as a ReLU net with large weights);
* ``loss_hessian_low``: the four lowest eigenvalues of the loss's Hessian
  (the control's certificate without the mu I: margin points at weight 0),
  and ``rescaling_overlap``: for each of those four modes the fraction of it
  in the span of the per-unit rescalings (``kink_newton.rescaling_generators``:
  flat directions of a ReLU net, which only the activation's bend and the
  decay hold for a smooth one).

docs/jamming.md, eighteenth session. Exit status 2 on a bad argument.
"""
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

jax.config.update("jax_enable_x64", True)

from lossland import curvature, experiment, io, nets, phase  # noqa: E402
from lossland.optim import kink_newton  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import decay_control  # noqa: E402

NEAR = 1e-2  # "at the margin": |Delta| <= NEAR sqrt(loss)
N_LOW = 4


def loss_hessian(fns, params, x, y, at_margin) -> np.ndarray:
  """The loss's dense Hessian [N, N] with the points ``at_margin`` given
  weight 0 (column by column from ``curvature``'s H v)."""
  flat = ravel_pytree(params)[0]
  keep = curvature.examples(x, y, weight=jnp.asarray(~at_margin, x.dtype))
  return np.asarray(curvature.dense_operator(
      curvature.flat_matvec(fns.hvp, params, keep), flat.shape[0], flat.dtype))


def span_overlap(G, V) -> list:
  """For each column v of V, |P_G v|^2 / |v|^2: the fraction of v in the
  column span of G."""
  U, S, _ = np.linalg.svd(G, full_matrices=False)
  q = U[:, S > 1e-10 * S[0]] if S.size and S[0] > 0 else U[:, :0]  # a basis of the span
  return [float(f) for f in np.sum((q.T @ V) ** 2, axis=0) / np.sum(V ** 2, axis=0)]


def census(ens, row: dict) -> dict:
  """The module docstring's numbers for one member row of a control."""
  cfg, x, y = ens.net, ens.data.x_train, ens.data.y_train
  unravel = ravel_pytree(jax.tree_util.tree_map(lambda a: a[0], ens.params))[1]
  params = unravel(jnp.asarray(row["params"], x.dtype))
  delta, L = np.asarray(row["delta"]), row["loss"]
  s = math.sqrt(L)
  pos = delta[delta > 0] / s
  th = phase.fit_exponent(pos, np.zeros(pos.size, int), x_floor=phase.GAP_FLOOR)
  at_margin = (delta > 0) & (delta <= phase.GAP_FLOOR * s)
  fns = curvature.curvature_fns(nets.make_net(cfg, dtype=x.dtype)[1], ens.loss)
  ev, vec = np.linalg.eigh(loss_hessian(fns, params, x, y, at_margin))
  gens = kink_newton.rescaling_generators(cfg, params)
  z = np.concatenate([np.abs(np.ravel(np.asarray(a)))
                      for a in nets.preactivations(cfg, params, x)[:-1]])
  w = np.asarray(row["params"])
  return dict(run=row["run"], member=row["member"], N=row["N"], P=row["P"], mu=row["mu"],
              minimum=row["minimum"], theta=th["exponent"],
              near_above=int(np.sum((delta > 0) & (delta <= NEAR * s))),
              near_below=int(np.sum((delta < 0) & (delta >= -NEAR * s))),
              loss=L, decay_share=row["decay_term"] / (row["decay_term"] + L * row["P"]),
              w_norm=float(np.linalg.norm(w)), z_abs_median=float(np.median(z)),
              bend_fraction=float(np.mean(z < 1.0)),
              loss_hessian_low=[float(e) for e in ev[:N_LOW]],
              rescaling_overlap=span_overlap(gens, vec[:, :N_LOW]))


def main(argv):
  if len(argv) < 2:
    print(f"smooth_census: {__doc__.strip().splitlines()[2].strip()}", file=sys.stderr)
    return 2
  try:
    controls = []
    for path in argv[1:]:
      with open(path) as fh:
        members = json.load(fh)["members"]
      if any("params" not in m for m in members):
        raise ValueError(f"{path}: members without params (written before the "
                         f"eighteenth session); run scripts/decay_control.py again")
      controls.append(members)
    runs = {m["run"]: experiment.load_ensemble(m["run"]) for ms in controls for m in ms}
    for path, ens in runs.items():
      if ens.net.activation not in decay_control.SMOOTH:
        raise ValueError(f"{path}: a {ens.net.activation} net; the census is of smooth "
                         f"nets ({', '.join(decay_control.SMOOTH)})")
  except (OSError, ValueError, KeyError, io.RunError) as e:
    print(f"smooth_census: {e}", file=sys.stderr)
    return 2
  for members in controls:
    for row in members:
      print(json.dumps(census(runs[row["run"]], row)), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
