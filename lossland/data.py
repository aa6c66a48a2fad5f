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
* :func:`mnist`, :func:`fashion_mnist`, :func:`cifar10`: the image data sets,
  read from their official files (IDX ``.gz``, CIFAR-10 binary tarball) in a
  data directory, checked against the official checksums (:data:`CHECKSUMS`).
* :func:`from_npz`: the same pipeline on a user's file (e.g. MNIST saved as
  ``x_train, y_train, x_test, y_test``).

Every real data set goes through the same steps (:func:`prepare`): class
labels to +-1 (:func:`binary_labels`: parity, or a split of the classes into
two groups; classes outside the groups are dropped), a balanced deterministic
order (:func:`interleave_classes`), a whitening PCA fitted on the training
points only (:func:`pca_whiten`), and normalization to sqrt(d). Files are read
with NumPy and the standard library only; nothing is ever unpickled.

Errors the user can cause with a file (missing, wrong checksum, truncated,
corrupt, wrong shapes or labels) raise :class:`DataError`, a ``ValueError``
with a one-line message that names the file and says what to do.
"""
import gzip
import hashlib
import os
import re
import struct
import tarfile
import zipfile
import zlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lossland import dtypes
from lossland import nets

IMAGE_DATASETS = ("mnist", "fashion_mnist", "cifar10")
DATASETS = ("digits", "sphere", "teacher", "npz") + IMAGE_DATASETS

# make_dataset's label-noise key is this stream of the data key (independent
# of the draw of a synthetic data set, which uses the key itself).
LABEL_NOISE_STREAM = 1

# Official files of the image data sets: MD5, SHA-256 and size in bytes.
# * MNIST MD5s: torchvision/datasets/mnist.py (pytorch/vision, MNIST.resources).
#   SHA-256s: torchvision/prototype/datasets/_builtin/mnist.py (pytorch/vision,
#   MNIST._CHECKSUMS; the same values are in TensorFlow Datasets' mnist
#   download_checksums). Sizes: Y. LeCun's MNIST page (yann.lecun.com/exdb/mnist:
#   "train-images-idx3-ubyte.gz: training set images (9912422 bytes)", ...).
# * Fashion-MNIST MD5s: torchvision/datasets/mnist.py (FashionMNIST.resources),
#   as on github.com/zalandoresearch/fashion-mnist. SHA-256s: the torchvision
#   prototype file above (FashionMNIST._CHECKSUMS). Sizes: TensorFlow Datasets'
#   fashion_mnist checksums (26421880, 29515, 4422102, 5148 bytes).
# * CIFAR-10 binary version: MD5 from the official page
#   www.cs.toronto.edu/~kriz/cifar.html ("CIFAR-10 binary version (suitable for
#   C programs) 162 MB c32a1d4ab5d03f1284b67883e8d87530"); size 170052171 bytes
#   as reported by TensorFlow's cifar10 tutorial download. No official SHA-256.
# Only the hashes decide whether a file is accepted; the size is used to say
# "truncated" in the error message and for download progress.
CHECKSUMS = {
    "mnist": {
        "train-images-idx3-ubyte.gz": {
            "md5": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "sha256": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "size": 9912422},
        "train-labels-idx1-ubyte.gz": {
            "md5": "d53e105ee54ea40749a09fcbcd1e9432",
            "sha256": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "size": 28881},
        "t10k-images-idx3-ubyte.gz": {
            "md5": "9fb629c4189551a2d022fa330f9573f3",
            "sha256": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "size": 1648877},
        "t10k-labels-idx1-ubyte.gz": {
            "md5": "ec29112dd5afa0611ce80d1b7f02629c",
            "sha256": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            "size": 4542},
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": {
            "md5": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "sha256": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "size": 26421880},
        "train-labels-idx1-ubyte.gz": {
            "md5": "25c81989df183df01b3e8a0aad5dffbe",
            "sha256": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "size": 29515},
        "t10k-images-idx3-ubyte.gz": {
            "md5": "bef4ecab320f06d8554ea6380940ec79",
            "sha256": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "size": 4422102},
        "t10k-labels-idx1-ubyte.gz": {
            "md5": "bb300cfdad3c16e7a12a480ee83cd310",
            "sha256": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            "size": 5148},
    },
    "cifar10": {
        "cifar-10-binary.tar.gz": {
            "md5": "c32a1d4ab5d03f1284b67883e8d87530",
            "size": 170052171},
    },
}

# Where lossland.scripts.fetch_data looks for the files, first to last.
# MNIST: torchvision's two mirrors (its MNIST.mirrors) and TensorFlow's
# (storage.googleapis.com/cvdf-datasets); yann.lecun.com is the original.
URLS = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/",
              "http://yann.lecun.com/exdb/mnist/"),
    "fashion_mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}

# The authors' binary tasks: digit parity for MNIST (and digits, npz), classes
# 0-4 against 5-9 for Fashion-MNIST and CIFAR-10 (nn_jamming's get_dataset).
DEFAULT_CLASSES = {"mnist": "parity", "fashion_mnist": "0-4/5-9",
                   "cifar10": "0-4/5-9", "digits": "parity", "npz": "parity"}

_CIFAR_DIR = "cifar-10-batches-bin"
_CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST = "test_batch.bin"
_CIFAR_RECORD = 1 + 3 * 32 * 32


class DataError(ValueError):
  """Bad input about data (exit status 2 in the scripts): a data file that is
  missing, fails its checksum or cannot be used, and impossible requests (sizes,
  classes, splits, PCA dimension). The message is one line that names the file
  (if any) and says what to do.
  """


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


def _check_sizes(P, n_test, d, available=None, what="the data set"):
  if P <= 0:
    raise DataError(f"P must be positive, got {P}")
  if n_test < 0:
    raise DataError(f"n_test must be >= 0, got {n_test}")
  if d <= 0:
    raise DataError(f"d must be positive, got {d}")
  if available is not None and P + n_test > available:
    raise DataError(f"asked for P={P} training + {n_test} test points but "
                     f"{what} has only {available}")


def _balanced_labels(n, dtype):
  # Alternating +-1 by index, as nn_jamming: exactly balanced, independent of x.
  return jnp.where(jnp.arange(n) % 2 == 0, 1, -1).astype(dtype)


def sphere(key, P: int, d: int, n_test: int = 0, dtype=None) -> Dataset:
  """Random data: x uniform on the sphere of radius sqrt(d), random labels.

  Labels alternate +-1 by index, so they are balanced and independent of x;
  the test set is drawn the same way (its error is 1/2 for any predictor).
  """
  _check_sizes(P, n_test, d)
  dt = dtypes.float_dtype(dtype)
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
  dt = dtypes.float_dtype(dtype)
  k_x, k_t = jax.random.split(key)
  x = normalize_to_sphere(jax.random.normal(k_x, (P + n_test, d), dt))
  cfg = nets.NetConfig(d=d, width=max(teacher_width, 1), depth=teacher_depth)
  init_fn, apply_fn = nets.make_net(cfg, dtype=dt)
  f = apply_fn(init_fn(k_t), x)
  y = jnp.where(f >= 0, 1, -1).astype(dt)
  return Dataset(x[:P], y[:P], x[P:], y[P:])


def flip_labels(key, y, fraction: float) -> jax.Array:
  """Flips the sign of exactly ``round(fraction * n)`` of the labels ``y`` [n].

  The flipped points are drawn uniformly without replacement from ``key``
  (a random permutation), so the same key flips the same points. The
  classic way to make the peak of the test error at the interpolation
  threshold visible (label noise; e.g. Nakkiran et al. 2019,
  arXiv:1912.02292).

  Args:
    key: PRNG key.
    y: [n] labels +-1.
    fraction: in [0, 1].

  Returns:
    [n] labels, same dtype.
  """
  return jnp.where(flip_mask(key, y.shape[0], fraction), -y, y)


def flip_mask(key, n: int, fraction: float) -> jax.Array:
  """Which of ``n`` labels :func:`flip_labels` flips with ``key``: [n] bool.

  Exactly ``round(fraction * n)`` entries are True: the first ones of
  ``jax.random.permutation(key, n)``.

  Raises:
    DataError: ``fraction`` is not in [0, 1].
  """
  if not 0.0 <= fraction <= 1.0:
    raise DataError(f"label noise must be a fraction in [0, 1], got {fraction}")
  m = int(round(fraction * n))
  return jnp.zeros((n,), bool).at[jax.random.permutation(key, n)[:m]].set(True)


def label_noise_key(key):
  """The key of :func:`make_dataset`'s label noise: ``fold_in(key, LABEL_NOISE_STREAM)``.

  ``key`` is the data key (the ensemble job's ``jax.random.key(data_seed)``);
  the noise stream is independent of the draw of a synthetic data set, which
  uses ``key`` itself.
  """
  return jax.random.fold_in(key, LABEL_NOISE_STREAM)


def with_label_noise(ds: Dataset, key, fraction: float) -> Dataset:
  """``ds`` with :func:`flip_labels` applied to the training labels only.

  The test labels stay clean: the test error measures the clean task.
  """
  if fraction == 0:
    return ds
  return ds._replace(y_train=flip_labels(key, ds.y_train, fraction))


# ---------------------------------------------------------------------------
# Class labels -> +-1: the one class-subset helper of every real data set.


def parse_classes(classes):
  """Normalizes a class specification.

  Args:
    classes: ``"parity"`` (even -> +1, odd -> -1); two groups of class labels,
      the first -> +1 and the second -> -1, classes in neither are dropped,
      given as a pair of sequences ``((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))`` or a
      string ``"0-4/5-9"``, ``"3/5"``, ``"0,2,4/1,3"``.

  Returns:
    ``"parity"`` or a pair of disjoint, non-empty tuples of ints.
  """
  if isinstance(classes, str):
    spec = classes.strip().lower()
    if spec == "parity":
      return "parity"
    parts = spec.split("/")
    if len(parts) != 2:
      raise DataError(f"classes {classes!r}: expected 'parity' or two groups "
                       "of class labels like '0-4/5-9' or '3/5'")
    groups = []
    for part in parts:
      group = []
      for item in filter(None, (s.strip() for s in part.split(","))):
        m = re.fullmatch(r"(-?\d+)(?:-(-?\d+))?", item)
        if not m:
          raise DataError(f"classes {classes!r}: {item!r} is not a class "
                           "label or a range like 0-4")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
          raise DataError(f"classes {classes!r}: empty range {item!r}")
        group.extend(range(lo, hi + 1))
      groups.append(group)
  else:
    try:
      groups = [[int(c) for c in g] for g in classes]
    except TypeError:
      raise DataError(f"classes {classes!r}: expected 'parity' or two groups "
                       "of class labels") from None
    if len(groups) != 2:
      raise DataError(f"classes {classes!r}: expected two groups of class "
                       "labels (+1 and -1)")
  pos, neg = (tuple(dict.fromkeys(g)) for g in groups)
  if not pos or not neg:
    raise DataError(f"classes {classes!r}: both groups need at least one class")
  if set(pos) & set(neg):
    raise DataError(f"classes {classes!r}: classes {sorted(set(pos) & set(neg))} "
                     "are in both groups")
  return pos, neg


def describe_classes(classes) -> str:
  """A short text for messages: how class labels map to +-1."""
  spec = parse_classes(classes)
  if spec == "parity":
    return "parity (even -> +1, odd -> -1)"
  fmt = lambda g: "{" + ", ".join(map(str, g)) + "}"
  return f"{fmt(spec[0])} -> +1, {fmt(spec[1])} -> -1"


def binary_labels(labels, classes=None, source: str = "labels") -> tuple:
  """Maps integer class labels to +-1 and selects the classes that are used.

  The one label mapping of every real data set (digits, npz, MNIST,
  Fashion-MNIST, CIFAR-10). With ``classes=None`` labels that are all in
  {-1, +1} are used as they are and other integer labels map by parity; with
  an explicit ``classes`` (see :func:`parse_classes`) that mapping is used and
  points of classes outside its two groups are dropped.

  Args:
    labels: [n] integer class labels (any integer or integer-valued dtype).
    classes: None, "parity", or two groups of classes.
    source: the file or data set named in error messages.

  Returns:
    ``(keep, y)``: indices [m] of the points used (in their original order)
    and their labels y [m] in {-1, +1} (int8).

  Raises:
    DataError: if fewer than two classes remain, e.g. labels {1, 3} by parity.
  """
  labels = np.asarray(labels)
  present = np.unique(labels)
  if classes is None or (isinstance(classes, str)
                         and classes.strip().lower() == "parity"):
    if present.size and set(present.tolist()) <= {-1, 1}:
      keep = np.arange(labels.shape[0])
      y = np.where(labels > 0, 1, -1).astype(np.int8)
      how = "labels +-1 used as they are"
    else:
      keep = np.arange(labels.shape[0])
      y = np.where(labels % 2 == 0, 1, -1).astype(np.int8)
      how = "integer labels map by parity (even -> +1, odd -> -1)"
  else:
    pos, neg = parse_classes(classes)
    in_pos, in_neg = np.isin(labels, pos), np.isin(labels, neg)
    keep = np.flatnonzero(in_pos | in_neg)
    y = np.where(in_pos[keep], 1, -1).astype(np.int8)
    how = f"classes {describe_classes((pos, neg))}, other classes dropped"
  if not (np.any(y == 1) and np.any(y == -1)):
    shown = present.tolist()[:12]
    example = (f"'{shown[0]}/{shown[1]}'" if len(shown) >= 2 else "'0-4/5-9'")
    raise DataError(
        f"{source}: labels {shown}{'...' if present.size > 12 else ''} give "
        f"{'no points' if y.size == 0 else 'only one class'} ({how}); "
        f"a binary task needs both +1 and -1: give a class split such as "
        f"classes={example}")
  return keep, y


def interleave_classes(labels, groups=(1, -1)) -> tuple:
  """A deterministic balanced order: the classes take turns.

  Points of ``groups[0]``, ``groups[1]``, ... are taken in turn, each class in
  its original order, while every class has points left; the points left over
  (of the larger classes) follow in their original order. Every prefix of the
  balanced part is balanced, which is how nn_jamming splits MNIST (no RNG).

  Args:
    labels: [n] labels.
    groups: the label values that take turns (default: +1 first, then -1).

  Returns:
    ``(order, n_balanced)``: a permutation of ``arange(n)`` restricted to
    points whose label is in ``groups`` [m], and the length of its balanced
    prefix (``len(groups)`` times the size of the smallest class).
  """
  labels = np.asarray(labels)
  members = [np.flatnonzero(labels == g) for g in groups]
  m = min(len(idx) for idx in members)
  k = len(members)
  order = np.empty(k * m, np.int64)
  for j, idx in enumerate(members):
    order[j::k] = idx[:m]
  rest = np.sort(np.concatenate([idx[m:] for idx in members]))
  return np.concatenate([order, rest]), k * m


# Up to this many points or dimensions the PCA is the SVD of the centred data
# (every earlier result, e.g. the digits, is unchanged); beyond it, the eigh of
# the smaller of the covariance [D, D] and the Gram matrix [n, n], which is
# 10-25x faster for image data (1000 CIFAR images: 2 s instead of 53 s here).
_SVD_MAX = 256


def pca_whiten(x_fit: np.ndarray, d: int) -> tuple:
  """Fits a whitening PCA with d components on x_fit [n, D].

  Small problems (``min(n, D) <= 256``) use the SVD of the centred data;
  larger ones the symmetric eigendecomposition of the smaller of the
  covariance and the Gram matrix, each component's sign fixed so that its
  largest loading is positive. Both give the same whitened subspace.

  Returns:
    (mean [D], components [D, d], scale [d]); project with :func:`apply_pca`.
  """
  x_fit = np.asarray(x_fit, np.float64)
  n, D = x_fit.shape
  if d > min(n, D):
    raise DataError(f"cannot keep d={d} PCA components from {n} points "
                    f"of dimension {D}")
  mean = x_fit.mean(axis=0)
  xc = x_fit - mean
  if min(n, D) <= _SVD_MAX:
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    lam, comps = s[:d] ** 2, vt[:d].T
  else:
    if n >= D:
      lam, comps = np.linalg.eigh(xc.T @ xc)
      lam, comps = lam[::-1][:d], comps[:, ::-1][:, :d]
    else:
      lam, u = np.linalg.eigh(xc @ xc.T)
      lam, u = lam[::-1][:d], u[:, ::-1][:, :d]
      comps = (xc.T @ u) / np.sqrt(np.maximum(lam, 1e-300))
    top = np.argmax(np.abs(comps), axis=0)
    comps = comps * np.where(comps[top, np.arange(d)] < 0, -1.0, 1.0)
  eig = lam / max(n - 1, 1)
  if np.any(eig <= 1e-12 * max(eig[0], 1e-300)):
    raise DataError(f"d={d} exceeds the rank of the data")
  return mean, comps, 1.0 / np.sqrt(eig)


def apply_pca(x: np.ndarray, mean, components, scale) -> np.ndarray:
  """Projects x [n, D] on the whitened principal components: [n, d]."""
  return ((np.asarray(x, np.float64) - mean) @ components) * scale


SPLITS = ("official", "pooled")


def _flat(x) -> np.ndarray:
  """[n, ...] -> [n, D]: each point's inputs flattened."""
  x = np.asarray(x)
  return x.reshape(x.shape[0], -1)


def _split_pooled(x_train, x_test, keep, y, P: int, n_test, d: int,
                  source: str) -> tuple:
  """Step 2 of :func:`prepare`, ``split="pooled"``: train and test points pooled
  (train first) in the balanced order, the first P train, the next n_test test.

  Args:
    x_train, x_test: [n, D] and [n', D] (or None) flattened inputs.
    keep, y: :func:`binary_labels` of the pooled labels.

  Returns:
    ``(x_tr_raw [P, D], y_tr [P], x_te_raw [n_test, D], y_te [n_test], n_test)``.
  """
  x_pool = np.concatenate([x_train, x_test]) if x_test is not None else x_train
  order, _ = interleave_classes(y)
  if n_test is None:
    n_test = max(len(order) - P, 0)
  _check_sizes(P, n_test, d, available=len(order), what=source)
  idx = keep[order]
  train, test = idx[:P], idx[P:P + n_test]
  return (x_pool[train], y[order[:P]], x_pool[test], y[order[P:P + n_test]],
          n_test)


def _split_official(x_train, x_test, keep, y, n_tr: int, P: int, n_test,
                    d: int, source: str) -> tuple:
  """Step 2 of :func:`prepare`, ``split="official"``: the first P points of the
  official training set and the first n_test of the official test set, each in
  its balanced order.

  Args:
    x_train, x_test: [n, D] and [n', D] (or None) flattened inputs.
    keep, y: :func:`binary_labels` of the training labels followed by the test
      labels.
    n_tr: the number of training labels.

  Returns:
    ``(x_tr_raw [P, D], y_tr [P], x_te_raw [n_test, D], y_te [n_test], n_test)``.
  """
  if x_test is None:
    raise DataError(f"{source} has no separate test set: use split='pooled'")
  is_tr = keep < n_tr
  y_a, keep_a = y[is_tr], keep[is_tr]
  y_b, keep_b = y[~is_tr], keep[~is_tr] - n_tr
  order_a, _ = interleave_classes(y_a)
  order_b, _ = interleave_classes(y_b)
  if n_test is None:
    n_test = len(order_b)
  _check_sizes(P, n_test, d)
  if P > len(order_a):
    raise DataError(f"asked for P={P} training points but the training set "
                     f"of {source} has only {len(order_a)}")
  if n_test > len(order_b):
    raise DataError(f"asked for {n_test} test points but the test set of "
                     f"{source} has only {len(order_b)}")
  return (x_train[keep_a[order_a[:P]]], y_a[order_a[:P]],
          x_test[keep_b[order_b[:n_test]]], y_b[order_b[:n_test]], n_test)


def _to_inputs(x_raw, labels, d: int, pca_fit, dt) -> tuple:
  """Step 3 of :func:`prepare` on some points: the whitening PCA ``pca_fit``
  (mean, components, scale; None: the raw inputs), each point normalized to
  norm sqrt(d); (x [n, d], y [n]) as JAX arrays of dtype ``dt``."""
  z = (apply_pca(x_raw, *pca_fit) if pca_fit is not None
       else np.asarray(x_raw, np.float64))
  z = z * (np.sqrt(d) / np.maximum(np.linalg.norm(z, axis=1, keepdims=True),
                                   1e-300))
  return jnp.asarray(z, dt), jnp.asarray(labels.astype(np.float64), dt)


def prepare(x_train, labels_train, P: int, d: int, n_test: int | None = None,
            x_test=None, labels_test=None, *, classes=None, split="pooled",
            dtype=None, source: str = "data", pca: bool = True) -> Dataset:
  """The authors' preprocessing of a labelled image set into a ``Dataset``.

  1. Labels to +-1 with :func:`binary_labels` (classes outside ``classes``
     dropped), the same mapping for train and test.
  2. Split. ``"pooled"`` (nn_jamming's protocol): train and test points are
     pooled (train first), put in the balanced order of
     :func:`interleave_classes` (+1, -1, +1, ...), the first P train and the
     next ``n_test`` (default: all the rest) test. ``"official"``: the P
     training points are the first P of the official training set in that
     order, the test points the first ``n_test`` (default: all) of the
     official test set in that order.
  3. Whitening PCA to d components fitted on the P training points only
     (:func:`pca_whiten`), applied to every point; each point is then
     normalized to norm sqrt(d). With ``pca=False`` the raw inputs are kept
     (d must be their flattened size; e.g. images for a convolutional net,
     which reshapes them back) and only normalized to norm sqrt(d).

  Args:
    x_train: [n, ...] inputs (any shape per point; flattened), any real dtype.
    labels_train: [n] integer class labels.
    x_test, labels_test: the official test set, or None.
    classes: see :func:`binary_labels`.
    split: "pooled" or "official".
    dtype: dtype of the returned arrays (default: JAX's default float).
    source: named in error messages.

  Returns:
    Dataset with x_train [P, d], y_train [P], x_test [n_test, d], y_test [n_test].
  """
  if split not in SPLITS:
    raise DataError(f"unknown split {split!r}; choose from {SPLITS}")
  x_train = _flat(x_train)
  if not pca and d != x_train.shape[1]:
    raise DataError(f"without PCA the {x_train.shape[1]} raw inputs of {source} are "
                    f"kept: d must be {x_train.shape[1]}, got {d}")
  has_test = x_test is not None
  if has_test:
    x_test = _flat(x_test)
  all_labels = (np.concatenate([labels_train, labels_test]) if has_test
                else np.asarray(labels_train))
  keep, y = binary_labels(all_labels, classes, source)
  if split == "pooled":
    parts = _split_pooled(x_train, x_test, keep, y, P, n_test, d, source)
  else:
    parts = _split_official(x_train, x_test, keep, y, len(labels_train), P,
                            n_test, d, source)
  x_tr_raw, y_tr, x_te_raw, y_te, n_test = parts
  pca_fit = pca_whiten(x_tr_raw, d) if pca else None
  dt = dtypes.float_dtype(dtype)
  x_tr, y_tr = _to_inputs(x_tr_raw, y_tr, d, pca_fit, dt)
  x_te, y_te = (_to_inputs(x_te_raw, y_te, d, pca_fit, dt) if n_test else
                (jnp.zeros((0, d), dt), jnp.zeros((0,), dt)))
  return Dataset(x_tr, y_tr, x_te, y_te)


# ---------------------------------------------------------------------------
# The scikit-learn digits.


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


def digits(P: int, d: int, n_test: int | None = None, dtype=None,
           classes=None, pca: bool = True) -> Dataset:
  """scikit-learn digits, label = parity (+1 even, -1 odd), PCA to d with whitening.

  Deterministic split (as nn_jamming does for MNIST): even and odd images are
  interleaved in their original order, so every prefix is balanced; the first
  P are the training set and the next ``n_test`` (default: all the rest) the
  test set. The whitening PCA is fitted on the training points only, then
  every point is normalized to norm sqrt(d). ``classes`` replaces parity by
  two groups of digits (see :func:`binary_labels`). ``pca=False`` keeps the
  64 raw pixels (d = 64; row-major 8x8 images, e.g. for a convolutional net),
  each image normalized to norm 8.
  """
  x, labels = load_digits_raw()
  return prepare(x, labels, P, d, n_test, classes=classes, split="pooled",
                 dtype=dtype, source="digits", pca=pca)


# ---------------------------------------------------------------------------
# Files: the data directory, checksums, IDX and CIFAR-10 binary readers.


def default_data_dir() -> str:
  """The per-user data cache: ``$LOSSLAND_DATA_DIR``, else
  ``$XDG_CACHE_HOME/lossland/data``, else ``~/.cache/lossland/data``.
  Each data set has its own subfolder (``mnist/``, ``fashion_mnist/``, ``cifar10/``)."""
  env = os.environ.get("LOSSLAND_DATA_DIR")
  if env:
    return os.path.expanduser(env)
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return os.path.join(cache, "lossland", "data")


def dataset_dir(name: str, data_dir: str | None = None) -> str:
  """The folder of data set ``name``: ``<data_dir>/<name>``."""
  if name not in IMAGE_DATASETS:
    raise DataError(f"unknown image data set {name!r}; choose from {IMAGE_DATASETS}")
  return os.path.join(data_dir or default_data_dir(), name)


def fetch_hint(name: str, data_dir: str | None = None) -> str:
  """What to run to get the files of ``name``."""
  where = f" --data_dir {data_dir}" if data_dir else ""
  return f"run python -m lossland.scripts.fetch_data {name}{where}"


def file_digests(path: str) -> dict:
  """MD5 and SHA-256 (hex) and size of a file, read once in 1 MiB chunks."""
  md5 = hashlib.md5(usedforsecurity=False)
  sha = hashlib.sha256()
  size = 0
  with open(path, "rb") as fh:
    for chunk in iter(lambda: fh.read(1 << 20), b""):
      md5.update(chunk)
      sha.update(chunk)
      size += len(chunk)
  return {"md5": md5.hexdigest(), "sha256": sha.hexdigest(), "size": size}


def checksum_problem(path: str, expected: dict) -> str | None:
  """None if the file's hashes equal ``expected`` (keys md5 and/or sha256),
  else a short description of the difference."""
  got = file_digests(path)
  for algo in ("sha256", "md5"):
    want = expected.get(algo)
    if want and got[algo] != want.lower():
      size = expected.get("size")
      if size and got["size"] < size:
        return (f"is {got['size']} bytes, the official file has {size} "
                f"(truncated download?)")
      return f"{algo} {got[algo]} differs from the official {want}"
  if not any(expected.get(a) for a in ("sha256", "md5")):
    return "has no checksum to compare with"
  return None


def verify_file(path: str, expected: dict, hint: str) -> None:
  """Raises DataError if ``path``'s checksum is not ``expected``."""
  problem = checksum_problem(path, expected)
  if problem:
    raise DataError(f"{path}: checksum mismatch: the file {problem}; delete it "
                    f"and {hint}, or pass --noverify_data")


def _require(path: str, name: str, data_dir) -> None:
  if not os.path.isfile(path):
    raise DataError(f"{path}: file not found; {fetch_hint(name, data_dir)} "
                    "(or put the official files there)")


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4",
              0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(buf: bytes, source: str = "IDX data") -> np.ndarray:
  """Parses the IDX format of MNIST (LeCun's page): a 4-byte magic number
  (two zero bytes, a type code, the number of dimensions), the dimensions as
  big-endian uint32, then the values in C order, big-endian.

  Returns:
    an array of the stored shape, native byte order.
  """
  if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_TYPES:
    raise DataError(f"{source}: not an IDX file (bad magic number "
                    f"{buf[:4].hex() or 'missing'}); delete it and get the "
                    "official file")
  ndim = buf[3]
  dtype = np.dtype(_IDX_TYPES[buf[2]])
  header = 4 + 4 * ndim
  if ndim == 0 or len(buf) < header:
    raise DataError(f"{source}: truncated IDX header; delete it and get the "
                    "official file")
  shape = struct.unpack(f">{ndim}I", buf[4:header])
  n_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(buf) - header != n_bytes:
    raise DataError(f"{source}: IDX header says shape {shape} ({n_bytes} bytes) "
                    f"but {len(buf) - header} bytes follow (truncated file?); "
                    "delete it and get the official file")
  arr = np.frombuffer(buf, dtype, offset=header).reshape(shape)
  return arr.astype(dtype.newbyteorder("="), copy=False)


def _gunzip(path: str, hint: str) -> bytes:
  try:
    with gzip.open(path, "rb") as fh:
      return fh.read()
  except (OSError, EOFError, zlib.error) as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise DataError(f"{path}: truncated or corrupt gzip file ({reason}); "
                    f"delete it and {hint}") from None


def read_idx(path: str, hint: str = "get the official file again") -> np.ndarray:
  """Reads an IDX file (gzip-compressed if its name ends in .gz). See
  :func:`parse_idx`."""
  if path.endswith(".gz"):
    buf = _gunzip(path, hint)
  else:
    with open(path, "rb") as fh:
      buf = fh.read()
  return parse_idx(buf, path)


def _check_pair(images, labels, img_path, lab_path, n_classes=10):
  if labels.ndim != 1:
    raise DataError(f"{lab_path}: labels must be one-dimensional, got shape "
                    f"{labels.shape}; delete it and get the official file")
  if images.shape[0] != labels.shape[0]:
    raise DataError(f"{img_path}: {images.shape[0]} images but {lab_path} has "
                    f"{labels.shape[0]} labels; delete both and get the "
                    "official files")
  if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
    raise DataError(f"{lab_path}: labels outside 0..{n_classes - 1}; delete it "
                    "and get the official file")


def load_mnist_raw(name: str = "mnist", data_dir: str | None = None,
                   verify: bool = True, checksums: dict | None = None) -> tuple:
  """The raw MNIST or Fashion-MNIST arrays from the four official IDX .gz files
  in ``<data_dir>/<name>/``.

  Args:
    name: "mnist" or "fashion_mnist".
    data_dir: the data directory (default :func:`default_data_dir`).
    verify: check each file against ``checksums`` first.
    checksums: ``{file name: {"md5": ..., "sha256": ...}}`` (default
      ``CHECKSUMS[name]``).

  Returns:
    (x_train uint8 [60000, 28, 28], y_train uint8 [60000],
     x_test uint8 [10000, 28, 28], y_test uint8 [10000]) for the official files.
  """
  if name not in ("mnist", "fashion_mnist"):
    raise DataError(f"{name!r} is not an IDX data set (mnist, fashion_mnist)")
  folder = dataset_dir(name, data_dir)
  table = CHECKSUMS[name] if checksums is None else checksums
  hint = fetch_hint(name, data_dir)
  out = []
  for prefix in ("train", "t10k"):
    img = os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz")
    lab = os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz")
    for path in (img, lab):
      _require(path, name, data_dir)
      if verify:
        verify_file(path, table.get(os.path.basename(path), {}), hint)
    images, labels = read_idx(img, hint), read_idx(lab, hint)
    if images.ndim != 3:
      raise DataError(f"{img}: expected images [n, rows, cols], got shape "
                      f"{images.shape}; delete it and {hint}")
    _check_pair(images, labels, img, lab)
    out += [images, labels]
  if out[0].shape[1:] != out[2].shape[1:]:
    raise DataError(f"{folder}: training images are {out[0].shape[1:]} but test "
                    f"images {out[2].shape[1:]}; delete the files and {hint}")
  return tuple(out)


def parse_cifar_records(buf: bytes, source: str) -> tuple:
  """CIFAR-10 binary records: 1 label byte + 3072 pixel bytes (1024 red, 1024
  green, 1024 blue, each 32x32 row-major). Returns (images uint8 [n, 3, 32, 32],
  labels uint8 [n])."""
  if len(buf) == 0 or len(buf) % _CIFAR_RECORD:
    raise DataError(f"{source}: {len(buf)} bytes is not a whole number of "
                    f"{_CIFAR_RECORD}-byte CIFAR-10 records (truncated or not "
                    "the binary version)")
  rec = np.frombuffer(buf, np.uint8).reshape(-1, _CIFAR_RECORD)
  labels = rec[:, 0].copy()
  if labels.max() > 9:
    raise DataError(f"{source}: labels outside 0..9 (not the CIFAR-10 binary "
                    "version?)")
  return rec[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def load_cifar10_raw(data_dir: str | None = None, verify: bool = True,
                     checksums: dict | None = None) -> tuple:
  """The raw CIFAR-10 arrays from the binary version in ``<data_dir>/cifar10/``.

  Reads ``cifar-10-binary.tar.gz`` in memory (no extraction) when present,
  else the extracted folder ``cifar-10-batches-bin/`` (``data_batch_1..5.bin``,
  ``test_batch.bin``). The official checksum covers the tarball only, so the
  extracted folder is read only with ``verify=False``.

  Returns:
    (x_train uint8 [50000, 3, 32, 32], y_train uint8 [50000],
     x_test uint8 [10000, 3, 32, 32], y_test uint8 [10000]).
  """
  folder = dataset_dir("cifar10", data_dir)
  table = CHECKSUMS["cifar10"] if checksums is None else checksums
  hint = fetch_hint("cifar10", data_dir)
  tar_path = os.path.join(folder, "cifar-10-binary.tar.gz")
  ext_dir = os.path.join(folder, _CIFAR_DIR)
  wanted = _CIFAR_TRAIN + (_CIFAR_TEST,)
  bufs = {}
  if os.path.isfile(tar_path):
    if verify:
      verify_file(tar_path, table.get("cifar-10-binary.tar.gz", {}), hint)
    try:
      with tarfile.open(tar_path, "r:gz") as tar:
        for member in tar:
          base = os.path.basename(member.name)
          if (member.isfile() and base in wanted
              and os.path.dirname(member.name).endswith(_CIFAR_DIR)):
            bufs[base] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
      reason = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise DataError(f"{tar_path}: truncated or corrupt tarball ({reason}); "
                      f"delete it and {hint}") from None
    missing = [w for w in wanted if w not in bufs]
    if missing:
      raise DataError(f"{tar_path}: has no {_CIFAR_DIR}/{missing[0]} (not the "
                      f"CIFAR-10 binary version?); delete it and {hint}")
    sources = {w: f"{tar_path}:{_CIFAR_DIR}/{w}" for w in wanted}
  elif os.path.isdir(ext_dir):
    if verify:
      raise DataError(f"{ext_dir}: extracted files cannot be checked against the "
                      f"official checksum (it covers cifar-10-binary.tar.gz): put "
                      f"the tarball in {folder}, or pass --noverify_data")
    for w in wanted:
      path = os.path.join(ext_dir, w)
      if not os.path.isfile(path):
        raise DataError(f"{path}: file not found; {hint}")
      with open(path, "rb") as fh:
        bufs[w] = fh.read()
    sources = {w: os.path.join(ext_dir, w) for w in wanted}
  else:
    raise DataError(f"{tar_path}: file not found (nor {ext_dir}); {hint} "
                    "(or put the official tarball there)")
  parts = [parse_cifar_records(bufs[w], sources[w]) for w in _CIFAR_TRAIN]
  x_test, y_test = parse_cifar_records(bufs[_CIFAR_TEST], sources[_CIFAR_TEST])
  x_train = np.concatenate([p[0] for p in parts])
  y_train = np.concatenate([p[1] for p in parts])
  return x_train, y_train, x_test, y_test


def load_raw(name: str, data_dir: str | None = None, verify: bool = True,
             checksums: dict | None = None) -> tuple:
  """``(x_train, y_train, x_test, y_test)`` of an image data set, as stored
  (uint8 images, integer class labels). See :func:`load_mnist_raw` and
  :func:`load_cifar10_raw`."""
  if name == "cifar10":
    return load_cifar10_raw(data_dir, verify, checksums)
  return load_mnist_raw(name, data_dir, verify, checksums)


def image_dataset(name: str, P: int, d: int, n_test: int | None = None, *,
                  data_dir: str | None = None, verify: bool = True,
                  classes=None, split: str = "official", dtype=None,
                  checksums: dict | None = None) -> Dataset:
  """MNIST, Fashion-MNIST or CIFAR-10 from the official files, preprocessed as
  the authors do (see :func:`prepare`).

  Args:
    name: "mnist", "fashion_mnist" or "cifar10".
    P, d: training points and PCA dimension.
    n_test: test points (default: all: the whole official test set, or all
      points not used for training with ``split="pooled"``).
    data_dir: folder holding ``<name>/`` (default :func:`default_data_dir`).
    verify: check the files against the official checksums first.
    classes: the binary task (default :data:`DEFAULT_CLASSES`: parity for
      MNIST, 0-4 vs 5-9 for Fashion-MNIST and CIFAR-10).
    split: "official" (train from the official training set, test from the
      official test set) or "pooled" (the authors' interleaved pooled split).
    checksums: replaces ``CHECKSUMS[name]`` (tests).
  """
  if split not in SPLITS:
    raise DataError(f"unknown split {split!r}; choose from {SPLITS}")
  x_tr, l_tr, x_te, l_te = load_raw(name, data_dir, verify, checksums)
  cls = DEFAULT_CLASSES[name] if classes is None else classes
  return prepare(x_tr, l_tr, P, d, n_test, x_te, l_te, classes=cls,
                 split=split, dtype=dtype, source=dataset_dir(name, data_dir))


def mnist(P: int, d: int, n_test: int | None = None, **kwargs) -> Dataset:
  """MNIST, label = digit parity (+1 even, -1 odd), whitening PCA to d.
  Keyword arguments as :func:`image_dataset`."""
  return image_dataset("mnist", P, d, n_test, **kwargs)


def fashion_mnist(P: int, d: int, n_test: int | None = None, **kwargs) -> Dataset:
  """Fashion-MNIST, classes 0-4 (+1) against 5-9 (-1), whitening PCA to d.
  Keyword arguments as :func:`image_dataset`."""
  return image_dataset("fashion_mnist", P, d, n_test, **kwargs)


def cifar10(P: int, d: int, n_test: int | None = None, **kwargs) -> Dataset:
  """CIFAR-10 (binary version), classes 0-4 (airplane, automobile, bird, cat,
  deer: +1) against 5-9 (-1), whitening PCA to d. Keyword arguments as
  :func:`image_dataset`."""
  return image_dataset("cifar10", P, d, n_test, **kwargs)


# ---------------------------------------------------------------------------
# A user's .npz file.


def _npz_array(z, key: str, path: str) -> np.ndarray:
  try:
    a = z[key]
  except ValueError as e:
    if "pickle" in str(e).lower() or "object" in str(e).lower():
      raise DataError(f"{path}: array {key!r} holds Python objects (dtype "
                      "object), which are not read; save numeric arrays with "
                      "numpy.savez") from None
    raise DataError(f"{path}: array {key!r} is corrupt "
                    f"({str(e).splitlines()[0][:120]}); write the file again "
                    "with numpy.savez") from None
  except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as e:
    reason = (str(e).splitlines() or [type(e).__name__])[0][:120]
    raise DataError(f"{path}: array {key!r} is truncated or corrupt ({reason}); "
                    "write the file again with numpy.savez") from None
  if not isinstance(a, np.ndarray):
    raise DataError(f"{path}: member {key!r} is not a NumPy array (corrupt "
                    "file?); write the file again with numpy.savez")
  return a


def _check_npz_inputs(a, key, path):
  if a.dtype.kind not in "biuf":
    raise DataError(f"{path}: {key} has dtype {a.dtype}; inputs must be numbers")
  if a.ndim == 0:
    raise DataError(f"{path}: {key} is a scalar; expected one row per point")
  if a.shape[0] == 0:
    raise DataError(f"{path}: {key} is empty (shape {a.shape}); it needs at "
                    "least one point")
  a = a.reshape(a.shape[0], -1)
  if a.shape[1] == 0:
    raise DataError(f"{path}: {key} has no values per point (shape {a.shape})")
  if not np.all(np.isfinite(a)):
    raise DataError(f"{path}: {key} contains non-finite values (NaN or inf)")
  return a


def _check_npz_labels(a, key, n, path):
  if a.dtype.kind in "USO":
    raise DataError(f"{path}: {key} holds strings (dtype {a.dtype}); labels must "
                    "be integer classes or +-1")
  if a.dtype.kind not in "biuf":
    raise DataError(f"{path}: {key} has dtype {a.dtype}; labels must be integer "
                    "classes or +-1")
  a = a.reshape(-1) if a.ndim else a.reshape(1)
  if a.shape[0] != n:
    raise DataError(f"{path}: {key} has {a.shape[0]} labels but there are {n} "
                    "points")
  if a.dtype.kind == "f":
    if not np.all(np.isfinite(a)):
      raise DataError(f"{path}: {key} contains non-finite labels (NaN or inf)")
    if not np.all(np.mod(a, 1) == 0):
      bad = a[np.mod(a, 1) != 0][0]
      raise DataError(f"{path}: {key} has the non-integer label {bad:g}; labels "
                      "must be integer classes or +-1")
  return a.astype(np.int64)


def read_npz(path: str) -> tuple:
  """Reads and checks ``x_train, y_train[, x_test, y_test]`` from an .npz.

  Returns:
    (x_train [n, D], y_train [n] int64, x_test [m, D] or None, y_test or None)
    with inputs flattened per point and as stored (no conversion of x).

  Raises:
    DataError: missing, empty, truncated or corrupt file; missing arrays;
      strings or non-finite values; mismatched lengths or test dimension.
  """
  if not os.path.isfile(path):
    raise DataError(f"data file not found: {path}")
  if os.path.getsize(path) == 0:
    raise DataError(f"{path}: the file is empty (0 bytes); save x_train, "
                    "y_train[, x_test, y_test] with numpy.savez")
  with open(path, "rb") as fh:
    head = fh.read(6)
  if head.startswith(b"\x93NUMPY"):
    raise DataError(f"{path}: is a .npy file (one array), not an .npz; save "
                    "x_train, y_train[, x_test, y_test] with numpy.savez")
  if not head.startswith(b"PK"):
    raise DataError(f"{path}: not a readable .npz file (it is not a zip "
                    "archive); save the arrays with numpy.savez")
  try:
    z = np.load(path, allow_pickle=False)
  except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
    reason = (str(e).splitlines() or [type(e).__name__])[0][:120]
    if "pickle" in reason.lower():
      reason = "not an .npz archive"
    raise DataError(f"{path}: not a readable .npz file: truncated or corrupt "
                    f"zip archive ({reason}); write it again with numpy.savez") from None
  with z:
    keys = set(z.files)
    if not keys:
      raise DataError(f"{path}: the .npz holds no arrays; it needs x_train and "
                      "y_train (and optionally x_test, y_test)")
    if not {"x_train", "y_train"} <= keys:
      raise DataError(f"{path}: needs arrays 'x_train' and 'y_train' "
                      f"(found {sorted(keys)})")
    if ("x_test" in keys) != ("y_test" in keys):
      has, lacks = ("x_test", "y_test") if "x_test" in keys else ("y_test", "x_test")
      raise DataError(f"{path}: has {has} but no {lacks}; give both or neither")
    raw = {k: _npz_array(z, k, path) for k in
           ("x_train", "y_train", "x_test", "y_test") if k in keys}
  x_tr = _check_npz_inputs(raw["x_train"], "x_train", path)
  y_tr = _check_npz_labels(raw["y_train"], "y_train", x_tr.shape[0], path)
  if "x_test" not in raw:
    return x_tr, y_tr, None, None
  x_te = _check_npz_inputs(raw["x_test"], "x_test", path)
  if x_te.shape[1] != x_tr.shape[1]:
    raise DataError(f"{path}: x_test has {x_te.shape[1]} values per point but "
                    f"x_train has {x_tr.shape[1]} (shapes {raw['x_test'].shape} "
                    f"and {raw['x_train'].shape}); test points must have the "
                    "dimension of the training points")
  y_te = _check_npz_labels(raw["y_test"], "y_test", x_te.shape[0], path)
  return x_tr, y_tr, x_te, y_te


def from_npz(path: str, P: int, d: int, n_test: int | None = None,
             dtype=None, classes=None, split: str = "pooled") -> Dataset:
  """Loads ``x_train, y_train`` (and optionally ``x_test, y_test``) from an npz.

  Labels (see :func:`binary_labels`): labels that are all in {-1, +1} are used
  as they are; other integer labels map by parity (+1 even, -1 odd) unless a
  class split ``classes`` is given (e.g. ``"0-4/5-9"``). Label sets that do not
  give both classes (e.g. {1, 3} by parity) are refused. Images of any shape
  are flattened. ``split="pooled"`` (default) pools train and test arrays and
  re-splits them as in :func:`digits`; ``"official"`` keeps the file's test set.
  """
  x_tr, y_tr, x_te, y_te = read_npz(path)
  if _is_prepared(path):
    return _prepared(path, x_tr, y_tr, x_te, y_te, P, d, n_test, dtype, classes,
                     split)
  return prepare(x_tr, y_tr, P, d, n_test, x_te, y_te, classes=classes,
                 split=split, dtype=dtype, source=path)


# Marker array of a file written by save_prepared_npz.
PREPARED_KEY = "lossland_prepared"


def save_prepared_npz(ds: Dataset, path: str) -> None:
  """Writes ``ds`` to an .npz that :func:`from_npz` reads back as it is.

  The file holds ``x_train, y_train, x_test, y_test`` (float64) and the marker
  array ``lossland_prepared``; :func:`from_npz` then skips the preprocessing
  (no relabelling, re-split, PCA or normalization) and returns the first P
  training and the first ``n_test`` test points. This is how a data set made
  in Python (your own features, or any transformation of a built-in set)
  reaches the ensemble job (``--dataset npz --data_file``); label noise needs
  no file: it is the job's own option (``--label_noise``). Written to a
  temporary name, then renamed.
  """
  arrays = {k: np.asarray(getattr(ds, k), np.float64)
            for k in ("x_train", "y_train", "x_test", "y_test")}
  tmp = f"{path}.tmp{os.getpid()}.npz"
  np.savez(tmp, **arrays, **{PREPARED_KEY: np.asarray(True)})
  os.replace(tmp, path)


def _is_prepared(path: str) -> bool:
  with np.load(path, allow_pickle=False) as z:
    if PREPARED_KEY not in z.files:
      return False
    flag = _npz_array(z, PREPARED_KEY, path)
  return bool(flag.size == 1 and flag.reshape(()))


def _prepared(path, x_tr, y_tr, x_te, y_te, P, d, n_test, dtype, classes, split):
  if classes is not None or split != "pooled":
    raise DataError(f"{path} is a prepared data set (save_prepared_npz): "
                    "classes and split do not apply")
  if not np.all(np.abs(y_tr) == 1) or (y_te is not None and not np.all(np.abs(y_te) == 1)):
    raise DataError(f"{path}: a prepared data set needs labels +-1")
  n_avail = 0 if x_te is None else x_te.shape[0]
  n_test = n_avail if n_test is None else n_test
  _check_sizes(P, n_test, d)
  if x_tr.shape[1] != d:
    raise DataError(f"{path}: the prepared inputs have d = {x_tr.shape[1]}, got d = {d}")
  if P > x_tr.shape[0] or n_test > n_avail:
    raise DataError(f"{path}: asked for P={P} training and {n_test} test points "
                    f"but the prepared file has {x_tr.shape[0]} and {n_avail}")
  dt = dtypes.float_dtype(dtype)
  cast = lambda a: jnp.asarray(np.asarray(a, np.float64), dt)
  x_te = np.zeros((0, d)) if x_te is None else x_te
  y_te = np.zeros((0,)) if y_te is None else y_te
  return Dataset(cast(x_tr[:P]), cast(y_tr[:P]), cast(x_te[:n_test]),
                 cast(y_te[:n_test]))


def make_dataset(name: str, P: int, d: int, n_test: int | None = None,
                 key=None, data_file: str | None = None,
                 teacher_width: int = 0, teacher_depth: int = 0,
                 dtype=None, *, data_dir: str | None = None,
                 verify: bool = True, classes=None,
                 split: str | None = None, label_noise: float = 0.0) -> Dataset:
  """Builds a data set by name (one of :data:`DATASETS`).

  Args:
    name: "digits", "sphere", "teacher", "npz", "mnist", "fashion_mnist" or
      "cifar10".
    P, d: training points and input dimension (PCA components for real data).
    n_test: test points; None means all remaining points for the real data
      sets (the whole official test set for the image data sets with the
      official split) and P for the synthetic ones.
    key: PRNG key of the synthetic data sets.
    data_file: the .npz file of ``name="npz"``.
    data_dir: folder of the image data sets (default :func:`default_data_dir`).
    verify: check image files against the official checksums.
    classes: the binary task of real data (see :func:`binary_labels`; default
      parity, and 0-4/5-9 for fashion_mnist and cifar10).
    split: "official" or "pooled" (see :func:`prepare`); default "official" for
      the image data sets, "pooled" for digits and npz.
    label_noise: fraction of the training labels flipped
      (:func:`with_label_noise`, keyed by :func:`label_noise_key` of ``key``,
      i.e. ``fold_in(key, LABEL_NOISE_STREAM)``; needs ``key``; the flipped
      points are :func:`flip_mask` of that key and ``P``); the test labels
      stay clean.
  """
  if not 0.0 <= label_noise <= 1.0:
    raise DataError(f"label noise must be a fraction in [0, 1], got {label_noise}")
  if label_noise and key is None:
    raise DataError("label noise needs a PRNG key")
  ds = _make_dataset(name, P, d, n_test, key, data_file, teacher_width,
                     teacher_depth, dtype, data_dir=data_dir, verify=verify,
                     classes=classes, split=split)
  if label_noise:
    ds = with_label_noise(ds, label_noise_key(key), label_noise)
  return ds


def _make_dataset(name, P, d, n_test, key, data_file, teacher_width,
                  teacher_depth, dtype, *, data_dir, verify, classes, split):
  if name not in DATASETS:
    raise DataError(f"unknown dataset {name!r}; choose from {DATASETS}")
  if split is not None and split not in SPLITS:
    raise DataError(f"unknown split {split!r}; choose from {SPLITS}")
  if name in IMAGE_DATASETS:
    return image_dataset(name, P, d, n_test, data_dir=data_dir, verify=verify,
                         classes=classes, split=split or "official", dtype=dtype)
  if name == "digits":
    if split == "official":
      raise DataError("digits has no separate test set: use split='pooled'")
    return digits(P, d, n_test, dtype=dtype, classes=classes)
  if name == "npz":
    if not data_file:
      raise DataError("dataset 'npz' needs a data file (--data_file)")
    return from_npz(data_file, P, d, n_test, dtype=dtype, classes=classes,
                    split=split or "pooled")
  if classes is not None or split is not None:
    raise DataError(f"classes and split apply to real data, not {name!r}")
  if key is None:
    raise DataError(f"dataset {name!r} needs a PRNG key")
  n_test = P if n_test is None else n_test
  if name == "sphere":
    return sphere(key, P, d, n_test, dtype=dtype)
  return teacher(key, P, d, n_test, teacher_width=teacher_width,
                 teacher_depth=teacher_depth, dtype=dtype)
