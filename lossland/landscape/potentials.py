"""Energy functions of a flat coordinate vector: Lennard-Jones clusters, the
Müller–Brown surface and the tanh-network loss of Verpoort, Lee & Wales (2020),
built from :mod:`lossland.nets` (one forward pass for every network).

Every builder returns pure, jittable functions of a flat vector ``x`` of shape
``[D]``; nothing here switches float64 on (scripts and tests do that).
"""

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np

from lossland import dtypes
from lossland import losses, nets

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
                            dtype=None) -> Array:
  """Uniform random points in a sphere of ``radius`` (default: ~ liquid density).

  ``dtype``: default jax's default float (float64 under x64).

  Returns:
    ``x [3 n_atoms]``.
  """
  if radius is None:
    radius = 0.8 * n_atoms ** (1.0 / 3.0)
  dtype = dtypes.float_dtype(dtype)
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
  """A classifier's loss as a function of a flat parameter vector.

  The flat vector is ``ravel_pytree`` of :func:`lossland.nets.make_net`'s params
  (per layer ``b`` then ``w`` row-major); :func:`lossland.nets.unravel_fn` inverts it.

  Attributes:
    loss_fn: ``(w [N]) -> []`` mean softmax cross-entropy on the training set plus
      ``lam * |w|^2``.
    accuracy_fn: ``(w [N], x [P, d], y [P]) -> []`` classification accuracy.
    logits_fn: ``(w [N], x [P, d]) -> [P, n_classes]``.
    init_fn: ``(key, dtype=None) -> w [N]``; ``nets``' init (weights normal with
      variance 1/fan_in, biases zero), default float dtype unless ``dtype`` is given.
    layer_sizes: ``(d, h, ..., h, n_classes)``.
    n_params: N.
    net: the :class:`lossland.nets.NetConfig`.
    params_fn: ``(w [N]) -> params``, the params pytree in the dtype of ``w``.
  """
  loss_fn: Callable[[Array], Array]
  accuracy_fn: Callable[[Array, Array, Array], Array]
  logits_fn: Callable[[Array, Array], Array]
  init_fn: Callable[..., Array]
  layer_sizes: tuple
  n_params: int
  net: nets.NetConfig
  params_fn: Callable[[Array], Any]


def network_config(layer_sizes: Sequence[int], activation: str = 'tanh') -> nets.NetConfig:
  """The Verpoort–Lee–Wales network as a :class:`lossland.nets.NetConfig`.

  Hidden layers ``phi(h W + b)`` without activation normalization, a linear
  output layer with one output per class, biases everywhere, standard
  (PyTorch) parametrization, so that ``lam |w|^2`` regularizes the stored
  weights and biases (OPTIM ``MLPVB3`` generalised to several hidden layers).

  Args:
    layer_sizes: ``(d, h, ..., h, n_classes)``; every hidden layer has width h
      (``NetConfig``'s architecture), at least two classes.
    activation: ``'tanh'`` (odd: sign-flip symmetry) or any of ``nets``'.

  Returns:
    The ``NetConfig``.
  """
  sizes = tuple(int(s) for s in layer_sizes)
  if len(sizes) < 2:
    raise ValueError(f'layer_sizes needs (d, ..., n_classes), got {sizes}')
  hidden = sizes[1:-1]
  if len(set(hidden)) > 1:
    raise ValueError(f'hidden layers must have one width (nets.NetConfig), got {sizes}')
  if sizes[-1] < 2:
    raise ValueError(f'a classifier needs at least two outputs, got {sizes}')
  return nets.NetConfig(d=sizes[0], width=hidden[0] if hidden else 0, depth=len(hidden),
                        activation=activation, parametrization='standard',
                        init='normal', bias=True, n_out=sizes[-1],
                        normalize_activation=False)


@functools.lru_cache(maxsize=None)
def _unravel(cfg: nets.NetConfig, dtype) -> Callable:
  return nets.unravel_fn(cfg, dtype=dtype)


def make_network_energy(cfg: nets.NetConfig, x_train: Array, y_train: Array,
                        lam: float) -> NetworkLoss:
  """The loss landscape of a ``nets`` classifier on a flat parameter vector.

  ``L(w) = (1/P) sum_mu CE(f(w, x_mu), y_mu) + lam |w|^2`` with ``f`` the
  ``apply_fn`` of :func:`lossland.nets.make_net` and CE
  :func:`lossland.losses.softmax_cross_entropy` (Verpoort, Lee & Wales 2020,
  eq. 1). Everything is computed in the dtype of ``w``.

  Args:
    cfg: the architecture (``n_out`` = number of classes >= 2), e.g.
      :func:`network_config`.
    x_train: inputs ``[P, d]``.
    y_train: integer labels ``[P]`` in ``[0, n_out)``.
    lam: L2 coefficient λ.

  Returns:
    A :class:`NetworkLoss`.
  """
  if cfg.n_out < 2:
    raise ValueError(f'a classifier needs n_out >= 2, got {cfg.n_out}')
  _, apply_fn = nets.make_net(cfg)
  y_train = jnp.asarray(y_train)

  def params_fn(w):
    return _unravel(cfg, jnp.dtype(w.dtype))(w)

  def logits_fn(w, x):
    return apply_fn(params_fn(w), jnp.asarray(x).astype(w.dtype))

  def loss_fn(w):
    nll = jnp.mean(losses.softmax_cross_entropy(logits_fn(w, x_train), y_train))
    return nll + lam * jnp.vdot(w, w)

  def accuracy_fn(w, x, y):
    return jnp.mean(jnp.argmax(logits_fn(w, x), axis=-1) == y)

  def init_fn(key, dtype=None):
    return ravel_pytree(nets.make_net(cfg, dtype=dtype)[0](key))[0]

  return NetworkLoss(loss_fn=loss_fn, accuracy_fn=accuracy_fn, logits_fn=logits_fn,
                     init_fn=init_fn, layer_sizes=cfg.layer_sizes,
                     n_params=nets.n_params(cfg), net=cfg, params_fn=params_fn)


def make_network_loss(x_train: Array, y_train: Array, layer_sizes, lam: float,
                      activation: str = 'tanh') -> NetworkLoss:
  """:func:`make_network_energy` of :func:`network_config` ``(layer_sizes, activation)``.

  Args:
    x_train: inputs ``[P, d]``.
    y_train: integer labels ``[P]`` in ``[0, n_classes)``.
    layer_sizes: ``(d, h, ..., h, n_classes)``, or a ``NetConfig``.
    lam: L2 coefficient λ.
    activation: ``'tanh'`` (odd; sign-flip symmetry) or ``'softplus'``; ignored
      when ``layer_sizes`` is a ``NetConfig``.

  Returns:
    A :class:`NetworkLoss`.
  """
  cfg = (layer_sizes if isinstance(layer_sizes, nets.NetConfig)
         else network_config(layer_sizes, activation))
  return make_network_energy(cfg, x_train, y_train, lam)


def uniform_perturb_fn() -> Callable[[Array, Array, Array], Array]:
  """Default basin-hopping move: every coordinate displaced uniformly in [-step, step].

  Returns:
    ``perturb_fn(key, x [D], step []) -> [D]``.
  """

  def perturb_fn(key, x, step):
    return x + step * jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)

  return perturb_fn
