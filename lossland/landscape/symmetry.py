"""Symmetries of fully connected networks: hidden-unit permutations and, for odd
activations (tanh), sign flips of a unit's incoming weights, bias and outgoing
weights. Host-side NumPy/SciPy, used by the database to tell minima apart.

:func:`align_network` maps network ``b`` onto the copy of itself that is closest to
``a``, layer by layer from the input: units of ``b`` are matched to units of ``a`` by
the Hungarian algorithm on their incoming weights and bias (already expressed in the
aligned ordering of the previous layer), with the sign of each ``b`` unit chosen to
minimise the cost when the activation is odd. This is weight matching in the sense of
Ainsworth, Hayase & Srinivasa (Git Re-Basin, ICLR 2023) restricted to one greedy pass.
If ``b`` is an exact symmetry copy of ``a`` (distinct units), the matching finds the
copy and the distance is zero; the distance is invariant under any symmetry applied to
``b`` because the matching only sees the set of (sign-folded) unit vectors.
"""

from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from lossland.landscape.potentials import mlp_layer_shapes


def _split(w, layer_sizes):
  out, i = [], 0
  for a, b in mlp_layer_shapes(layer_sizes):
    out.append([w[i:i + a * b].reshape(a, b).copy(), w[i + a * b:i + a * b + b].copy()])
    i += a * b + b
  return out


def _join(layers):
  return np.concatenate([np.concatenate([wl.reshape(-1), bl]) for wl, bl in layers])


def apply_symmetry(w: np.ndarray, layer_sizes: Sequence[int], perms: Sequence[np.ndarray],
                   signs: Sequence[np.ndarray]) -> np.ndarray:
  """Applies hidden-unit permutations and sign flips to a flat parameter vector.

  Args:
    w: ``[N]`` parameters (layout of :func:`potentials.unflatten_mlp`).
    layer_sizes: ``(d, h_1, ..., h_L, n_out)``.
    perms: one permutation per hidden layer, ``perms[l][j]`` = old unit at new slot j.
    signs: one ``[h_l]`` array of ±1 per hidden layer (all +1 for non-odd activations).

  Returns:
    ``[N]`` parameters of the same function (for odd activations when signs ≠ 1).
  """
  layers = _split(np.asarray(w, np.float64), layer_sizes)
  for l, (p, s) in enumerate(zip(perms, signs)):
    wl, bl = layers[l]
    layers[l] = [(wl * s[None, :])[:, p], (bl * s)[p]]
    wn, bn = layers[l + 1]
    layers[l + 1] = [(wn * s[:, None])[p, :], bn]
  return _join(layers)


def align_network(a: np.ndarray, b: np.ndarray, layer_sizes: Sequence[int],
                  odd: bool = True) -> np.ndarray:
  """Returns the symmetry copy of ``b`` matched to ``a`` (see module docstring).

  Args:
    a, b: ``[N]`` flat parameters.
    layer_sizes: ``(d, h_1, ..., h_L, n_out)``.
    odd: whether the activation is odd (allows sign flips).

  Returns:
    ``[N]`` parameters computing the same function as ``b``.
  """
  la = _split(np.asarray(a, np.float64), layer_sizes)
  lb = _split(np.asarray(b, np.float64), layer_sizes)
  for l in range(len(layer_sizes) - 2):
    ua = np.concatenate([la[l][0], la[l][1][None, :]], axis=0).T  # [h, fan_in + 1]
    ub = np.concatenate([lb[l][0], lb[l][1][None, :]], axis=0).T
    cost_pos = ((ua[:, None, :] - ub[None, :, :]) ** 2).sum(-1)
    if odd:
      cost_neg = ((ua[:, None, :] + ub[None, :, :]) ** 2).sum(-1)
      cost = np.minimum(cost_pos, cost_neg)
    else:
      cost = cost_pos
    rows, cols = linear_sum_assignment(cost)
    perm = cols[np.argsort(rows)]
    sign = np.ones(len(perm))
    if odd:
      sign_b = np.where(cost_neg < cost_pos, -1.0, 1.0)
      sign = sign_b[np.arange(len(perm)), perm]  # sign for the b unit placed at slot j
    # apply to b: slot j gets b's unit perm[j] with sign sign[j]
    s_full = np.ones(len(perm))
    s_full[perm] = sign
    wl, bl = lb[l]
    lb[l] = [(wl * s_full[None, :])[:, perm], (bl * s_full)[perm]]
    wn, bn = lb[l + 1]
    lb[l + 1] = [(wn * s_full[:, None])[perm, :], bn]
  return _join(lb)


def network_distance_fn(layer_sizes: Sequence[int], odd: bool = True):
  """Returns ``distance(a, b) = |a - align_network(a, b)|``, a symmetry-invariant
  distance for the database's de-duplication."""

  def distance(a, b):
    return float(np.linalg.norm(np.asarray(a) - align_network(a, b, layer_sizes, odd)))

  return distance


def euclidean_distance(a, b) -> float:
  """Plain Euclidean distance, for surfaces without symmetries."""
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))
