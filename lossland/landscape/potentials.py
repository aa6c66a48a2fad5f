"""Energy functions of a flat coordinate vector: Lennard-Jones clusters, the
Müller–Brown surface and the tanh-network loss of Verpoort, Lee & Wales (2020).

Every builder returns pure, jittable functions of a flat vector ``x`` of shape
``[D]``; nothing here switches float64 on (scripts and tests do that).
"""

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = Any

# Cambridge Cluster Database (Wales & Doye 1997) and the classic LJ7 minima
# (Hoare & McInnes), reduced units epsilon = sigma = 1.
LJ7_MINIMA = (-16.505384, -15.935327, -15.593471, -15.533961)
LJ13_GLOBAL_MINIMUM = -44.326801


# ----------------------------------------------------------------------------
# Lennard-Jones clusters
# ----------------------------------------------------------------------------

def lennard_jones(n_atoms: int, epsilon: float = 1.0, sigma: float = 1.0
                  ) -> Callable[[Array], Array]:
  """Lennard-Jones cluster energy ``E = 4 eps sum_{i<j} (s/r)^12 - (s/r)^6``.

  Args:
    n_atoms: number of atoms.
    epsilon, sigma: pair well depth and length.

  Returns:
    ``energy_fn(x [3 n_atoms]) -> []``.
  """
  iu, ju = np.triu_indices(n_atoms, k=1)

  def energy_fn(x):
    r = x.reshape(n_atoms, 3)
    dr = r[iu] - r[ju]
    r2 = jnp.sum(dr * dr, axis=-1)
    s6 = (sigma * sigma / r2) ** 3
    return 4.0 * epsilon * jnp.sum(s6 * s6 - s6)

  return energy_fn


def lj_random_configuration(key: Array, n_atoms: int, radius: float | None = None,
                            dtype=jnp.float32) -> Array:
  """Uniform random points in a sphere of ``radius`` (default: ~ liquid density).

  Returns:
    ``x [3 n_atoms]``.
  """
  if radius is None:
    radius = 0.8 * n_atoms ** (1.0 / 3.0)
  k_dir, k_rad = jax.random.split(key)
  u = jax.random.normal(k_dir, (n_atoms, 3), dtype)
  u = u / jnp.linalg.norm(u, axis=-1, keepdims=True)
  rr = radius * jax.random.uniform(k_rad, (n_atoms, 1), dtype) ** (1.0 / 3.0)
  return (u * rr).reshape(-1)


def lj_perturb_fn(n_atoms: int, radius: float | None = None
                  ) -> Callable[[Array, Array, Array], Array]:
  """Basin-hopping move for clusters: centre, displace every atom uniformly in
  ``[-step, step]^3``, and pull any atom outside a spherical container back onto it
  (GMIN's container keeps evaporated atoms from wasting quenches).

  Returns:
    ``perturb_fn(key, x [3 n_atoms], step []) -> x_new [3 n_atoms]``.
  """
  if radius is None:
    radius = 1.0 + 0.8 * n_atoms ** (1.0 / 3.0)

  def perturb_fn(key, x, step):
    r = x.reshape(n_atoms, 3)
    r = r - jnp.mean(r, axis=0)
    r = r + step * jax.random.uniform(key, r.shape, r.dtype, -1.0, 1.0)
    norm = jnp.linalg.norm(r, axis=-1, keepdims=True)
    r = jnp.where(norm > radius, r * radius / norm, r)
    return r.reshape(-1)

  return perturb_fn


def rigid_body_modes(n_atoms: int) -> Callable[[Array], Array]:
  """Orthonormal basis of the 3 translations and 3 rotations of a cluster.

  Used to keep Lanczos/eigenvector-following away from the six zero Hessian modes.

  Returns:
    ``modes_fn(x [3 n_atoms]) -> [6, 3 n_atoms]`` with orthonormal rows.
  """

  def modes_fn(x):
    r = x.reshape(n_atoms, 3)
    r = r - jnp.mean(r, axis=0)
    eye = jnp.eye(3, dtype=x.dtype)
    trans = [jnp.tile(eye[a], n_atoms) for a in range(3)]
    rots = [jnp.cross(jnp.broadcast_to(eye[a], r.shape), r).reshape(-1) for a in range(3)]
    basis = jnp.stack(trans + rots, axis=1)  # [3N, 6]
    q, _ = jnp.linalg.qr(basis)
    return q.T

  return modes_fn


# ----------------------------------------------------------------------------
# Müller–Brown
# ----------------------------------------------------------------------------

_MB_A = (-200.0, -100.0, -170.0, 15.0)
_MB_a = (-1.0, -1.0, -6.5, 0.7)
_MB_b = (0.0, 0.0, 11.0, 0.6)
_MB_c = (-10.0, -10.0, -6.5, 0.7)
_MB_x0 = (1.0, 0.0, -0.5, -1.0)
_MB_y0 = (0.0, 0.5, 1.5, 1.0)


def muller_brown() -> Callable[[Array], Array]:
  """Müller–Brown potential (Müller & Brown, Theor. Chim. Acta 53, 75, 1979).

  Three minima and two saddles in the box ``[-1.5, 1.2] x [-0.5, 2.0]``.

  Returns:
    ``energy_fn(x [2]) -> []``.
  """

  def energy_fn(x):
    e = 0.0
    for a_, a, b, c, x0, y0 in zip(_MB_A, _MB_a, _MB_b, _MB_c, _MB_x0, _MB_y0):
      dx, dy = x[0] - x0, x[1] - y0
      e = e + a_ * jnp.exp(a * dx * dx + b * dx * dy + c * dy * dy)
    return e

  return energy_fn


# ----------------------------------------------------------------------------
# Network loss (Verpoort, Lee & Wales, PNAS 117, 21857, 2020)
# ----------------------------------------------------------------------------

class NetworkLoss(NamedTuple):
  """A tanh MLP loss as a function of a flat parameter vector.

  Attributes:
    loss_fn: ``(w [N]) -> []`` mean softmax cross-entropy on the training set plus
      ``lam * |w|^2``.
    accuracy_fn: ``(w [N], x [P, d], y [P]) -> []`` classification accuracy.
    logits_fn: ``(w [N], x [P, d]) -> [P, n_classes]``.
    init_fn: ``(key) -> w [N]``; random start, normal with variance 1/fan_in.
    layer_sizes: ``(d, h_1, ..., h_depth, n_classes)``.
    n_params: N.
  """
  loss_fn: Callable[[Array], Array]
  accuracy_fn: Callable[[Array, Array, Array], Array]
  logits_fn: Callable[[Array, Array], Array]
  init_fn: Callable[[Array], Array]
  layer_sizes: tuple
  n_params: int


def mlp_layer_shapes(layer_sizes: Sequence[int]) -> list:
  """``[(fan_in, fan_out), ...]`` for consecutive layers."""
  return [(a, b) for a, b in zip(layer_sizes[:-1], layer_sizes[1:])]


def mlp_n_params(layer_sizes: Sequence[int]) -> int:
  """Number of weights plus biases of a fully connected net."""
  return int(sum(a * b + b for a, b in mlp_layer_shapes(layer_sizes)))


def unflatten_mlp(w: Array, layer_sizes: Sequence[int]) -> list:
  """Splits a flat vector into ``[(W [fan_in, fan_out], b [fan_out]), ...]``.

  The flat layout is, layer by layer, ``W`` row-major then ``b``; the symmetry
  module relies on it.
  """
  out, i = [], 0
  for a, b in mlp_layer_shapes(layer_sizes):
    out.append((w[i:i + a * b].reshape(a, b), w[i + a * b:i + a * b + b]))
    i += a * b + b
  return out


def flatten_mlp(layers: Sequence[tuple]) -> Array:
  """Inverse of :func:`unflatten_mlp`."""
  return jnp.concatenate([jnp.concatenate([wl.reshape(-1), bl]) for wl, bl in layers])


def make_network_loss(x_train: Array, y_train: Array, layer_sizes: Sequence[int],
                      lam: float, activation: str = 'tanh') -> NetworkLoss:
  """Builds the loss landscape of a fully connected classifier.

  ``L(w) = -(1/P) sum_mu log softmax(f(w, x_mu))_{y_mu} + lam * |w|^2`` with hidden
  layers ``h = tanh(h_prev W + b)`` and a linear output layer: the OPTIM ``MLPVB3``
  loss generalised to several hidden layers, with every parameter regularised.

  Args:
    x_train: inputs ``[P, d]``.
    y_train: integer labels ``[P]`` in ``[0, n_classes)``.
    layer_sizes: ``(d, h_1, ..., h_depth, n_classes)``.
    lam: L2 coefficient λ.
    activation: ``'tanh'`` (odd; sign-flip symmetry) or ``'softplus'``.

  Returns:
    A :class:`NetworkLoss`.
  """
  layer_sizes = tuple(int(s) for s in layer_sizes)
  act = {'tanh': jnp.tanh, 'softplus': jax.nn.softplus}[activation]
  n_params = mlp_n_params(layer_sizes)

  def logits_fn(w, x):
    h = x
    layers = unflatten_mlp(w, layer_sizes)
    for wl, bl in layers[:-1]:
      h = act(h @ wl + bl)
    wl, bl = layers[-1]
    return h @ wl + bl

  def loss_fn(w):
    logits = logits_fn(w, x_train.astype(w.dtype))
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.mean(jnp.take_along_axis(logp, y_train[:, None], axis=-1))
    return nll + lam * jnp.vdot(w, w)

  def accuracy_fn(w, x, y):
    return jnp.mean(jnp.argmax(logits_fn(w, x.astype(w.dtype)), axis=-1) == y)

  def init_fn(key, dtype=jnp.float32):
    parts = []
    keys = jax.random.split(key, len(layer_sizes) - 1)
    for k, (a, b) in zip(keys, mlp_layer_shapes(layer_sizes)):
      parts.append(jax.random.normal(k, (a * b + b,), dtype) / np.sqrt(a))
    return jnp.concatenate(parts)

  return NetworkLoss(loss_fn=loss_fn, accuracy_fn=accuracy_fn, logits_fn=logits_fn,
                     init_fn=init_fn, layer_sizes=layer_sizes, n_params=n_params)


def uniform_perturb_fn() -> Callable[[Array, Array, Array], Array]:
  """Default basin-hopping move: every coordinate displaced uniformly in [-step, step].

  Returns:
    ``perturb_fn(key, x [D], step []) -> [D]``.
  """

  def perturb_fn(key, x, step):
    return x + step * jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)

  return perturb_fn
