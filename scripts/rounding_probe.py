"""Do the stochastic-search tests depend on the last bit? (docs/reliability.md,
"GPU readiness audit").

A GPU rounds differently from the CPU, so a test whose outcome holds only for
the CPU's exact trajectory fails there. This reruns the searches of four tests
with their inputs multiplied by (1 + eps), eps at rounding level, and prints
one line per eps with the outcome the test asserts:

    python scripts/rounding_probe.py lj7_connect 0 1e-15 -1e-15 2e-15 5e-15 1e-14
    python scripts/rounding_probe.py lj7_connect_default 0 1e-15 ...
    python scripts/rounding_probe.py network_connect 0 1e-15 -1e-15 3e-15
    python scripts/rounding_probe.py muller_brown 0 1e-15 -1e-15 ...

``lj7_connect`` uses the band of tests/test_landscape_transition.py
(16 images, 5 climbers), ``lj7_connect_default`` the ExplorerConfig defaults
(12 images, 3 climbers) the test had before. ``muller_brown`` also runs the 64
LJ7 quenches of tests/test_landscape_minimize.py.
"""
import dataclasses
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from lossland.landscape import explorer as E  # noqa: E402
from lossland.landscape import potentials, study, symmetry  # noqa: E402
from lossland.landscape.database import Database  # noqa: E402
from lossland.landscape.minimize import make_lbfgs  # noqa: E402


def lj7_connect(eps, band=True):
  n = 7
  cfg = E.ExplorerConfig(n_zero_modes=6, step_size=0.4, temperature=0.5)
  if band:
    cfg = dataclasses.replace(cfg, neb_images=16, n_climb=5)
  ex = E.make_explorer(potentials.lennard_jones(n), cfg,
                       perturb_fn=potentials.lj_perturb_fn(n),
                       modes_fn=potentials.rigid_body_modes(n))
  db = Database(":memory:", energy_tol=1e-6)
  x0 = jax.vmap(lambda k: potentials.lj_random_configuration(k, n, dtype=jnp.float64))(
      jax.random.split(jax.random.key(0), 8)) * (1 + eps)
  E.basin_hopping(db, ex, jax.random.key(1), x0, n_steps=30)
  n_min = db.n_minima()
  r = E.connect_database(db, ex, budget=10)
  return (f"minima {n_min} (test: 4), connected {r['connected']} in {r['n_attempts']} "
          f"attempts (test: <= 10), {db.n_transition_states()} TS (test: >= 3)")


def network_connect(eps):
  cfg = study.StudyConfig(depth=1, n_data=30, n_params=57, lam=1e-3)
  xtr, ytr, _, _ = study.make_data(cfg)
  sizes = (5, 6, 3)
  net = potentials.make_network_loss(jnp.asarray(np.asarray(xtr) * (1 + eps)),
                                     jnp.asarray(ytr), sizes, cfg.lam)
  dist = symmetry.network_distance_fn(sizes)
  ex = E.make_explorer(net.loss_fn, study.explorer_config(cfg, net.n_params),
                       distance_fn=dist,
                       align_fn=lambda a, b: symmetry.align_network(a, b, sizes))
  db = Database(":memory:", energy_tol=study.ENERGY_TOL, distance_fn=dist,
                distance_tol=1e-3)
  x0 = jax.vmap(lambda k: net.init_fn(k, jnp.float64))(
      jax.random.split(jax.random.key(0), 8))
  E.basin_hopping(db, ex, jax.random.key(1), x0, n_steps=20)
  n_min = db.n_minima()
  r = E.connect_database(db, ex, budget=3 * n_min)
  return (f"minima {n_min} (test: >= 4), connected {r['connected']} in {r['n_attempts']} "
          f"attempts (test: <= {3 * n_min}), {db.n_transition_states()} TS")


def muller_brown(eps):
  cfg = E.ExplorerConfig(gtol=1e-9, temperature=40.0, step_size=0.4, max_step=0.05,
                         neb_images=15, neb_k=100.0, neb_dt=1e-3, neb_gtol=1e-2,
                         neb_max_iter=3000, n_climb=2, n_lanczos=2, max_uphill=0.02,
                         pushoff=1e-3, hef_max_iter=300)
  ex = E.make_explorer(potentials.muller_brown(), cfg)
  db = Database(":memory:", energy_tol=1e-6)
  x0 = jax.random.uniform(jax.random.key(0), (8, 2), jnp.float64,
                          jnp.array([-1.5, -0.5]), jnp.array([1.2, 2.0])) * (1 + eps)
  E.basin_hopping(db, ex, jax.random.key(1), x0, n_steps=20)
  n_min = db.n_minima()
  r = E.connect_database(db, ex, budget=6)
  f7 = potentials.lennard_jones(7)
  quench = jax.jit(jax.vmap(make_lbfgs(jax.value_and_grad(f7), gtol=1e-8)))
  x7 = jax.vmap(lambda k: potentials.lj_random_configuration(k, 7, dtype=jnp.float64))(
      jax.random.split(jax.random.key(0), 64)) * (1 + eps)
  res = quench(x7)
  e = np.sort(np.asarray(res.energy))
  distinct = int(np.sum(np.concatenate([[True], np.diff(e) > 1e-6])))
  return (f"MB minima {n_min} (test: 3), connected {r['connected']}, "
          f"{db.n_transition_states()} TS (test: 2); LJ7 quenches converged "
          f"{bool(np.all(res.converged))}, {distinct} distinct minima (test: 4)")


PROBES = {"lj7_connect": lj7_connect,
          "lj7_connect_default": lambda eps: lj7_connect(eps, band=False),
          "network_connect": network_connect, "muller_brown": muller_brown}


def main(argv):
  if len(argv) < 3 or argv[1] not in PROBES:
    print(f"error: usage: python {argv[0]} {{{','.join(PROBES)}}} EPS [EPS ...]",
          file=sys.stderr)
    return 2
  try:
    eps_list = [float(e) for e in argv[2:]]
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for eps in eps_list:
    print(f"{argv[1]} eps={eps:g}: {PROBES[argv[1]](eps)}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
