"""Flax modules (linen or nnx) as lossland networks: :func:`from_flax`.

:func:`from_flax` wraps a user's module in a :class:`FlaxNet`, a frozen,
hashable config that stands where a :class:`lossland.nets.NetConfig` stands:
``nets.make_net(net)`` gives its ``(init_fn, apply_fn)`` pair and
``nets.n_params(net)`` its size, so ``train.train_ensemble`` trains vmapped
ensembles of it, ``curvature.curvature_fns(apply_fn, ...)`` gives its Hessian
products and ``ntk.empirical_ntk_fn(apply_fn)`` its empirical kernel.

The contract is that of :func:`lossland.nets.make_net`:

* ``init_fn(key) -> params``: a plain pytree of nested dicts of arrays (linen's
  ``variables["params"]``; for nnx the ``nnx.Param`` state as nested dicts),
  in the requested float dtype. A pure function of the key: ``jax.vmap`` over
  keys gives independent members.
* ``apply_fn(params, x)`` with flat inputs ``x`` of shape ``[..., d]``,
  ``d = prod(in_shape)``, reshaped to ``[-1, *in_shape]`` for the module
  (images stay flat in a :class:`lossland.data.Dataset`), returning
  ``[...]`` for one output or ``[..., n_out]``, times ``alpha``.

The module must be a pure function of its parameters: linen modules with
collections other than ``"params"`` (``batch_stats``, ...) and nnx modules
with state other than ``nnx.Param`` (BatchNorm statistics, the RNG streams of
Dropout) are refused with a ValueError.

A linen module is given as the (unbound) module; an nnx module as its
constructor ``rngs -> module`` (an nnx module is created with its parameters,
so each member needs a fresh construction from its own key).
"""
import dataclasses
import hashlib
import math
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from lossland import dtypes

try:
  from flax import linen as nn
except ImportError:  # pragma: no cover - flax is a requirement
  nn = None
try:
  from flax import nnx
except ImportError:  # pragma: no cover - flax < 0.8 or without nnx
  nnx = None


@dataclasses.dataclass(frozen=True, repr=False)
class FlaxNet:
  """A flax module as a network config (hashable, jit-static); see :func:`from_flax`.

  Equal (and equally hashed) when the module (a linen module compares by class
  and attributes, an nnx constructor by identity), ``in_shape``, ``n_out``
  and ``alpha`` are. ``repr`` is stable across processes (no addresses): it
  names the module and a digest of its parameter layout, and enters the run
  fingerprint of :func:`lossland.train.train_ensemble`'s checkpoints.

  Attributes:
    module: an unbound ``flax.linen.Module``, or an nnx constructor
      ``rngs -> flax.nnx.Module``.
    in_shape: the shape of one example as the module sees it, e.g. (8, 8, 1).
    n_out: outputs per example (1: ``apply_fn`` returns scalars).
    alpha: output scale (1906.08034), as ``NetConfig.alpha``.
    kind: "linen" or "nnx".
    n_params: number of trainable parameters N.
    n_act: floats of the forward pass for one example (the outputs of every
      operation of its jaxpr): the memory plan's activation estimate.
    description: the module's class and attributes (or the constructor's
      name) and a digest of the parameter paths, shapes and dtypes.
  """
  module: Any
  in_shape: tuple
  n_out: int
  alpha: float = 1.0
  kind: str = dataclasses.field(default="linen", compare=False)
  n_params: int = dataclasses.field(default=0, compare=False)
  n_act: int = dataclasses.field(default=0, compare=False)
  description: str = dataclasses.field(default="", compare=False)

  @property
  def d(self) -> int:
    """Input dimension of the flat inputs ``[..., d]``."""
    return math.prod(self.in_shape)

  # train.memory_plan estimates the activations of a net as about
  # 3 * width * max(depth, 1) floats per example (pre-activations, activations
  # and their cotangents); a flax net offers the same product from its jaxpr:
  # its forward values plus their cotangents, 2 n_act.
  @property
  def depth(self) -> int:
    """1: with :attr:`width`, the memory plan's activation estimate."""
    return 1

  @property
  def width(self) -> int:
    """ceil(2 n_act / 3): 3 width depth = the forward values and cotangents."""
    return max(1, -(-2 * self.n_act // 3))

  def __repr__(self) -> str:
    return (f"FlaxNet({self.description}, in_shape={self.in_shape}, "
            f"n_out={self.n_out}, alpha={self.alpha!r}, N={self.n_params})")


def _stable(value, depth: int = 0) -> str:
  """repr without memory addresses.

  Functions by their qualified name and, for closures such as
  ``nn.initializers.normal(0.1)``, the values they closed over.
  """
  if callable(value) and hasattr(value, "__name__"):
    name = f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', value.__name__)}"
    cells = getattr(value, "__closure__", None) or ()
    if cells and depth < 2:
      inner = []
      for c in cells:
        try:
          inner.append(_stable(c.cell_contents, depth + 1))
        except ValueError:  # an empty cell
          inner.append("?")
      name += "[" + ", ".join(inner) + "]"
    return name
  return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


def _linen_description(module) -> str:
  fields = [f for f in dataclasses.fields(module)
            if f.name not in ("parent", "name") and f.repr]
  args = ", ".join(f"{f.name}={_stable(getattr(module, f.name))}"
                   for f in fields)
  return f"linen {type(module).__qualname__}({args})"


def _layout_digest(params) -> str:
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  text = ";".join(f"{jax.tree_util.keystr(p)}:{tuple(a.shape)}:{a.dtype}"
                  for p, a in leaves)
  return hashlib.sha1(text.encode()).hexdigest()[:12]


def _path_keys(path) -> tuple:
  """A state path as plain dict keys (DictKey/SequenceKey; attributes dropped)."""
  out = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      out.append(k.key)
    elif isinstance(k, jax.tree_util.SequenceKey):
      out.append(k.idx)
  return tuple(out)


def _nested(paths, leaves) -> dict:
  tree = {}
  for keys, leaf in zip(paths, leaves):
    node = tree
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = leaf
  return tree


def _get(tree, keys):
  for k in keys:
    tree = tree[k]
  return tree


class _NnxLayout:
  """Conversion between nnx Param state and nested dicts of arrays."""

  def __init__(self, ctor: Callable):
    abstract = nnx.eval_shape(lambda: ctor(nnx.Rngs(0)))
    if not isinstance(abstract, nnx.Module):
      raise ValueError("an nnx constructor must return an nnx.Module, got "
                       f"{type(abstract).__name__}")
    _, _, rest = nnx.split(abstract, nnx.Param, ...)
    others = sorted({type(v).__name__ for v in
                     jax.tree_util.tree_leaves(
                         rest, is_leaf=lambda v: isinstance(v, nnx.Variable))})
    if jax.tree_util.tree_leaves(rest):
      raise ValueError(
          "from_flax needs a module that is a pure function of its nnx.Param "
          f"parameters; this one also holds {', '.join(others) or 'other state'} "
          "(BatchNorm statistics, Dropout RNG streams, ...)")
    self.graphdef, state = nnx.split(abstract, nnx.Param)
    flat, self.treedef = jax.tree_util.tree_flatten_with_path(state)
    self.paths = [_path_keys(p) for p, _ in flat]
    if len(set(self.paths)) != len(self.paths):
      raise ValueError("cannot name the nnx parameters uniquely by their paths")

  def to_dict(self, state) -> dict:
    return _nested(self.paths, jax.tree_util.tree_leaves(state))

  def from_dict(self, params):
    leaves = [_get(params, keys) for keys in self.paths]
    return jax.tree_util.tree_unflatten(self.treedef, leaves)


def _raw_fns(module, kind: str, in_shape: tuple) -> tuple:
  """(init(key, dtype) -> params, forward(params, x[B, *in_shape]) -> out[B, ...])."""
  if kind == "linen":
    def init(key, dt):
      variables = module.init(key, jnp.zeros((1,) + in_shape, dt))
      extra = sorted(set(variables) - {"params"})
      if extra:
        raise ValueError(
            "from_flax needs a module that is a pure function of its 'params'; "
            f"this one also has the collections {extra} (batch_stats, ...)")
      return variables.get("params", {})

    def forward(params, x):
      return module.apply({"params": params}, x)
    return init, forward

  layout = _NnxLayout(module)

  def init(key, dt):
    del dt
    _, state = nnx.split(module(nnx.Rngs(key)), nnx.Param)
    return layout.to_dict(state)

  def forward(params, x):
    return nnx.merge(layout.graphdef, layout.from_dict(params))(x)
  return init, forward


def _floating(a) -> bool:
  return jnp.issubdtype(a.dtype, jnp.floating)


def _unfreeze(tree):
  """Nested FrozenDicts (older linen) as dicts; leaves unchanged."""
  if isinstance(tree, dict) or hasattr(tree, "items"):
    return {k: _unfreeze(v) for k, v in tree.items()}
  return tree


def make_net(net: FlaxNet, dtype=None) -> tuple:
  """``(init_fn, apply_fn)`` of a :class:`FlaxNet` (called by ``nets.make_net``).

  Args:
    net: the :class:`FlaxNet` of :func:`from_flax`.
    dtype: parameter dtype; default is jax's default float (float64 under
      x64). Floating parameters are cast to it; the forward pass then runs in
      the dtype of the params and inputs (flax promotes them).

  Returns:
    init_fn(key) -> params (nested dicts), and apply_fn(params, x) with x of
    shape [..., d] returning [...] (n_out = 1) or [..., n_out].
  """
  if not isinstance(net, FlaxNet):
    raise TypeError(f"expected a NetConfig or a FlaxNet, got {type(net).__name__}")
  raw_init, forward = _raw_fns(net.module, net.kind, net.in_shape)
  d, in_shape, n_out, alpha = net.d, net.in_shape, net.n_out, net.alpha

  def init_fn(key):
    dt = dtypes.float_dtype(dtype)
    params = _unfreeze(raw_init(key, dt))
    return jax.tree_util.tree_map(
        lambda a: a.astype(dt) if _floating(a) else a, params)

  def apply_fn(params, x):
    if x.shape[-1:] != (d,):
      raise ValueError(f"inputs must have shape [..., {d}] (flat "
                       f"{in_shape}), got {x.shape}")
    batch = x.shape[:-1]
    out = forward(params, x.reshape((-1,) + in_shape))
    out = out.reshape(batch + ((n_out,) if n_out > 1 else ()))
    return alpha * out if alpha != 1.0 else out

  return init_fn, apply_fn


def _kind(module) -> str:
  if nn is not None and isinstance(module, nn.Module):
    if module.scope is not None:
      raise ValueError("from_flax needs an unbound linen module (not one "
                       "returned by module.bind or used inside another's apply)")
    try:
      hash(module)
    except TypeError as e:
      raise ValueError("the linen module's attributes must be hashable (a "
                       "FlaxNet is a static jit argument): use tuples, not "
                       "lists or dicts") from e
    return "linen"
  if nnx is not None and isinstance(module, nnx.Module):
    raise ValueError(
        "pass an nnx module as its constructor, e.g. "
        "from_flax(lambda rngs: MyNet(..., rngs=rngs), x): every member of an "
        "ensemble is built from its own key")
  if callable(module) and nnx is not None:
    return "nnx"
  raise TypeError("from_flax takes a flax.linen.Module or an nnx constructor "
                  f"rngs -> nnx.Module, got {type(module).__name__}")


def from_flax(module, example_input, *, alpha: float = 1.0) -> FlaxNet:
  """A flax module as a lossland network (the ``NetConfig`` of a user's model).

  Args:
    module: an unbound ``flax.linen.Module``, or a constructor
      ``rngs -> flax.nnx.Module`` (called as ``module(nnx.Rngs(key))``, once
      per member).
    example_input: an array (or ``jax.ShapeDtypeStruct``) of shape
      ``[B, *in_shape]``, a batch as the module takes it; only its shape is
      used (the parameters are created from zeros of the member's dtype).
    alpha: output scale (the lazy-training factor of 1906.08034).

  Returns:
    A :class:`FlaxNet`: ``nets.make_net``, ``nets.n_params``,
    ``nets.unravel_fn`` and ``train.train_ensemble`` take it. The module's
    output per example must be a scalar, [1] or [n_out].

  Raises:
    ValueError: a bound linen module, an nnx module instance instead of its
      constructor, state other than parameters, unhashable attributes, an
      input without a batch axis or an output that is not a vector.
    TypeError: something that is not a flax module.
  """
  kind = _kind(module)
  shape = (example_input.shape if hasattr(example_input, "shape")
           else np.shape(example_input))
  shape = tuple(int(s) for s in shape)
  if len(shape) < 2:
    raise ValueError("example_input must be a batch [B, *in_shape] with at "
                     f"least one feature axis, got shape {shape}")
  in_shape = shape[1:]
  raw_init, forward = _raw_fns(module, kind, in_shape)
  dt = dtypes.float_dtype()
  params = jax.eval_shape(lambda k: _unfreeze(raw_init(k, dt)), jax.random.key(0))
  x1 = jax.ShapeDtypeStruct((1,) + in_shape, dt)
  out = jax.eval_shape(forward, params, x1)
  out_shape = tuple(out.shape)
  if out_shape in ((1,), (1, 1)):
    n_out = 1
  elif len(out_shape) == 2 and out_shape[0] == 1:
    n_out = out_shape[1]
  else:
    raise ValueError("the module must return a scalar or a vector per example "
                     f"([B], [B, 1] or [B, n_out]); for a batch of 1 it "
                     f"returned shape {out_shape}")
  jaxpr = jax.make_jaxpr(forward)(params, x1)
  n_act = sum(math.prod(getattr(v.aval, "shape", ()))
              for eqn in jaxpr.eqns for v in eqn.outvars)
  n_params = sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(params))
  desc = (_linen_description(module) if kind == "linen" else
          f"nnx {_stable(module)}")
  return FlaxNet(module=module, in_shape=in_shape, n_out=int(n_out),
                 alpha=float(alpha), kind=kind, n_params=int(n_params),
                 n_act=int(n_act),
                 description=f"{desc}, layout={_layout_digest(params)}")
