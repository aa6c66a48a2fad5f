"""Explore a user-defined energy with the landscape engine: the Müller–Brown surface.

    python examples/muller_brown.py [OUT.png]

Any jittable ``energy_fn(x [D]) -> []`` works: basin-hopping finds minima, the
connect loop (DNEB + hybrid eigenvector-following) finds transition states, and
the database gives the disconnectivity graph and landscape metrics.
"""
import sys

import jax
import jax.numpy as jnp

jax.config.update('jax_enable_x64', True)  # the engine's tolerances need float64
from lossland import landscape as ls  # noqa: E402  (after x64 is switched on)

A, a, b, c = (-200, -100, -170, 15), (-1, -1, -6.5, 0.7), (0, 0, 11, 0.6), (-10, -10, -6.5, 0.7)
X0, Y0 = (1, 0, -0.5, -1), (0, 0.5, 1.5, 1)


def energy_fn(x):  # Müller & Brown, Theor. Chim. Acta 53, 75 (1979)
  dx, dy = x[0] - jnp.array(X0), x[1] - jnp.array(Y0)
  return jnp.sum(jnp.array(A) * jnp.exp(jnp.array(a) * dx**2 + jnp.array(b) * dx * dy
                                        + jnp.array(c) * dy**2))


# temperature=None (default): calibrated from the energy scale (~40 here).
ex = ls.make_explorer(energy_fn, ls.ExplorerConfig(gtol=1e-9, max_step=0.05, neb_k=100.0,
                                                   neb_dt=1e-3, neb_gtol=1e-2, n_lanczos=2,
                                                   pushoff=1e-3))
db = ls.Database(':memory:', energy_tol=1e-6)
x0 = jax.random.uniform(jax.random.key(0), (4, 2), jnp.float64, jnp.array([-1.5, -0.5]),
                        jnp.array([1.2, 2.0]))
bh = ls.basin_hopping(db, ex, jax.random.key(1), x0, n_steps=50, target_energy=-146.69)
if not bh['reached_target']:  # resume the same chains from where they stopped
  bh = ls.basin_hopping(db, ex, jax.random.key(1), None, n_steps=50, state=bh['state'])
report = ls.connect_database(db, ex, budget=6)
ids, e_min, e_ts, pairs = db.graph_arrays()
print(f"T = {bh['temperature'][0]:.3g}: {len(e_min)} minima {e_min.round(3)}, "
      f"{len(e_ts)} TS {e_ts.round(3)}, connected: {report['connected']}")
m = ls.landscape_metrics(e_min, e_ts, pairs, temperature=10.0)
print({k: m[k] for k in ('global_min_loss', 'n_connected_to_global_min', 'frustration')})
tree = ls.disconnectivity.build_tree(e_min, e_ts, pairs, n_levels=20)
ax = ls.disconnectivity.plot_disconnectivity(tree, e_min, ylabel='energy')
ax.figure.savefig(sys.argv[1] if len(sys.argv) > 1 else 'muller_brown.png', dpi=100)
