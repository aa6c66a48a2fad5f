r"""Benchmarks: ratios measured side by side in one process.

    python -m lossland.scripts.bench ensemble  --out_dir DIR [--quick | --full]
    python -m lossland.scripts.bench hessian   --out_dir DIR [--quick]
    python -m lossland.scripts.bench landscape --out_dir DIR [--quick]
    python -m lossland.scripts.bench step      --out_dir DIR [--quick]
    python -m lossland.scripts.bench stationarity --out_dir DIR [--quick]
    python -m lossland.scripts.bench finish    --out_dir DIR [--quick]

Each prints a table and writes ``DIR/summary.json`` (plus a config.json with
the library versions and the device). ``--quick`` shrinks the sizes for a
smoke test; the numbers in BUILD_NOTES.md come from full runs.
"""
import dataclasses
import importlib
import os
import sys


from lossland.experiments import options
from lossland.experiments.options import option
from lossland.scripts import _cli

BENCHMARKS = {
    "ensemble": "lossland.scripts.bench_ensemble",
    "hessian": "lossland.scripts.bench_hessian",
    "landscape": "lossland.scripts.bench_landscape",
    "step": "lossland.scripts.bench_step",
    "stationarity": "lossland.scripts.bench_stationarity",
    "finish": "lossland.scripts.bench_finish",
}

@dataclasses.dataclass(frozen=True)
class BenchOptions:
  """The options of every benchmark (each field is the flag of the same name)."""
  out_dir: str | None = option(None, "Directory for summary.json (created).")
  quick: bool = option(False, "Small sizes, for a smoke test.")
  x64: bool = option(False, "Benchmark in float64 (ensemble benchmark).")
  full: bool = option(False, "Ensemble benchmark: every size and ensemble size (the long "
                      "version; the default takes a few minutes).")


_OPTIONS = BenchOptions
_SPEC = options.spec_of(BenchOptions)
_cli.define_flags(_SPEC, __name__)


def main(argv):
  o = _OPTIONS(**_cli.flag_values(_SPEC))
  if len(argv) != 2 or argv[1] not in BENCHMARKS:
    raise _cli.UsageError(
        f"usage: python -m lossland.scripts.bench {{{','.join(BENCHMARKS)}}} "
        f"--out_dir DIR (got {' '.join(argv[1:]) or 'no benchmark name'})")
  if not o.out_dir:
    raise _cli.UsageError("--out_dir is required")
  if o.full and argv[1] != "ensemble":
    raise _cli.UsageError(f"--full applies to the ensemble benchmark only, not {argv[1]}")
  if os.path.exists(o.out_dir) and not os.path.isdir(o.out_dir):
    raise _cli.UsageError(f"--out_dir {o.out_dir} exists and is not a directory")
  import jax
  if o.x64:
    jax.config.update("jax_enable_x64", True)
  os.makedirs(o.out_dir, exist_ok=True)
  module = importlib.import_module(BENCHMARKS[argv[1]])
  from lossland import io
  with open(os.path.join(o.out_dir, "config.json"), "w") as fh:
    fh.write(io.dumps({"benchmark": argv[1], "quick": o.quick,
                       "argv": sys.argv, "environment": io.environment()}, indent=2))
  kw = {"full": True} if o.full and argv[1] == "ensemble" else {}
  summary = module.run_benchmark(out_dir=o.out_dir, quick=o.quick, **kw)
  print(f"summary: {os.path.join(o.out_dir, 'summary.json')}")
  return 0 if summary is not None else 1


if __name__ == "__main__":
  _cli.run(main)
