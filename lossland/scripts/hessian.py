r"""Hessian spectra H, H0, Hp of every member of an ensemble run.

    python -m lossland.scripts.hessian --run_dir RUN [--at init] \
        [--method auto|dense|lanczos]

Reads a run directory written by ``lossland.scripts.ensemble`` and writes
``RUN/hessian/`` (atomically: a directory that exists is complete):

* ``spectra.npz``: per member, ``eig_h``, ``eig_h0``, ``eig_hp`` [K, N] (dense)
  or ``nodes_*``/``weights_*`` [K, n_probes, m] (SLQ), plus ``loss``,
  ``n_delta``, ``seeds``, and Ritz values/residuals of H (Lanczos).
* ``summary.json``: per member n_params, n_delta, loss, n_negative_hp,
  rank_h0, n_zero_h, n_eff, the checks rank(H0) <= N_Delta and (at a stable
  minimum) N_-(Hp) <= N_Delta, and the method.
* ``density_h.png``, ``density_h0.png``, ``density_hp.png``, ``hp_rescaled.png``.

``--method auto`` uses the dense path (exact counts) when N <= --dense_max_n and
the matrices fit in memory, else Lanczos/SLQ (estimated counts).
"""
import os
import sys
import time

from absl import flags

from lossland.scripts import _cli

FLAGS = flags.FLAGS
flags.DEFINE_string("run_dir", None, "Ensemble run directory.")
flags.DEFINE_string("at", "final", "Parameters to analyse: 'final' or 'init'.")
flags.DEFINE_string("method", "auto", "'auto', 'dense' or 'lanczos'.")
flags.DEFINE_bool("x64", True, "Enable float64 (before any array exists).")
flags.DEFINE_integer("dense_max_n", 10000, "Largest N for the dense path (auto).")
flags.DEFINE_integer("lanczos_steps", 100, "Lanczos steps per probe (SLQ).")
flags.DEFINE_integer("num_probes", 4, "SLQ probes per matrix.")
flags.DEFINE_integer("top_k", 5, "Extreme Ritz pairs of H to report (Lanczos).")
flags.DEFINE_integer("seed", 0, "PRNG seed for probes and start vectors.")
flags.DEFINE_float("rtol", None, "Relative zero tolerance for eigenvalue "
                   "counts (default N*eps for dense, 1e-8 for SLQ).")
flags.DEFINE_integer("chunk_size", 0, "Accumulate over data chunks of this "
                     "size (0: whole training set at once).")
flags.DEFINE_integer("batch_size", 64, "Basis vectors per batch when building "
                     "dense matrices.")
flags.DEFINE_list("members", None, "Member indices to analyse (default all).")

_METHODS = ("auto", "dense", "lanczos")
_AT = ("final", "init")


def main(argv):
  del argv
  if FLAGS.x64:
    import jax
    jax.config.update("jax_enable_x64", True)
  if not FLAGS.run_dir:
    _cli.fail("--run_dir is required")
  if FLAGS.method not in _METHODS:
    _cli.fail(f"--method must be one of {', '.join(_METHODS)}, got {FLAGS.method!r}")
  if FLAGS.at not in _AT:
    _cli.fail(f"--at must be 'final' or 'init', got {FLAGS.at!r}")
  for name in ("lanczos_steps", "num_probes", "batch_size"):
    if getattr(FLAGS, name) < 1:
      _cli.fail(f"--{name} must be >= 1")
  if FLAGS.chunk_size < 0 or FLAGS.top_k < 0:
    _cli.fail("--chunk_size and --top_k must be >= 0")

  import jax
  import numpy as np
  from lossland import curvature as cv
  from lossland import curvature_plots
  from lossland import experiment
  from lossland import io
  from lossland import lanczos as lz
  from lossland import nets

  try:
    ens = experiment.load_ensemble(FLAGS.run_dir)
  except io.RunError as e:
    _cli.fail(e)
  if ens.net.n_out != 1:
    _cli.fail(f"the Hessian script handles scalar-output nets, got n_out={ens.net.n_out}")
  members = list(range(ens.n_members))
  if FLAGS.members:
    try:
      members = [int(m) for m in FLAGS.members]
    except ValueError:
      _cli.fail(f"--members must be integers, got {FLAGS.members}")
    bad = [m for m in members if not 0 <= m < ens.n_members]
    if bad:
      _cli.fail(f"--members {bad} out of range: the run has {ens.n_members} members")

  _, apply_fn = nets.make_net(ens.net, dtype=ens.data.x_train.dtype)
  n = nets.n_params(ens.net)
  dtype = ens.data.x_train.dtype
  chunk = FLAGS.chunk_size or None
  fns = cv.curvature_fns(apply_fn, ens.loss, chunk_size=chunk)

  method = FLAGS.method
  if method == "auto":
    method = "dense" if n <= FLAGS.dense_max_n else "lanczos"
    if method == "dense":
      try:
        cv.check_dense_memory(n, dtype)
      except MemoryError:
        method = "lanczos"
  if method == "dense":
    try:
      cv.check_dense_memory(n, dtype)
    except MemoryError as e:
      _cli.fail(e)
  if method == "lanczos" and FLAGS.lanczos_steps > n:
    _cli.fail(f"--lanczos_steps={FLAGS.lanczos_steps} exceeds N={n}")
  # N_eff needs the P x N output Jacobian; skip it when that does not fit.
  p_train = ens.data.P
  avail = cv.available_memory_bytes()
  do_neff = avail is None or 3 * p_train * n * np.dtype(dtype).itemsize < 0.5 * avail

  def batch_for(params0):
    offset = apply_fn(params0, ens.data.x_train) if ens.subtract_init else None
    return cv.examples(ens.data.x_train, ens.data.y_train, offset)

  @jax.jit
  def basics(params, batch):
    delta = fns.delta(params, batch)
    return (fns.loss(params, batch), (delta > 0).sum(),
            cv.n_active(fns, params, batch))

  @jax.jit
  def dense_eigs(params, batch):
    h, h0, hp = cv.dense_split(fns, params, batch, FLAGS.batch_size)
    eig = jax.numpy.linalg.eigvalsh
    return eig(h), eig(h0), eig(hp)

  @jax.jit
  def lanczos_all(params, batch, key):
    k_h, k_h0, k_hp, k_top = jax.random.split(key, 4)
    out = {}
    for name, vp, k in (("h", fns.hvp, k_h), ("h0", fns.h0vp, k_h0),
                        ("hp", fns.hpvp, k_hp)):
      res = lz.slq(cv.flat_matvec(vp, params, batch), k, n, FLAGS.lanczos_steps,
                   FLAGS.num_probes, dtype, probe_batch_size=1)
      out[name] = (res.nodes, res.weights)
    v0 = jax.random.normal(k_top, (n,), dtype)
    theta, _, resid = lz.ritz(lz.lanczos(cv.flat_matvec(fns.hvp, params, batch),
                                         v0, FLAGS.lanczos_steps))
    return out, theta, resid

  jac = jax.jit(lambda params: cv.output_jacobian(apply_fn, params,
                                                  ens.data.x_train))

  key = jax.random.key(FLAGS.seed)
  rows, store = [], {}
  t_start = time.time()
  print(f"hessian: {FLAGS.run_dir}: {len(members)} member(s), N={n}, "
        f"P={p_train}, method={method}, at={FLAGS.at}", file=sys.stderr)
  for i, k in enumerate(members):
    t0 = time.time()
    params, params0 = ens.member(k)
    if FLAGS.at == "init":
      params = params0
    batch = batch_for(params0)
    loss, n_delta, n_act = (np.asarray(a) for a in basics(params, batch))
    row = {"member": k, "seed": int(ens.seeds[k]), "n_params": n,
           "n_delta": int(n_delta), "n_active": int(n_act), "loss": float(loss),
           "method": method}
    if method == "dense":
      eh, eh0, ehp = (np.asarray(a) for a in dense_eigs(params, batch))
      counts = cv.spectral_counts(eh, eh0, ehp, int(n_delta), FLAGS.rtol)
      row["rtol"] = FLAGS.rtol if FLAGS.rtol is not None else cv.default_rtol(n, dtype)
      for name, e in (("eig_h", eh), ("eig_h0", eh0), ("eig_hp", ehp)):
        store.setdefault(name, []).append(e)
      row["trace_h"] = float(eh.sum())
    else:
      out, theta, resid = lanczos_all(params, batch, jax.random.fold_in(key, k))
      out = jax.tree_util.tree_map(np.asarray, out)
      rtol = 1e-8 if FLAGS.rtol is None else FLAGS.rtol
      counts = cv.slq_counts(*out["h"], *out["h0"], *out["hp"], n=n,
                             n_delta=int(n_delta), rtol=rtol)
      row["rtol"] = rtol
      for name, (nodes, weights) in out.items():
        store.setdefault(f"nodes_{name}", []).append(nodes)
        store.setdefault(f"weights_{name}", []).append(weights)
      theta, resid = np.asarray(theta), np.asarray(resid)
      store.setdefault("ritz_h", []).append(theta)
      store.setdefault("ritz_residual_h", []).append(resid)
      top = min(FLAGS.top_k, theta.size)
      row["ritz_top_h"] = theta[::-1][:top].tolist()
      row["ritz_top_residual_h"] = resid[::-1][:top].tolist()
      row["ritz_bottom_h"] = theta[:top].tolist()
      row["ritz_bottom_residual_h"] = resid[:top].tolist()
      row["trace_h"] = float(n * np.mean(np.sum(out["h"][0] * out["h"][1], -1)))
    row.update(counts)
    row["n_negative_hp_over_n"] = row["n_negative_hp"] / n
    row["n_eff"] = cv.matrix_rank(np.asarray(jac(params))) if do_neff else None
    rows.append(row)
    print(f"member {i + 1}/{len(members)} (index {k}, seed {row['seed']}): "
          f"loss={row['loss']:.3e} N_delta={row['n_delta']} "
          f"N_-(Hp)={row['n_negative_hp']:.6g} rank(H0)={row['rank_h0']:.6g} "
          f"n_zero(H)={row['n_zero_h']:.6g} N_eff={row['n_eff']} "
          f"({time.time() - t0:.1f}s)", file=sys.stderr)

  arrays = {k: np.stack(v) for k, v in store.items()}
  arrays.update(loss=np.array([r["loss"] for r in rows]),
                n_delta=np.array([r["n_delta"] for r in rows]),
                seeds=np.array([r["seed"] for r in rows]),
                members=np.array(members))
  if method == "dense":
    uniform = lambda e: (e[:, None, :], np.full_like(e[:, None, :], 1.0 / n))
    spectra = {m: uniform(arrays[f"eig_{m}"]) for m in ("h", "h0", "hp")}
  else:
    spectra = {m: (arrays[f"nodes_{m}"], arrays[f"weights_{m}"])
               for m in ("h", "h0", "hp")}
  summary = {
      "run_dir": os.path.abspath(FLAGS.run_dir),
      "at": FLAGS.at, "method": method, "n_params": n, "P": p_train,
      "loss": ens.loss.name, "epsilon": ens.loss.epsilon,
      "subtract_init": ens.subtract_init,
      "x64": bool(jax.config.jax_enable_x64),
      "lanczos_steps": FLAGS.lanczos_steps if method == "lanczos" else None,
      "num_probes": FLAGS.num_probes if method == "lanczos" else None,
      "seconds": time.time() - t_start,
      "members": rows,
  }
  labels = [f"seed {r['seed']}" for r in rows]
  with io.staged_subdir(FLAGS.run_dir, "hessian") as out_dir:
    with open(os.path.join(out_dir, "spectra.npz"), "wb") as fh:
      np.savez(fh, **arrays)
    with open(os.path.join(out_dir, "summary.json"), "w") as fh:
      fh.write(io.dumps(summary, indent=2) + "\n")
    curvature_plots.plot_all(out_dir, spectra, arrays["loss"], labels)
  print(f"wrote {os.path.join(FLAGS.run_dir, 'hessian')} "
        f"({time.time() - t_start:.1f}s)", file=sys.stderr)


if __name__ == "__main__":
  _cli.run(main)
