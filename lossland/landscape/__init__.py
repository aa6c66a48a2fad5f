"""Landscape explorer: minima, transition states and disconnectivity graphs of any
jittable scalar function of a flat vector (network losses, cluster energies).

Verpoort, Lee & Wales, PNAS 117, 21857 (2020). See docs/landscape.md.

Modules:
  minimize        L-BFGS (GMIN/pele style) and FIRE, one lax.while_loop each;
                  vmap_chunked / vmap_chunk: how a batch of them runs per backend.
  basinhopping    perturb / quench / Metropolis with adaptive step, per chain.
  transition      DNEB, Lanczos lowest eigenpair, hybrid eigenvector-following.
  explorer        jitted+vmapped engine and the host drivers (BH → db, connect loop).
  database        SQLite minima/TS store, de-duplication, PATHSAMPLE export.
  symmetry        hidden-unit permutation / sign-flip alignment and distance on
                  nets' params pytrees (and their flat ravel_pytree vectors).
  disconnectivity tree construction, layout and matplotlib figure.
  metrics         counts, loss and barrier distributions, frustration, funnel.
  report          the disconnectivity figure + summary of a database (study, scripts).
  potentials      Lennard-Jones, Müller–Brown, the network loss (nets.make_net +
                  softmax cross-entropy + λ|w|²).

A user-defined energy: see examples/muller_brown.py and docs/landscape.md
("Your own energy"). Graph from a database::

  ids, e_min, e_ts, pairs = db.graph_arrays()
  tree = landscape.build_tree(e_min, e_ts, pairs, n_levels=20)
  landscape.plot_disconnectivity(tree, e_min)
  landscape.landscape_metrics(e_min, e_ts, pairs, temperature=T)
"""

from lossland.landscape import disconnectivity, metrics, potentials, report, symmetry
from lossland.landscape.database import (Database, DatabaseError, export_pathsample,
                                         import_pathsample, log_product_positive, norm_gap)
from lossland.landscape.disconnectivity import (build_tree, plot_disconnectivity,
                                                tree_signature)
from lossland.landscape.explorer import (Explorer, ExplorerConfig, add_minima,
                                         basin_hopping, calibrate_temperature,
                                         check_coordinates, components, connect_database,
                                         local_connect, make_explorer, refine_and_store_ts)
from lossland.landscape.metrics import downhill_barriers, landscape_metrics, uphill_barriers
from lossland.landscape.minimize import (MinimizeResult, make_fire, make_lbfgs, vmap_chunk,
                                         vmap_chunked)
from lossland.landscape.transition import (hessian_eigenvalues_fn, hvp_fn_from,
                                           lowest_eigenpair, make_dneb, make_hef)
