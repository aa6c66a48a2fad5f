"""Timing helpers shared by the benchmarks (bench_ensemble, bench_step).

``naive_runner``: the naive reference program, a plain
``jax.jit(jax.vmap(run))`` where ``run`` initializes one member as the library
does and makes a fixed-length ``lax.scan`` of ``optax.adam`` steps.
"""
import time

import jax
import numpy as np
import optax

from lossland import losses, nets, train


def naive_runner(net: nets.NetConfig, loss: losses.LossConfig, steps: int,
                 lr: float, dtype, unroll: int = 1):
  """``jax.jit(jax.vmap(run))``: init as the library, then ``steps`` Adam steps.

  Returns:
    fn(keys [K], x [P, d], y [P]) -> final params with a leading [K] axis.
  """
  init_net, apply_fn = nets.make_net(net)

  def run(key, x, y):
    k_init, _ = jax.random.split(key)
    params = jax.tree_util.tree_map(lambda a: a.astype(dtype), init_net(k_init))
    opt = optax.adam(lr)
    loss_fn = lambda p: losses.mean_loss(loss, apply_fn(p, x), y)

    def body(carry, _):
      p, s = carry
      g = jax.grad(loss_fn)(p)
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    (params, _), _ = jax.lax.scan(body, (params, opt.init(params)), None,
                                  length=steps, unroll=unroll)
    return params

  return jax.jit(jax.vmap(run, in_axes=(0, None, None)))


def best_time(fn, *args, repeats=3):
  """Best wall time of ``fn(*args)`` over ``repeats`` runs, after a warm-up
  run (compilation not timed); waits for the device."""
  jax.block_until_ready(fn(*args))
  best = np.inf
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t)
  return best


def _time_naive(fn, keys, ds, repeats):
  return best_time(fn, keys, ds.x_train, ds.y_train, repeats=repeats)


def matmul_flops(dtype, n: int = 1024, repeats: int = 5) -> float:
  """FLOP/s of a dense n x n matmul (2 n^3 FLOPs), best of ``repeats``."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  return 2 * n ** 3 / best_time(jax.jit(lambda a, b: a @ b), a, b, repeats=repeats)


def _time_path(seeds, ds, net, loss, cfg, group_size, repeats):
  train.train_ensemble(seeds, ds, net, loss, cfg, group_size=group_size)  # compile
  best = np.inf
  for _ in range(repeats):
    t = time.perf_counter()
    res = train.train_ensemble(seeds, ds, net, loss, cfg, group_size=group_size)
    best = min(best, time.perf_counter() - t)
  assert np.all(res.steps == cfg.max_steps), "every member must run all steps"
  return best
