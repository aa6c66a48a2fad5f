"""Image data from files: IDX (MNIST, Fashion-MNIST) and the CIFAR-10 binary
version, written here in their real formats in tmp_path, plus truncated and
corrupted ones. Ground truth: a plain-loop interleaving and a PCA by eigh of the
training covariance (Gram matrices are invariant to the components' signs)."""
import gzip
import hashlib
import io
import os
import struct
import tarfile

import numpy as np
import pytest

from lossland import data

IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def idx_bytes(arr):
  codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f8"): 0x0E}
  code = codes[arr.dtype]
  return bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_gz(path, payload):
  with gzip.open(path, "wb") as fh:
    fh.write(payload)


def table_of(folder, names):
  """Checksum table of the files as written (they pass verification)."""
  out = {}
  for n in names:
    b = open(os.path.join(folder, n), "rb").read()
    out[n] = {"md5": hashlib.md5(b).hexdigest(),
              "sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}
  return out


def make_idx_set(root, name, n_train=40, n_test=24, seed=0, labels=None):
  rng = np.random.default_rng(seed)
  folder = root / name
  folder.mkdir(parents=True, exist_ok=True)
  x_tr = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
  x_te = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
  if labels is None:
    y_tr = rng.integers(0, 10, n_train).astype(np.uint8)
    y_te = rng.integers(0, 10, n_test).astype(np.uint8)
  else:
    y_tr, y_te = labels
  for fname, arr in zip(IDX_FILES, (x_tr, y_tr, x_te, y_te)):
    write_gz(folder / fname, idx_bytes(arr))
  return (x_tr, y_tr, x_te, y_te), table_of(folder, IDX_FILES)


def cifar_records(rng, n):
  labels = rng.integers(0, 10, n).astype(np.uint8)
  images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
  rec = np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1)
  return images, labels, rec.tobytes()


def make_cifar(root, per_batch=5, n_test=12, seed=0, tarball=True, extracted=False):
  rng = np.random.default_rng(seed)
  folder = root / "cifar10"
  folder.mkdir(parents=True, exist_ok=True)
  files, xs, ys = {}, [], []
  for i in range(1, 6):
    x, y, b = cifar_records(rng, per_batch)
    files[f"data_batch_{i}.bin"] = b
    xs.append(x)
    ys.append(y)
  x_te, y_te, b = cifar_records(rng, n_test)
  files["test_batch.bin"] = b
  files["batches.meta.txt"] = b"airplane\nautomobile\n"
  if tarball:
    with tarfile.open(folder / "cifar-10-binary.tar.gz", "w:gz") as tar:
      for name, payload in files.items():
        info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
  if extracted:
    (folder / "cifar-10-batches-bin").mkdir(exist_ok=True)
    for name, payload in files.items():
      (folder / "cifar-10-batches-bin" / name).write_bytes(payload)
  table = table_of(folder, ["cifar-10-binary.tar.gz"]) if tarball else {}
  return (np.concatenate(xs), np.concatenate(ys), x_te, y_te), table


def loop_interleave(y):
  """Plain loop: +1, -1, +1, ... while both remain, then the rest in order."""
  pos = [i for i in range(len(y)) if y[i] == 1]
  neg = [i for i in range(len(y)) if y[i] == -1]
  order = []
  for a, b in zip(pos, neg):
    order += [a, b]
  m = min(len(pos), len(neg))
  return order + sorted(pos[m:] + neg[m:])


def eigh_pca(x_fit, x, d):
  """Whitening PCA by eigh of the centred n x n Gram matrix of the fitted
  points (the dual of the covariance; another algorithm than the SVD)."""
  x_fit = x_fit.reshape(len(x_fit), -1).astype(np.float64)
  x = x.reshape(len(x), -1).astype(np.float64)
  mu = x_fit.mean(0)
  xc = x_fit - mu
  lam, u = np.linalg.eigh(xc @ xc.T)
  lam, u = lam[-d:], u[:, -d:]
  # covariance eigenvalues lam/(n-1), eigenvectors xc.T u / sqrt(lam)
  z = (x - mu) @ xc.T @ u * np.sqrt(len(x_fit) - 1) / lam
  return z * np.sqrt(d) / np.linalg.norm(z, axis=1, keepdims=True)


def check_against_loop(ds, x_tr, l_tr, x_te, l_te, P, d, to_pm, split):
  """Labels, order, PCA on training points only, norm sqrt(d)."""
  y_tr_all = np.array([to_pm(c) for c in l_tr])
  y_te_all = np.array([to_pm(c) for c in l_te])
  if split == "official":
    keep_tr = [i for i in range(len(y_tr_all)) if y_tr_all[i] != 0]
    keep_te = [i for i in range(len(y_te_all)) if y_te_all[i] != 0]
    o_tr = [keep_tr[i] for i in loop_interleave(y_tr_all[keep_tr])][:P]
    o_te = [keep_te[i] for i in loop_interleave(y_te_all[keep_te])]
    n_te = ds.x_test.shape[0]
    o_te = o_te[:n_te]
    raw_tr, raw_te = x_tr[o_tr], x_te[o_te]
    y_tr, y_te = y_tr_all[o_tr], y_te_all[o_te]
  else:
    x_all = np.concatenate([x_tr, x_te])
    y_all = np.concatenate([y_tr_all, y_te_all])
    keep = [i for i in range(len(y_all)) if y_all[i] != 0]
    order = [keep[i] for i in loop_interleave(y_all[keep])]
    n_te = ds.x_test.shape[0]
    raw_tr, raw_te = x_all[order[:P]], x_all[order[P:P + n_te]]
    y_tr, y_te = y_all[order[:P]], y_all[order[P:P + n_te]]
  np.testing.assert_array_equal(np.asarray(ds.y_train), y_tr)
  np.testing.assert_array_equal(np.asarray(ds.y_test), y_te)
  z_tr, z_te = eigh_pca(raw_tr, raw_tr, d), eigh_pca(raw_tr, raw_te, d)
  xt, xe = np.asarray(ds.x_train), np.asarray(ds.x_test)
  np.testing.assert_allclose(xt @ xt.T, z_tr @ z_tr.T, atol=1e-8)
  np.testing.assert_allclose(xe @ xt.T, z_te @ z_tr.T, atol=1e-8)
  np.testing.assert_allclose(np.linalg.norm(xt, axis=1), np.sqrt(d), rtol=1e-12)
  np.testing.assert_allclose(np.linalg.norm(xe, axis=1), np.sqrt(d), rtol=1e-12)


def parity(c):
  return 1 if c % 2 == 0 else -1


def halves(c):
  return 1 if c <= 4 else -1


def test_idx_parser_reads_big_endian_types():
  a = (np.arange(24).reshape(2, 3, 4) - 5).astype(">i4")
  np.testing.assert_array_equal(data.parse_idx(idx_bytes(a)), a)
  f = np.linspace(-1, 1, 6).astype(">f8")
  out = data.parse_idx(idx_bytes(f))
  assert out.dtype == np.float64 and out.dtype.byteorder in "=<|"
  np.testing.assert_array_equal(out, f)
  with pytest.raises(data.DataError, match="header says shape"):
    data.parse_idx(idx_bytes(a)[:-3], "x.idx")
  with pytest.raises(data.DataError, match="bad magic"):
    data.parse_idx(b"\x1f\x8b\x08\x00abcd", "x.idx")


@pytest.mark.parametrize("split", ["official", "pooled"])
def test_mnist_parity_pca_on_train_only(tmp_path, split):
  (x_tr, l_tr, x_te, l_te), table = make_idx_set(tmp_path, "mnist")
  P, d = 16, 5
  ds = data.mnist(P, d, data_dir=str(tmp_path), checksums=table, split=split)
  assert ds.x_train.shape == (P, d) and ds.y_train.shape == (P,)
  if split == "official":
    assert ds.x_test.shape == (24, d)  # the whole official test set by default
  else:
    assert ds.x_test.shape == (40 + 24 - P, d)
  assert float(np.sum(ds.y_train)) == 0.0  # interleaved: balanced
  check_against_loop(ds, x_tr, l_tr, x_te, l_te, P, d, parity, split)


def test_fashion_default_and_explicit_classes(tmp_path):
  (x_tr, l_tr, x_te, l_te), table = make_idx_set(tmp_path, "fashion_mnist", seed=3)
  ds = data.fashion_mnist(12, 4, n_test=10, data_dir=str(tmp_path), checksums=table)
  check_against_loop(ds, x_tr, l_tr, x_te, l_te, 12, 4, halves, "official")
  # classes 3 (+1) against 5 and 7 (-1); every other class dropped
  pick = lambda c: 1 if c == 3 else (-1 if c in (5, 7) else 0)
  n3, n57 = int(np.sum(l_tr == 3)), int(np.sum(np.isin(l_tr, (5, 7))))
  P = 2 * min(n3, n57)
  ds2 = data.fashion_mnist(P, 2, data_dir=str(tmp_path), checksums=table,
                           classes="3/5,7")
  check_against_loop(ds2, x_tr, l_tr, x_te, l_te, P, 2, pick, "official")
  assert ds2.x_test.shape[0] == int(np.sum(np.isin(l_te, (3, 5, 7))))
  with pytest.raises(ValueError, match="has only"):
    data.fashion_mnist(n3 + n57 + 1, 2, data_dir=str(tmp_path), checksums=table,
                       classes="3/5,7")


def test_make_dataset_image_names(tmp_path):
  make_idx_set(tmp_path, "mnist")
  ds = data.make_dataset("mnist", 10, 3, n_test=6, data_dir=str(tmp_path),
                         verify=False)
  assert ds.x_train.shape == (10, 3) and ds.x_test.shape == (6, 3)
  assert set(data.IMAGE_DATASETS) <= set(data.DATASETS)
  with pytest.raises(ValueError, match="unknown split"):
    data.make_dataset("mnist", 10, 3, data_dir=str(tmp_path), verify=False,
                      split="random")
  with pytest.raises(ValueError, match="real data"):
    data.make_dataset("sphere", 10, 3, key=None, classes="parity")


def one_line(excinfo):
  msg = str(excinfo.value)
  assert "\n" not in msg and "Traceback" not in msg
  return msg


def test_checksum_refusal_and_noverify(tmp_path):
  (x_tr, l_tr, x_te, l_te), table = make_idx_set(tmp_path, "mnist")
  # The real table: these generated files are not the official ones.
  with pytest.raises(data.DataError) as e:
    data.mnist(10, 3, data_dir=str(tmp_path))
  msg = one_line(e)
  assert "checksum mismatch" in msg and "--noverify_data" in msg
  assert str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz") in msg
  assert "fetch_data mnist" in msg
  ds = data.mnist(10, 3, data_dir=str(tmp_path), verify=False)
  ds2 = data.mnist(10, 3, data_dir=str(tmp_path), checksums=table)
  np.testing.assert_array_equal(ds.x_train, ds2.x_train)
  # A table with one wrong hash refuses exactly that file.
  bad = {k: dict(v) for k, v in table.items()}
  bad["t10k-labels-idx1-ubyte.gz"]["sha256"] = "0" * 64
  with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.gz: checksum"):
    data.mnist(10, 3, data_dir=str(tmp_path), checksums=bad)


def test_missing_files_say_how_to_fetch(tmp_path):
  with pytest.raises(data.DataError) as e:
    data.make_dataset("fashion_mnist", 10, 3, data_dir=str(tmp_path))
  msg = one_line(e)
  assert "not found" in msg and f"fetch_data fashion_mnist --data_dir {tmp_path}" in msg
  with pytest.raises(data.DataError, match="fetch_data cifar10"):
    data.cifar10(10, 3, data_dir=str(tmp_path))


def test_default_data_dir(monkeypatch, tmp_path):
  monkeypatch.setenv("LOSSLAND_DATA_DIR", str(tmp_path / "a"))
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
  assert data.default_data_dir() == str(tmp_path / "a")
  monkeypatch.delenv("LOSSLAND_DATA_DIR")
  assert data.default_data_dir() == str(tmp_path / "b" / "lossland" / "data")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert data.default_data_dir() == str(tmp_path / "home" / ".cache" / "lossland" / "data")
  assert data.dataset_dir("cifar10", "/x") == os.path.join("/x", "cifar10")


def test_truncated_and_corrupt_idx_files(tmp_path):
  _, table = make_idx_set(tmp_path, "mnist")
  path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
  good = path.read_bytes()
  # Truncated gzip: refused by the checksum, and by the reader without it.
  path.write_bytes(good[: len(good) // 2])
  with pytest.raises(data.DataError) as e:
    data.mnist(10, 3, data_dir=str(tmp_path), checksums=table)
  assert "truncated download" in one_line(e)
  with pytest.raises(data.DataError) as e:
    data.mnist(10, 3, data_dir=str(tmp_path), verify=False)
  assert "truncated or corrupt gzip" in one_line(e) and str(path) in str(e.value)
  # One flipped byte in the compressed stream.
  bad = bytearray(good)
  bad[len(bad) // 2] ^= 0xFF
  path.write_bytes(bytes(bad))
  with pytest.raises(data.DataError) as e:
    data.mnist(10, 3, data_dir=str(tmp_path), verify=False)
  assert str(path) in one_line(e)
  # A complete gzip of a truncated IDX payload.
  rng = np.random.default_rng(0)
  write_gz(path, idx_bytes(rng.integers(0, 256, (40, 28, 28), dtype=np.uint8))[:-100])
  with pytest.raises(data.DataError, match="header says shape"):
    data.mnist(10, 3, data_dir=str(tmp_path), verify=False)
  # Fewer labels than images.
  write_gz(path, idx_bytes(rng.integers(0, 256, (39, 28, 28), dtype=np.uint8)))
  with pytest.raises(data.DataError, match="39 images but"):
    data.mnist(10, 3, data_dir=str(tmp_path), verify=False)
  # Images with the wrong number of dimensions.
  write_gz(path, idx_bytes(rng.integers(0, 256, (40, 784), dtype=np.uint8)))
  with pytest.raises(data.DataError, match="expected images"):
    data.mnist(10, 3, data_dir=str(tmp_path), verify=False)


def test_cifar_tarball_and_extracted(tmp_path):
  (x_tr, l_tr, x_te, l_te), table = make_cifar(tmp_path, extracted=True)
  P, d = 12, 4
  ds = data.cifar10(P, d, data_dir=str(tmp_path), checksums=table)
  assert ds.x_train.shape == (P, d) and ds.x_test.shape == (12, d)
  check_against_loop(ds, x_tr, l_tr, x_te, l_te, P, d, halves, "official")
  raw = data.load_cifar10_raw(str(tmp_path), checksums=table)
  np.testing.assert_array_equal(raw[0], x_tr)
  np.testing.assert_array_equal(raw[1], l_tr)
  # Without the tarball the extracted folder is read, only unverified.
  os.remove(tmp_path / "cifar10" / "cifar-10-binary.tar.gz")
  with pytest.raises(data.DataError) as e:
    data.cifar10(P, d, data_dir=str(tmp_path))
  assert "--noverify_data" in one_line(e)
  ds2 = data.cifar10(P, d, data_dir=str(tmp_path), verify=False, split="pooled")
  check_against_loop(ds2, x_tr, l_tr, x_te, l_te, P, d, halves, "pooled")


def test_cifar_bad_files(tmp_path):
  _, table = make_cifar(tmp_path)
  tar = tmp_path / "cifar10" / "cifar-10-binary.tar.gz"
  good = tar.read_bytes()
  with pytest.raises(data.DataError) as e:  # the real table: not the official file
    data.cifar10(10, 3, data_dir=str(tmp_path))
  assert "checksum mismatch" in one_line(e)
  tar.write_bytes(good[: len(good) - 200])
  with pytest.raises(data.DataError) as e:
    data.cifar10(10, 3, data_dir=str(tmp_path), verify=False)
  assert "truncated or corrupt tarball" in one_line(e)
  # A record cut short inside a well-formed tarball.
  (tmp_path / "x").mkdir()
  make_cifar(tmp_path / "x", extracted=True, tarball=False)
  batch = tmp_path / "x" / "cifar10" / "cifar-10-batches-bin" / "data_batch_3.bin"
  batch.write_bytes(batch.read_bytes()[:-10])
  with pytest.raises(data.DataError) as e:
    data.cifar10(10, 3, data_dir=str(tmp_path / "x"), verify=False)
  assert "data_batch_3.bin" in one_line(e) and "3073-byte" in str(e.value)
  os.remove(batch)
  with pytest.raises(data.DataError, match="data_batch_3.bin: file not found"):
    data.cifar10(10, 3, data_dir=str(tmp_path / "x"), verify=False)


def test_parse_classes_and_binary_labels():
  assert data.parse_classes("parity") == "parity"
  assert data.parse_classes("0-4/5-9") == ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))
  assert data.parse_classes("3/5") == ((3,), (5,))
  assert data.parse_classes(" 0,2, 4 / 1,3 ") == ((0, 2, 4), (1, 3))
  assert data.parse_classes([[1], (2, 3)]) == ((1,), (2, 3))
  for bad in ["0-4", "a/b", "1/1", "/3", "4-2/5", [[1, 2]], 7]:
    with pytest.raises(ValueError):
      data.parse_classes(bad)
  labels = np.array([1, 3, 3, 1])
  with pytest.raises(data.DataError) as e:
    data.binary_labels(labels, source="f.npz")
  assert "parity" in one_line(e) and "f.npz" in str(e.value)
  keep, y = data.binary_labels(labels, "1/3")
  np.testing.assert_array_equal(y, [1, -1, -1, 1])
  keep, y = data.binary_labels(np.array([-1, 1, 1]))  # +-1 as is
  np.testing.assert_array_equal(y, [-1, 1, 1])
  keep, y = data.binary_labels(np.array([0, 7, 2, 9, 5]), "0,2/9")
  np.testing.assert_array_equal(keep, [0, 2, 3])
  np.testing.assert_array_equal(y, [1, 1, -1])
  with pytest.raises(data.DataError, match="no points"):
    data.binary_labels(np.array([0, 1]), "5/6")


def test_interleave_classes_against_a_loop():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 3, 50)
  order, n_bal = data.interleave_classes(labels, (2, 0, 1))
  per = [list(np.flatnonzero(labels == c)) for c in (2, 0, 1)]
  m = min(map(len, per))
  expect = [i for group in zip(*[p[:m] for p in per]) for i in group]
  assert n_bal == 3 * m and list(order[:n_bal]) == expect
  assert sorted(order) == list(range(50))
  y = np.where(rng.random(30) < 0.3, 1, -1)
  assert list(data.interleave_classes(y)[0]) == loop_interleave(y)


@pytest.mark.parametrize("n, D", [(270, 260), (258, 300), (40, 784)])
def test_pca_eigh_paths_match_svd(n, D):
  """Beyond 256 points and dimensions pca_whiten uses eigh of the covariance
  (n >= D) or of the Gram matrix (n < D): same whitened subspace as an SVD."""
  rng = np.random.default_rng(n)
  x = rng.normal(size=(n, D)) * np.linspace(3, 0.1, D)
  x_new = rng.normal(size=(7, D))
  d = 6
  mean, comps, scale = data.pca_whiten(x, d)
  z = data.apply_pca(x, mean, comps, scale)
  np.testing.assert_allclose(np.cov(z.T), np.eye(d), atol=1e-9)
  _, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
  ref = lambda y: (y - x.mean(0)) @ vt[:d].T / (s[:d] / np.sqrt(n - 1))
  # equal up to the sign of each component
  for a, b in [(z, ref(x)), (data.apply_pca(x_new, mean, comps, scale), ref(x_new))]:
    np.testing.assert_allclose(np.abs(a), np.abs(b), atol=1e-8)
  np.testing.assert_allclose(np.abs(z.T @ ref(x)) / (n - 1), np.eye(d), atol=1e-8)
