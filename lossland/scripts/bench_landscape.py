"""Landscape benchmark: quenches per second on a network loss (the library's batch
path for this backend, the whole batch vmapped, one at a time), and time to the
Lennard-Jones 13 global minimum by basin-hopping.

  python -m lossland.scripts.bench landscape --out_dir DIR     (dispatcher)
  python -m lossland.scripts.bench_landscape DIR [--quick]      (direct)
  python -m lossland.scripts.bench_landscape DIR --connect      (connect loop, timed)
  python -m lossland.scripts.bench_landscape --host_loops       (host bookkeeping)

If a pele interpreter is named explicitly by the environment variable
``LOSSLAND_PELE_PYTHON`` (e.g. ``/work/peer_venvs/pele/bin/python``; never a default
path, since a world-writable location such as /tmp could hold anyone's program),
the same two tasks are run there as a peer: pele's
C++ L-BFGS on the same network loss (NumPy loss and gradient) and pele's
``LJCluster(13)`` basin-hopping. pele is never imported here; it runs in a
subprocess.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

def pele_python():
  """The peer interpreter from ``$LOSSLAND_PELE_PYTHON``, or None (no default)."""
  return os.environ.get('LOSSLAND_PELE_PYTHON') or None

_PELE_SCRIPT = r'''
import json, sys, time
import numpy as np
spec = json.load(open(sys.argv[1]))
out = {}
from pele.potentials import BasePotential
from pele.optimize import lbfgs_cpp
z = np.load(spec["npz"])
x, y, starts = z["x"], z["y"], z["starts"]
sizes, lam = spec["sizes"], spec["lam"]

def unpack(w):
    out, i = [], 0
    for a, b in zip(sizes[:-1], sizes[1:]):
        out.append((w[i:i+a*b].reshape(a, b), w[i+a*b:i+a*b+b])); i += a*b+b
    return out

class Net(BasePotential):
    def getEnergyGradient(self, w):
        layers = unpack(w); hs = [x]; h = x
        for W, b in layers[:-1]:
            h = np.tanh(h @ W + b); hs.append(h)
        W, b = layers[-1]; z = h @ W + b
        z = z - z.max(1, keepdims=True); p = np.exp(z); p /= p.sum(1, keepdims=True)
        P = len(y); e = -np.mean(np.log(p[np.arange(P), y])) + lam * w @ w
        d = p.copy(); d[np.arange(P), y] -= 1; d /= P
        grads = []
        for l in range(len(layers) - 1, -1, -1):
            W, b = layers[l]; hin = hs[l]
            grads.append((hin.T @ d, d.sum(0)))
            if l > 0:
                d = (d @ W.T) * (1 - hin ** 2)
        g = np.concatenate([np.concatenate([gw.ravel(), gb]) for gw, gb in grads[::-1]])
        return e, g + 2 * lam * w
    def getEnergy(self, w):
        return self.getEnergyGradient(w)[0]

pot = Net()
t = time.time(); n_conv = 0; energies = []
for s in starts:
    r = lbfgs_cpp(s.copy(), pot, tol=spec["gtol_norm_pele"], nsteps=spec["max_iter"],
                  maxstep=spec["max_step"], M=spec["memory"])
    n_conv += int(r.success); energies.append(float(r.energy))
dt = time.time() - t
out["quenches_per_s"] = len(starts) / dt
out["n_converged"] = n_conv
out["energies"] = energies

from pele.systems import LJCluster
times, steps = [], []
for seed in spec["lj_seeds"]:
    np.random.seed(seed)
    system = LJCluster(13)
    db = system.create_database()
    bh = system.get_basinhopping(database=db, outstream=None)
    t = time.time(); n = 0
    while bh.markovE > spec["lj_target"] and n < spec["lj_max_steps"]:
        bh.run(1); n += 1
        if db.minima() and db.minima()[0].energy < spec["lj_target"]:
            break
    times.append(time.time() - t); steps.append(n)
out["lj13_seconds"] = times
out["lj13_steps"] = steps
out["lj13_median_seconds"] = float(np.median(times))
json.dump(out, open(sys.argv[2], "w"))
'''


def _network_task(quick):
  import jax
  import jax.numpy as jnp
  from lossland.landscape import potentials
  from lossland.landscape.study import StudyConfig, make_data
  cfg = StudyConfig(n_data=60, depth=2, width=4)
  xtr, ytr, _, _ = make_data(cfg)
  sizes = (cfg.d, 4, 4, cfg.n_classes)
  lam = 1e-3
  net = potentials.make_network_loss(jnp.asarray(xtr), jnp.asarray(ytr), sizes, lam)
  n_batch = 32 if quick else 128
  starts = jax.vmap(lambda k: net.init_fn(k, jnp.float64))(
      jax.random.split(jax.random.key(0), n_batch))
  return net, sizes, lam, xtr, ytr, np.asarray(starts)


# L-BFGS settings of the quench task, ours and pele's alike.
_GTOL, _MAX_ITER, _MAX_STEP, _MEMORY = 1e-8, 20000, 0.5, 10


def _timed_rates(paths: dict, xs, n_rep: int) -> dict:
  """Quenches per second of each path on the starts ``xs``, each path timed
  ``n_rep`` times in turn (after one compiling call), so load from other jobs falls
  on all of them alike. The wall rate is the best of the ``n_rep`` (timeit's rule:
  the fastest run is the least disturbed), the CPU rate (process time, all
  threads) the median.

  Returns:
    ``{name: {'wall': best quenches/s, 'cpu': median quenches per CPU second,
    'compile_seconds': first call, 'result': the last MinimizeResult}}``.
  """
  import jax
  out = {}
  for name, fn in paths.items():
    t = time.time()
    res = jax.block_until_ready(fn(xs))
    out[name] = {'wall': [], 'cpu': [], 'compile_seconds': time.time() - t, 'result': res}
  for _ in range(n_rep):
    for name, fn in paths.items():
      t, c = time.perf_counter(), time.process_time()
      out[name]['result'] = jax.block_until_ready(fn(xs))
      out[name]['wall'].append(len(xs) / (time.perf_counter() - t))
      out[name]['cpu'].append(len(xs) / max(time.process_time() - c, 1e-9))
  for rec in out.values():
    rec['wall'], rec['cpu'] = float(np.max(rec['wall'])), float(np.median(rec['cpu']))
  return out


def _quench_rates(net, sizes, lam, ytr, starts, quick) -> tuple:
  """Phase 1: quenches per second on the network loss, the same starts three ways:
  the library's batch path (:func:`~lossland.landscape.minimize.vmap_chunked` with
  the backend's :func:`~lossland.landscape.minimize.vmap_chunk`), the whole batch
  vmapped, and one start at a time (one jitted call each).

  Returns:
    ``(entries, seq)``: the summary entries and the one-at-a-time results, stacked
    (a MinimizeResult with one row per start).
  """
  import jax
  import jax.numpy as jnp
  from lossland.landscape.minimize import make_lbfgs, vmap_chunk, vmap_chunked
  vg = jax.value_and_grad(net.loss_fn)
  lbfgs = make_lbfgs(vg, gtol=_GTOL, max_iter=_MAX_ITER, max_step=_MAX_STEP,
                     memory=_MEMORY)
  chunk = vmap_chunk()
  single = jax.jit(lbfgs)

  def one_at_a_time(xs):
    rs = [jax.block_until_ready(single(x)) for x in xs]
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *rs)

  paths = {'library': jax.jit(vmap_chunked(lbfgs, chunk)),
           'vmapped': jax.jit(jax.vmap(lbfgs)), 'sequential': one_at_a_time}
  n_rep = 3 if quick else 9
  r = _timed_rates(paths, jnp.asarray(starts), n_rep)
  lib, vm, seq = (r[k]['result'] for k in ('library', 'vmapped', 'sequential'))
  entries = {
      'network': {'layer_sizes': list(sizes), 'n_params': net.n_params, 'P': len(ytr),
                  'lam': lam, 'gtol_rms': _GTOL},
      'n_quenches': len(starts), 'n_timings': n_rep,
      'quench_path': 'vmap' if chunk == 0 else f'lax.map over vmapped chunks of {chunk}',
      'quench_vmap_chunk': chunk}
  for k in paths:
    entries[f'quenches_per_s_{k}'] = r[k]['wall']
    entries[f'quenches_per_cpu_s_{k}'] = r[k]['cpu']
    entries[f'compile_seconds_{k}'] = r[k]['compile_seconds']
    entries[f'{k}_converged'] = int(np.sum(r[k]['result'].converged))
  entries.update({
      'library_over_sequential': r['library']['wall'] / r['sequential']['wall'],
      'vmapped_over_sequential': r['vmapped']['wall'] / r['sequential']['wall'],
      'library_over_sequential_cpu': r['library']['cpu'] / r['sequential']['cpu'],
      'vmapped_over_sequential_cpu': r['vmapped']['cpu'] / r['sequential']['cpu'],
      'vmapped_mean_iterations': float(np.mean(vm.n_iter)),
      'vmapped_max_iterations': int(np.max(vm.n_iter)),
      'max_abs_energy_diff_library_vs_sequential': float(np.max(np.abs(
          np.asarray(lib.energy) - np.asarray(seq.energy)))),
      'max_abs_energy_diff_vmapped_vs_sequential': float(np.max(np.abs(
          np.asarray(vm.energy) - np.asarray(seq.energy))))})
  return entries, seq


def _lj13_to_target(n_chains, seeds, target) -> dict:
  """Phase 2, one chain count: seconds (and steps per chain) for ``n_chains``
  basin-hopping chains to reach ``target`` from random LJ13 clusters, one run per
  seed after a compiling run."""
  import jax
  import jax.numpy as jnp
  from lossland.landscape import potentials
  from lossland.landscape.explorer import ExplorerConfig, make_explorer
  n_atoms = 13
  ex = make_explorer(potentials.lennard_jones(n_atoms),
                     ExplorerConfig(bh_gtol=1e-5, step_size=0.4, temperature=1.0,
                                    max_step=0.2, n_zero_modes=6),
                     perturb_fn=potentials.lj_perturb_fn(n_atoms))
  chunk = 5
  times, steps = [], []
  compile_t = None
  for seed in [-1] + seeds:  # seed -1 compiles
    key = jax.random.key(max(seed, 0) + 1000)
    x0 = jax.vmap(lambda k: potentials.lj_random_configuration(k, n_atoms,
                                                               dtype=jnp.float64))(
        jax.random.split(jax.random.fold_in(key, 1), n_chains))
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n_chains))
    t = time.time()
    state, _ = ex.bh_init(x0, 0.4, ex.config.temperature)
    n = 0
    while float(jnp.min(state.best_energy)) > target and n < 2000:
      state, _ = ex.bh_run(state, keys, chunk)
      n += chunk
      if seed < 0:
        break
    jax.block_until_ready(state.best_energy)
    if seed < 0:
      compile_t = time.time() - t
      continue
    times.append(time.time() - t)
    steps.append(n)
  return {'seconds': times, 'steps_per_chain': steps, 'vmap_chunk': ex.vmap_chunk,
          'median_seconds': float(np.median(times)),
          'compile_seconds': compile_t}


def _pele_peer(xtr, ytr, starts, sizes, lam, n_params, seeds, target, ours) -> dict:
  """Phase 3: pele's L-BFGS on ``starts`` (ours: the energies ``ours``) and its LJ13
  basin-hopping, in a subprocess of ``$LOSSLAND_PELE_PYTHON``; ``{'available':
  False, ...}`` with the reason when it cannot run."""
  pele = {'available': False}
  PELE_PYTHON = pele_python()
  if PELE_PYTHON is None:
    pele['reason'] = 'LOSSLAND_PELE_PYTHON not set'
  elif not os.path.isfile(PELE_PYTHON):
    pele['reason'] = f'LOSSLAND_PELE_PYTHON={PELE_PYTHON} is not a file'
  else:
    with tempfile.TemporaryDirectory() as tmp:
      npz = os.path.join(tmp, 'task.npz')
      np.savez(npz, x=np.asarray(xtr), y=np.asarray(ytr), starts=starts)
      spec = {'npz': npz, 'sizes': list(sizes), 'lam': lam,
              # pele's tol is on the gradient norm; match our RMS tolerance.
              'gtol_norm_pele': _GTOL * np.sqrt(n_params), 'max_iter': _MAX_ITER,
              'max_step': _MAX_STEP, 'memory': _MEMORY, 'lj_seeds': seeds,
              'lj_target': target, 'lj_max_steps': 20000}
      spec_path, out_path = os.path.join(tmp, 'spec.json'), os.path.join(tmp, 'out.json')
      with open(spec_path, 'w') as f:
        json.dump(spec, f)
      script = os.path.join(tmp, 'pele_task.py')
      with open(script, 'w') as f:
        f.write(_PELE_SCRIPT)
      proc = subprocess.run([PELE_PYTHON, script, spec_path, out_path],
                            capture_output=True, text=True, timeout=3600)
      if proc.returncode == 0:
        res = json.load(open(out_path))
        ours = np.asarray(ours, np.float64)
        pele = {'available': True, 'python': PELE_PYTHON,
                'quenches_per_s': res['quenches_per_s'],
                'n_converged': res['n_converged'],
                'max_abs_energy_diff_vs_ours': float(np.max(np.abs(
                    ours - np.array(res['energies'])))),
                'lj13_seconds': res['lj13_seconds'], 'lj13_steps': res['lj13_steps'],
                'lj13_median_seconds': res['lj13_median_seconds']}
      else:
        pele = {'available': False, 'error': proc.stderr.strip().splitlines()[-1:]}
  return pele


def _print_table(summary, pele) -> None:
  """Prints the headline numbers, ours and pele's (NaN where pele did not run)."""
  rows = [(f"quenches/s, library batch (JAX; {summary['quench_path']})",
           summary['quenches_per_s_library']),
          ('quenches/s, whole batch vmapped (JAX)', summary['quenches_per_s_vmapped']),
          ('quenches/s, one at a time (JAX)', summary['quenches_per_s_sequential']),
          ('library batch / one at a time (wall; CPU time)',
           summary['library_over_sequential'], summary['library_over_sequential_cpu']),
          ('whole batch vmapped / one at a time (wall; CPU time)',
           summary['vmapped_over_sequential'], summary['vmapped_over_sequential_cpu']),
          ('quenches/s, pele lbfgs_cpp', pele.get('quenches_per_s', float('nan'))),
          ('LJ13 median s to GM, 8 chains (JAX)', summary['lj13_median_seconds']),
          ('LJ13 median s to GM, 1 chain (JAX)', summary['lj13_median_seconds_single_chain']),
          ('LJ13 median s to GM, pele', pele.get('lj13_median_seconds', float('nan')))]
  width = max(len(row[0]) for row in rows)
  print(f"{'task':{width}s} {'value':>12s}")
  for name, *values in rows:
    print(f'{name:{width}s} ' + ' '.join(f'{v:12.4g}' for v in values))


def run_benchmark(out_dir: str, quick: bool = False) -> dict:
  """Runs the benchmark, prints a table, writes ``out_dir/summary.json``.

  Returns:
    The summary dict with ``quench_path``, ``quenches_per_s_library``,
    ``quenches_per_s_vmapped``, ``quenches_per_s_sequential``, their ratios
    ``library_over_sequential`` and ``vmapped_over_sequential``,
    ``lj13_median_seconds`` and, when pele runs, the ``pele_*`` peers.
  """
  import jax
  jax.config.update('jax_enable_x64', True)
  from lossland.landscape import potentials

  os.makedirs(out_dir, exist_ok=True)
  summary = {'quick': quick, 'backend': jax.default_backend(),
             'devices': [str(d) for d in jax.devices()]}

  from lossland.scripts._cli import Progress
  bar = Progress('bench landscape')
  n_work = 2 + (2 if quick else 3)  # quench task, LJ13 per chain count, pele
  done_work = 0
  bar(0, n_work, 'network quenches (compiling)')
  # 1. Quenches per second on a network loss ---------------------------------
  net, sizes, lam, xtr, ytr, starts = _network_task(quick)
  entries, seq = _quench_rates(net, sizes, lam, ytr, starts, quick)
  summary.update(entries)

  done_work += 1
  bar(done_work, n_work, 'LJ13 basin-hopping')
  # 2. LJ13 basin-hopping ----------------------------------------------------
  target = potentials.LJ13_GLOBAL_MINIMUM + 1e-4
  seeds = list(range(3 if quick else 7))
  lj_results = {}
  for n_chains in ((1, 8) if quick else (1, 8, 32)):
    bar(done_work, n_work, f'LJ13 basin-hopping, {n_chains} chain(s)')
    done_work += 1
    lj_results[n_chains] = _lj13_to_target(n_chains, seeds, target)
  summary['lj13'] = {str(k): v for k, v in lj_results.items()}
  summary['lj13_median_seconds'] = lj_results[8]['median_seconds']
  summary['lj13_median_seconds_single_chain'] = lj_results[1]['median_seconds']

  bar(n_work - 1, n_work, 'pele peer')
  # 3. pele peer (subprocess, separate venv) ---------------------------------
  pele = _pele_peer(xtr, ytr, starts, sizes, lam, net.n_params, seeds, target,
                    np.asarray(seq.energy))
  summary['pele'] = pele
  bar(n_work, n_work, 'done')
  bar.close()
  if pele.get('available'):
    summary['pele_quenches_per_s'] = pele['quenches_per_s']
    summary['pele_lj13_median_seconds'] = pele['lj13_median_seconds']

  _print_table(summary, pele)
  with open(os.path.join(out_dir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  return summary


def connect_benchmark(out_dir: str, depth: int = 2, n_data: int = 30, budget: int = 20,
                      n_chains: int = 8, n_steps: int = 30) -> dict:
  """The connect loop on a network loss, timed (issue 11: host loops).

  Digits, 3 classes, 5 PCA components, N≈57 tanh net, λ = 1e-3 (the study's
  settings, seed 0): basin-hopping (``n_chains`` × ``n_steps``), then
  :func:`~lossland.landscape.explorer.connect_database` with ``refine=True`` and
  ``budget`` attempts. Reports wall and CPU seconds of the connect phase (CPU:
  ``time.process_time``, all threads, less sensitive to other jobs on the machine),
  the counts, the number of alignments for pair selection, and the minima/TS
  energies and pairs (to check that results do not change). Writes
  ``out_dir/connect.json``.
  """
  import jax
  jax.config.update('jax_enable_x64', True)
  import jax.numpy as jnp
  from lossland.landscape import explorer as E
  from lossland.landscape import potentials, study, symmetry
  from lossland.landscape.database import Database, norm_gap
  os.makedirs(out_dir, exist_ok=True)
  cfg = study.StudyConfig(depth=depth, n_data=n_data, n_params=57, lam=1e-3, seed=0)
  xtr, ytr, _, _ = study.make_data(cfg)
  width = study.width_for_params(cfg.d, depth, cfg.n_classes, cfg.n_params)
  sizes = (cfg.d,) + (width,) * depth + (cfg.n_classes,)
  net = potentials.make_network_loss(jnp.asarray(xtr), jnp.asarray(ytr), sizes, cfg.lam)
  dist = symmetry.network_distance_fn(sizes, odd=True)
  ex = E.make_explorer(net.loss_fn, study.explorer_config(cfg, net.n_params),
                       distance_fn=dist, distance_lower_bound=norm_gap,
                       align_fn=lambda a, b: symmetry.align_network(a, b, sizes, odd=True))
  db = Database(':memory:', energy_tol=study.ENERGY_TOL, distance_fn=dist,
                distance_tol=1e-3, distance_lower_bound=norm_gap)
  x0 = jax.vmap(lambda k: net.init_fn(k, jnp.float64))(
      jax.random.split(jax.random.key(0), n_chains))
  t = time.time()
  E.basin_hopping(db, ex, jax.random.key(1), x0, n_steps=n_steps)
  bh_s = time.time() - t
  n_bh = db.n_minima()
  t, c = time.time(), time.process_time()
  rep = E.connect_database(db, ex, budget=budget, refine=True)
  wall, cpu = time.time() - t, time.process_time() - c
  _, me, te, tp = db.graph_arrays()
  out = {'layer_sizes': list(sizes), 'basin_hopping_seconds': bh_s,
         'n_minima_basin_hopping': n_bh, 'connect_seconds': wall,
         'connect_cpu_seconds': cpu, 'n_attempts': rep['n_attempts'],
         'n_minima': int(me.size), 'n_ts': int(te.size), 'connected': rep['connected'],
         'candidates': rep['candidates'], 'n_distances': rep['n_distances'],
         'min_energies': me.tolist(), 'ts_energies': te.tolist(),
         'ts_pairs': tp.tolist(), 'attempts': [list(a) for a in db.attempts()]}
  with open(os.path.join(out_dir, 'connect.json'), 'w') as f:
    json.dump(out, f, indent=1)
  print(f"connect loop: {out['n_attempts']} attempts, {out['n_minima']} minima, "
        f"{out['n_ts']} TS, {wall:.1f} s wall, {cpu:.1f} s CPU")
  return out


def host_loops_benchmark(n_minima: int = 3000, n_quench: int = 30000,
                         n_attempts: int = 50) -> dict:
  """The connect loop's host bookkeeping on a synthetic database, old way vs new.

  * basin-hopping de-duplication of ``n_quench`` quench energies (``n_minima``
    distinct values): the linear scan over seen energies against
    :func:`~lossland.landscape.explorer.new_energies` (sorted + ``searchsorted``);
  * ``n_attempts`` attempts that each add one minimum and one TS: rebuilding the
    components from the database twice per attempt (the old loop) against the
    incremental union-find graph. No JAX involved.
  """
  from lossland.landscape import explorer as E
  from lossland.landscape.database import Database
  rng = np.random.default_rng(0)
  levels = rng.uniform(0, 1, n_minima)
  energies = rng.choice(levels, n_quench) + rng.uniform(-1e-9, 1e-9, n_quench)
  tol = 1e-6
  t = time.process_time()
  seen, reps_old = [], []
  for i, e in enumerate(energies):
    if any(abs(e - s) < tol for s in seen):
      continue
    seen.append(float(e))
    reps_old.append(i)
  scan_s = time.process_time() - t
  t = time.process_time()
  reps_new = []
  seen_new = np.zeros(0)
  for start in range(0, n_quench, 80):  # one basin-hopping chunk: 8 chains x 10 steps
    reps, seen_new = E.new_energies(seen_new, energies[start:start + 80],
                                    np.ones(80, bool), tol)
    reps_new += [start + r for r in reps]
  sorted_s = time.process_time() - t
  assert reps_new == reps_old

  db = Database(':memory:')
  ids = [db.add_minimum(e, np.zeros(2), commit=False)[0] for e in levels[:n_minima]]
  for k in range(1, n_minima):
    if k % 3:
      db.add_transition_state(2.0 + k, np.zeros(2), ids[k - 1], ids[k], commit=False)
  db.commit()
  t = time.process_time()
  for k in range(n_attempts):
    E.components(db)
    E.components(db)
  rebuild_s = time.process_time() - t
  graph = E._Graph(db)
  t = time.process_time()
  for k in range(n_attempts):
    graph.update()
    graph.components()
  incremental_s = time.process_time() - t
  out = {'n_minima': n_minima, 'n_quench': n_quench, 'n_attempts': n_attempts,
         'dedup_linear_scan_cpu_s': scan_s, 'dedup_searchsorted_cpu_s': sorted_s,
         'components_rebuild_twice_cpu_s': rebuild_s,
         'components_incremental_cpu_s': incremental_s}
  print(json.dumps(out))
  return out


if __name__ == '__main__':
  args = [a for a in sys.argv[1:] if not a.startswith('--')]
  out = args[0] if args else 'runs/bench_landscape'
  if '--connect' in sys.argv:
    connect_benchmark(out)
  elif '--host_loops' in sys.argv:
    host_loops_benchmark()
  else:
    run_benchmark(out, quick='--quick' in sys.argv)
