r"""The ensemble job as a library function: options, validation, one call.

``python -m lossland.scripts.ensemble`` is a thin command line over this
module, and sweeps (or any script) run ensemble cells in-process with the
same options and the same run directories, without flag collisions::

    import jax
    jax.config.update("jax_enable_x64", True)   # the caller's choice (x64)
    from lossland.experiments import job
    run_dir, summary = job.run_ensemble_job({"P": 200, "n_seeds": 4})

:class:`JobOptions` lists every option once, a dataclass field each (default,
help, choices); :data:`SPEC` holds its rows, from which the command-line
flags are generated (``_cli.define_flags``).
:func:`validate` fills defaults and rejects bad values with a one-line
:class:`JobError` naming the option. :func:`run_ensemble_job` builds the data
and configs, trains with a resumable checkpoint under ``out_dir``, writes the
run directory ``<out_dir>/ensemble/<UTC time>_<hash>/`` (config.json,
metrics.jsonl, arrays.npz, summary.json, figures), prints the member table and
returns ``(run_dir, summary)``.

Label noise (``label_noise``) flips exactly round(label_noise * P) training
labels (never test labels), drawn with
``data.label_noise_key(jax.random.key(data_seed))`` (the same draw as
``data.make_dataset(..., key=jax.random.key(data_seed), label_noise=...)``);
summary.json records ``label_noise`` and ``n_labels_flipped``, arrays.npz the
mask ``label_flipped`` [P] (noisy runs only). The polish stage (``polish``)
saves its own histories as ``polish_history_*`` besides the first stage's
``history_*`` (:func:`polish_arrays`; the keys are listed in docs/data.md).

Members are classified by :func:`lossland.observables.member_classes`; the
headline numbers (mean and ensemble test error, output variance, mean train
error and loss, jammed counts) are over the *healthy* members (neither
diverged nor dead); the others are counted and listed separately.

This module never calls ``jax.config``: float64 must be switched on by the
caller when ``x64`` is true (the script does it from ``--x64``).
"""
import dataclasses
import hashlib
import math
import os
import sys
import time
from typing import Any, NamedTuple

from lossland import io
from lossland.experiments import options
from lossland.experiments.options import Option, option  # noqa: F401 (job.Option: the rows of SPEC)


class JobError(io.InputError):
  """Bad input to the job (an option, a size, a file, an out_dir): the user's to fix."""


@dataclasses.dataclass(frozen=True)
class JobOptions:
  """Every option of the ensemble job, once: a field per option (its default,
  and its help and choices as metadata, :func:`lossland.experiments.options.option`).
  The command-line flags of ``python -m lossland.scripts.ensemble`` are generated
  from these fields (:data:`SPEC`); the job itself takes a dict of them
  (:func:`validate`), which sweeps store as JSON cells.
  """
  dataset: str = option(
      "digits", "Training data (labels +-1, inputs on the sphere of radius sqrt(d)).",
      ("digits", "sphere", "teacher", "npz", "mnist", "fashion_mnist", "cifar10"))
  data_file: str | None = option(
      None, ".npz with x_train, y_train[, x_test, y_test] for --dataset npz.")
  data_dir: str | None = option(
      None, "Folder of the image data sets (mnist, fashion_mnist, cifar10; default: "
      "lossland.data.default_data_dir()).")
  classes: str | None = option(
      None, "Binary task of real data: 'parity' or two groups such as '0-4/5-9' (default:"
      " parity; 0-4/5-9 for fashion_mnist and cifar10).")
  split: str | None = option(
      None, "Real data: 'official' train/test split or 'pooled' and re-split (default: "
      "official for the image data sets, pooled for digits and npz).",
      ("official", "pooled"))
  P: int = option(400, "Number of training points.")
  d: int = option(16, "Input dimension (PCA components for real data).")
  n_test: int | None = option(
      None, "Test points (default: all remaining real data; P for synthetic data).")
  noverify_data: bool = option(
      False, "Accept image data files whose checksum differs from the official one.")
  data_seed: int = option(0, "Seed of synthetic data sets and of the label noise.")
  label_noise: float = option(
      0.0, "Fraction of the TRAINING labels flipped, in [0, 0.5): exactly "
      "round(label_noise * P) of them, drawn with "
      "lossland.data.label_noise_key(jax.random.key(data_seed)); the test labels "
      "stay clean.")
  teacher_depth: int = option(0, "Hidden layers of the teacher (0: perceptron).")
  teacher_width: int = option(32, "Width of the teacher's hidden layers.")
  depth: int = option(3, "Number of hidden layers L.")
  width: int = option(12, "Hidden width h (ignored if --N is given).")
  N: int | None = option(None, "Target number of weights; sets the width h.")
  activation: str = option("relu", "Hidden activation.", ("relu", "tanh", "softplus"))
  parametrization: str = option("ntk", "NTK or standard parametrization.", ("ntk", "standard"))
  init: str = option(
      "normal", "Weight initialization (orthogonal_gain1: the authors' nn_jamming init, "
      "orthogonal with gain 1).",
      ("normal", "orthogonal", "orthogonal_gain1"))
  normalize_activation: bool = option(
      True, "Divide the activation by sqrt(E[phi(z)^2]) (relu*sqrt2); "
      "--nonormalize_activation runs the authors' forward pass.")
  bias: bool = option(False, "Use biases (zero at init).")
  alpha: float = option(1.0, "Output scale alpha.")
  subtract_init: bool = option(False, "Train f(w) - f(w0).")
  alpha_loss: bool = option(
      False, "Divide the loss by alpha^2 (1906.08034: lazy vs feature training; changes "
      "gradient-descent dynamics, not Adam's).")
  loss: str = option(
      "quadratic_hinge", "Per-example loss of Delta = margin - y f.",
      ("quadratic_hinge", "hinge", "soft_hinge", "logistic", "squared"))
  margin: float | None = option(
      None, "Margin epsilon (default: 1 for hinges and squared, 0 for logistic).")
  optimizer: str = option(
      "adam", "Optimizer (gradient_flow: adaptive-step Euler of the gradient flow; fire: "
      "FIRE, Bitzek 2006; lbfgs: L-BFGS with a weak-Wolfe line search).",
      ("adam", "sgd", "momentum", "gradient_flow", "fire", "lbfgs"))
  lr: float = option(0.01, "Learning rate.")
  momentum: float = option(0.9, "Momentum (--optimizer momentum).")
  schedule: str = option("constant", "Learning-rate schedule.", ("constant", "step", "plateau"))
  decay_every: int = option(250_000, "Steps between decays (--schedule step).")
  decay_factor: float = option(0.1, "Decay factor (step and plateau schedules).")
  plateau_patience: int = option(1000, "Steps per plateau test.")
  min_lr: float = option(1e-07, "Learning-rate floor.")
  max_steps: int = option(20_000, "Maximum number of steps.")
  batch_size: int = option(0, "Mini-batch size (0: full batch).")
  check_every: int = option(100, "Full-set stop checks every this many steps (mini-batch).")
  jam_window: int = option(2000, "Jamming rule: window in steps.")
  jam_rtol: float = option(
      0.001, "Jamming rule: relative decrease of the best loss below which a window counts"
      " as stalled.")
  jam_after_decays: bool = option(
      False, "Jamming rule with --schedule step: stop jammed only at the last lr level "
      "(min_lr or past the last decay; a stall at a larger lr is Adam's noise "
      "floor, not a minimum).")
  polish: str = option(
      "none", "After training, continue every member that did not stop sat (or diverged) "
      "with this optimizer from where it stopped (lbfgs: L-BFGS, docs/jamming.md); "
      "its stop reason and final numbers replace the first stage's.",
      ("none", "lbfgs"))
  polish_steps: int = option(5000, "Most gradient evaluations of the polish.")
  polish_jam_window: int = option(500, "Polish: jamming-rule window (evaluations).")
  polish_jam_rtol: float = option(
      1e-06, "Polish: stop jammed when the best loss fell by less than this fraction over "
      "the window (or the line search finds no descent).")
  finish: str = option(
      "none", "Then run a finishing stage on every member that stopped jammed or ran out of "
      "steps, float64 (needs --x64): newton: a trust-region Newton method on the loss "
      "restricted to its ReLU kink contacts, dense Hessian (lossland.optim.kink_newton); "
      "anneal: L-BFGS through smoothed nets whose activation sharpens back to the ReLU, "
      "every entrant in one program (lossland.optim.anneal; members with dead points "
      "enter too); anneal_newton: both; decay_newton: the Newton finish on loss + "
      "mu |w|^2 / 2 for each mu of --finish_decay in turn, then on the loss alone from its "
      "result (the route through minima of a coercive objective: docs/jamming.md, 'the "
      "decay route'). "
      "Its result replaces the member's params; summary.json gains each member's r_sub "
      "before and after, min_curvature and the descent probe's descent_gain "
      "(kink_newton.descent_probe).",
      ("none", "newton", "anneal", "anneal_newton", "decay_newton"))
  finish_iters: int = option(400, "Most trust-region iterations of the finish per member "
                             "(decay_newton: per stage; with --finish_from: more iterations "
                             "on top of RUN's).")
  finish_decay: str = option(
      "1e-4", "--finish decay_newton: the weight decays mu of its stages on "
      "loss + mu |w|^2 / 2, comma-separated, each stage from the last one's result, "
      "before the last stage on the loss alone (e.g. 1e-4,1e-5).")
  finish_from: str | None = option(
      None, "Continue the finishing stage of RUN, a finished ensemble run of the same "
      "options (all but the finish's own): its members are not trained again; the finish "
      "runs --finish_iters more iterations from their final params on those whose finish "
      "in RUN did not end at a minimum, and the run written is RUN with them replaced "
      "(iterations and seconds add up; lossland/experiments/finish_from.py).")
  finish_model: str = option(
      "newton", "The Newton finish's step model: newton (the quadratic model of the loss "
      "with the ReLU pattern frozen) or hinge (the margins exact in the model, so that "
      "points may cross the margin within a step: 1.3 to 4x the loss decrease per "
      "iteration, at 1.6 to 3x the cost, on the five L = 1 and 2 states of "
      "docs/jamming.md, 'the hinge step model').", ("newton", "hinge"))
  anneal_levels: str = option(
      "10,100,1000,10000,100000,inf",
      "The anneal's sharpnesses b, increasing: each unit's ReLU becomes "
      "s softplus(b z / s) / b (s: the unit's rms pre-activation at entry); inf is the "
      "ReLU itself.")
  anneal_iters: int = option(
      4000, "Most L-BFGS loss evaluations (line-search trials) of the anneal per level.")
  anneal_rounds: int = option(
      1, "Most rounds of the anneal (every level once per round), each from the last "
      "round's result; a member runs another round while its last one lowered its ReLU "
      "loss (docs/jamming.md, 'rounds of the anneal').")
  scale_to_sat: bool = option(
      False, "After the polish and after the finish, scale to sat every member with "
      "N_delta > 0 that classifies every training point: its last layer (weights and "
      "bias) times the least c that satisfies every margin (the output is linear in "
      "that layer and the loss falls monotonically along c to 0, so such a member is "
      "not at a minimum but one exact step from a sat state; "
      "lossland.train.finish.scale_to_sat). It is then class sat, with sat_scale c in "
      "summary.json and arrays.npz; its test error is unchanged, its outputs c times "
      "larger (the ensemble's mean output and output variance change). With --finish the "
      "Newton finish stops a member where it classifies every point (finish_reason "
      "separable), for this step to take. Off: such members stay not_converged (or "
      "stalled). The phase presets turn it on.")
  finish_tol: float = option(
      1e-10, "The finish stops once a member's r_sub (lossland.stationarity) is at most "
      "this.")
  jam_max_residual: float = option(
      1e-6, "A member that stopped jammed is class jammed (a jammed minimum) only if its "
      "force balance r_sub (lossland.stationarity) is at most this and it was not still "
      "descending (its Newton finish, if any, did not run out of iterations and the "
      "descent probe at its end found no loss lower by more than "
      "observables.DESCENT_RTOL, relative); otherwise class "
      "unbalanced: counted as not sat, left out of the jamming exponents. inf: no r_sub "
      "criterion (jammed = the stall rule's verdict, as before issue 20, except members "
      "still descending). Rounding floor of "
      "r_sub at an exact minimum: ~1e-12 to 1e-16 in float64, 3e-8 to 9e-8 in float32 on "
      "small nets (docs/jamming.md).", allow_inf=True)
  bulk_float32: bool = option(
      False, "Train the first stage in float32 and the polish in float64 (needs --x64 and "
      "--polish): a float32 bulk, a float64 finish (docs/engine.md; validated on "
      "phase cells in docs/jamming.md).")
  chunk_steps: int = option(2000, "Most steps per jitted chunk.")
  wgrad_split: int = option(
      0, "Engine: weight gradients as sums over this many chunks of the points "
      "(split-K; 0: XLA's own). Same training up to rounding; pays on GPUs at paper"
      " scale (docs/engine.md).")
  pad_to: int = option(
      0, "Engine: pad the input and hidden widths with zero units to a multiple of "
      "this inside the step (0: none; relu/tanh). Same training up to rounding; "
      "pays on GPUs when rows are not 16-byte aligned (docs/engine.md).")
  record_unsat: bool = option(
      False, "Save which training points are unsatisfied at every measurement step "
      "(history_unsat [K, M, P] in arrays.npz: avalanches).")
  n_seeds: int = option(20, "Ensemble size K.")
  seed: int = option(0, "Seed of member 0; member k uses seed + k.")
  group_size: int = option(0, "Members vmapped together (0: automatic).")
  x64: bool = option(True, "Train in float64 (recommended near jamming).")
  out_dir: str = option("runs", "Root of run directories.")
  plots: bool = option(True, "Write PNG figures into the run directory.")
  resume: bool = option(
      True, "Checkpoint while training and resume an interrupted run with the same flags.")
  checkpoint_every: float = option(60.0, "Seconds between checkpoints (--resume).")
  finish_workers: int = option(
      1, "Members finished side by side, in threads, by the Newton finish (the anneal runs "
      "every entrant in one program anyway); the numbers are those of one at a time. "
      "Each member's host linear algebra keeps one BLAS thread up to N = 1000 weights, so "
      "up to one worker per core helps (docs/engine.md, 'members finished side by side').")


# The job's options as rows (name, type, default, help, choices), in field order.
SPEC = options.spec_of(JobOptions)

OPTIONS = {o.name: o for o in SPEC}

# Options that do not change the numbers: left out of the checkpoint's identity.
NON_KEY_OPTIONS = ("out_dir", "plots", "resume", "checkpoint_every", "data_dir",
                   "finish_workers")

# Options added after checkpoints existed, with the value that reproduces the
# runs made before them: left out of the checkpoint's identity at that value,
# so that an interrupted run resumes across the upgrade.
LATER_OPTIONS = {"label_noise": 0.0, "bulk_float32": False, "wgrad_split": 0,
                 "pad_to": 0, "jam_max_residual": float("inf"), "scale_to_sat": False}

# The compiled program unrolls the layers; deeper nets take minutes to compile.
MAX_DEPTH = 1000


def defaults() -> dict:
  """Every option's default value, in :data:`SPEC` order."""
  return {o.name: o.default for o in SPEC}


def parse_value(name: str, text: str):
  """Converts a command-line string to option ``name``'s type (e.g. for sweeps).

  Raises:
    JobError: unknown option or a string that is not of the option's type.
  """
  if name not in OPTIONS:
    raise JobError(f"unknown option --{name}")
  o = OPTIONS[name]
  text = str(text).strip()
  try:
    if o.type == "int":
      return int(text)
    if o.type == "float":
      return float(text)
    if o.type == "bool":
      low = text.lower()
      if low in ("1", "true", "t", "yes"):
        return True
      if low in ("0", "false", "f", "no"):
        return False
      raise ValueError(text)
  except ValueError:
    raise JobError(f"--{name}: expected {o.type}, got {text!r}") from None
  return text


def _check_type(o: Option, v):
  if v is None:
    if o.default is None:
      return None
    raise JobError(f"--{o.name} cannot be None")
  if o.type == "bool":
    if isinstance(v, bool):
      return v
  elif o.type == "int":
    if isinstance(v, int) and not isinstance(v, bool):
      return int(v)
    if isinstance(v, float) and v.is_integer():
      return int(v)
  elif o.type == "float":
    if isinstance(v, (int, float)) and not isinstance(v, bool):
      v = float(v)
      if not math.isfinite(v) and not (v == math.inf and o.allow_inf):
        raise JobError(f"--{o.name} must be finite, got {v}")
      return v
  elif o.type == "str":
    if isinstance(v, str):
      return v
  elif o.type == "enum":
    if v in o.choices:
      return v
    raise JobError(f"--{o.name} must be one of {', '.join(o.choices)}, got {v!r}")
  raise JobError(f"--{o.name} must be of type {o.type}, got {v!r}")


def validate(values: dict) -> dict:
  """Fills defaults, checks types and ranges; returns a new, complete dict.

  Integers given as integral floats are converted; floats must be finite
  (+inf where the option allows it: ``option(..., allow_inf=True)``).

  Raises:
    JobError (a ValueError): one line naming the first bad option (unknown
      names included).
  """
  unknown = sorted(set(values) - set(OPTIONS))
  if unknown:
    raise JobError(f"unknown option{'s' if len(unknown) > 1 else ''} "
                   f"{', '.join('--' + u for u in unknown)}")
  out = defaults()
  for name, v in values.items():
    out[name] = _check_type(OPTIONS[name], v)
  v = out

  def need(ok, name, what):
    if not ok:
      raise JobError(f"--{name} {what}, got {v[name]}")

  for name in ("P", "d", "n_seeds", "max_steps", "decay_every",
               "plateau_patience", "check_every", "jam_window", "chunk_steps",
               "polish_steps", "polish_jam_window", "finish_iters"):
    need(v[name] > 0, name, "must be positive")
  for name in ("batch_size", "group_size", "data_seed", "teacher_depth"):
    need(v[name] >= 0, name, "must be >= 0")
  need(v["depth"] >= 1, "depth", "must be >= 1")
  need(v["depth"] <= MAX_DEPTH, "depth",
       f"must be <= {MAX_DEPTH} (the compiled program unrolls the layers)")
  need(v["width"] >= 1, "width", "must be positive")
  need(v["teacher_width"] >= 1, "teacher_width", "must be positive")
  if v["n_test"] is not None:
    need(v["n_test"] >= 0, "n_test", "must be >= 0")
  if v["N"] is not None:
    need(v["N"] > 0, "N", "must be positive")
  need(v["alpha"] > 0, "alpha", "must be positive (alpha = 0 gives f = 0 for every input)")
  need(v["lr"] > 0, "lr", "must be positive")
  need(0 <= v["momentum"] < 1, "momentum", "must be in [0, 1)")
  need(0 < v["decay_factor"] <= 1, "decay_factor", "must be in (0, 1]")
  need(v["min_lr"] >= 0, "min_lr", "must be >= 0")
  need(v["jam_rtol"] >= 0, "jam_rtol", "must be >= 0")
  need(v["polish_jam_rtol"] >= 0, "polish_jam_rtol", "must be >= 0")
  need(0 <= v["label_noise"] < 0.5, "label_noise",
       "must be in [0, 0.5) (a fraction of the training labels; 0.5 erases the task)")
  if v["polish"] != "none" and v["batch_size"]:
    raise JobError(f"--polish {v['polish']} is full batch; got --batch_size {v['batch_size']}")
  if v["bulk_float32"] and (not v["x64"] or v["polish"] == "none"):
    raise JobError("--bulk_float32 trains the first stage in float32 and finishes in "
                   "float64: it needs --x64 and a --polish")
  need(v["finish_tol"] > 0, "finish_tol", "must be positive")
  try:
    finish_decays(v)
  except ValueError as e:
    raise JobError(f"--finish_decay: {e}") from None
  need(v["anneal_iters"] > 0, "anneal_iters", "must be positive")
  need(v["anneal_rounds"] >= 1, "anneal_rounds", "must be at least 1")
  try:
    anneal_levels(v)
  except ValueError as e:
    raise JobError(f"--anneal_levels: {e}") from None
  need(v["jam_max_residual"] > 0, "jam_max_residual", "must be positive (inf: no criterion)")
  if v["scale_to_sat"]:
    from lossland import losses
    if v["loss"] not in losses.HINGES:
      raise JobError(f"--scale_to_sat needs a hinge loss ({' or '.join(losses.HINGES)}: 0 "
                     f"wherever every margin holds), got --loss {v['loss']}")
  if v["finish_from"] is not None and v["finish"] == "none":
    raise JobError("--finish_from continues a finishing stage: give --finish")
  if v["finish"] != "none" and not v["x64"]:
    raise JobError(f"--finish {v['finish']} measures force balance to 1e-10: it needs --x64")
  need(v["checkpoint_every"] >= 0, "checkpoint_every", "must be >= 0")
  need(v["finish_workers"] >= 1, "finish_workers", "must be at least 1")
  if v["margin"] is not None:
    need(v["margin"] >= 0, "margin", "must be >= 0")
  if v["dataset"] == "npz" and not v["data_file"]:
    raise JobError("--dataset npz needs --data_file")
  if v["dataset"] in ("sphere", "teacher"):
    for name in ("classes", "split"):
      if v[name] is not None:
        raise JobError(f"--{name} applies to real data, not --dataset {v['dataset']}")
  if v["batch_size"] and v["batch_size"] > v["P"]:
    raise JobError(f"--batch_size {v['batch_size']} exceeds P={v['P']}")
  if not v["out_dir"]:
    raise JobError("--out_dir must not be empty")
  return out


def key_values(values: dict) -> dict:
  """The options that determine the numbers (all but :data:`NON_KEY_OPTIONS`,
  and :data:`LATER_OPTIONS` at their old behaviour's value)."""
  return {k: x for k, x in values.items() if k not in NON_KEY_OPTIONS
          and not (k in LATER_OPTIONS and x == LATER_OPTIONS[k])}


def configs(values: dict) -> tuple:
  """``(net_cfg, loss_cfg, train_cfg)`` of validated option values.

  ``N`` sets the width by :func:`lossland.nets.width_for_n`.

  Raises:
    JobError: a config rejects a value, or ``N`` is below the smallest net.
  """
  from lossland import losses, nets, train
  v = values
  width = v["width"]
  if v["N"] is not None:
    n_min = nets.n_weights(v["d"], 1, v["depth"])
    if v["N"] < n_min:
      raise JobError(f"--N {v['N']} is below the smallest net: width 1 has "
                     f"N = {n_min} weights at d={v['d']}, depth={v['depth']}")
    width = nets.width_for_n(v["N"], v["d"], v["depth"])
  try:
    net = nets.NetConfig(d=v["d"], width=width, depth=v["depth"],
                         activation=v["activation"],
                         parametrization=v["parametrization"], init=v["init"],
                         bias=v["bias"], alpha=v["alpha"],
                         normalize_activation=v["normalize_activation"])
    loss = (losses.alpha_loss_config(v["loss"], v["alpha"], v["margin"])
            if v["alpha_loss"] else losses.LossConfig(v["loss"], v["margin"]))
    cfg = train.TrainConfig(
        optimizer=v["optimizer"], lr=v["lr"], momentum=v["momentum"],
        schedule=v["schedule"], decay_every=v["decay_every"],
        decay_factor=v["decay_factor"],
        plateau_patience=v["plateau_patience"], min_lr=v["min_lr"],
        max_steps=v["max_steps"], batch_size=v["batch_size"],
        check_every=v["check_every"], subtract_init=v["subtract_init"],
        jam_window=v["jam_window"], jam_rtol=v["jam_rtol"],
        jam_after_decays=v["jam_after_decays"],
        chunk_steps=v["chunk_steps"], record_unsat=v["record_unsat"],
        wgrad_split=v["wgrad_split"], pad_to=v["pad_to"])
    if v["pad_to"] and v["activation"] not in ("relu", "tanh"):
      raise ValueError(f"--pad_to needs --activation relu or tanh (a zero unit must "
                       f"stay zero), got {v['activation']}")
    polish_config(v, cfg)
  except ValueError as e:  # the configs' own validation (their __post_init__)
    raise JobError(str(e)) from None
  return net, loss, cfg


# The polish's first step along -g (before any curvature pair): the weak-Wolfe
# line search doubles or bisects it, so only its order of magnitude matters.
POLISH_LR = 1e-3


def polish_config(values: dict, cfg):
  """The TrainConfig of the polish stage (None for ``polish="none"``)."""
  from lossland import train
  if values["polish"] == "none":
    return None
  return train.TrainConfig(
      optimizer=values["polish"], lr=POLISH_LR, max_steps=values["polish_steps"],
      jam_window=values["polish_jam_window"], jam_rtol=values["polish_jam_rtol"],
      subtract_init=cfg.subtract_init, chunk_steps=cfg.chunk_steps,
      n_log_per_decade=cfg.n_log_per_decade, record_unsat=cfg.record_unsat,
      wgrad_split=cfg.wgrad_split, pad_to=cfg.pad_to)


def run_polish(res, ds, net, loss, cfg2, checkpoint_path=None, checkpoint_every=60.0,
               progress_fn=None, entry=("jammed", "max_steps")):
  """The polish: stage 2 of the protocol, from the members of ``res`` whose
  stop reason is in ``entry`` (by default those that did not stop sat or
  diverged; :func:`lossland.train.protocol.continue_stage`). After a float32
  first stage the job passes ``entry`` with "sat" too: every member is
  re-evaluated in float64, and one sat only in float32 continues.

  Returns:
    ``(res, info)``: the merged :class:`lossland.train.EnsembleResult` and
    per member ``polished`` (bool), ``loss_before``, ``stop_before``,
    ``polish_steps`` (evaluations, 0 if not polished), and ``arrays``: the
    polish's histories over all K members (:func:`polish_arrays`).
  """
  from lossland.train import protocol
  merged, rec = protocol.continue_stage(
      res, protocol.Stage(cfg2, entry=tuple(entry), name="polish"), ds, net, loss,
      checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every,
      progress_fn=progress_fn)
  return merged, polish_info(res, rec, cfg2, ds.P)


def polish_entry(values: dict) -> tuple:
  """The stop reasons that enter the polish: after a float32 bulk also "sat"
  (every member is re-evaluated in float64, :func:`run_polish`)."""
  return (("sat", "jammed", "max_steps") if values["bulk_float32"]
          else ("jammed", "max_steps"))


def polish_checkpoint_path(ckpt: str) -> str:
  """The polish's checkpoint beside the first stage's ``ckpt``."""
  return ckpt[:-len(".npz")] + "_polish.npz"


def finish_checkpoint_path(ckpt: str) -> str:
  """The finishing stage's progress file beside the first stage's ``ckpt``
  (:class:`lossland.train.finish._Progress`)."""
  return ckpt[:-len(".npz")] + "_finish.npz"


def polish_info(res, rec, cfg2, P: int) -> dict:
  """:func:`run_polish`'s per-member info from the result before the polish
  and the polish's :class:`lossland.train.protocol.StageRecord`."""
  import numpy as np
  steps = np.zeros(len(rec.entered), np.int64)
  if rec.result is not None:
    steps[rec.entered] = rec.result.steps
  return {"polished": [bool(e) for e in rec.entered],
          "loss_before": [float(x) for x in rec.loss_before],
          "stop_before": list(res.stop_reasons),
          "polish_steps": [int(n) for n in steps],
          "arrays": polish_arrays(res, rec.result, np.flatnonzero(rec.entered), cfg2, P)}


def polish_arrays(res, r2, idx, cfg2, P: int) -> dict:
  """The polish stage's histories over all K members, for arrays.npz.

  The polish's measurements are on its own log-spaced grid of evaluations
  counted from its start (``train.measurement_steps(cfg2.max_steps,
  cfg2.n_log_per_decade)``, whether or not a member was polished), so the
  shapes depend only on K, P and the polish options.

  Args:
    res: the first stage's :class:`lossland.train.EnsembleResult` (K members).
    r2: the polish's result for the members ``idx`` (None if there are none).
    idx: [K2] indices of the polished members in ``res``.
    cfg2: the polish's TrainConfig (:func:`polish_config`).
    P: training points.

  Returns:
    dict of numpy arrays (M2 = number of measurement points of the polish):
    ``polish_history_step`` [M2] evaluations since the polish started;
    ``polish_history_<name>`` [K, M2] for every ``train.MEASUREMENTS`` name,
    NaN where the member was not polished or had stopped;
    ``polish_history_running`` [K, M2] bool;
    ``polish_history_unsat`` [K, M2, P] bool, Delta > 0 per point (only with
    ``record_unsat``; False where not running);
    ``polished`` [K] bool; ``polish_steps`` [K] evaluations of the polish (0
    if not polished); ``steps_before_polish`` [K] and
    ``stop_code_before_polish`` [K]: the first stage's ``steps`` and
    ``stop_code``.
  """
  import numpy as np
  from lossland import train
  K = len(res.stop_code)
  sched = np.asarray(train.measurement_steps(cfg2.max_steps, cfg2.n_log_per_decade),
                     np.int64)
  M2 = len(sched)
  out = {"polish_history_step": sched}
  for m in train.MEASUREMENTS:
    out[f"polish_history_{m}"] = np.full((K, M2), np.nan)
  out["polish_history_running"] = np.zeros((K, M2), bool)
  if cfg2.record_unsat:
    out["polish_history_unsat"] = np.zeros((K, M2, P), bool)
  out["polished"] = np.zeros(K, bool)
  out["polish_steps"] = np.zeros(K, np.int64)
  out["steps_before_polish"] = np.asarray(res.steps, np.int64).copy()
  out["stop_code_before_polish"] = np.asarray(res.stop_code, np.int64).copy()
  if r2 is None or len(idx) == 0:
    return out
  if not np.array_equal(np.asarray(r2.history_step), sched):
    raise AssertionError("the polish measured on another grid than "
                         "train.measurement_steps")  # the trainer's contract
  for m in train.MEASUREMENTS:
    out[f"polish_history_{m}"][idx] = np.asarray(r2.history[m], np.float64)
  running = (np.asarray(r2.history_running, bool) if r2.history_running is not None
             else ~np.isnan(np.asarray(r2.history["loss"])))
  out["polish_history_running"][idx] = running
  if cfg2.record_unsat:
    out["polish_history_unsat"][idx] = np.asarray(r2.history_unsat, bool)
  out["polished"][idx] = True
  out["polish_steps"][idx] = np.asarray(r2.steps, np.int64)
  return out


def flipped_labels(values: dict, P: int):
  """[P] bool: the training labels that :func:`make_data` flipped (``label_noise``).

  The same draw as :func:`lossland.data.make_dataset`'s: :func:`lossland.data.flip_mask`
  of ``data.label_noise_key(jax.random.key(data_seed))``; all False without noise.
  """
  import jax
  import numpy as np
  from lossland import data as data_lib
  if not values["label_noise"]:
    return np.zeros(P, bool)
  key = data_lib.label_noise_key(jax.random.key(values["data_seed"]))
  return np.asarray(data_lib.flip_mask(key, P, values["label_noise"]))


def _n_test_planned(v) -> int:
  if v["n_test"] is not None:
    return v["n_test"]
  if v["dataset"] in ("sphere", "teacher"):
    return v["P"]
  return 0  # real data: the rest of the file, known only once it is read


def make_data(values: dict, dtype):
  """The job's Dataset (:func:`lossland.data.make_dataset` of the options).

  Raises:
    JobError: the sizes or the data file are unusable (data.py's own checks,
      and any failure to read a user's file, say which).
  """
  import zipfile
  import jax
  from lossland import data as data_lib
  v = values
  extra = {k: v[k] for k in ("classes", "split", "data_dir") if v[k] is not None}
  try:
    return data_lib.make_dataset(
        v["dataset"], v["P"], v["d"], v["n_test"],
        key=jax.random.key(v["data_seed"]), data_file=v["data_file"],
        teacher_width=v["teacher_width"], teacher_depth=v["teacher_depth"],
        dtype=dtype, verify=not v["noverify_data"], label_noise=v["label_noise"],
        **extra)
  except ValueError as e:  # data.py's checks of the sizes, labels and files
    raise JobError(str(e)) from None
  except (OSError, EOFError, zipfile.BadZipFile, TypeError, KeyError) as e:
    if v["dataset"] != "npz":
      raise
    # A user's file that data.py did not anticipate: still one line.
    raise JobError(f"--data_file {v['data_file']}: cannot be used "
                   f"({type(e).__name__}: {e})") from None


def work_fraction(step: int, max_steps: int, n_running: int, n_done: int,
                  n_total: int) -> float:
  """Fraction of the ensemble's work done: finished members count whole,
  running ones by their steps (members not started yet count 0)."""
  run = n_running * min(max(step, 0), max_steps) / max(max_steps, 1)
  return min((n_done + run) / max(n_total, 1), 1.0)


def check_memory(net, cfg, values: dict, itemsize: int, available=None):
  """Refuses an ensemble that cannot fit, before anything is allocated.

  Uses ``train.memory_plan`` where the trainer provides it; in any case checks
  a lower bound of the host memory the job needs against MemAvailable: the
  data, two parameter vectors per member (initial and final, kept for the run
  directory), the optimizer's state of one group, one member's activations
  (forward and backward, P x (d + 2 h L)) and the outputs of every member.

  Raises:
    JobError: one line with the estimate and what is available.
  """
  from lossland import curvature, nets, train
  v = values
  P, K, n_test = v["P"], v["n_seeds"], _n_test_planned(v)
  if hasattr(train, "memory_plan"):
    try:
      train.memory_plan(net, cfg, P, n_test, K, itemsize)
    except (ValueError, MemoryError) as e:
      raise JobError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
  n_par = nets.n_params(net)
  need = itemsize * (
      (P + n_test) * (net.d + 1)                       # data
      + K * n_par * 2                                  # params init/final (host)
      + n_par * 4                                      # one member: params, grads, adam
      + 2 * P * (net.d + 2 * net.width * net.depth)    # one member's activations
      + K * (P + n_test))                              # outputs
  available = curvature.available_memory_bytes() if available is None else available
  if available is not None and need > available:
    raise JobError(
        f"the ensemble needs at least {need / 2**30:.3g} GiB (K={K} members of "
        f"{n_par} params, P={P}, depth {net.depth}, width {net.width}) but "
        f"{available / 2**30:.3g} GiB are available; lower --n_seeds, --P, "
        f"--width or --depth")


def _nearest_existing(path):
  path = os.path.abspath(path)
  while not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return path


def check_out_dir(out_dir: str):
  """Refuses an ``out_dir`` that cannot hold run directories, creating nothing.

  Raises:
    JobError: out_dir (or ``out_dir/ensemble``, or an ancestor) is a file, or
      the directory that would hold the runs is not writable.
  """
  target = os.path.join(out_dir, "ensemble")
  base = _nearest_existing(target)
  if not os.path.isdir(base):
    raise JobError(f"--out_dir {out_dir}: {base} exists and is not a directory")
  if not os.access(base, os.W_OK | os.X_OK):
    raise JobError(f"--out_dir {out_dir}: {base} is not writable")


class CreatedDirs:
  """Creates directories on demand and removes the ones it made if left empty."""

  def __init__(self):
    self.made = []

  def makedirs(self, path):
    path = os.path.abspath(path)
    todo = []
    while not os.path.exists(path):
      todo.append(path)
      path = os.path.dirname(path)
    for p in reversed(todo):
      os.mkdir(p)
      self.made.append(p)

  def remove_empty(self):
    for p in reversed(self.made):
      try:
        os.rmdir(p)
      except OSError:
        pass


def _table(rows, header):
  widths = [max(len(str(h)), *(len(str(r[i])) for r in rows))
            for i, h in enumerate(header)]
  fmt = "  ".join(f"{{:>{w}}}" for w in widths)
  return "\n".join([fmt.format(*header)] + [fmt.format(*r) for r in rows])


def _dead_points(net, res, ds):
  """[K, P] dead training points (nets.dead_points) of a ReLU NetConfig, else None."""
  from lossland import nets
  if not isinstance(net, nets.NetConfig) or net.activation != "relu":
    return None
  import jax
  import numpy as np
  x = jax.numpy.asarray(ds.x_train)
  return np.asarray(jax.vmap(lambda p: nets.dead_points(net, p, x))(res.params))


# Kink pairs: |z| below this fraction of the rms pre-activation of their unit.
KINK_RTOL = 1e-7
# In float32, 1e-7 is the rounding of z itself: a kink pair at an exact
# minimum can read as |z| ~ 1e-7 of its unit's scale and be missed, and r_sub
# then jumps to the smooth residual (6.6e-3 instead of 1.7e-7 on the finished
# net of tests/test_kink_newton.py; docs/jamming.md).
KINK_RTOL_FLOAT32 = 1e-5


def kink_rtol_for(dtype) -> float:
  """The kink tolerance the job uses for data of ``dtype``."""
  import numpy as np
  return KINK_RTOL if np.dtype(dtype) == np.float64 else KINK_RTOL_FLOAT32


def stationarity_rows(net, loss, res, ds, k: int, member_class: str,
                      subtract_init: bool = False) -> dict:
  """Member k's force balance (:mod:`lossland.stationarity`): ``force_residual``
  (r_sub, the minimum-norm subgradient over the ReLU slopes at kink pairs),
  ``force_residual_smooth`` (r, the usual derivative), ``n_kink`` (at
  :data:`KINK_RTOL`), ``force_residual_exact`` (r_sub is the exact minimum:
  at most one kink per point) and ``scale_residual`` (the loss's relative
  slope along the output scale, 0 at a stationary point:
  :func:`lossland.stationarity.scale_residual`); None for members that are
  sat, unhealthy, or not NetConfig nets."""
  import jax
  import numpy as np
  from lossland import nets, observables, stationarity
  none = {"force_residual": None, "force_residual_smooth": None, "n_kink": None,
          "force_residual_exact": None, "scale_residual": None}
  if (not isinstance(net, nets.NetConfig) or member_class in observables.UNHEALTHY
      or not res.final["n_delta"][k] > 0):
    return none
  apply_fn = nets.cached_apply_fn(net, ds.x_train.dtype)
  params = jax.tree_util.tree_map(lambda a: a[k], res.params)
  off = None
  if subtract_init:
    off = apply_fn(jax.tree_util.tree_map(lambda a: a[k], res.params0), ds.x_train)
  st = stationarity.stationarity(net, apply_fn, params, ds.x_train, ds.y_train, loss,
                                 kink_rtol=kink_rtol_for(ds.x_train.dtype), f_offset=off)
  nan = lambda v: None if not np.isfinite(v) else float(v)
  return {"force_residual": nan(st.force_residual),
          "force_residual_smooth": nan(st.force_residual_smooth),
          "n_kink": st.n_kink, "force_residual_exact": st.exact,
          "scale_residual": nan(stationarity.scale_residual(
              apply_fn, params, ds.x_train, ds.y_train, loss,
              0.0 if off is None else off))}


# The finishing stage's per-member lists (finish_jammed's dict, after
# "entered") and their keys in summary.json's members (read back by
# lossland.experiments.finish_from).
FINISH_ROW_KEYS = {"converged": "finish_converged", "reason": "finish_reason",
                   "residual_before": "force_residual_before_finish",
                   "loss_before": "loss_before_finish", "iterations": "finish_iterations",
                   "seconds": "finish_seconds", "min_curvature": "min_curvature",
                   "descent_gain": "descent_gain", "descent_step": "descent_step",
                   "restarts": "finish_restarts", "rounds": "finish_anneal_rounds"}
# Of those, the counts (ints); "seconds" is a float, "converged" a bool,
# "reason" a str, the rest numbers that may be missing (None in JSON, nan).
FINISH_COUNTS = ("iterations", "restarts", "rounds")


def finish_value(field: str, x):
  """A finishing-stage value as summary.json stores it."""
  import math
  if field in FINISH_COUNTS:
    return int(x)
  if field == "seconds":
    return float(x)
  if field == "converged":
    return bool(x)
  if field == "reason":
    return x
  return None if x is None or not math.isfinite(x) else float(x)


def _finish_row(fin: dict, k: int) -> dict:
  """Member k's numbers of the finishing stage (None where it did not enter)."""
  if not fin["entered"][k]:
    return {"finished": False}
  return {"finished": True, **{key: finish_value(f, fin[f][k])
                               for f, key in FINISH_ROW_KEYS.items()}}


def stationarity_arrays(members) -> dict:
  """arrays.npz's per-member force balance: ``force_residual``,
  ``force_residual_smooth``, ``scale_residual`` [K] float64 (nan where not
  measured: sat or unhealthy members) and ``n_kink`` [K] int64 (-1 there); with ``--finish``
  also ``force_residual_before_finish``, ``min_curvature`` and
  ``descent_gain`` [K] float64 (nan for members that did not enter the
  finish); with ``--scale_to_sat`` ``sat_scale`` [K] float64 (nan for members
  not scaled)."""
  import numpy as np
  val = lambda m, k, none: none if m.get(k) is None else m[k]
  out = {"force_residual": np.array([val(m, "force_residual", np.nan) for m in members],
                                    np.float64),
         "force_residual_smooth": np.array(
             [val(m, "force_residual_smooth", np.nan) for m in members], np.float64),
         "scale_residual": np.array([val(m, "scale_residual", np.nan) for m in members],
                                    np.float64),
         "n_kink": np.array([val(m, "n_kink", -1) for m in members], np.int64)}
  if any("sat_scale" in m for m in members):  # --scale_to_sat
    out["sat_scale"] = np.array([val(m, "sat_scale", np.nan) for m in members], np.float64)
  if any("finished" in m for m in members):  # --finish: its own two arrays
    for key in ("force_residual_before_finish", "min_curvature", "descent_gain"):
      out[key] = np.array([val(m, key, np.nan) for m in members], np.float64)
  return out


def _check_not_all_broken(classes, res, lr: float):
  """Members with unsatisfied dead points are a result (counted, reported,
  left out of the numbers); a job whose every member diverged or is dead is
  not: JobError."""
  import numpy as np
  if not all(c in ("diverged", "dead") for c in classes):
    return
  counts = {c: classes.count(c) for c in ("diverged", "dead") if c in classes}
  if counts.get("diverged", 0) == len(classes):
    first = int(np.min(res.steps))
    raise JobError(
        f"every member diverged (non-finite or exploding loss by step {first}); "
        f"lower --lr (now {lr:g})")
  raise JobError(
      "no healthy member: " + ", ".join(f"{v} {k}" for k, v in counts.items())
      + " (dead: f = 0 on every training point); try another --init, "
      "--activation or --lr")


def _member_row(res, k: int, seed, reason: str, member_class: str, n_w: int,
                n_dead: int) -> dict:
  """Member k's final numbers in summary.json."""
  import numpy as np
  return {
      "seed": int(seed), "stop_reason": reason, "class": member_class,
      "steps": int(res.steps[k]), "loss": float(res.final["loss"][k]),
      "n_delta": int(np.nan_to_num(res.final["n_delta"][k], nan=-1)),
      "n_delta_over_n": float(res.final["n_delta"][k]) / n_w,
      "max_delta": float(res.final["max_delta"][k]),
      "train_error": float(res.final["train_error"][k]),
      "test_error": float(res.final["test_error"][k]),
      "n_dead_points": n_dead,
  }


def summarize(res, ds, seeds, n_w: int, n_params: int, wall: float,
              lr: float, epsilon: float = 1.0, polish: dict | None = None,
              net=None, loss=None, subtract_init: bool = False,
              finish: dict | None = None, jam_max_residual: float | None = None,
              sat_scales=None) -> dict:
  """summary.json of an ensemble: members with their classes, healthy-member
  headline numbers, class and stop-reason counts; with ``net`` (a NetConfig)
  and ``loss`` (its LossConfig), the stationarity of every healthy member
  with N_Delta > 0 (:func:`stationarity_rows`), and with
  ``jam_max_residual`` (finite) members that stopped jammed keep the class
  only where r_sub is at most it and their Newton finish (if any) did not
  run out of iterations (``unbalanced`` otherwise), and members that ran out
  of steps become ``jammed`` where the finish brought r_sub to at most it
  and stopped before its last iteration
  (:func:`lossland.observables.apply_force_balance`). ``sat_scales`` ([K],
  nan where not scaled; ``--scale_to_sat``): each member's ``sat_scale``
  (None where not scaled) and the count ``n_scaled_to_sat``.

  Raises:
    JobError: no member is healthy (all diverged or dead).
  """
  import numpy as np
  from lossland import observables, train
  reasons = list(res.stop_reasons)
  dead_points = _dead_points(net, res, ds)
  classes = observables.member_classes(
      reasons, res.final["n_delta"], res.final["max_delta"], res.f_train, n_w,
      y_train=ds.y_train, epsilon=epsilon, dead_points=dead_points)
  n_dead = observables.unsatisfied_dead_points(res.f_train, ds.y_train, epsilon, dead_points)
  healthy = np.array([c not in observables.UNHEALTHY for c in classes])
  _check_not_all_broken(classes, res, lr)
  thr = (None if jam_max_residual is None or math.isinf(jam_max_residual)
         else jam_max_residual)
  members = []
  for k, s in enumerate(seeds):
    members.append(_member_row(res, k, s, reasons[k], classes[k], n_w, int(n_dead[k])))
    if net is not None and loss is not None:
      members[-1].update(stationarity_rows(net, loss, res, ds, k, classes[k],
                                           subtract_init))
    if finish is not None:
      members[-1].update(_finish_row(finish, k))
    if sat_scales is not None:
      c = float(sat_scales[k])
      members[-1]["sat_scale"] = c if math.isfinite(c) else None
    if polish is not None:
      members[-1].update({"polished": polish["polished"][k],
                          "polish_steps": polish["polish_steps"][k],
                          "loss_before_polish": polish["loss_before"][k],
                          "stop_before_polish": polish["stop_before"][k]})
  if net is not None and loss is not None:   # r_sub measured: jammed needs force balance
    finished = [bool(m.get("finished"))
                and res.final["n_delta"][k] > observables.JAMMED_ND_FRACTION * n_w
                for k, m in enumerate(members)]
    classes = observables.apply_force_balance(
        classes, [m["force_residual"] for m in members], thr, finished,
        [observables.still_descending(m) for m in members])
    for m, c in zip(members, classes):
      m["class"] = c
  ens = observables.ensemble_summary(np.asarray(res.f_test)[healthy], ds.y_test)
  h_members = [m for m, ok in zip(members, healthy) if ok]
  mean_of = lambda key: (float(np.mean([m[key] for m in h_members])) if h_members
                         else float("nan"))
  return {
      "members": members,
      "n_members": len(seeds),
      "n_healthy": int(healthy.sum()),
      "member_class_counts": {c: classes.count(c) for c in observables.MEMBER_CLASSES
                              if c in classes},
      "diverged_seeds": [m["seed"] for m in members if m["class"] == "diverged"],
      "dead_seeds": [m["seed"] for m in members if m["class"] == "dead"],
      "dead_point_seeds": [m["seed"] for m in members if m["class"] == "dead_points"],
      "stop_reason_counts": {r: reasons.count(r)
                             for r in train.STOP_REASONS if r in reasons},
      # The authors' classification (nn_jamming/transition.py): a run is jammed
      # if N_delta > 0.1 N; fewer unsatisfied points are precision artefacts.
      # Healthy members only, as every headline number below.
      "n_jammed_nd_over_0.1N": sum(m["n_delta_over_n"] > observables.JAMMED_ND_FRACTION
                                   for m in h_members),
      "mean_test_error": ens["mean_test_error"],
      "ensemble_test_error": ens["ensemble_test_error"],
      "output_variance": ens["output_variance"],
      "mean_train_error": mean_of("train_error"),
      "mean_loss": mean_of("loss"),
      "n_weights": n_w, "n_params": n_params, "P": ds.P,
      "jam_max_residual": thr,
      **({"descent_rtol": observables.DESCENT_RTOL} if finish is not None else {}),
      "wall_seconds": wall, "group_size": res.group_size,
      **({"n_polished": int(sum(polish["polished"]))} if polish is not None else {}),
      **({"n_scaled_to_sat": sum(m["sat_scale"] is not None for m in members)}
         if sat_scales is not None else {}),
  }


def run_ensemble_job(values: dict, progress: bool = True, stdout=None,
                     stage_fn=None) -> tuple:
  """Runs the ensemble job: data, configs, training, run directory, table.

  The caller sets float64: ``jax.config.update("jax_enable_x64", values["x64"])``
  before the call (this function never touches ``jax.config``). With
  ``x64=False`` the data are float32 whatever the global setting.

  Args:
    values: option values (missing ones take their defaults; see :data:`SPEC`).
    progress: show a progress bar on stderr.
    stdout: stream of the report (default sys.stdout).
    stage_fn: optional ``fn(text)``: what the job is doing (training at each
      tenth of the way, the polish, each member of the finishing stage),
      whether or not the bar is shown; a sweep shows it on its own line.

  Returns:
    ``(run_dir, summary)``: the complete run directory and its summary.json.

  Raises:
    JobError: bad input (options, sizes, data file, out_dir), or no healthy
      member; nothing is written then.
  """
  v = validate(values)
  out = stdout or sys.stdout
  say = lambda *a: print(*a, file=out, flush=True)
  import jax
  if v["x64"] and not jax.config.jax_enable_x64:
    raise ValueError("x64=True needs jax.config.update('jax_enable_x64', True) "
                     "before run_ensemble_job")
  from lossland.progress import Progress
  check_out_dir(v["out_dir"])
  job = prepare_job(v, say)
  bar = Progress("training", enabled=progress, echo=stage_fn)
  dirs = CreatedDirs()
  ckpt = None
  ok = False
  try:
    ckpt = _checkpoint_path(v, dirs, say)
    if v["finish_from"] is None:
      bar.note("compiling and running the first chunk...")
      res, polish, cfg2, wall, fin, scales = _train(v, job, ckpt, bar)
    else:
      res, polish, cfg2, wall, fin, scales = _continue_finish(v, job, ckpt, bar)
    summary = job_summary(v, job, res, polish, wall, ckpt, fin, scales)
    dirs.makedirs(v["out_dir"])
    run_dir = write_job_run(v, job, res, polish, cfg2, summary)
    ok = True
  finally:
    if not ok:
      dirs.remove_empty()
  from lossland import checkpoint
  for path in (ckpt, ckpt and finish_checkpoint_path(ckpt)):
    if path:  # with the partial files of killed writers
      checkpoint.remove(path)
  report(summary, run_dir, say)
  return run_dir, summary


class Job(NamedTuple):
  """What the job trains: configs, data, seeds and the label-noise mask."""
  net: Any
  loss: Any
  cfg: Any
  ds: Any
  n_w: int
  seeds: list
  flipped: Any


def prepare_job(v: dict, say) -> Job:
  """Configs, memory check, data and the job's first line."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from lossland import nets
  net, loss, cfg = configs(v)
  dtype = jnp.float64 if v["x64"] else jnp.float32
  check_memory(net, cfg, v, np.dtype(dtype).itemsize)
  n_w = nets.n_weights(net.d, net.width, net.depth)
  if v["N"] is not None and n_w != v["N"]:
    say(f"N = {v['N']} is not reachable at depth {net.depth}, d = {net.d}: "
        f"using width {net.width}, N = {n_w}")
  ds = make_data(v, dtype)
  if cfg.batch_size > ds.P:
    raise JobError(f"--batch_size {cfg.batch_size} exceeds P={ds.P}")
  seeds = list(range(v["seed"], v["seed"] + v["n_seeds"]))
  flipped = flipped_labels(v, ds.P)
  noise = (f" ({int(flipped.sum())} training labels flipped)" if v["label_noise"] else "")
  say(f"lossland ensemble: {len(seeds)} members, {v['dataset']} P={ds.P}{noise} "
      f"d={ds.d} n_test={ds.x_test.shape[0]}, depth={net.depth} "
      f"width={net.width} N={n_w} ({nets.n_params(net)} params), "
      f"{loss.name} eps={loss.epsilon:g}, {cfg.optimizer} lr={cfg.lr:g}, "
      f"{'float64' if v['x64'] else 'float32'} on {jax.default_backend()}")
  return Job(net, loss, cfg, ds, n_w, seeds, flipped)


def _checkpoint_path(v: dict, dirs, say) -> str | None:
  """The resumable checkpoint of these options (None with ``resume=False``)."""
  if not v["resume"]:
    return None
  digest = hashlib.sha1(io.dumps(key_values(v), sort_keys=True).encode()).hexdigest()[:12]
  dirs.makedirs(os.path.join(v["out_dir"], "ensemble"))
  ckpt = os.path.join(v["out_dir"], "ensemble", f".checkpoint_{digest}.npz")
  if os.path.exists(ckpt):
    say(f"resuming from {ckpt}")
  return ckpt


def _train(v: dict, job: Job, ckpt, bar) -> tuple:
  """The first stage, the polish, the scaling to sat and the finish (each
  where asked for); returns ``(res, polish, cfg2, wall, fin, sat_scales)``."""
  from lossland import train
  from lossland.train import protocol
  K = len(job.seeds)

  def progress_fn(step, max_steps, n_running, n_done, n_total):
    frac = work_fraction(step, max_steps, n_running, n_done, n_total)
    bar(frac, 1.0, f"done {n_done}/{n_total} running {n_running} "
        f"step {step}/{max_steps}")

  t0 = time.time()
  ds1 = protocol.cast_data(job.ds, "float32") if v["bulk_float32"] else job.ds
  res = train.train_ensemble(job.seeds, ds1, job.net, job.loss, job.cfg,
                             group_size=v["group_size"] or None,
                             progress_fn=progress_fn, checkpoint_path=ckpt,
                             checkpoint_every=v["checkpoint_every"])
  polish = None
  cfg2 = polish_config(v, job.cfg)
  if cfg2 is not None:
    bar.note(f"polishing with {cfg2.optimizer}...")
    ckpt2 = ckpt and polish_checkpoint_path(ckpt)
    res, polish = run_polish(res, job.ds, job.net, job.loss, cfg2, checkpoint_path=ckpt2,
                             checkpoint_every=v["checkpoint_every"], entry=polish_entry(v))
    if ckpt2:
      from lossland import checkpoint
      checkpoint.remove(ckpt2)
  res, scales = scale_stage(v, job, res, cfg2 or job.cfg, log_fn=bar.note)
  fin = None
  if v["finish"] != "none":
    bar.note(f"finishing the jammed members ({v['finish']})...")
    res, fin = finish_jammed(v, job, res, cfg2 or job.cfg, log_fn=bar.note,
                             checkpoint_path=ckpt and finish_checkpoint_path(ckpt))
    res, scales = scale_stage(v, job, res, cfg2 or job.cfg, scales, log_fn=bar.note)
  bar(1, 1, f"done {K}/{K}")
  bar.close()
  return res, polish, cfg2, time.time() - t0, fin, scales


def scale_stage(v: dict, job: Job, res, cfg, before=None, log_fn=None) -> tuple:
  """``--scale_to_sat`` (:func:`lossland.train.finish.scale_to_sat`): ``(res,
  sat_scales)``, the factors of this and the ``before`` stages multiplied
  ([K], nan where never scaled); ``(res, None)`` with the option off."""
  if not v["scale_to_sat"]:
    return res, None
  import numpy as np
  from lossland.train import finish
  res, now = finish.scale_to_sat(res, job.ds, job.net, job.loss, cfg)
  now = np.asarray(now, np.float64)
  n = int(np.isfinite(now).sum())
  if n and log_fn:
    log_fn(f"scaled {n} member(s) that classify every training point to sat "
           f"(last layer times {', '.join(f'{c:.3g}' for c in now[np.isfinite(now)])})")
  if before is None:
    return res, now
  before = np.asarray(before, np.float64)
  both = np.where(np.isfinite(before), before, 1.0) * np.where(np.isfinite(now), now, 1.0)
  return res, np.where(np.isfinite(before) | np.isfinite(now), both, np.nan)


def _continue_finish(v: dict, job: Job, ckpt, bar) -> tuple:
  """``--finish_from``: RUN's members with their finish continued
  (:mod:`lossland.experiments.finish_from`); returns what :func:`_train` does."""
  from lossland.experiments import finish_from
  t0 = time.time()
  prev = finish_from.load(v, job)
  method = finish_from.method_now(prev, v["finish"])
  members = finish_from.continued(prev)
  n = "every member that stopped jammed" if members is None else f"{len(members)} member(s)"
  bar.note(f"continuing the finish of {prev.path}: {method} on {n}...")
  cfg2 = polish_config(v, job.cfg)
  res, fin = finish_jammed(dict(v, finish=method), job, prev.res, cfg2 or job.cfg,
                           log_fn=bar.note, members=members,
                           checkpoint_path=ckpt and finish_checkpoint_path(ckpt))
  res, scales = scale_stage(v, job, res, cfg2 or job.cfg, prev.sat_scales, log_fn=bar.note)
  if scales is None:  # RUN's factors stay with its members
    scales = prev.sat_scales
  bar(1, 1, "done")
  bar.close()
  return (res, prev.polish, cfg2, prev.wall + time.time() - t0, finish_from.merge(prev, fin),
          scales)


def anneal_levels(v: dict) -> tuple:
  """The parsed ``--anneal_levels`` (ValueError if malformed)."""
  from lossland.optim import anneal
  return anneal.parse_levels(v["anneal_levels"])


def finish_decays(v: dict) -> tuple:
  """The parsed ``--finish_decay`` (ValueError if malformed: not numbers, or
  one not positive and finite, :func:`lossland.train.finish.check_decays`)."""
  from lossland.train import finish
  try:
    decays = [float(t) for t in str(v["finish_decay"]).split(",")]
  except ValueError:
    raise ValueError(f"needs comma-separated numbers, got {v['finish_decay']!r}") from None
  return finish.check_decays(decays)


def finish_jammed(v: dict, job: Job, res, cfg, log_fn=None, members=None,
                  checkpoint_path=None):
  """The finishing stage (:mod:`lossland.train.finish`) on the members that
  stopped jammed (only those of ``members`` if given): ``(res, dict of
  per-member lists)``; ``log_fn(str)``: its progress (the anneal's levels,
  each member's start and result); ``checkpoint_path``: its progress file
  (resumed if there, every ``--checkpoint_every`` seconds inside a member)."""
  from lossland.train import finish
  res, info = finish.finish_members(res, job.ds, job.net, job.loss, cfg, tol=v["finish_tol"],
                                    max_iter=v["finish_iters"], method=v["finish"],
                                    levels=anneal_levels(v), anneal_iters=v["anneal_iters"],
                                    step_model=v["finish_model"],
                                    anneal_rounds=v["anneal_rounds"], log_fn=log_fn,
                                    members=members, checkpoint_path=checkpoint_path,
                                    checkpoint_every=v["checkpoint_every"],
                                    workers=v["finish_workers"],
                                    decays=finish_decays(v),
                                    stop_separable=v["scale_to_sat"])
  return res, {"entered": info.entered, "converged": info.converged,
               "reason": info.reason, "residual_before": info.residual_before,
               "loss_before": info.loss_before, "iterations": info.n_iter,
               "seconds": info.seconds, "min_curvature": info.min_curvature,
               "descent_gain": info.descent_gain, "descent_step": info.descent_step,
               "restarts": info.n_restarts, "rounds": info.n_rounds}


def job_summary(v: dict, job: Job, res, polish, wall: float, ckpt, fin=None,
                sat_scales=None) -> dict:
  """summary.json; with no healthy member the checkpoint goes too (JobError)."""
  import jax
  from lossland import nets
  try:
    summary = summarize(res, job.ds, job.seeds, job.n_w, nets.n_params(job.net), wall,
                        job.cfg.lr, epsilon=job.loss.epsilon, polish=polish, net=job.net,
                        loss=job.loss, subtract_init=job.cfg.subtract_init, finish=fin,
                        jam_max_residual=v["jam_max_residual"], sat_scales=sat_scales)
  except JobError:
    if ckpt and os.path.exists(ckpt):
      os.remove(ckpt)
    raise
  summary["n_devices"] = jax.local_device_count()
  summary["backend"] = jax.default_backend()
  summary["label_noise"] = v["label_noise"]
  summary["n_labels_flipped"] = int(job.flipped.sum())
  summary["kink_rtol"] = kink_rtol_for(job.ds.x_train.dtype)
  if v["finish_from"] is not None:
    summary["finish_from"] = v["finish_from"]
  return summary


def write_job_run(v: dict, job: Job, res, polish, cfg2, summary: dict) -> str:
  """The run directory (config.json, arrays.npz, summary.json, figures)."""
  from lossland import experiment
  from lossland.plots import ensemble as ensemble_plots
  extra = dict(polish["arrays"]) if polish is not None else {}
  if v["label_noise"]:
    extra["label_flipped"] = job.flipped
  extra.update(stationarity_arrays(summary["members"]))
  with io.new_run(v["out_dir"], "ensemble", v,
                  net=dataclasses.asdict(job.net), loss=dataclasses.asdict(job.loss),
                  train=dataclasses.asdict(job.cfg), seeds=job.seeds,
                  polish_train=dataclasses.asdict(cfg2) if cfg2 else None) as w:
    experiment.save_ensemble(w, job.seeds, res, job.ds, extra=extra)
    w.write_json("summary.json", summary)
    if v["plots"]:
      ensemble_plots.plot_run(w.path)
  return w.final_path


def report(summary: dict, run_dir: str, say) -> None:
  """The member table and the headline numbers, one ``say`` per line."""
  members = summary["members"]
  header = ("seed", "class", "stop", "steps", "loss", "N_delta", "N_delta/N",
            "max_delta", "r_sub", "train_err", "test_err")
  r_sub = lambda m: ("-" if m.get("force_residual") is None
                     else f"{m['force_residual']:.1e}")
  rows = [(m["seed"], m["class"], m["stop_reason"], m["steps"], f"{m['loss']:.3e}",
           m["n_delta"], f"{m['n_delta_over_n']:.3f}", f"{m['max_delta']:.2e}",
           r_sub(m), f"{m['train_error']:.4f}", f"{m['test_error']:.4f}")
          for m in members]
  say(_table(rows, header))
  counts = ", ".join(f"{n} {k}" for k, n in summary["stop_reason_counts"].items())
  classes = ", ".join(f"{n} {k}" for k, n in summary["member_class_counts"].items())
  say(f"stop reasons: {counts}; classes: {classes}")
  bad = [f"diverged seeds {summary['diverged_seeds']}" if summary["diverged_seeds"] else "",
         f"dead seeds {summary['dead_seeds']}" if summary["dead_seeds"] else "",
         f"seeds with unsatisfied dead points {summary['dead_point_seeds']}"
         if summary.get("dead_point_seeds") else ""]
  bad = "; ".join(b for b in bad if b)
  if summary.get("n_scaled_to_sat"):
    say(f"scaled to sat: {summary['n_scaled_to_sat']} member(s) that classify every "
        "training point (the last layer times sat_scale; class sat)")
  say(f"healthy members: {summary['n_healthy']}/{len(members)}"
      + (f" (left out of the numbers below: {bad})" if bad else ""))
  say(f"jammed by the authors' rule (N_delta > 0.1 N): "
      f"{summary['n_jammed_nd_over_0.1N']}")
  cc, thr = summary["member_class_counts"], summary.get("jam_max_residual")
  n_stopped = cc.get("jammed", 0) + cc.get("unbalanced", 0)
  if thr is not None and n_stopped:
    say(f"force-balanced (r_sub <= {thr:g}, class jammed): {cc.get('jammed', 0)} of the "
        f"{n_stopped} that stopped jammed; the others are unbalanced (not shown to be minima)")
  say(f"mean single-network test error: {summary['mean_test_error']:.4f}")
  say(f"ensemble (mean output) test error: {summary['ensemble_test_error']:.4f}")
  say(f"output variance <|f - fbar|^2>: {summary['output_variance']:.4g}")
  say("r_sub: force balance of members with N_delta > 0 (0 at a minimum; "
      "lossland/stationarity.py)")
  say(f"wall time: {summary['wall_seconds']:.1f} s")
  say(f"run directory: {run_dir}")
