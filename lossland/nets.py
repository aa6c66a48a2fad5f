"""Fully connected networks as (init_fn, apply_fn) pairs of pure functions.

A network has input dimension ``d``, ``depth`` hidden layers of width ``h`` and
``n_out`` outputs (scalar by default). Params are a list of per-layer dicts
``{"w": [fan_in, fan_out], "b": [fan_out]}`` (``"b"`` only when ``bias=True``).

Two parametrizations give the same function at initialization and differ in how
gradients scale with width:

* ``"ntk"``: stored weights are N(0, 1) (or scaled orthogonal); each layer's
  pre-activation is ``x @ w / sqrt(fan_in)`` (Jacot et al. 2018).
* ``"standard"``: stored weights already carry the ``1/sqrt(fan_in)`` factor;
  the pre-activation is ``x @ w`` (PyTorch-style, the authors' nn_jamming code).

Hidden activations are normalized so that E[phi(z)^2] = 1 for z ~ N(0, 1), which
keeps the pre-activations O(1) in every layer at initialization for every
activation (the convention of Geiger et al.'s feature_lazy code).

The output is multiplied by ``alpha`` (1906.08034). Training ``f(w) - f(w0)`` is
handled by :func:`output_fn`.

The authors' own networks (nn_jamming, the code of 1809.09349 and 1810.09665)
differ from the default in three ways; :func:`authors_net` returns that
configuration: plain ReLU (``normalize_activation=False``: the second moment of
the pre-activations halves at every layer instead of staying 1), trainable
biases initialized at zero, and ``init="orthogonal_gain1"``, their
``orthogonal_(weight, gain=1)``: each PyTorch weight [fan_out, fan_in] is
filled, fan_in rows at a time, with the rows of independent Haar orthogonal
matrices (QR of a Gaussian block, signs fixed by diag(R)), so every neuron's
incoming weight vector has norm exactly 1 and no gain corrects for
fan_out > fan_in.

Users' own architectures come in as flax modules: :func:`from_flax` wraps a
linen module or an nnx constructor in a ``FlaxNet`` config that
:func:`make_net`, :func:`n_params`, :func:`unravel_fn` and the trainer take
wherever a :class:`NetConfig` goes (:mod:`lossland.flax_nets`).
"""
import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from lossland import dtypes

Params = list  # list of {"w": Array, "b": Array} dicts

# E[phi(z)^2] for z ~ N(0, 1), so that phi / sqrt(.) has unit second moment.
# relu: 1/2 exactly. tanh and softplus: Gauss-Hermite quadrature (see
# tests/test_nets.py::test_activation_normalization, which recomputes them).
_SECOND_MOMENT = {
    "relu": 0.5,
    "tanh": 0.39429449039784,
    "softplus": 0.92124590885930,
}

# Activations with phi(0) = 0: a zero unit stays zero (make_net's pad_to).
_ZERO_AT_ZERO = ("relu", "tanh")

_ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "softplus": jax.nn.softplus,
}


INITS = ("normal", "orthogonal", "orthogonal_gain1")


@dataclasses.dataclass(frozen=True)
class NetConfig:
  """Architecture of a fully connected network (hashable, jit-static).

  Attributes:
    d: input dimension.
    width: hidden width h.
    depth: number of hidden layers L (0 gives a linear model).
    activation: "relu", "tanh" or "softplus".
    parametrization: "ntk" or "standard".
    init: "normal"; "orthogonal" (Haar orthogonal [fan_in, fan_out] matrix,
      rescaled by sqrt(fan_out / fan_in) when fan_out > fan_in so that
      pre-activations keep unit second moment); or "orthogonal_gain1", the
      authors' nn_jamming ``orthogonal_(w, gain=1)`` (module docstring;
      identical to "orthogonal" when fan_out <= fan_in).
    bias: whether layers have biases (initialized at zero).
    n_out: number of outputs; 1 gives a scalar output.
    alpha: output scale (1906.08034).
    normalize_activation: divide the activation by sqrt(E[phi(z)^2]).
  """
  d: int
  width: int
  depth: int
  activation: str = "relu"
  parametrization: str = "ntk"
  init: str = "normal"
  bias: bool = False
  n_out: int = 1
  alpha: float = 1.0
  normalize_activation: bool = True

  def __post_init__(self):
    if self.d <= 0:
      raise ValueError(f"input dimension d must be positive, got {self.d}")
    if self.depth < 0:
      raise ValueError(f"depth must be >= 0, got {self.depth}")
    if self.depth > 0 and self.width <= 0:
      raise ValueError(f"width must be positive, got {self.width}")
    if self.n_out <= 0:
      raise ValueError(f"n_out must be positive, got {self.n_out}")
    if self.activation not in _ACTIVATIONS:
      raise ValueError(f"unknown activation {self.activation!r}; "
                       f"choose from {sorted(_ACTIVATIONS)}")
    if self.parametrization not in ("ntk", "standard"):
      raise ValueError(f"unknown parametrization {self.parametrization!r}; "
                       "choose 'ntk' or 'standard'")
    if self.init not in INITS:
      raise ValueError(f"unknown init {self.init!r}; choose from {INITS}")

  @property
  def layer_sizes(self) -> tuple:
    return (self.d,) + (self.width,) * self.depth + (self.n_out,)


def n_weights(d: int, width: int, depth: int, n_out: int = 1) -> int:
  """Number of weights, the papers' N = d h + (L - 1) h^2 + h (for n_out=1).

  Biases are excluded: with ReLU, positive homogeneity removes one degree of
  freedom per neuron (Geiger et al. 2019, nn_jamming/transition.py).
  """
  if depth == 0:
    return d * n_out
  return d * width + (depth - 1) * width * width + width * n_out


def n_params(cfg: NetConfig) -> int:
  """All trainable parameters of ``cfg`` (weights plus biases if any).

  ``cfg`` may also be a ``FlaxNet`` of :func:`from_flax`: its N.
  """
  if not isinstance(cfg, NetConfig):
    return _flax_config(cfg).n_params
  n = n_weights(cfg.d, cfg.width, cfg.depth, cfg.n_out)
  if cfg.bias:
    n += cfg.width * cfg.depth + cfg.n_out
  return n


def width_for_n(n_target: float, d: int, depth: int, n_out: int = 1) -> int:
  """Width h whose weight count N(h) is closest to ``n_target``.

  Solves (L - 1) h^2 + (d + n_out) h = N for h, then picks the nearer of the
  two neighbouring integers (at least 1).
  """
  if depth <= 0:
    raise ValueError("width_for_n needs depth >= 1")
  a, b = depth - 1, d + n_out
  h = n_target / b if a == 0 else (-b + math.sqrt(b * b + 4 * a * n_target)) / (2 * a)
  cands = {max(1, math.floor(h)), max(1, math.ceil(h))}
  return min(sorted(cands),
             key=lambda w: abs(n_weights(d, w, depth, n_out) - n_target))


def _orthogonal(key, shape, dtype):
  """A [fan_in, fan_out] matrix with orthonormal rows or columns (QR, sign-fixed)."""
  fan_in, fan_out = shape
  big, small = max(shape), min(shape)
  a = jax.random.normal(key, (big, small), dtype)
  q, r = jnp.linalg.qr(a)
  q = q * jnp.sign(jnp.diagonal(r))[None, :]  # Haar measure (Mezzadri 2007)
  return q if fan_in >= fan_out else q.T


def orthogonal_rows(g):
  """The authors' orthogonal init of a PyTorch weight from a Gaussian draw.

  nn_jamming ``functions.orthogonal_(tensor, gain=1)`` (commit f96dfa0): for
  the weight W of shape [rows = fan_out, cols = fan_in], each block of ``cols``
  consecutive rows is the transpose of Q from the QR factorization of the
  transposed Gaussian block, with Q's columns multiplied by sign(diag(R)) so
  that it is Haar distributed (Mezzadri 2007). Every row has norm 1; with
  fan_out <= fan_in the rows are orthonormal, otherwise W stacks independent
  square orthogonal matrices (and a last partial block).

  Args:
    g: [fan_out, fan_in] standard Gaussian draw (the ``normal_(0, 1)`` fill).

  Returns:
    W: [fan_out, fan_in] (PyTorch layout; lossland stores W.T).
  """
  rows, cols = g.shape
  blocks = []
  for i in range(0, rows, cols):
    q, r = jnp.linalg.qr(g[i:i + cols].T)  # [cols, b], [b, b]
    q = q * jnp.sign(jnp.diagonal(r))[None, :]
    blocks.append(q.T)
  return jnp.concatenate(blocks, axis=0)


def authors_net(d: int, width: int, depth: int, n_out: int = 1) -> NetConfig:
  """The network of nn_jamming as the authors ran it (1809.09349, 1810.09665).

  ReLU without normalization, standard (PyTorch) parametrization, trainable
  biases initialized at zero, orthogonal init with gain 1 for every layer
  (their output layer uses gain = kappa = 1). Only the random numbers differ
  (jax instead of torch draws).
  """
  return NetConfig(d=d, width=width, depth=depth, activation="relu",
                   parametrization="standard", init="orthogonal_gain1",
                   bias=True, n_out=n_out, alpha=1.0,
                   normalize_activation=False)


def _flax_config(cfg):
  """``cfg`` if it is a FlaxNet (importing flax only then), else TypeError."""
  from lossland import flax_nets  # flax only when used
  if not isinstance(cfg, flax_nets.FlaxNet):
    raise TypeError(f"expected a NetConfig or a FlaxNet (nets.from_flax), got "
                    f"{type(cfg).__name__}")
  return cfg


def from_flax(module, example_input, *, alpha: float = 1.0):
  """A flax module (linen, or an nnx constructor) as a network config.

  See :func:`lossland.flax_nets.from_flax`. The returned ``FlaxNet`` goes
  wherever a :class:`NetConfig` goes: ``make_net(net)`` gives its
  ``(init_fn, apply_fn)`` (flat inputs [..., d], d = prod(in_shape)),
  ``n_params(net)`` its N, and ``train.train_ensemble`` trains it.

  Args:
    module: an unbound ``flax.linen.Module`` or a constructor
      ``rngs -> flax.nnx.Module``.
    example_input: an array of shape [B, *in_shape] (only its shape is used).
    alpha: output scale (1906.08034).
  """
  from lossland import flax_nets  # flax only when used
  return flax_nets.from_flax(module, example_input, alpha=alpha)


def make_net(cfg: NetConfig, dtype=None, wgrad_split: int = 0,
             pad_to: int = 0) -> tuple:
  """Returns ``(init_fn, apply_fn)`` for the network described by ``cfg``.

  Args:
    cfg: the architecture: a :class:`NetConfig`, or a ``FlaxNet`` of
      :func:`from_flax`.
    dtype: parameter dtype; default is jax's default float (float64 under x64).
    wgrad_split: 0 (default) lets XLA differentiate every ``x @ w``; n > 1
      computes each weight gradient of a batch of inputs [P, d] as the sum
      of n partial products over chunks of P (:func:`split_k_matmul`): the
      same function and gradient up to rounding, a different kernel on GPUs
      (docs/engine.md, "The step at paper scale"). NetConfig nets only.
    pad_to: 0 (default), or n >= 2: inside ``apply_fn`` the input and every
      hidden layer are padded with zero units to a multiple of n (rows of
      16 bytes or more for GPU matrix kernels). The params and the function
      are unchanged: a zero unit of an activation with phi(0) = 0 (relu,
      tanh) outputs 0 and gets a zero gradient, so only the rounding of the
      sums can differ. NetConfig nets with relu or tanh only.

  Returns:
    init_fn(key) -> params, and apply_fn(params, x) with x of shape [..., d]
    returning [..., n_out], or [...] when ``cfg.n_out == 1``.
  """
  if wgrad_split < 0 or wgrad_split == 1:
    raise ValueError(f"wgrad_split must be 0 or >= 2, got {wgrad_split}")
  if pad_to < 0 or pad_to == 1:
    raise ValueError(f"pad_to must be 0 or >= 2, got {pad_to}")
  if not isinstance(cfg, NetConfig):
    if wgrad_split or pad_to:
      raise ValueError("wgrad_split and pad_to apply to NetConfig networks only")
  elif pad_to and cfg.activation not in _ZERO_AT_ZERO:
    raise ValueError(f"pad_to needs an activation with phi(0) = 0 "
                     f"({', '.join(_ZERO_AT_ZERO)}), got {cfg.activation!r}")
  if not isinstance(cfg, NetConfig):
    from lossland import flax_nets  # flax only when used
    return flax_nets.make_net(_flax_config(cfg), dtype)
  sizes = cfg.layer_sizes
  ntk = cfg.parametrization == "ntk"

  def init_fn(key) -> Params:
    dt = dtypes.float_dtype(dtype)
    keys = jax.random.split(key, len(sizes) - 1)
    params = []
    for k, fan_in, fan_out in zip(keys, sizes[:-1], sizes[1:]):
      if cfg.init == "normal":
        w_eff = jax.random.normal(k, (fan_in, fan_out), dt) / math.sqrt(fan_in)
      elif cfg.init == "orthogonal_gain1":
        w_eff = orthogonal_rows(jax.random.normal(k, (fan_out, fan_in), dt)).T
      else:
        # Orthonormal columns preserve |x|^2 fan_out / fan_in; with fewer
        # inputs than outputs the rows are orthonormal and we rescale so that
        # pre-activations still have unit second moment.
        gain = math.sqrt(max(1.0, fan_out / fan_in))
        w_eff = gain * _orthogonal(k, (fan_in, fan_out), dt)
      w = w_eff * math.sqrt(fan_in) if ntk else w_eff
      layer = {"w": w}
      if cfg.bias:
        layer["b"] = jnp.zeros((fan_out,), dt)
      params.append(layer)
    return params

  def apply_fn(params: Params, x):
    return readout(cfg, _forward(cfg, params, x, wgrad_split, pad_to)[-1])

  return init_fn, apply_fn


@functools.lru_cache(maxsize=64)
def cached_apply_fn(cfg: NetConfig, dtype=None) -> Callable:
  """``make_net(cfg, dtype)[1]``, one function object per ``(cfg, dtype)``.

  The jitted measurements that take the apply function as a static argument
  (:mod:`lossland.stationarity`) compile once per function object: callers
  that build the net afresh per member or per restart of the Newton finish
  reuse this one and compile once per net instead."""
  return make_net(cfg, dtype)[1]


def readout(cfg: NetConfig, z_out):
  """The outputs from the last layer's pre-activations [..., n_out] (the last
  entry of :func:`preactivations`): alpha z, squeezed to [...] when n_out = 1."""
  z = cfg.alpha * z_out
  return z[..., 0] if cfg.n_out == 1 else z


def _split_rows(a, n: int):
  """[P, c] -> [n, ceil(P / n), c], zero rows appended (they add nothing)."""
  m = -(-a.shape[0] // n)
  a = jnp.pad(a, ((0, n * m - a.shape[0]), (0, 0)))
  return a.reshape(n, m, a.shape[1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def split_k_matmul(x, w, n_split: int):
  """``x @ w`` for x [P, i], w [i, j], whose weight gradient is split over P.

  The backward pass computes dW = x^T g as ``sum_c x_c^T g_c`` over
  ``n_split`` chunks c of the rows (a batched product with n_split output
  tiles, then a sum: deterministic, no atomics) instead of one contraction
  of length P with a single small output tile, which occupies only a few of
  a GPU's multiprocessors when i, j << P (split-K). dx = g w^T as usual.
  Under ``vmap`` over members the chunk products become
  ``einsum('kcpi,kcpj->kcij')``.
  """
  del n_split
  return x @ w


def _split_k_fwd(x, w, n_split):
  del n_split
  return x @ w, (x, w)


def _split_k_bwd(n_split, res, g):
  x, w = res
  dw = jnp.einsum("cpi,cpj->cij", _split_rows(x, n_split),
                  _split_rows(g, n_split)).sum(axis=0)
  return g @ w.T, dw


split_k_matmul.defvjp(_split_k_fwd, _split_k_bwd)


def _matmul(x, w, wgrad_split: int):
  if wgrad_split and x.ndim == 2 and x.shape[0] >= 2 * wgrad_split:
    return split_k_matmul(x, w, wgrad_split)
  return x @ w


def _pad_axes(a, shape):
  """``a`` with zeros appended along each axis up to ``shape``."""
  if tuple(a.shape) == tuple(shape):
    return a
  return jnp.pad(a, [(0, s - n) for s, n in zip(shape, a.shape)])


def activation_scale(cfg: NetConfig) -> float:
  """The factor on every hidden activation: 1 / sqrt(E[phi(z)^2]) for
  z ~ N(0, 1) with ``normalize_activation``, else 1."""
  return 1.0 / math.sqrt(_SECOND_MOMENT[cfg.activation]) if cfg.normalize_activation else 1.0


def _forward(cfg: NetConfig, params: Params, x, wgrad_split: int = 0,
             pad_to: int = 0, phi=None) -> list:
  """Pre-activations of every layer: [z_1, ..., z_L, output before alpha].

  With ``pad_to`` (make_net) the input and the hidden layers carry zero
  units up to a multiple of ``pad_to``; the output layer is not padded.
  ``phi(layer, z)`` replaces the activation of hidden layer ``layer``
  (:func:`apply_with_kink_slopes`).
  """
  act = _ACTIVATIONS[cfg.activation]
  phi = phi or (lambda layer, z: act(z))
  act_scale = activation_scale(cfg)
  sizes = [layer["w"].shape[0] for layer in params] + [params[-1]["w"].shape[1]]
  if pad_to:
    sizes = [-(-n // pad_to) * pad_to for n in sizes[:-1]] + sizes[-1:]
    x = _pad_axes(x, x.shape[:-1] + (sizes[0],))
  zs, z = [], x
  for i, layer in enumerate(params):
    if i > 0:
      z = act_scale * phi(i - 1, zs[-1])
    fan_in = layer["w"].shape[0]
    z = _matmul(z, _pad_axes(layer["w"], sizes[i:i + 2]), wgrad_split)
    if cfg.parametrization == "ntk":
      z = z / math.sqrt(fan_in)
    if "b" in layer:
      z = z + _pad_axes(layer["b"], sizes[i + 1:i + 2])
    zs.append(z)
  return zs


def balanced(cfg: NetConfig, params: Params, sweeps: int = 200, rtol: float = 1e-12) -> Params:
  """The point of least weight norm on the rescaling orbit of a ReLU net.

  A ReLU is positively homogeneous, so scaling hidden unit j's incoming
  weights (and bias) by c > 0 and its outgoing weights by 1/c leaves the
  network's function unchanged: every net lies on an orbit of such
  rescalings, one factor per hidden unit. The squared norm along the orbit,
  sum_j (c_j^2 |in_j|^2 + |out_j|^2 / c_j^2) with the neighbours' factors in
  the terms, is convex in log c, and each unit's best factor given the others
  is c_j^2 = |out_j| / |in_j|; sweeping over the units converges to the
  minimum, where every hidden unit has |in| = |out|. Its norm measures the
  function rather than the gauge (docs/jamming.md: the drift of the finish).

  Args:
    cfg: a ReLU :class:`NetConfig`.
    params: one network's params.
    sweeps: most passes over the layers.
    rtol: stop once no factor changes by more than this (relative).

  Returns:
    The rescaled params (same structure; float64 if the input is).
  """
  if not isinstance(cfg, NetConfig) or cfg.activation != "relu":
    raise ValueError("the rescaling symmetry needs a ReLU NetConfig network")
  layers = [{k: np.array(v, dtype=np.float64) for k, v in layer.items()} for layer in params]
  for _ in range(sweeps):
    worst = 0.0
    for l in range(len(layers) - 1):
      w_in = np.sum(layers[l]["w"] ** 2, axis=0) + layers[l].get("b", 0.0) ** 2
      w_out = np.sum(layers[l + 1]["w"] ** 2, axis=1)
      ok = (w_in > 0) & (w_out > 0)
      c = np.where(ok, (w_out / np.where(ok, w_in, 1.0)) ** 0.25, 1.0)
      layers[l]["w"] = layers[l]["w"] * c
      if "b" in layers[l]:
        layers[l]["b"] = layers[l]["b"] * c
      layers[l + 1]["w"] = layers[l + 1]["w"] / c[:, None]
      worst = max(worst, float(np.max(np.abs(c - 1.0))))
    if worst <= rtol:
      break
  dtype = jax.tree_util.tree_leaves(params)[0].dtype
  return [{k: jnp.asarray(v, dtype) for k, v in layer.items()} for layer in layers]


def dead_points(cfg: NetConfig, params: Params, x):
  """Where a ReLU net is dead: some hidden layer has every unit off.

  On such an input the output does not depend on the input nor on any
  weight before that layer: without biases f = 0 exactly and the gradient
  is 0, so the point keeps Delta = epsilon whatever the training does; with
  biases every dead point gets the same output (the layers after the dead
  one applied to their biases), so dead points of both labels cannot all be
  satisfied. These are the issue's "dead points" (docs/jamming.md).

  Args:
    cfg: a :class:`NetConfig` with ``activation="relu"``.
    params: one network's params.
    x: [..., d] inputs.

  Returns:
    [...] bool.
  """
  if not isinstance(cfg, NetConfig) or cfg.activation != "relu":
    raise ValueError("dead points are defined for ReLU NetConfig networks only")
  hidden = _forward(cfg, params, x)[:-1]
  dead = jnp.zeros(x.shape[:-1], bool)
  for z in hidden:
    dead = dead | jnp.all(z <= 0, axis=-1)
  return dead


def preactivations(cfg: NetConfig, params: Params, x) -> list:
  """Pre-activations of every layer of a NetConfig net: ``[z_1, ..., z_L, out]``
  (``out`` before the output scale alpha), each [..., width] (out [..., n_out])."""
  return _forward(cfg, params, x)


def apply_with_kink_slopes(cfg: NetConfig, params: Params, x, kinks, slopes):
  """f(x) of a ReLU NetConfig net whose ReLU derivative is ``slopes`` at the
  (point, unit) pairs of ``kinks`` and the usual 1[z > 0] elsewhere.

  The value equals ``make_net``'s ``apply_fn`` (the ReLU itself is unchanged);
  only derivatives differ: at a pre-activation z = 0 the ReLU has the
  one-sided derivatives 0 and 1, and a (Clarke) subgradient of the loss takes
  any slope in [0, 1] there (:mod:`lossland.stationarity`).

  Args:
    cfg: a ReLU :class:`NetConfig`.
    params: one network's params.
    x: [P, d] inputs.
    kinks: per hidden layer, [P, width] bool.
    slopes: per hidden layer, [P, width] derivatives used where ``kinks``.

  Returns:
    [P] (or [P, n_out]) outputs.
  """
  if cfg.activation != "relu":
    raise ValueError("kink slopes are defined for ReLU networks only")

  def phi(layer, z):
    d = jnp.where(kinks[layer], slopes[layer], (z > 0).astype(z.dtype))
    # value relu(z), derivative d: a straight-through form of the ReLU
    return jax.lax.stop_gradient(jax.nn.relu(z)) + d * (z - jax.lax.stop_gradient(z))
  return readout(cfg, _forward(cfg, params, x, phi=phi)[-1])


def output_fn(apply_fn: Callable, subtract_init: bool = False) -> Callable:
  """The trained function: ``f(w; x)`` or ``f(w; x) - f(w0; x)`` (1906.08034).

  Returns:
    fn(params, params0, x) -> outputs. ``params0`` is ignored unless
    ``subtract_init``; its gradient is never taken.
  """
  if not subtract_init:
    return lambda params, params0, x: apply_fn(params, x)

  def fn(params, params0, x):
    return apply_fn(params, x) - jax.lax.stop_gradient(apply_fn(params0, x))

  return fn


def tree_size(tree: Any) -> int:
  """Total number of scalars in a pytree."""
  return sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(tree))


def unravel_fn(cfg: NetConfig, dtype=None) -> Callable:
  """The inverse of ``ravel_pytree`` for params of ``cfg``: flat [n_params] -> params."""
  init_fn, _ = make_net(cfg, dtype=dtype)
  template = jax.eval_shape(init_fn, jax.random.key(0))
  zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), template)
  return ravel_pytree(zeros)[1]


def flatten_members(params_batched) -> np.ndarray:
  """Params with a leading [K] member axis -> [K, n_params] (ravel_pytree layout)."""
  return np.asarray(jax.vmap(lambda p: ravel_pytree(p)[0])(params_batched))
