r"""Benchmarks: ratios measured side by side in one process.

    python -m lossland.scripts.bench ensemble  --out_dir DIR [--quick | --full]
    python -m lossland.scripts.bench hessian   --out_dir DIR [--quick]
    python -m lossland.scripts.bench landscape --out_dir DIR [--quick]
    python -m lossland.scripts.bench step      --out_dir DIR [--quick]

Each prints a table and writes ``DIR/summary.json`` (plus a config.json with
the library versions and the device). ``--quick`` shrinks the sizes for a
smoke test; the numbers in BUILD_NOTES.md come from full runs.
"""
import importlib
import os
import sys

from absl import flags

from lossland.scripts import _cli

BENCHMARKS = {
    "ensemble": "lossland.scripts.bench_ensemble",
    "hessian": "lossland.scripts.bench_hessian",
    "landscape": "lossland.scripts.bench_landscape",
    "step": "lossland.scripts.bench_step",
}

_OUT_DIR = flags.DEFINE_string("out_dir", None, "Directory for summary.json (created).")
_QUICK = flags.DEFINE_boolean("quick", False, "Small sizes, for a smoke test.")
_X64 = flags.DEFINE_boolean("x64", False, "Benchmark in float64 (ensemble benchmark).")
_FULL = flags.DEFINE_boolean("full", False, "Ensemble benchmark: every size and ensemble size "
                             "(the long version; the default takes a few minutes).")


def main(argv):
  if len(argv) != 2 or argv[1] not in BENCHMARKS:
    raise _cli.UsageError(
        f"usage: python -m lossland.scripts.bench {{{','.join(BENCHMARKS)}}} "
        f"--out_dir DIR (got {' '.join(argv[1:]) or 'no benchmark name'})")
  if not _OUT_DIR.value:
    raise _cli.UsageError("--out_dir is required")
  if _FULL.value and argv[1] != "ensemble":
    raise _cli.UsageError(f"--full applies to the ensemble benchmark only, not {argv[1]}")
  if os.path.exists(_OUT_DIR.value) and not os.path.isdir(_OUT_DIR.value):
    raise _cli.UsageError(f"--out_dir {_OUT_DIR.value} exists and is not a directory")
  import jax
  if _X64.value:
    jax.config.update("jax_enable_x64", True)
  os.makedirs(_OUT_DIR.value, exist_ok=True)
  module = importlib.import_module(BENCHMARKS[argv[1]])
  from lossland import io
  with open(os.path.join(_OUT_DIR.value, "config.json"), "w") as fh:
    fh.write(io.dumps({"benchmark": argv[1], "quick": _QUICK.value,
                       "argv": sys.argv, "environment": io.environment()}, indent=2))
  kw = {"full": True} if _FULL.value and argv[1] == "ensemble" else {}
  summary = module.run_benchmark(out_dir=_OUT_DIR.value, quick=_QUICK.value, **kw)
  print(f"summary: {os.path.join(_OUT_DIR.value, 'summary.json')}")
  return 0 if summary is not None else 1


if __name__ == "__main__":
  _cli.run(main)
