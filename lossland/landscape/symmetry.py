"""Symmetries of fully connected networks: hidden-unit permutations and, for odd
activations (tanh), sign flips of a unit's incoming weights, bias and outgoing
weights. Host-side NumPy/SciPy, used by the database to tell minima apart.

The core works on the params pytree of :func:`lossland.nets.make_net` (a list of
``{"w": [fan_in, fan_out], "b": [fan_out]}`` dicts, ``"b"`` optional):
:func:`permute_params` applies a symmetry and :func:`align_params` maps network
``b`` onto the copy of itself that is closest to ``a``, layer by layer from the
input: units of ``b`` are matched to units of ``a`` by the Hungarian algorithm on
their incoming weights and bias (already expressed in the aligned ordering of the
previous layer), with the sign of each ``b`` unit chosen to minimise the cost when
the activation is odd. This is weight matching in the sense of Ainsworth, Hayase &
Srinivasa (Git Re-Basin, ICLR 2023) restricted to one greedy pass. If ``b`` is an
exact symmetry copy of ``a`` (distinct units), the matching finds the copy and the
distance is zero; the distance is invariant under any symmetry applied to ``b``
because the matching only sees the set of (sign-folded) unit vectors.

The flat-vector functions (:func:`apply_symmetry`, :func:`align_network`,
:func:`network_distance_fn`) take the flat layout of ``ravel_pytree`` of those
params, read from :func:`lossland.nets.unravel_fn` (never re-derived here), and a
``NetConfig`` or the ``layer_sizes`` of :func:`potentials.network_config`.
"""

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from lossland import dtypes
from lossland import nets
from lossland.landscape import database


def _config(net) -> nets.NetConfig:
  if isinstance(net, nets.NetConfig):
    return net
  from lossland.landscape.potentials import network_config
  return network_config(net)


@functools.lru_cache(maxsize=None)
def _layout(cfg: nets.NetConfig) -> tuple:
  """Per leaf of the params, the indices of its entries in the flat vector
  (``nets.unravel_fn`` applied to ``arange(N)``), and the treedef."""
  n = nets.n_params(cfg)
  dt = dtypes.float_dtype()
  if n >= 2 ** jnp.finfo(dt).nmant:
    raise ValueError(f'{n} parameters: too many to index exactly in {dt}')
  tree = nets.unravel_fn(cfg, dtype=dt)(jnp.arange(n, dtype=dt))
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  return tuple(np.asarray(l).astype(np.int64) for l in leaves), treedef, n


def to_params(w: np.ndarray, net) -> list:
  """Flat ``[N]`` -> NumPy params pytree of ``net`` (``nets``' layout, float64)."""
  idx, treedef, n = _layout(_config(net))
  w = np.asarray(w, np.float64)
  if w.shape != (n,):
    raise ValueError(f'expected [{n}] parameters, got shape {w.shape}')
  return jax.tree_util.tree_unflatten(treedef, [w[i] for i in idx])


def to_flat(params, net) -> np.ndarray:
  """Inverse of :func:`to_params`: ``[N]`` float64."""
  idx, treedef, n = _layout(_config(net))
  out = np.empty(n, np.float64)
  for i, leaf in zip(idx, treedef.flatten_up_to(params)):
    out[i] = leaf
  return out


def _odd(net, odd: Optional[bool]) -> bool:
  return _config(net).activation == 'tanh' if odd is None else bool(odd)


def _as_numpy(params) -> list:
  return [{k: np.asarray(v, np.float64) for k, v in layer.items()} for layer in params]


def _permute_layer(params: list, l: int, perm: np.ndarray, signs: np.ndarray) -> list:
  """Hidden layer ``l``: flip unit i by ``signs[i]``, then put unit ``perm[j]`` at
  slot j (incoming weights and bias of layer l, outgoing weights of layer l+1)."""
  out = list(params)
  out[l], out[l + 1] = dict(params[l]), dict(params[l + 1])
  out[l]['w'] = (params[l]['w'] * signs[None, :])[:, perm]
  if 'b' in params[l]:
    out[l]['b'] = (params[l]['b'] * signs)[perm]
  out[l + 1]['w'] = (params[l + 1]['w'] * signs[:, None])[perm, :]
  return out


def permute_params(params, perms: Sequence[np.ndarray], signs: Sequence[np.ndarray]) -> list:
  """Applies hidden-unit permutations and sign flips to a params pytree.

  Args:
    params: ``[{"w": [fan_in, fan_out], "b": [fan_out]}, ...]`` (``"b"`` optional).
    perms: one permutation per hidden layer, ``perms[l][j]`` = old unit at new slot j.
    signs: one ``[h_l]`` array of ±1 per hidden layer (all +1 for non-odd
      activations), indexed by the old unit.

  Returns:
    New params (NumPy float64) of the same function (for odd activations when
    signs ≠ 1).
  """
  out = _as_numpy(params)
  for l, (p, s) in enumerate(zip(perms, signs)):
    out = _permute_layer(out, l, np.asarray(p), np.asarray(s, np.float64))
  return out


def align_params(params_a, params_b, odd: bool = True) -> list:
  """Returns the symmetry copy of ``params_b`` matched to ``params_a`` (module
  docstring).

  Args:
    params_a, params_b: params pytrees of the same architecture.
    odd: whether the activation is odd (allows sign flips).

  Returns:
    Params (NumPy float64) computing the same function as ``params_b``.
  """
  la, lb = _as_numpy(params_a), _as_numpy(params_b)

  def units(layer):  # [h, fan_in (+1)]: each unit's incoming weights (and bias)
    cols = [layer['w']] + ([layer['b'][None, :]] if 'b' in layer else [])
    return np.concatenate(cols, axis=0).T

  for l in range(len(la) - 1):
    ua, ub = units(la[l]), units(lb[l])
    cost_pos = ((ua[:, None, :] - ub[None, :, :]) ** 2).sum(-1)
    if odd:
      cost_neg = ((ua[:, None, :] + ub[None, :, :]) ** 2).sum(-1)
      cost = np.minimum(cost_pos, cost_neg)
    else:
      cost = cost_pos
    rows, cols = linear_sum_assignment(cost)
    perm = cols[np.argsort(rows)]
    signs = np.ones(len(perm))
    if odd:  # the sign of b's unit perm[j], which goes to slot j
      signs[perm] = np.where(cost_neg < cost_pos, -1.0, 1.0)[np.arange(len(perm)), perm]
    lb = _permute_layer(lb, l, perm, signs)
  return lb


def apply_symmetry(w: np.ndarray, net, perms: Sequence[np.ndarray],
                   signs: Sequence[np.ndarray]) -> np.ndarray:
  """:func:`permute_params` on a flat parameter vector.

  Args:
    w: ``[N]`` parameters (``ravel_pytree`` layout of ``nets``).
    net: a ``NetConfig`` or ``layer_sizes`` ``(d, h, ..., h, n_out)``.
    perms, signs: as in :func:`permute_params`.

  Returns:
    ``[N]`` parameters of the same function (for odd activations when signs ≠ 1),
    in the dtype of ``w`` (computed in float64).
  """
  out = to_flat(permute_params(to_params(w, net), perms, signs), net)
  return out.astype(np.asarray(w).dtype, copy=False)


def align_network(a: np.ndarray, b: np.ndarray, net, odd: Optional[bool] = None
                  ) -> np.ndarray:
  """:func:`align_params` on flat parameter vectors.

  Args:
    a, b: ``[N]`` flat parameters.
    net: a ``NetConfig`` or ``layer_sizes`` ``(d, h, ..., h, n_out)``.
    odd: whether the activation is odd (allows sign flips); default: tanh.

  Returns:
    ``[N]`` parameters computing the same function as ``b``, in the dtype of ``b``
    (computed in float64).
  """
  out = to_flat(align_params(to_params(a, net), to_params(b, net), _odd(net, odd)), net)
  return out.astype(np.asarray(b).dtype, copy=False)


def network_distance_fn(net, odd: Optional[bool] = None):
  """Returns ``distance(a, b) = |a - align_network(a, b)|``, a symmetry-invariant
  distance for the database's de-duplication.

  Args:
    net: a ``NetConfig`` or ``layer_sizes`` ``(d, h, ..., h, n_out)``.
    odd: whether the activation is odd; default: tanh.
  """
  cfg = _config(net)
  odd = _odd(cfg, odd)

  def distance(a, b):
    return float(np.linalg.norm(np.asarray(a) - align_network(a, b, cfg, odd)))

  # Permutations and sign flips are orthogonal maps, so ||a| - |b|| <= distance:
  # the database and the explorer skip the alignment when this bound already
  # exceeds their tolerance (or the best distance so far).
  distance.lower_bound = database.norm_gap
  return distance
