r"""Hessian spectra H, H0, Hp of every member of an ensemble run.

    python -m lossland.scripts.hessian --run_dir RUN [--at init] \
        [--method auto|dense|lanczos] [--krylov auto|full|slq] [--out_dir RUN/hessian]

Reads a run directory written by ``lossland.scripts.ensemble``. Every analysis
gets its own new directory ``OUT_DIR/<UTC time>_<hash>/`` (default OUT_DIR is
``RUN/hessian``): nothing is ever overwritten. It is written under a staging
name and renamed into place when complete (a directory that exists is
complete); an ``fcntl`` lock on ``OUT_DIR/.lock`` serialises the final rename
and the append to ``OUT_DIR/index.jsonl`` (one line per finished analysis:
its directory, method, members and time), so concurrent analyses of one run
all keep their results. Each analysis directory holds:

* ``spectra.npz``: per member, ``eig_h``, ``eig_h0``, ``eig_hp`` [K, N] (dense,
  and Lanczos with full Krylov runs) or ``nodes_*``/``weights_*``/
  ``residuals_*`` [K, n_probes, m] (SLQ of H and Hp) with the exact ``eig_h0``
  [K, N] (from the N_Delta x N_Delta kernel) and the Ritz values/residuals of
  H, plus ``loss``, ``n_delta``, ``seeds``.
* ``summary.json``: per member n_params, n_delta, loss, n_negative_hp,
  rank_h0, n_zero_h, n_eff, trace_h, the checks rank(H0) <= N_Delta and (at a
  stable minimum) N_-(Hp) <= N_Delta, and the method. With Lanczos, rank(H0)
  and Tr(H0) are exact. ``--krylov full`` (the ``auto`` choice when N <=
  (num_probes + 1/2) * lanczos_steps, 450 with the defaults) runs Lanczos of
  dimension N on H and on Hp: every eigenvalue, so the counts and checks are
  exact too, each with an ``_interval`` of what rounding could reclassify.
  With ``--krylov slq`` they are estimates with ``_stderr``, ``_unresolved``
  and ``_interval`` (listed in each member's ``estimated``), and checks that
  would rest on an estimate are null.
* ``density_h.png``, ``density_h0.png``, ``density_hp.png``, ``hp_rescaled.png``.

The analysis itself is :func:`lossland.curvature.spectra` (``lax.map`` over
the members, ``--vmap_members`` of them vmapped together, ``--members_per_call``
members per jitted call with a progress line after each); this script parses
the flags, loads the run (:meth:`lossland.experiment.Ensemble.curvature_inputs`)
and writes the results. Results go to stdout (a table and the analysis
directory), progress to stderr.
``--method auto`` uses the dense path (exact counts) when N <= --dense_max_n and
the matrices fit in memory, else Lanczos/SLQ.
"""
import dataclasses
import datetime
import fcntl
import hashlib
import json
import os
import sys
import tempfile
import time
import zipfile

from lossland.experiments import options
from lossland.experiments.options import option
from lossland.scripts import _cli

@dataclasses.dataclass(frozen=True)
class HessianOptions:
  """The script's options: each field is the flag of the same name."""
  run_dir: str | None = option(None, "Ensemble run directory.")
  at: str = option("final", "Parameters to analyse: 'final' or 'init'.")
  method: str = option("auto", "'auto', 'dense' or 'lanczos'.")
  x64: bool = option(True, "Enable float64 (before any array exists).")
  dense_max_n: int = option(10000, "Largest N for the dense path (auto).")
  lanczos_steps: int = option(100, "Lanczos steps per probe (SLQ).")
  num_probes: int = option(4, "SLQ probes per matrix.")
  krylov: str = option("auto", "Lanczos counts: 'full' (every eigenvalue of H and Hp "
                       "from a Lanczos run of dimension N: exact counts, N products "
                       "each), 'slq' (estimates with error bars) or 'auto' (full "
                       "when N <= (num_probes + 1/2) * lanczos_steps and it fits "
                       "in memory).")
  top_k: int = option(5, "Extreme Ritz pairs of H to report (Lanczos).")
  seed: int = option(0, "PRNG seed for probes and start vectors.")
  rtol: float | None = option(None, "Relative zero tolerance for eigenvalue counts "
                              "(default N*eps for dense, 1e-8 for SLQ).")
  chunk_size: int = option(0, "Accumulate over data chunks of this size (0: whole "
                           "training set at once).")
  batch_size: int = option(64, "Basis vectors per batch when building dense matrices.")
  members: tuple[int, ...] | None = option(None, "Member indices to analyse (default all).")
  members_per_call: int = option(0, "Members per jitted call, with a progress line after "
                                 "each (0: all in one call).")
  vmap_members: int = option(1, "Members vmapped together inside the lax.map over "
                             "members (memory grows by this factor).")
  out_dir: str | None = option(None, "Directory that receives one new subdirectory per "
                               "analysis (default RUN_DIR/hessian).")


_SPEC = options.spec_of(HessianOptions)
_cli.define_flags(_SPEC, __name__)

_METHODS = ("auto", "dense", "lanczos")
_KRYLOV = ("auto", "full", "slq")
_AT = ("final", "init")


def _writable(directory: str) -> bool:
  """Whether a file can be created in ``directory`` (tried, then removed)."""
  try:
    fd, path = tempfile.mkstemp(prefix=".probe.", dir=directory)
  except OSError:
    return False
  os.close(fd)
  os.remove(path)
  return True


def check_out_dir(out_dir: str) -> None:
  """Raises UsageError unless ``out_dir`` is (or can be made) a writable directory."""
  if os.path.exists(out_dir):
    if not os.path.isdir(out_dir):
      raise _cli.UsageError(f"--out_dir {out_dir} exists and is not a directory")
    if not _writable(out_dir):
      raise _cli.UsageError(f"--out_dir {out_dir} is not writable")
    return
  parent = os.path.dirname(os.path.abspath(out_dir))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise _cli.UsageError(f"--out_dir {out_dir} cannot be created: {parent} is "
                          f"not a directory")
  if not _writable(parent):
    raise _cli.UsageError(f"--out_dir {out_dir} cannot be created: {parent} is "
                          f"not writable")


def analysis_name(settings: dict) -> str:
  """``<UTC time>_<hash>``: the time and a hash of the settings, pid and clock."""
  now = datetime.datetime.now(datetime.timezone.utc)
  h = hashlib.sha256(json.dumps([settings, os.getpid(), time.time_ns()],
                                sort_keys=True, default=str).encode())
  return f"{now.strftime('%Y%m%dT%H%M%SZ')}_{h.hexdigest()[:8]}"


def publish(out_dir: str, staging: str, name: str, record: dict) -> str:
  """Renames ``staging`` to a new ``out_dir/name`` (never an existing one) and
  appends ``record`` to ``out_dir/index.jsonl``, both under an fcntl lock."""
  with open(os.path.join(out_dir, ".lock"), "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      final, k = os.path.join(out_dir, name), 1
      while os.path.exists(final):
        k += 1
        final = os.path.join(out_dir, f"{name}-{k}")
      os.chmod(staging, 0o755)
      os.rename(staging, final)
      with open(os.path.join(out_dir, "index.jsonl"), "a") as fh:
        fh.write(json.dumps({"dir": os.path.basename(final), **record}) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return final


def _fmt(row: dict, key: str) -> str:
  """An exact count as an integer (with its interval [lo..hi] when rounding
  leaves some values unsettled), an estimate as 'x +- se (+-u unresolved)'."""
  v = row.get(key)
  if v is None:
    return "null"
  if key in row.get("estimated", ()):
    out = f"{v:.4g}+-{row.get(key + '_stderr', float('nan')):.2g}"
    u = row.get(key + "_unresolved")
    return out + (f"(+-{u:.2g}unres)" if u else "")
  if row.get(key + "_unresolved"):
    lo, hi = row[key + "_interval"]
    return f"{v}[{lo}..{hi}]"
  return f"{v:.6g}" if isinstance(v, float) else str(v)


def _load(run_dir):
  """The ensemble of a run directory, or UsageError with one clear line."""
  from lossland import experiment
  from lossland import io
  try:
    return experiment.load_ensemble(run_dir)
  except io.RunError as e:
    if "pickle" not in str(e).lower():
      raise _cli.UsageError(str(e)) from None
    raise _cli.UsageError(f"{run_dir}: arrays.npz is corrupt or truncated") from None
  except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
    del e
    raise _cli.UsageError(f"{run_dir}: arrays.npz is corrupt or truncated "
                          f"(rerun the ensemble job)") from None


def _check_flags(o: HessianOptions) -> str:
  """Exits with status 2 on a bad flag; returns the output root directory."""
  if not o.run_dir:
    _cli.fail("--run_dir is required")
  if o.method not in _METHODS:
    _cli.fail(f"--method must be one of {', '.join(_METHODS)}, got {o.method!r}")
  if o.krylov not in _KRYLOV:
    _cli.fail(f"--krylov must be one of {', '.join(_KRYLOV)}, got {o.krylov!r}")
  if o.at not in _AT:
    _cli.fail(f"--at must be 'final' or 'init', got {o.at!r}")
  for name in ("lanczos_steps", "num_probes", "batch_size", "vmap_members"):
    if getattr(o, name) < 1:
      _cli.fail(f"--{name} must be >= 1")
  if o.chunk_size < 0 or o.top_k < 0 or o.members_per_call < 0:
    _cli.fail("--chunk_size, --top_k and --members_per_call must be >= 0")
  if not os.path.isdir(o.run_dir):
    _cli.fail(f"run directory not found: {o.run_dir}")
  out_root = o.out_dir or os.path.join(o.run_dir, "hessian")
  check_out_dir(out_root)
  return out_root


def _members(o: HessianOptions, ens) -> list:
  """The member indices of --members (default all), checked against the run."""
  members = list(range(ens.n_members))
  if o.members:
    members = list(o.members)
    bad = [m for m in members if not 0 <= m < ens.n_members]
    if bad:
      _cli.fail(f"--members {bad} out of range: the run has {ens.n_members} members")
  return members


def _spectra_config(o: HessianOptions, n: int, dtype):
  """The :class:`lossland.curvature.SpectraConfig` of the flags for N = n."""
  from lossland import curvature as cv
  try:
    method = cv.choose_method(o.method, n, dtype, o.dense_max_n)
  except MemoryError as e:
    _cli.fail(e)
  if method == "lanczos" and o.num_probes < 2:
    _cli.fail("--num_probes must be >= 2 with Lanczos (error bars need two probes)")
  cfg = cv.SpectraConfig(method=method, rtol=o.rtol, batch_size=o.batch_size,
                         num_steps=o.lanczos_steps, num_probes=o.num_probes,
                         top_k=o.top_k, vmap_size=o.vmap_members,
                         krylov=o.krylov)
  if method != "lanczos":
    return cfg
  try:
    cfg = dataclasses.replace(cfg, krylov=cv.choose_krylov(cfg, n, dtype))
  except MemoryError as e:
    _cli.fail(e)
  if cfg.krylov == "slq" and o.lanczos_steps > n:
    _cli.fail(f"--lanczos_steps={o.lanczos_steps} exceeds N={n}")
  return cfg


def _run_spectra(o: HessianOptions, ens, members: list, n: int, cfg) -> tuple:
  """:func:`lossland.curvature.spectra` of the members, progress on stderr.

  Returns:
    ``(result, t_start)``: the spectra and the time at which they started.
  """
  import jax
  from lossland import curvature as cv
  fns, params, batch = ens.curvature_inputs(members, o.at,
                                            o.chunk_size or None)
  t_start = time.time()
  print(f"hessian: {o.run_dir}: {len(members)} member(s), N={n}, "
        f"P={ens.data.P}, method={cfg.method}"
        + (f" ({cfg.krylov} Krylov)" if cfg.method == "lanczos" else "")
        + f", at={o.at} (the first call "
        f"includes compilation)", file=sys.stderr, flush=True)
  bar = _cli.Progress("hessian")
  bar(0, len(members), "members")
  progress = lambda done, total: bar(
      done, total, f"member {done}/{total} ({time.time() - t_start:.1f}s)")
  res = cv.spectra(fns, params, batch, cfg, key=jax.random.key(o.seed),
                   member_ids=members, group_size=o.members_per_call,
                   progress=progress)
  bar.close()
  return res, t_start


def _write_analysis(out_root: str, settings: dict, summary: dict, arrays: dict,
                    labels: list) -> str:
  """Writes spectra.npz, summary.json and the figures into a new analysis
  directory of ``out_root`` (staged, then published); returns its path."""
  import numpy as np
  from lossland import io
  from lossland.plots import curvature as curvature_plots
  os.makedirs(out_root, exist_ok=True)
  name = analysis_name(settings)
  staging = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=out_root)
  try:
    with open(os.path.join(staging, "spectra.npz"), "wb") as fh:
      np.savez(fh, **arrays)
    with open(os.path.join(staging, "summary.json"), "w") as fh:
      fh.write(io.dumps(summary, indent=2) + "\n")
    curvature_plots.plot_all(staging, curvature_plots.quadratures(arrays),
                             arrays["loss"], labels)
    return publish(out_root, staging, name,
                   {"method": settings["method"], "at": settings["at"],
                    "members": settings["members_analysed"],
                    "utc": name.split("_")[0]})
  except BaseException:
    import shutil
    shutil.rmtree(staging, ignore_errors=True)
    raise


def main(argv):
  del argv
  o = options.build(HessianOptions, _cli.flag_values(_SPEC))
  if o.x64:
    import jax
    jax.config.update("jax_enable_x64", True)
  out_root = _check_flags(o)

  import jax
  import numpy as np
  # Zero-eigenvalue counts use rtol = N eps(dtype): on a GPU a float32 matmul
  # at the default precision is TF32 (10-bit mantissa), far above that
  # tolerance. "highest" is full float32 there; no change for float64 or CPU.
  jax.config.update("jax_default_matmul_precision", "highest")
  from lossland import nets

  ens = _load(o.run_dir)
  if ens.net.n_out != 1:
    _cli.fail(f"the Hessian script handles scalar-output nets, got n_out={ens.net.n_out}")
  members = _members(o, ens)
  n, dtype = nets.n_params(ens.net), ens.data.x_train.dtype
  cfg = _spectra_config(o, n, dtype)
  method = cfg.method
  res, t_start = _run_spectra(o, ens, members, n, cfg)
  rows = [{"member": k, "seed": int(ens.seeds[k]), **row}
          for k, row in zip(members, res.rows)]
  arrays = dict(res.arrays, seeds=np.array([r["seed"] for r in rows]),
                members=np.array(members))
  settings = {
      "run_dir": os.path.abspath(o.run_dir),
      "at": o.at, "method": method, "members_analysed": members,
      "krylov": cfg.krylov if method == "lanczos" else None,
      "lanczos_steps": o.lanczos_steps if method == "lanczos" else None,
      "num_probes": o.num_probes if method == "lanczos" else None,
      "seed": o.seed, "rtol": o.rtol, "chunk_size": o.chunk_size,
  }
  summary = {
      **settings, "n_params": n, "P": ens.data.P,
      "loss": ens.loss.name, "epsilon": ens.loss.epsilon,
      "subtract_init": ens.subtract_init,
      "x64": bool(jax.config.jax_enable_x64),
      "seconds": time.time() - t_start,
      "members": rows,
  }
  final = _write_analysis(out_root, settings, summary, arrays,
                          [f"seed {r['seed']}" for r in rows])
  _print_table(rows)
  print(final)


def _print_table(rows):
  """One line per member on stdout."""
  cols = ("n_delta", "rank_h0", "n_negative_hp", "n_zero_h", "n_negative_h",
          "trace_h", "n_eff")
  print("member seed loss " + " ".join(cols))
  for r in rows:
    print(f"{r['member']} {r['seed']} {r['loss']:.4g} "
          + " ".join(_fmt(r, c) for c in cols))
  if any(r.get("estimated") for r in rows):
    print("(a+-s: estimate and standard error over probes; unres: weight of "
          "Ritz nodes their residual does not classify; see summary.json "
          "*_interval)")
  elif any(r.get("lanczos_counts") == "full" for r in rows):
    print("(full Krylov: every eigenvalue, exact counts; n[lo..hi]: values "
          "rounding could move across the zero tolerance)")


if __name__ == "__main__":
  _cli.run(main)
