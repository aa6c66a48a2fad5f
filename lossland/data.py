"""Datasets as pure functions of a key or a file, returned as a ``Dataset`` pytree.

Labels are +-1 throughout. Inputs of every dataset are normalized to
``|x| = sqrt(d)`` (points on the sphere of radius sqrt(d)), as in the authors'
nn_jamming code.

* :func:`sphere` : the papers' random data: uniform points on the sphere,
  balanced random labels independent of x.
* :func:`teacher`: labels ``sign(f*(x))`` of a fixed random teacher network, so
  that a test error means something.
* :func:`digits` : the real handwritten digits bundled with scikit-learn (1797
  8x8 images), label = parity, PCA to d dimensions with whitening.
* :func:`from_npz`: the same pipeline on a user's file (e.g. MNIST saved as
  ``x_train, y_train, x_test, y_test``).
"""
import gzip
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lossland import nets

DATASETS = ("digits", "sphere", "teacher", "npz")


class Dataset(NamedTuple):
  """Train and test sets. Shapes: x_* [n, d], y_* [n] with values +-1."""
  x_train: jax.Array
  y_train: jax.Array
  x_test: jax.Array
  y_test: jax.Array

  @property
  def P(self) -> int:
    return int(self.x_train.shape[0])

  @property
  def d(self) -> int:
    return int(self.x_train.shape[1])


def normalize_to_sphere(x):
  """Rescales each row to norm sqrt(d). x: [n, d]."""
  d = x.shape[-1]
  return x * (jnp.sqrt(d) / jnp.linalg.norm(x, axis=-1, keepdims=True))


def _check_sizes(P, n_test, d, available=None):
  if P <= 0:
    raise ValueError(f"P must be positive, got {P}")
  if n_test < 0:
    raise ValueError(f"n_test must be >= 0, got {n_test}")
  if d <= 0:
    raise ValueError(f"d must be positive, got {d}")
  if available is not None and P + n_test > available:
    raise ValueError(f"asked for P={P} training + {n_test} test points but the "
                     f"data set has only {available}")


def _balanced_labels(n, dtype):
  # Alternating +-1 by index, as nn_jamming: exactly balanced, independent of x.
  return jnp.where(jnp.arange(n) % 2 == 0, 1, -1).astype(dtype)


def sphere(key, P: int, d: int, n_test: int = 0, dtype=None) -> Dataset:
  """Random data: x uniform on the sphere of radius sqrt(d), random labels.

  Labels alternate +-1 by index, so they are balanced and independent of x;
  the test set is drawn the same way (its error is 1/2 for any predictor).
  """
  _check_sizes(P, n_test, d)
  dt = dtype if dtype is not None else jnp.zeros(()).dtype
  x = normalize_to_sphere(jax.random.normal(key, (P + n_test, d), dt))
  y = _balanced_labels(P + n_test, dt)
  return Dataset(x[:P], y[:P], x[P:], y[P:])


def teacher(key, P: int, d: int, n_test: int = 0, teacher_width: int = 0,
            teacher_depth: int = 0, dtype=None) -> Dataset:
  """Points on the sphere labelled by a fixed random teacher: y = sign(f*(x)).

  Args:
    teacher_depth: hidden layers of the teacher; 0 is a random perceptron.
    teacher_width: width of the teacher's hidden layers.
  """
  _check_sizes(P, n_test, d)
  dt = dtype if dtype is not None else jnp.zeros(()).dtype
  k_x, k_t = jax.random.split(key)
  x = normalize_to_sphere(jax.random.normal(k_x, (P + n_test, d), dt))
  cfg = nets.NetConfig(d=d, width=max(teacher_width, 1), depth=teacher_depth)
  init_fn, apply_fn = nets.make_net(cfg, dtype=dt)
  f = apply_fn(init_fn(k_t), x)
  y = jnp.where(f >= 0, 1, -1).astype(dt)
  return Dataset(x[:P], y[:P], x[P:], y[P:])


def load_digits_raw() -> tuple:
  """The 1797 handwritten digits bundled with scikit-learn.

  Reads ``sklearn/datasets/data/digits.csv.gz`` directly (no download).

  Returns:
    images [1797, 64] float64 (pixel values 0..16), labels [1797] int64.
  """
  try:
    import sklearn.datasets
  except ImportError as e:  # pragma: no cover - dependency is in requirements
    raise RuntimeError("the digits data set needs scikit-learn "
                       "(pip install scikit-learn)") from e
  path = os.path.join(os.path.dirname(sklearn.datasets.__file__), "data",
                      "digits.csv.gz")
  with gzip.open(path, "rt") as fh:
    table = np.loadtxt(fh, delimiter=",")
  return table[:, :-1].astype(np.float64), table[:, -1].astype(np.int64)


def pca_whiten(x_fit: np.ndarray, d: int) -> tuple:
  """Fits a whitening PCA with d components on x_fit [n, D].

  Returns:
    (mean [D], components [D, d], scale [d]); project with :func:`apply_pca`.
  """
  x_fit = np.asarray(x_fit, np.float64)
  n, D = x_fit.shape
  if d > min(n, D):
    raise ValueError(f"cannot keep d={d} PCA components from {n} points "
                     f"of dimension {D}")
  mean = x_fit.mean(axis=0)
  _, s, vt = np.linalg.svd(x_fit - mean, full_matrices=False)
  eig = s[:d] ** 2 / max(n - 1, 1)
  if np.any(eig <= 1e-12 * max(eig[0], 1e-300)):
    raise ValueError(f"d={d} exceeds the rank of the data")
  return mean, vt[:d].T, 1.0 / np.sqrt(eig)


def apply_pca(x: np.ndarray, mean, components, scale) -> np.ndarray:
  """Projects x [n, D] on the whitened principal components: [n, d]."""
  return ((np.asarray(x, np.float64) - mean) @ components) * scale


def _parity_split(x, labels, P, n_test, d, dtype, source):
  """Parity labels, balanced interleaving, PCA fitted on the training points."""
  labels = np.asarray(labels)
  if labels.ndim != 1 or x.shape[0] != labels.shape[0]:
    raise ValueError(f"{source}: inputs {x.shape} and labels {labels.shape} "
                     "do not match")
  odd = np.flatnonzero(labels % 2 == 1)
  even = np.flatnonzero(labels % 2 == 0)
  m = min(len(odd), len(even))
  order = np.empty(2 * m, np.int64)
  order[0::2], order[1::2] = even[:m], odd[:m]
  # Points beyond the balanced part go last (only usable as test points).
  rest = np.setdiff1d(np.arange(len(labels)), order, assume_unique=True)
  order = np.concatenate([order, rest])
  _check_sizes(P, n_test, d, available=len(order))
  train, test = order[:P], order[P:P + n_test]
  x = x.reshape(x.shape[0], -1)
  mean, comps, scale = pca_whiten(x[train], d)
  dt = dtype if dtype is not None else jnp.zeros(()).dtype
  def prep(idx):
    z = apply_pca(x[idx], mean, comps, scale)
    z = z * (np.sqrt(d) / np.maximum(np.linalg.norm(z, axis=1, keepdims=True),
                                     1e-300))
    y = np.where(labels[idx] % 2 == 0, 1.0, -1.0)
    return jnp.asarray(z, dt), jnp.asarray(y, dt)
  x_tr, y_tr = prep(train)
  x_te, y_te = prep(test) if n_test else (jnp.zeros((0, d), dt), jnp.zeros((0,), dt))
  return Dataset(x_tr, y_tr, x_te, y_te)


def digits(P: int, d: int, n_test: int | None = None, dtype=None) -> Dataset:
  """scikit-learn digits, label = parity (+1 even, -1 odd), PCA to d with whitening.

  Deterministic split (as nn_jamming does for MNIST): even and odd images are
  interleaved in their original order, so every prefix is balanced; the first
  P are the training set and the next ``n_test`` (default: all the rest) the
  test set. The whitening PCA is fitted on the training points only, then
  every point is normalized to norm sqrt(d).
  """
  x, labels = load_digits_raw()
  if n_test is None:
    n_test = max(len(labels) - P, 0)
  return _parity_split(x, labels, P, n_test, d, dtype, "digits")


def from_npz(path: str, P: int, d: int, n_test: int | None = None,
             dtype=None) -> Dataset:
  """Loads ``x_train, y_train`` (and optionally ``x_test, y_test``) from an npz.

  Integer class labels are mapped to parity (+1 even, -1 odd); labels that are
  already all in {-1, +1} are kept as they are. Train and test arrays are
  pooled and re-split as in :func:`digits`; images of any shape are flattened.
  """
  if not os.path.isfile(path):
    raise ValueError(f"data file not found: {path}")
  try:
    with np.load(path, allow_pickle=False) as z:
      keys = set(z.files)
      if not {"x_train", "y_train"} <= keys:
        raise ValueError(f"{path}: needs arrays 'x_train' and 'y_train' "
                         f"(found {sorted(keys)})")
      xs = [z["x_train"]]
      ys = [z["y_train"]]
      if {"x_test", "y_test"} <= keys:
        xs.append(z["x_test"])
        ys.append(z["y_test"])
  except (OSError, ValueError, EOFError) as e:
    if isinstance(e, ValueError) and str(e).startswith(path):
      raise
    raise ValueError(f"{path}: not a readable .npz file ({e})") from e
  x = np.concatenate([a.reshape(a.shape[0], -1) for a in xs]).astype(np.float64)
  y = np.concatenate([np.asarray(a).reshape(-1) for a in ys])
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{path}: inputs contain non-finite values")
  if set(np.unique(y).tolist()) <= {-1, 1}:
    y = np.where(y > 0, 0, 1)  # +1 -> "even" class, -1 -> "odd" class
  elif not np.all(np.equal(np.mod(y, 1), 0)):
    raise ValueError(f"{path}: labels must be integers or +-1")
  y = y.astype(np.int64)
  if n_test is None:
    n_test = max(len(y) - P, 0)
  return _parity_split(x, y, P, n_test, d, dtype, path)


def make_dataset(name: str, P: int, d: int, n_test: int | None = None,
                 key=None, data_file: str | None = None,
                 teacher_width: int = 0, teacher_depth: int = 0,
                 dtype=None) -> Dataset:
  """Builds a data set by name: "digits", "sphere", "teacher" or "npz".

  Args:
    name: one of :data:`DATASETS`.
    P, d: training points and input dimension.
    n_test: test points; None means all remaining points for the real data
      sets and P for the synthetic ones.
    key: PRNG key of the synthetic data sets.
    data_file: the .npz file of ``name="npz"``.
  """
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
  if name == "digits":
    return digits(P, d, n_test, dtype=dtype)
  if name == "npz":
    if not data_file:
      raise ValueError("dataset 'npz' needs a data file (--data_file)")
    return from_npz(data_file, P, d, n_test, dtype=dtype)
  if key is None:
    raise ValueError(f"dataset {name!r} needs a PRNG key")
  n_test = P if n_test is None else n_test
  if name == "sphere":
    return sphere(key, P, d, n_test, dtype=dtype)
  return teacher(key, P, d, n_test, teacher_width=teacher_width,
                 teacher_depth=teacher_depth, dtype=dtype)
