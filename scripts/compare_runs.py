#!/usr/bin/env python
"""Bitwise baseline for refactors: five small runs, before and after a change.

Issue 21 ("rules of the move"): a refactor must not change results. This
script runs five small jobs of the package (the runs in :data:`RUNS`: 14
arrays.npz files, 40 to 80 s on 2 CPU cores once the compilation cache is
warm, minutes without it) and compares every array of their ``arrays.npz``
files bitwise: same set of keys, same dtype, same shape,
``np.array_equal(a, b, equal_nan=True)`` and the same sign of every zero (a
NaN equals any NaN; nothing else may differ).

Two modes::

    # the code at REV (a temporary git worktree) against the current tree
    python scripts/compare_runs.py --ref HEAD [--keep DIR] [--jobs 2]

    # sha256 digests of every array of the five runs (and the versions)
    python scripts/compare_runs.py --record tests/data/bitwise_baseline.json [--at REV]
    python scripts/compare_runs.py --check tests/data/bitwise_baseline.json

``--ref`` prints one line per run (``OK``, or the differing keys with the
largest absolute difference) and exits 0 when every array is equal, 1
otherwise, 2 on bad input (unknown revision, unreadable digest file, ...).
The worktree is removed at the end, also on failure. summary.json numbers are
compared too, but only as notes (``note: ...``): arrays.npz is the contract.

The digests depend on the jax, jaxlib and numpy versions and on the CPU (XLA
compiles for the host's instruction set and splits work over its threads):
``--check`` refuses (exit 2) when the recorded environment differs from the
running one; re-record with ``--record`` on the reference code then.

Every run is a subprocess ``python -m lossland.scripts.<name> ...`` with
``cwd`` and ``PYTHONPATH`` set to the code under test, ``JAX_PLATFORMS=cpu``
and no ``XLA_*``/``JAX_*`` variables of the caller. The package's persistent
compilation cache stays on (``--no_cache`` turns it off): a cached program is
keyed by its HLO, so changed code compiles anew. This file is standalone (not
part of the package); tests/test_bitwise_baseline.py imports it.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent import futures

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMAT = 1

# The five runs. Each is a list of commands (module and arguments after
# ``python -m``); "{out}" is the command's own output directory. A command's
# arrays.npz files are found under it (run directories are named
# <UTC time>_<hash>; the hash includes --out_dir, so it is normalized away).
_TINY_ENSEMBLE = ["--n_seeds", "3", "--plots=false"]
RUNS = {
    # a. the main job (digits parity, Adam, quadratic hinge) at a tiny size
    "ensemble": [
        ["lossland.scripts.ensemble", "--dataset", "digits", "--P", "60", "--d", "8",
         "--n_test", "40", "--depth", "2", "--width", "6", "--max_steps", "400",
         *_TINY_ENSEMBLE, "--out_dir", "{out}"],
    ],
    # b. a phase cell: the phase script's cpu preset protocol (sphere data,
    # d = h, no test set, Adam with step decays to min_lr, jamming only at the
    # last lr level, then the L-BFGS polish; record_unsat as the phase
    # script's cells) at P/N = 1.75, shrunk
    "phase_cell": [
        ["lossland.scripts.ensemble", "--dataset", "sphere", "--d", "5", "--depth", "2",
         "--width", "5", "--P", "96", "--n_test", "0", "--max_steps", "600",
         "--lr", "5e-2", "--schedule", "step", "--decay_every", "150",
         "--decay_factor", "0.1", "--min_lr", "5e-5", "--jam_window", "50",
         "--jam_rtol", "1e-2", "--jam_after_decays", "--optimizer", "adam",
         "--polish", "lbfgs", "--polish_steps", "300", "--polish_jam_window", "50",
         "--polish_jam_rtol", "1e-4", "--record_unsat", *_TINY_ENSEMBLE,
         "--out_dir", "{out}"],
    ],
    # c. the other optimizers as first stage, each polished by L-BFGS (one
    # sweep: a cell per optimizer), and mini-batch momentum with the plateau
    # schedule (the polish is full batch only)
    "optimizers": [
        ["lossland.scripts.sweep", "--out_dir", "{out}", "--dataset", "sphere",
         "--P", "40", "--d", "5", "--depth", "2", "--width", "5", "--n_seeds", "2",
         "--max_steps", "300", "--lr", "0.05",
         "--optimizer", "sgd,momentum,gradient_flow,fire,lbfgs",
         "--polish", "lbfgs", "--polish_steps", "100", "--plots=false"],
        ["lossland.scripts.ensemble", "--dataset", "sphere", "--P", "40", "--d", "5",
         "--depth", "2", "--width", "5", "--optimizer", "momentum", "--lr", "0.02",
         "--batch_size", "10", "--check_every", "25", "--schedule", "plateau",
         "--plateau_patience", "50", "--jam_window", "200", "--decay_factor", "0.5",
         "--max_steps", "400",
         *_TINY_ENSEMBLE, "--out_dir", "{out}"],
    ],
    # d. a generalization study (widths across N*, label noise, the authors'
    # net, Adam with decays then the polish, NTK, kernel flow, fits)
    "generalization": [
        ["lossland.scripts.generalization", "--preset=none", "--dataset=digits",
         "--P=40", "--d=4", "--n_test=30", "--depth=1", "--widths=1,3,6,9", "--n_seeds=2",
         "--max_steps=200", "--n_ntk=4", "--n_boot=5", "--plots=false",
         "--label_noise=0.1", "--data_seed=3", "--polish=lbfgs", "--polish_steps=50",
         "--net=authors", "--decay_every=100", "--jam_window=50",
         "--kernel_max_steps=100", "--out_dir={out}"],
    ],
    # e. the landscape explorer (basin-hopping, DNEB + eigenvector-following)
    "landscape": [
        ["lossland.scripts.landscape", "--depth", "1", "--n_data", "20", "--d", "3",
         "--n_classes", "3", "--width", "2", "--n_test", "20", "--bh_chains", "2",
         "--bh_steps", "5", "--connect_budget", "3", "--out_dir", "{out}"],
    ],
}

_RUN_NAME = re.compile(r"^\d{8}T\d+Z_[0-9a-f]+$")
_TIMING_KEY = re.compile(r"(wall|seconds|elapsed|time)", re.I)
_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw",
              "avx512vl", "avx512cd", "avx512_vnni", "avx512_bf16", "avx512_fp16",
              "amx_tile", "amx_bf16", "sve", "asimd")


class BadInput(Exception):
  """The user's to fix: exit status 2."""


class RunFailed(Exception):
  """A run's command exited with a non-zero status."""


# --------------------------------------------------------------------------
# Environment


def _cpu_info():
  model, flags, ident = None, set(), {}
  try:
    with open("/proc/cpuinfo") as fh:
      for line in fh:
        k, _, v = line.partition(":")
        k = k.strip().lower()
        if k in ("model name", "cpu model", "hardware") and model is None:
          model = v.strip()
        elif k in ("flags", "features") and not flags:
          flags = set(v.split())
        elif k in ("cpu family", "model", "stepping") and k not in ident:
          ident[k] = v.strip()
  except OSError:
    pass
  # A virtual machine may name every generation "AMD EPYC": the family, model
  # and stepping numbers tell them apart (BLAS kernels are chosen by them).
  ident = "/".join(ident.get(k, "?") for k in ("cpu family", "model", "stepping"))
  return (model or platform.processor() or None,
          sorted(f for f in _ISA_FLAGS if f in flags), ident)


def _blas_info() -> list:
  """numpy's own BLAS and the kernel set it picked (the PCA of the real data
  sets is a LAPACK SVD: its last bits depend on it). Only the library under
  numpy's install: scipy brings its own, loaded or not depending on what the
  calling process imported before."""
  try:
    import threadpoolctl
  except ImportError:  # pragma: no cover (scikit-learn brings it)
    return []
  root = os.path.dirname(os.path.dirname(np.__file__))
  return sorted(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}"
                for i in threadpoolctl.threadpool_info()
                if i.get("user_api") == "blas"
                and os.path.basename(os.path.dirname(i.get("filepath", ""))) in ("numpy.libs",
                                                                                  "numpy")
                and os.path.dirname(os.path.dirname(i.get("filepath", ""))) == root)


def environment() -> dict:
  """What the digests depend on: versions, machine, CPU model and threads."""
  import jax
  import jaxlib
  model, isa, ident = _cpu_info()
  try:
    n_cpus = len(os.sched_getaffinity(0))
  except AttributeError:  # pragma: no cover (not Linux)
    n_cpus = os.cpu_count()
  return {
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "numpy": np.__version__,
      "machine": platform.machine(),
      "cpu_model": model,
      "cpu_isa": isa,
      "cpu_id": ident,
      "blas": _blas_info(),
      "n_cpus": n_cpus,
  }


def environment_differences(recorded: dict, current: dict) -> list:
  """``name: recorded X, running Y`` for every entry that differs."""
  out = []
  for k in sorted(set(recorded) | set(current)):
    if recorded.get(k) != current.get(k):
      out.append(f"{k}: recorded {recorded.get(k)!r}, running {current.get(k)!r}")
  return out


# --------------------------------------------------------------------------
# Running


def _env(code_dir: str, cache: bool) -> dict:
  env = {k: v for k, v in os.environ.items()
         if not (k.startswith("XLA_") or k.startswith("JAX_") or k == "PYTHONPATH")}
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = code_dir
  env["PYTHONHASHSEED"] = "0"
  if not cache:
    env["LOSSLAND_COMPILATION_CACHE"] = "0"
  return env


def check_code_dir(code_dir: str, cache: bool = True):
  """Raises RunFailed unless ``import lossland`` in a run's environment loads ``code_dir``'s."""
  res = subprocess.run([sys.executable, "-c", "import lossland; print(lossland.__file__)"],
                       cwd=code_dir, env=_env(code_dir, cache), capture_output=True,
                       text=True)
  got = res.stdout.strip()
  want = os.path.realpath(os.path.join(code_dir, "lossland"))
  if res.returncode or os.path.dirname(os.path.realpath(got)) != want:
    raise RunFailed(f"import lossland with PYTHONPATH={code_dir} gave {got!r} "
                    f"(want {want}/__init__.py): {res.stderr.strip()[-500:]}")


def run_one(name: str, code_dir: str, out_dir: str, cache: bool = True,
            runs: dict = RUNS) -> float:
  """Runs the commands of run ``name`` with ``code_dir``'s code into ``out_dir``.

  Command i writes into ``out_dir/<i>/``; its stdout and stderr go to
  ``out_dir/<i>.log``. Returns the wall time in seconds; raises RunFailed
  (with the log's tail) when a command fails.
  """
  t0 = time.time()
  os.makedirs(out_dir, exist_ok=True)
  for i, cmd in enumerate(runs[name]):
    out = os.path.join(out_dir, str(i))
    args = [a.replace("{out}", out) for a in cmd]
    log = os.path.join(out_dir, f"{i}.log")
    with open(log, "w") as fh:
      rc = subprocess.run([sys.executable, "-m", *args], cwd=code_dir,
                          env=_env(code_dir, cache), stdout=fh,
                          stderr=subprocess.STDOUT).returncode
    if rc:
      with open(log) as fh:
        tail = fh.read()[-2000:]
      raise RunFailed(f"{name}: `python -m {' '.join(args)}` (cwd {code_dir}) "
                      f"exited {rc}; log {log}:\n{tail}")
  return time.time() - t0


def run_all(code_dir: str, out_root: str, names=None, cache: bool = True, jobs: int = 1,
            runs: dict = RUNS, say=None) -> dict:
  """Runs every run (``names``, default all) into ``out_root/<name>``; name -> seconds."""
  names = list(names or runs)
  say = say or (lambda s: None)

  def one(name):
    s = run_one(name, code_dir, os.path.join(out_root, name), cache, runs)
    say(f"  ran {name} in {s:.1f} s ({code_dir})")
    return s
  if jobs <= 1:
    return {n: one(n) for n in names}
  with futures.ThreadPoolExecutor(jobs) as ex:
    return dict(zip(names, ex.map(one, names)))


# --------------------------------------------------------------------------
# Finding and comparing arrays


def find_arrays(run_dir: str) -> dict:
  """Normalized relative path -> path of every arrays.npz under ``run_dir``.

  Run-directory names (<UTC time>_<hash>) become ``RUN`` (``RUN.1``, ... in
  time order when a folder holds several); hidden folders (staging,
  checkpoints) are skipped.
  """
  found = []
  for root, dirs, files in os.walk(run_dir):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    if "arrays.npz" in files:
      found.append(os.path.relpath(os.path.join(root, "arrays.npz"), run_dir))
  out = {}
  for rel in sorted(found):
    parts = rel.split(os.sep)
    norm = "/".join("RUN" if _RUN_NAME.match(p) else p for p in parts)
    key, n = norm, 0
    while key in out:
      n += 1
      key = f"{norm}.{n}"
    out[key] = os.path.join(run_dir, rel)
  return out


def load_npz(path: str) -> dict:
  with np.load(path, allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> str:
  if a.dtype == bool:
    return f"{int(np.sum(a != b))} of {a.size} differ"
  if not (np.issubdtype(a.dtype, np.number)):
    return f"{int(np.sum(a != b))} of {a.size} differ"
  fa, fb = a.astype(np.float64, copy=False), b.astype(np.float64, copy=False)
  both_nan = np.isnan(fa) & np.isnan(fb)
  nan_mismatch = int(np.sum(np.isnan(fa) != np.isnan(fb)))
  with np.errstate(invalid="ignore", over="ignore"):
    d = np.abs(fa - fb)
  d = np.where(both_nan | (fa == fb), 0.0, d)
  finite = d[np.isfinite(d)]
  n = int(np.sum(~((fa == fb) | both_nan)))
  msg = f"max abs diff {finite.max() if finite.size else 0.0:.3g}, {n} of {a.size} differ"
  if nan_mismatch:
    msg += f", NaN in one only at {nan_mismatch}"
  return msg


def compare_arrays(a: dict, b: dict) -> list:
  """Differences between two dicts of arrays (``a``: reference, ``b``: new); [] if equal."""
  out = []
  for k in sorted(set(a) - set(b)):
    out.append(f"{k}: only in the reference")
  for k in sorted(set(b) - set(a)):
    out.append(f"{k}: only in the new run")
  for k in sorted(set(a) & set(b)):
    x, y = np.asarray(a[k]), np.asarray(b[k])
    if x.dtype != y.dtype:
      out.append(f"{k}: dtype {x.dtype} vs {y.dtype}")
    elif x.shape != y.shape:
      out.append(f"{k}: shape {x.shape} vs {y.shape}")
    elif not np.array_equal(x, y, equal_nan=(x.dtype.kind in "fc")):
      out.append(f"{k}: {_max_abs_diff(x, y)}")
    elif x.dtype.kind == "f":
      # array_equal takes -0.0 == 0.0; bitwise they differ (NaN payloads do not count)
      n = int(np.sum((np.signbit(x) != np.signbit(y)) & ~np.isnan(x)))
      if n:
        out.append(f"{k}: sign of zero differs at {n} of {x.size}")
  return out


def compare_npz(path_a: str, path_b: str) -> list:
  return compare_arrays(load_npz(path_a), load_npz(path_b))


def compare_run_dirs(dir_a: str, dir_b: str) -> list:
  """Differences between the arrays.npz files of two output folders of one run."""
  fa, fb = find_arrays(dir_a), find_arrays(dir_b)
  out = []
  if not fa and not fb:
    return ["no arrays.npz on either side"]
  for rel in sorted(set(fa) - set(fb)):
    out.append(f"{rel}: only in the reference")
  for rel in sorted(set(fb) - set(fa)):
    out.append(f"{rel}: only in the new run")
  for rel in sorted(set(fa) & set(fb)):
    out.extend(f"{rel}: {d}" for d in compare_npz(fa[rel], fb[rel]))
  return out


def _numbers(obj, prefix=""):
  """Flattened {path: number or string} of a summary.json, timings left out."""
  out = {}
  if isinstance(obj, dict):
    for k, v in obj.items():
      if _TIMING_KEY.search(str(k)):
        continue
      out.update(_numbers(v, f"{prefix}{k}."))
  elif isinstance(obj, list):
    for i, v in enumerate(obj):
      out.update(_numbers(v, f"{prefix}{i}."))
  else:
    out[prefix[:-1]] = obj
  return out


def compare_summaries(dir_a: str, dir_b: str) -> list:
  """Differing values of the entries both summary.json files have (notes only)."""
  def find(d):
    return {rel[:-len("arrays.npz")] + "summary.json": os.path.join(os.path.dirname(p),
                                                                    "summary.json")
            for rel, p in find_arrays(d).items()
            if os.path.exists(os.path.join(os.path.dirname(p), "summary.json"))}
  sa, sb = find(dir_a), find(dir_b)
  out = []
  for rel in sorted(set(sa) & set(sb)):
    with open(sa[rel]) as fh:
      na = _numbers(json.load(fh))
    with open(sb[rel]) as fh:
      nb = _numbers(json.load(fh))
    diff = [k for k in sorted(set(na) & set(nb)) if na[k] != nb[k]
            and not (isinstance(na[k], float) and isinstance(nb[k], float)
                     and np.isnan(na[k]) and np.isnan(nb[k]))]
    if diff:
      out.append(f"{rel}: {len(diff)} value(s) differ, e.g. "
                 + "; ".join(f"{k} {na[k]!r} vs {nb[k]!r}" for k in diff[:3]))
  return out


# --------------------------------------------------------------------------
# Digests


def array_digest(x: np.ndarray) -> str:
  """sha256 of the dtype, the shape and the bytes (C order) of an array (NaNs made one NaN)."""
  x = np.asarray(x)
  if x.dtype.kind in "fc" and np.isnan(x).any():  # NaNs equal NaNs: one canonical NaN
    x = np.where(np.isnan(x), np.array(np.nan, dtype=x.dtype), x)
  h = hashlib.sha256()
  h.update(x.dtype.str.encode())
  h.update(repr(tuple(x.shape)).encode())
  h.update(np.ascontiguousarray(x).tobytes())
  return h.hexdigest()


def run_digests(run_dir: str) -> dict:
  """{normalized path of each arrays.npz: {key: digest}} of one run's output."""
  return {rel: {k: array_digest(v) for k, v in sorted(load_npz(p).items())}
          for rel, p in find_arrays(run_dir).items()}


def digest_record(out_root: str, seconds: dict, runs: dict = RUNS) -> dict:
  """The JSON object ``--record`` writes, from the runs under ``out_root``."""
  return {
      "format": FORMAT,
      "what": "sha256 of dtype+shape+bytes of every array of the arrays.npz files "
              "of the runs of scripts/compare_runs.py (issue 21: bitwise baseline)",
      "environment": environment(),
      "runs": {name: {"commands": runs[name], "seconds": round(seconds.get(name, 0.0), 1),
                      "arrays": run_digests(os.path.join(out_root, name))}
               for name in seconds},
  }


def compare_digests(recorded: dict, current: dict) -> dict:
  """run name -> list of differences (recorded vs current digest records)."""
  out = {}
  rr, cr = recorded.get("runs", {}), current.get("runs", {})
  for name in sorted(set(rr) | set(cr)):
    if name not in cr:
      out[name] = ["recorded, not run now"]
      continue
    if name not in rr:
      out[name] = ["not in the record"]
      continue
    diffs = []
    if rr[name].get("commands") != cr[name].get("commands"):
      diffs.append("the run's commands changed since the record (re-record)")
    ra, ca = rr[name]["arrays"], cr[name]["arrays"]
    for rel in sorted(set(ra) - set(ca)):
      diffs.append(f"{rel}: recorded, not written now")
    for rel in sorted(set(ca) - set(ra)):
      diffs.append(f"{rel}: written now, not recorded")
    for rel in sorted(set(ra) & set(ca)):
      a, b = ra[rel], ca[rel]
      for k in sorted(set(a) - set(b)):
        diffs.append(f"{rel}: {k}: only in the record")
      for k in sorted(set(b) - set(a)):
        diffs.append(f"{rel}: {k}: only in the new run")
      for k in sorted(set(a) & set(b)):
        if a[k] != b[k]:
          diffs.append(f"{rel}: {k}: digest differs")
    out[name] = diffs
  return out


# --------------------------------------------------------------------------
# Modes


def _git(*args, cwd=REPO, check=True):
  return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                        check=check)


@contextlib.contextmanager
def worktree(rev: str):
  """A temporary detached ``git worktree`` of ``rev``; yields (path, commit); removed at the end."""
  res = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
  if res.returncode:
    raise BadInput(f"{rev}: not a commit of {REPO}")
  commit = res.stdout.strip()
  parent = tempfile.mkdtemp(prefix="compare_runs_tree_")
  tree = os.path.join(parent, "ref")
  try:
    res = _git("worktree", "add", "--detach", tree, commit, check=False)
    if res.returncode:
      raise RunFailed(f"git worktree add {tree} {commit}: {res.stderr.strip()}")
    yield tree, commit
  finally:
    res = _git("worktree", "remove", "--force", tree, check=False)
    if res.returncode and os.path.exists(os.path.join(REPO, ".git")):
      print(f"warning: git worktree remove --force {tree}: {res.stderr.strip()} "
            "(git worktree prune clears a stale entry)", file=sys.stderr)
    shutil.rmtree(parent, ignore_errors=True)


def _out_root(keep):
  if keep:
    if os.path.exists(keep) and (not os.path.isdir(keep) or os.listdir(keep)):
      raise BadInput(f"--keep {keep}: exists and is not an empty folder")
    os.makedirs(keep, exist_ok=True)
    return os.path.abspath(keep)
  return tempfile.mkdtemp(prefix="compare_runs_")


def report(ref_root: str, new_root: str, t_ref: dict, t_new: dict, out=None) -> bool:
  """Prints one line per run (OK, or DIFFERENT and the differences); True if all equal."""
  out = out or sys.stdout
  all_ok = True
  for name in t_ref:
    a, b = os.path.join(ref_root, name), os.path.join(new_root, name)
    diffs = compare_run_dirs(a, b)
    times = f"({t_ref[name]:.1f} s / {t_new.get(name, 0.0):.1f} s)"
    if diffs:
      all_ok = False
      print(f"{name}: DIFFERENT {times}", file=out)
      for d in diffs:
        print(f"  {d}", file=out)
    else:
      files = find_arrays(a).values()
      n_keys = sum(len(load_npz(p)) for p in files)
      print(f"{name}: OK, {len(files)} arrays.npz, {n_keys} arrays bitwise equal {times}",
            file=out)
    for note in compare_summaries(a, b):
      print(f"  note: summary.json {note}", file=out)
  print("all runs bitwise equal" if all_ok else "runs differ", file=out)
  return all_ok


def mode_ref(ref: str, keep: str | None, cache: bool, jobs: int, names) -> int:
  root = _out_root(keep)
  try:
    with worktree(ref) as (tree, commit):
      print(f"reference: {ref} = {commit[:12]} (worktree {tree}); new: {REPO} "
            f"(working tree, uncommitted changes included); outputs in {root}", flush=True)
      for d in (tree, REPO):
        check_code_dir(d, cache)
      say = lambda s: print(s, flush=True)
      ref_root, new_root = os.path.join(root, "ref"), os.path.join(root, "new")
      if jobs > 1:  # the two sides side by side
        with futures.ThreadPoolExecutor(2) as ex:
          fr = ex.submit(run_all, tree, ref_root, names, cache, 1, RUNS, say)
          fn = ex.submit(run_all, REPO, new_root, names, cache, 1, RUNS, say)
          t_ref, t_new = fr.result(), fn.result()
      else:
        t_ref = run_all(tree, ref_root, names, cache, 1, RUNS, say)
        t_new = run_all(REPO, new_root, names, cache, 1, RUNS, say)
    all_ok = report(ref_root, new_root, t_ref, t_new)
    return 0 if all_ok else 1
  finally:
    if not keep:
      shutil.rmtree(root, ignore_errors=True)


def describe_code(code_dir: str) -> str:
  """``<commit>`` of a checkout, ``+ uncommitted changes`` when lossland/ has any."""
  head = _git("rev-parse", "HEAD", cwd=code_dir, check=False).stdout.strip() or "?"
  dirty = _git("status", "--porcelain", "--", "lossland", cwd=code_dir,
               check=False).stdout.strip()
  return head + (" + uncommitted changes in lossland/" if dirty else "")


def load_record(path: str, flag: str = "--check") -> dict:
  """A digest file, or BadInput."""
  try:
    with open(path) as fh:
      recorded = json.load(fh)
    if not isinstance(recorded, dict) or recorded.get("format") != FORMAT:
      raise ValueError(f"not a digest file of format {FORMAT}")
    if not isinstance(recorded.get("environment"), dict) or not isinstance(
        recorded.get("runs"), dict):
      raise ValueError("no environment or runs")
  except (OSError, ValueError) as e:
    raise BadInput(f"{flag} {path}: {e}") from None
  return recorded


def record_command(path: str) -> str:
  return f"python scripts/compare_runs.py --record {path} [--at REV of the reference code]"


def mode_record_or_check(path: str, check: bool, at: str | None, keep: str | None,
                         cache: bool, jobs: int, names) -> int:
  if check:
    recorded = load_record(path)
    diff = environment_differences(recorded["environment"], environment())
    if diff:
      raise BadInput(f"--check {path}: recorded in another environment ({'; '.join(diff)}); "
                     f"re-record with {record_command(path)}")
  else:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
      raise BadInput(f"--record {path}: folder {parent} does not exist")
  root = _out_root(keep)
  say = lambda s: print(s, flush=True)
  try:
    with (worktree(at) if at else contextlib.nullcontext((REPO, None))) as (code, _):
      check_code_dir(code, cache)
      what = describe_code(code)
      print(f"code: {code} ({what}); outputs in {root}", flush=True)
      seconds = run_all(code, root, names, cache, jobs, RUNS, say)
    current = digest_record(root, seconds)
    current["code"] = what
    if not check:
      with open(path, "w") as fh:
        json.dump(current, fh, indent=1, sort_keys=True)
        fh.write("\n")
      n = sum(len(v) for r in current["runs"].values() for v in r["arrays"].values())
      print(f"recorded {n} array digests of {len(seconds)} runs into {path}")
      return 0
    all_ok = True
    for name, diffs in compare_digests(recorded, current).items():
      if names and name not in names:
        continue
      if diffs:
        all_ok = False
        print(f"{name}: DIFFERENT ({seconds.get(name, 0.0):.1f} s)")
        for d in diffs:
          print(f"  {d}")
      else:
        print(f"{name}: OK ({seconds[name]:.1f} s)")
    print(f"all runs bitwise equal to the record ({recorded.get('code', '?')})" if all_ok
          else f"runs differ from the record ({recorded.get('code', '?')})")
    return 0 if all_ok else 1
  finally:
    if not keep:
      shutil.rmtree(root, ignore_errors=True)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
      description="Bitwise comparison of the arrays.npz of five small runs "
                  "(issue 21: a refactor must not change results).")
  g = p.add_mutually_exclusive_group(required=True)
  g.add_argument("--ref", help="git revision to compare the current tree with (worktree)")
  g.add_argument("--record", metavar="FILE", help="write the array digests into FILE")
  g.add_argument("--check", metavar="FILE", help="compare the array digests with FILE")
  p.add_argument("--at", metavar="REV",
                 help="--record/--check: run the code of REV (a worktree), not the current tree")
  p.add_argument("--keep", metavar="DIR", help="keep the run outputs in DIR (new or empty)")
  p.add_argument("--runs", help=f"comma list, a subset of {','.join(RUNS)} (default all)")
  p.add_argument("--jobs", type=int, default=1,
                 help="processes at a time (--ref: 2 runs the two sides side by side)")
  p.add_argument("--no_cache", action="store_true",
                 help="turn off the package's persistent compilation cache")
  try:
    a = p.parse_args(argv)
  except SystemExit as e:
    return 0 if e.code == 0 else 2
  names = None
  try:
    if a.runs:
      names = [n for n in a.runs.split(",") if n]
      bad = [n for n in names if n not in RUNS]
      if bad or not names:
        raise BadInput(f"--runs: unknown {','.join(bad) or '(empty)'}; "
                       f"choose from {','.join(RUNS)}")
    if a.jobs < 1:
      raise BadInput(f"--jobs must be >= 1, got {a.jobs}")
    if a.ref:
      if a.at:
        raise BadInput("--at goes with --record or --check, not --ref")
      return mode_ref(a.ref, a.keep, not a.no_cache, a.jobs, names)
    return mode_record_or_check(a.record or a.check, bool(a.check), a.at, a.keep,
                                not a.no_cache, a.jobs, names)
  except BadInput as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except RunFailed as e:
    print(f"error: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
