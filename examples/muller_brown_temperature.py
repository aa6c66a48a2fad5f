"""Müller–Brown: how often basin-hopping finds the global minimum over 10 seeds, for
T = 1, the calibrated T (None) and T = 60.  python examples/muller_brown_temperature.py CHAINS STEPS
(docs/landscape.md records 4 50 and 1 30)."""
import sys, time, jax, jax.numpy as jnp, numpy as np
jax.config.update('jax_enable_x64', True)
from lossland import landscape as ls
f = ls.potentials.muller_brown()
chains, steps = int(sys.argv[1]), int(sys.argv[2])
for T in (1.0, None, 60.0):
  ex = ls.make_explorer(f, ls.ExplorerConfig(temperature=T))
  hits, temps = 0, []
  for seed in range(10):
    db = ls.Database(':memory:', energy_tol=1e-6)
    x0 = jax.random.uniform(jax.random.key(seed), (chains, 2), jnp.float64, jnp.array([-1.5, -0.5]), jnp.array([1.2, 2.0]))
    bh = ls.basin_hopping(db, ex, jax.random.key(100 + seed), x0, n_steps=steps)
    hits += bh['best_energy'] < -146.69
    temps.append(bh['temperature'][0])
  print(f"T={T}: global minimum found in {hits}/10 seeds; T used median {np.median(temps):.3g} [{min(temps):.3g}, {max(temps):.3g}]", flush=True)
