r"""Train an ensemble of initializations in parallel and compare it with its members.

    python -m lossland.scripts.ensemble --n_seeds 20

Trains ``n_seeds`` networks that differ only in their initialization (member k
uses seed ``--seed + k``) on the same data, as one jitted, vmapped program, and
reports each member (stop reason, steps, loss, N_Delta, train and test error)
and the ensemble predictor fbar = mean_k f_k. The default (real handwritten
digits bundled with scikit-learn, parity labels, PCA to d = 16, P = 400, a
3-hidden-layer ReLU net of width 12, i.e. N = 492 weights, about three times the
jamming point (at width 6, N = 174, most members jam), the quadratic hinge
loss, full-batch Adam) takes about 1 to 2 minutes on a 2-core CPU.

Writes ``<out_dir>/ensemble/<UTC time>_<hash>/`` with config.json,
metrics.jsonl, arrays.npz, summary.json and figures (see lossland/experiment.py
for the arrays). Examples:

    # random data near the jamming transition, depth 3, float64
    python -m lossland.scripts.ensemble --dataset sphere --P 2000 --d 20 \
        --depth 3 --N 2000 --max_steps 100000 --n_seeds 8
    # your own data (e.g. MNIST saved as x_train, y_train, x_test, y_test)
    python -m lossland.scripts.ensemble --dataset npz --data_file mnist.npz \
        --P 10000 --d 10 --depth 5 --width 30
"""
import dataclasses
import hashlib
import os
import sys
import time

from absl import flags

from lossland.scripts import _cli

_DATASET = flags.DEFINE_enum("dataset", "digits", ["digits", "sphere", "teacher", "npz"],
                             "Training data (labels +-1, inputs on the sphere of radius sqrt(d)).")
_DATA_FILE = flags.DEFINE_string("data_file", None, ".npz with x_train, y_train[, x_test, y_test] for --dataset npz.")
_P = flags.DEFINE_integer("P", 400, "Number of training points.")
_D = flags.DEFINE_integer("d", 16, "Input dimension (PCA components for real data).")
_N_TEST = flags.DEFINE_integer("n_test", None, "Test points (default: all remaining real data; P for synthetic data).")
_DATA_SEED = flags.DEFINE_integer("data_seed", 0, "Seed of synthetic data sets.")
_TEACHER_DEPTH = flags.DEFINE_integer("teacher_depth", 0, "Hidden layers of the teacher (0: perceptron).")
_TEACHER_WIDTH = flags.DEFINE_integer("teacher_width", 32, "Width of the teacher's hidden layers.")

_DEPTH = flags.DEFINE_integer("depth", 3, "Number of hidden layers L.")
_WIDTH = flags.DEFINE_integer("width", 12, "Hidden width h (ignored if --N is given).")
_N = flags.DEFINE_integer("N", None, "Target number of weights; sets the width h.")
_ACTIVATION = flags.DEFINE_enum("activation", "relu", ["relu", "tanh", "softplus"], "Hidden activation.")
_PARAM = flags.DEFINE_enum("parametrization", "ntk", ["ntk", "standard"], "NTK or standard parametrization.")
_INIT = flags.DEFINE_enum("init", "normal", ["normal", "orthogonal"], "Weight initialization.")
_BIAS = flags.DEFINE_boolean("bias", False, "Use biases (zero at init).")
_ALPHA = flags.DEFINE_float("alpha", 1.0, "Output scale alpha.")
_SUBTRACT_INIT = flags.DEFINE_boolean("subtract_init", False, "Train f(w) - f(w0).")

_LOSS = flags.DEFINE_enum("loss", "quadratic_hinge",
                          ["quadratic_hinge", "hinge", "soft_hinge", "logistic", "squared"],
                          "Per-example loss of Delta = margin - y f.")
_MARGIN = flags.DEFINE_float("margin", None, "Margin epsilon (default: 1 for hinges and squared, 0 for logistic).")

_OPTIMIZER = flags.DEFINE_enum("optimizer", "adam", ["adam", "sgd", "momentum"], "Optimizer.")
_LR = flags.DEFINE_float("lr", 1e-2, "Learning rate.")
_MOMENTUM = flags.DEFINE_float("momentum", 0.9, "Momentum (--optimizer momentum).")
_SCHEDULE = flags.DEFINE_enum("schedule", "constant", ["constant", "step", "plateau"], "Learning-rate schedule.")
_DECAY_EVERY = flags.DEFINE_integer("decay_every", 250_000, "Steps between decays (--schedule step).")
_DECAY_FACTOR = flags.DEFINE_float("decay_factor", 0.1, "Decay factor (step and plateau schedules).")
_PLATEAU_PATIENCE = flags.DEFINE_integer("plateau_patience", 1000, "Steps per plateau test.")
_MIN_LR = flags.DEFINE_float("min_lr", 1e-7, "Learning-rate floor.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 20_000, "Maximum number of steps.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 0, "Mini-batch size (0: full batch).")
_CHECK_EVERY = flags.DEFINE_integer("check_every", 100, "Full-set stop checks every this many steps (mini-batch).")
_JAM_WINDOW = flags.DEFINE_integer("jam_window", 2000, "Jamming rule: window in steps.")
_JAM_RTOL = flags.DEFINE_float("jam_rtol", 1e-3, "Jamming rule: relative decrease of the best loss below which a window counts as stalled.")
_CHUNK_STEPS = flags.DEFINE_integer("chunk_steps", 2000, "Most steps per jitted chunk.")

_N_SEEDS = flags.DEFINE_integer("n_seeds", 20, "Ensemble size K.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of member 0; member k uses seed + k.")
_GROUP_SIZE = flags.DEFINE_integer("group_size", 0, "Members vmapped together (0: automatic).")
_X64 = flags.DEFINE_boolean("x64", True, "Train in float64 (recommended near jamming).")
_OUT_DIR = flags.DEFINE_string("out_dir", "runs", "Root of run directories.")
_PLOTS = flags.DEFINE_boolean("plots", True, "Write PNG figures into the run directory.")
_RESUME = flags.DEFINE_boolean("resume", True, "Checkpoint while training and resume an interrupted run with the same flags.")
_CHECKPOINT_EVERY = flags.DEFINE_float("checkpoint_every", 60.0, "Seconds between checkpoints (--resume).")


def _configs():
  from lossland import losses, nets, train
  if _P.value <= 0:
    raise _cli.UsageError(f"--P must be positive, got {_P.value}")
  if _D.value <= 0:
    raise _cli.UsageError(f"--d must be positive, got {_D.value}")
  if _N_SEEDS.value <= 0:
    raise _cli.UsageError(f"--n_seeds must be positive, got {_N_SEEDS.value}")
  if _N_TEST.value is not None and _N_TEST.value < 0:
    raise _cli.UsageError(f"--n_test must be >= 0, got {_N_TEST.value}")
  if _DEPTH.value < 1:
    raise _cli.UsageError(f"--depth must be >= 1, got {_DEPTH.value}")
  if _GROUP_SIZE.value < 0:
    raise _cli.UsageError(f"--group_size must be >= 0, got {_GROUP_SIZE.value}")
  if _DATASET.value == "npz" and not _DATA_FILE.value:
    raise _cli.UsageError("--dataset npz needs --data_file")
  width = _WIDTH.value
  if _N.value is not None:
    if _N.value <= 0:
      raise _cli.UsageError(f"--N must be positive, got {_N.value}")
    width = nets.width_for_n(_N.value, _D.value, _DEPTH.value)
  if width <= 0:
    raise _cli.UsageError(f"--width must be positive, got {width}")
  net = nets.NetConfig(d=_D.value, width=width, depth=_DEPTH.value,
                       activation=_ACTIVATION.value,
                       parametrization=_PARAM.value, init=_INIT.value,
                       bias=_BIAS.value, alpha=_ALPHA.value)
  loss = losses.LossConfig(_LOSS.value, _MARGIN.value)
  cfg = train.TrainConfig(
      optimizer=_OPTIMIZER.value, lr=_LR.value, momentum=_MOMENTUM.value,
      schedule=_SCHEDULE.value, decay_every=_DECAY_EVERY.value,
      decay_factor=_DECAY_FACTOR.value,
      plateau_patience=_PLATEAU_PATIENCE.value, min_lr=_MIN_LR.value,
      max_steps=_MAX_STEPS.value, batch_size=_BATCH_SIZE.value,
      check_every=_CHECK_EVERY.value, subtract_init=_SUBTRACT_INIT.value,
      jam_window=_JAM_WINDOW.value, jam_rtol=_JAM_RTOL.value,
      chunk_steps=_CHUNK_STEPS.value)
  return net, loss, cfg


def _table(rows, header):
  widths = [max(len(str(h)), *(len(str(r[i])) for r in rows))
            for i, h in enumerate(header)]
  fmt = "  ".join(f"{{:>{w}}}" for w in widths)
  return "\n".join([fmt.format(*header)] + [fmt.format(*r) for r in rows])


def main(argv):
  if len(argv) > 1:
    raise _cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  import jax
  if _X64.value:
    jax.config.update("jax_enable_x64", True)
  import numpy as np
  from lossland import data as data_lib
  from lossland import io, nets, observables, plots, train

  net, loss, cfg = _configs()
  ds = data_lib.make_dataset(
      _DATASET.value, _P.value, _D.value, _N_TEST.value,
      key=jax.random.key(_DATA_SEED.value), data_file=_DATA_FILE.value,
      teacher_width=_TEACHER_WIDTH.value, teacher_depth=_TEACHER_DEPTH.value)
  if cfg.batch_size > ds.P:
    raise _cli.UsageError(f"--batch_size {cfg.batch_size} exceeds P={ds.P}")
  seeds = list(range(_SEED.value, _SEED.value + _N_SEEDS.value))
  n_w = nets.n_weights(net.d, net.width, net.depth)
  print(f"lossland ensemble: {len(seeds)} members, {_DATASET.value} P={ds.P} "
        f"d={ds.d} n_test={ds.x_test.shape[0]}, depth={net.depth} "
        f"width={net.width} N={n_w} ({nets.n_params(net)} params), "
        f"{loss.name} eps={loss.epsilon:g}, {cfg.optimizer} lr={cfg.lr:g}, "
        f"{'float64' if _X64.value else 'float32'} on {jax.default_backend()}",
        flush=True)

  bar = _cli.Progress("training")
  def progress(step, max_steps, n_running, n_done, n_total):
    bar(step, max_steps, f"step {step}/{max_steps} running {n_running} "
        f"done {n_done}/{n_total}")

  flags_dict = {f.name: f.value for f in flags.FLAGS.get_key_flags_for_module(sys.modules[__name__])}
  ckpt = None
  if _RESUME.value:
    key_flags = {k: v for k, v in flags_dict.items()
                 if k not in ("out_dir", "plots", "resume", "checkpoint_every")}
    digest = hashlib.sha1(io.dumps(key_flags, sort_keys=True).encode()).hexdigest()[:12]
    os.makedirs(os.path.join(_OUT_DIR.value, "ensemble"), exist_ok=True)
    ckpt = os.path.join(_OUT_DIR.value, "ensemble", f".checkpoint_{digest}.npz")
    if os.path.exists(ckpt):
      print(f"resuming from {ckpt}", flush=True)

  t0 = time.time()
  res = train.train_ensemble(seeds, ds, net, loss, cfg,
                             group_size=_GROUP_SIZE.value or None,
                             progress_fn=progress, checkpoint_path=ckpt,
                             checkpoint_every=_CHECKPOINT_EVERY.value)
  bar(1, 1, f"done {len(seeds)}/{len(seeds)}")
  bar.close()
  wall = time.time() - t0
  if all(r == "diverged" for r in res.stop_reasons):
    if ckpt and os.path.exists(ckpt):
      os.remove(ckpt)
    first = int(res.steps.min())
    raise _cli.UsageError(
        f"every member diverged (non-finite or exploding loss by step {first}); "
        f"lower --lr (now {cfg.lr:g})")

  ens = observables.ensemble_summary(res.f_test, ds.y_test)
  members = []
  for k, s in enumerate(seeds):
    members.append({
        "seed": s, "stop_reason": res.stop_reasons[k],
        "steps": int(res.steps[k]), "loss": float(res.final["loss"][k]),
        "n_delta": int(res.final["n_delta"][k]),
        "n_delta_over_n": float(res.final["n_delta"][k]) / n_w,
        "max_delta": float(res.final["max_delta"][k]),
        "train_error": float(res.final["train_error"][k]),
        "test_error": float(res.final["test_error"][k]),
    })
  summary = {
      "members": members,
      "n_members": len(seeds),
      "stop_reason_counts": {r: res.stop_reasons.count(r)
                             for r in train.STOP_REASONS if r in res.stop_reasons},
      # The authors' classification (nn_jamming/transition.py): a run is jammed
      # if N_delta > 0.1 N; fewer unsatisfied points are precision artefacts.
      "n_jammed_nd_over_0.1N": sum(m["n_delta_over_n"] > 0.1 for m in members),
      "mean_test_error": ens["mean_test_error"],
      "ensemble_test_error": ens["ensemble_test_error"],
      "output_variance": ens["output_variance"],
      "mean_train_error": float(np.mean(res.final["train_error"])),
      "mean_loss": float(np.mean(res.final["loss"])),
      "n_weights": n_w, "n_params": nets.n_params(net), "P": ds.P,
      "wall_seconds": wall, "group_size": res.group_size,
  }
  with io.new_run(_OUT_DIR.value, "ensemble", flags_dict,
                  net=dataclasses.asdict(net), loss=dataclasses.asdict(loss),
                  train=dataclasses.asdict(cfg), seeds=seeds) as w:
    records = []
    for k, s in enumerate(seeds):
      for j, step in enumerate(res.history_step):
        if np.isnan(res.history["loss"][k, j]):
          continue
        records.append({"seed": s, "step": int(step),
                        **{m: float(res.history[m][k, j]) for m in train.MEASUREMENTS}})
      records.append({"seed": s, "step": int(res.steps[k]), "final": True,
                      "stop_reason": res.stop_reasons[k],
                      **{m: float(res.final[m][k]) for m in train.MEASUREMENTS}})
    w.log(records)
    w.save_arrays(
        seeds=np.asarray(seeds),
        params_final=nets.flatten_members(res.params),
        params_init=nets.flatten_members(res.params0),
        x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test,
        f_train=res.f_train, f_test=res.f_test, stop_code=res.stop_code,
        steps=res.steps, history_step=res.history_step,
        **{f"history_{m}": res.history[m] for m in train.MEASUREMENTS},
        **{f"final_{m}": res.final[m] for m in train.MEASUREMENTS})
    w.write_json("summary.json", summary)
    if _PLOTS.value:
      plots.plot_run(w.path)
  run_dir = w.final_path
  if ckpt and os.path.exists(ckpt):
    os.remove(ckpt)

  header = ("seed", "stop", "steps", "loss", "N_delta", "N_delta/N", "max_delta",
            "train_err", "test_err")
  rows = [(m["seed"], m["stop_reason"], m["steps"], f"{m['loss']:.3e}",
           m["n_delta"], f"{m['n_delta_over_n']:.3f}", f"{m['max_delta']:.2e}",
           f"{m['train_error']:.4f}", f"{m['test_error']:.4f}")
          for m in members]
  print(_table(rows, header))
  counts = ", ".join(f"{v} {k}" for k, v in summary["stop_reason_counts"].items())
  print(f"stop reasons: {counts}; jammed by the authors' rule "
        f"(N_delta > 0.1 N): {summary['n_jammed_nd_over_0.1N']}")
  print(f"mean single-network test error: {ens['mean_test_error']:.4f}")
  print(f"ensemble (mean output) test error: {ens['ensemble_test_error']:.4f}")
  print(f"output variance <|f - fbar|^2>: {ens['output_variance']:.4g}")
  print(f"wall time: {wall:.1f} s")
  print(f"run directory: {run_dir}")


if __name__ == "__main__":
  _cli.run(main)
