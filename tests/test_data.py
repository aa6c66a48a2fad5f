import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lossland import data


def test_sphere(key):
  ds = data.sphere(key, 50, 7, n_test=10)
  assert ds.x_train.shape == (50, 7) and ds.x_test.shape == (10, 7)
  np.testing.assert_allclose(jnp.linalg.norm(ds.x_train, axis=1), np.sqrt(7), rtol=1e-12)
  assert float(jnp.sum(ds.y_train)) == 0.0  # balanced
  assert set(np.unique(ds.y_train).tolist()) == {-1.0, 1.0}
  # a function of the key
  np.testing.assert_array_equal(ds.x_train, data.sphere(key, 50, 7, n_test=10).x_train)


def test_teacher_labels_are_sign_of_teacher(key):
  ds = data.teacher(key, 200, 5, n_test=100)
  # a random perceptron teacher: labels are linearly separable through the origin
  x, y = np.asarray(ds.x_train), np.asarray(ds.y_train)
  k_x, k_t = jax.random.split(key)
  from lossland import nets
  init_fn, apply_fn = nets.make_net(nets.NetConfig(d=5, width=1, depth=0))
  w = np.asarray(init_fn(k_t)[0]["w"])[:, 0]
  np.testing.assert_array_equal(np.sign(x @ w), y)
  assert 0.2 < float(np.mean(y > 0)) < 0.8


def test_digits_parity_pca():
  ds = data.digits(300, 10, n_test=200)
  assert ds.x_train.shape == (300, 10) and ds.x_test.shape == (200, 10)
  np.testing.assert_allclose(jnp.linalg.norm(ds.x_test, axis=1), np.sqrt(10), rtol=1e-10)
  assert float(jnp.sum(ds.y_train)) == 0.0  # interleaved even/odd: balanced
  # parity of the raw labels in the documented order
  # even and odd images interleaved: +1, -1, +1, ...
  assert np.all(np.asarray(ds.y_train)[0::2] == 1) and np.all(np.asarray(ds.y_train)[1::2] == -1)
  raw, _ = data.load_digits_raw()
  assert raw.shape == (1797, 64)
  # deterministic and all data by default
  full = data.digits(100, 5)
  assert full.x_test.shape[0] == 1797 - 100
  np.testing.assert_array_equal(full.x_train, data.digits(100, 5).x_train)


def test_digits_without_pca_are_the_raw_pixels_in_the_balanced_order():
  ds = data.digits(30, 64, n_test=10, pca=False)
  raw, labels = data.load_digits_raw()
  # Plain loop: even and odd images taking turns, in their original order.
  evens = [i for i in range(len(labels)) if labels[i] % 2 == 0]
  odds = [i for i in range(len(labels)) if labels[i] % 2 == 1]
  order = [i for pair in zip(evens, odds) for i in pair][:40]
  want = np.stack([raw[i] * 8.0 / np.linalg.norm(raw[i]) for i in order])
  np.testing.assert_allclose(np.concatenate([ds.x_train, ds.x_test]), want, rtol=1e-6)
  assert np.asarray(ds.y_train).tolist() == [1.0, -1.0] * 15
  with pytest.raises(data.DataError, match="d must be 64"):
    data.digits(30, 10, pca=False)


def test_pca_whitening_is_white():
  raw, _ = data.load_digits_raw()
  mean, comps, scale = data.pca_whiten(raw[:500], 8)
  z = data.apply_pca(raw[:500], mean, comps, scale)
  np.testing.assert_allclose(np.cov(z.T), np.eye(8), atol=1e-8)


def test_too_many_points_is_a_clear_error():
  with pytest.raises(ValueError, match="only 1797"):
    data.digits(1500, 10, n_test=400)
  with pytest.raises(ValueError, match="P must be positive"):
    data.sphere(jax.random.key(0), 0, 3)


def test_npz_loader(tmp_path):
  rng = np.random.default_rng(0)
  path = tmp_path / "mini.npz"
  np.savez(path, x_train=rng.normal(size=(40, 3, 3)), y_train=rng.integers(0, 10, 40),
           x_test=rng.normal(size=(20, 3, 3)), y_test=rng.integers(0, 10, 20))
  ds = data.from_npz(str(path), 20, 4)
  assert ds.x_train.shape == (20, 4)
  assert ds.x_test.shape[0] == 40  # 60 pooled minus 20 (fewer if unbalanced)
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"not a zip file")
  with pytest.raises(ValueError, match="not a readable"):
    data.from_npz(str(bad), 10, 3)
  np.savez(tmp_path / "nokeys.npz", a=np.zeros(3))
  with pytest.raises(ValueError, match="x_train"):
    data.from_npz(str(tmp_path / "nokeys.npz"), 10, 3)
  with pytest.raises(ValueError, match="not found"):
    data.from_npz(str(tmp_path / "missing.npz"), 10, 3)


def test_dtype_follows_x64(key):
  assert data.sphere(key, 4, 3).x_train.dtype == jnp.float64
  with jax.enable_x64(False):
    assert data.sphere(key, 4, 3).x_train.dtype == jnp.float32
    assert data.digits(10, 3, 5).x_train.dtype == jnp.float32


def _one_line_error(path, *args, **kwargs):
  with pytest.raises(data.DataError) as e:
    data.from_npz(str(path), *args, **kwargs)
  msg = str(e.value)
  assert "\n" not in msg and "pickle" not in msg.lower()
  assert str(path) in msg
  return msg


def test_npz_labels_that_give_one_class_are_refused(tmp_path):
  rng = np.random.default_rng(0)
  path = tmp_path / "odd.npz"
  np.savez(path, x_train=rng.normal(size=(20, 4)), y_train=rng.choice([1, 3], 20))
  msg = _one_line_error(path, 6, 3)
  assert "parity" in msg and "even -> +1" in msg and "[1, 3]" in msg
  # The same file with a class split is a two-class problem.
  ds = data.from_npz(str(path), 6, 3, classes="1/3")
  assert set(np.unique(ds.y_train).tolist()) == {-1.0, 1.0}
  np.savez(path, x_train=rng.normal(size=(20, 4)), y_train=np.ones(20))
  assert "only one class" in _one_line_error(path, 6, 3)
  # +-1 labels are used as they are; 0/1 map by parity (0 -> +1).
  np.savez(path, x_train=rng.normal(size=(20, 4)), y_train=np.tile([-1, 1], 10))
  ds = data.from_npz(str(path), 6, 3, n_test=4)
  np.testing.assert_array_equal(ds.y_train, [1, -1, 1, -1, 1, -1])


def test_npz_bad_files_are_one_line_data_errors(tmp_path):
  rng = np.random.default_rng(0)
  good = tmp_path / "good.npz"
  np.savez(good, x_train=rng.normal(size=(30, 4)), y_train=rng.integers(0, 10, 30),
           x_test=rng.normal(size=(10, 4)), y_test=rng.integers(0, 10, 10))
  blob = good.read_bytes()
  cases = {}
  cases["truncated"] = blob[: len(blob) // 2]
  corrupt = bytearray(blob)
  corrupt[len(blob) // 3] ^= 0xFF  # inside x_train's data: CRC mismatch
  cases["corrupt"] = bytes(corrupt)
  cases["garbage"] = b"this is not an npz file at all"
  cases["empty_file"] = b""
  expect = {"truncated": "truncated or corrupt", "corrupt": "corrupt",
            "garbage": "not a readable", "empty_file": "empty"}
  for name, payload in cases.items():
    p = tmp_path / f"{name}.npz"
    p.write_bytes(payload)
    assert expect[name] in _one_line_error(p, 10, 3), name
  arrays = {
      "no_arrays": ({}, "holds no arrays"),
      "no_rows": ({"x_train": np.zeros((0, 4)), "y_train": np.zeros(0)}, "is empty"),
      "strings": ({"x_train": rng.normal(size=(8, 4)),
                   "y_train": np.array(["cat", "dog"] * 4)}, "strings"),
      "nan_x": ({"x_train": np.full((8, 4), np.nan), "y_train": np.arange(8)},
                "non-finite"),
      "nan_y": ({"x_train": rng.normal(size=(8, 4)),
                 "y_train": np.array([0, 1, np.nan, 1, 0, 1, 0, 1])}, "non-finite"),
      "fractional_y": ({"x_train": rng.normal(size=(8, 4)),
                        "y_train": np.linspace(0, 1, 8)}, "non-integer"),
      "lengths": ({"x_train": rng.normal(size=(8, 4)), "y_train": np.arange(7)},
                  "7 labels but there are 8 points"),
      "test_dim": ({"x_train": rng.normal(size=(8, 4)), "y_train": np.arange(8),
                    "x_test": rng.normal(size=(5, 6)), "y_test": np.arange(5)},
                   "x_test has 6 values per point but x_train has 4"),
      "half_test": ({"x_train": rng.normal(size=(8, 4)), "y_train": np.arange(8),
                     "x_test": rng.normal(size=(5, 4))}, "no y_test"),
      "objects": ({"x_train": rng.normal(size=(8, 4)),
                   "y_train": np.array([1, "a"] * 4, dtype=object)}, "Python objects"),
  }
  for name, (arrs, needle) in arrays.items():
    p = tmp_path / f"{name}.npz"
    np.savez(p, **arrs)
    assert needle in _one_line_error(p, 4, 3), name
  npy = tmp_path / "single.npy"
  np.save(npy, np.zeros(3))
  assert ".npy" in _one_line_error(npy, 4, 3)
  # A good file still loads, and its official test split can be kept.
  ds = data.from_npz(str(good), 8, 3, split="official")
  assert ds.x_train.shape == (8, 3) and ds.x_test.shape[0] == 10


def test_label_noise_flips_an_exact_keyed_fraction_of_the_training_labels(key):
  clean = data.digits(200, 6, n_test=50)
  noisy = data.make_dataset("digits", 200, 6, 50, key=key, label_noise=0.15)
  flipped = np.asarray(noisy.y_train) != np.asarray(clean.y_train)
  assert flipped.sum() == 30  # exactly round(0.15 * 200)
  np.testing.assert_array_equal(noisy.y_train[flipped], -clean.y_train[flipped])
  # training labels only: inputs and the test set are untouched
  np.testing.assert_array_equal(noisy.x_train, clean.x_train)
  np.testing.assert_array_equal(noisy.x_test, clean.x_test)
  np.testing.assert_array_equal(noisy.y_test, clean.y_test)
  # keyed: the same key flips the same points, another key other points
  again = data.make_dataset("digits", 200, 6, 50, key=key, label_noise=0.15)
  np.testing.assert_array_equal(again.y_train, noisy.y_train)
  other = data.make_dataset("digits", 200, 6, 50, key=jax.random.key(7), label_noise=0.15)
  assert (np.asarray(other.y_train) != np.asarray(clean.y_train)).sum() == 30
  assert np.any(np.asarray(other.y_train) != np.asarray(noisy.y_train))
  # synthetic data: the noise stream is not the draw's key
  t = data.make_dataset("teacher", 100, 4, 20, key=key)
  tn = data.make_dataset("teacher", 100, 4, 20, key=key, label_noise=0.1)
  np.testing.assert_array_equal(tn.x_train, t.x_train)
  assert (np.asarray(tn.y_train) != np.asarray(t.y_train)).sum() == 10
  # flip_labels: the flipped set of a plain permutation of the same key
  y = jnp.ones(9)
  f = np.asarray(data.flip_labels(key, y, 1 / 3))
  want = np.ones(9)
  want[np.asarray(jax.random.permutation(key, 9))[:3]] = -1
  np.testing.assert_array_equal(f, want)
  assert data.with_label_noise(clean, key, 0.0) is clean
  for bad in (-0.1, 1.5):
    with pytest.raises(data.DataError, match="label noise"):
      data.make_dataset("digits", 20, 3, key=key, label_noise=bad)
  with pytest.raises(data.DataError, match="needs a PRNG key"):
    data.make_dataset("digits", 20, 3, label_noise=0.1)


def test_prepared_npz_is_read_back_exactly(tmp_path, key):
  ds = data.make_dataset("digits", 60, 5, 30, key=key, label_noise=0.2)
  path = str(tmp_path / "noisy.npz")
  data.save_prepared_npz(ds, path)
  back = data.make_dataset("npz", 60, 5, None, data_file=path)
  for a, b in zip(back, ds):
    np.testing.assert_array_equal(a, b)
  part = data.make_dataset("npz", 40, 5, 10, data_file=path)  # prefixes, no re-split
  np.testing.assert_array_equal(part.y_train, ds.y_train[:40])
  np.testing.assert_array_equal(part.x_test, ds.x_test[:10])
  # the same arrays without the marker go through the preprocessing (re-ordered)
  plain = str(tmp_path / "plain.npz")
  np.savez(plain, **{k: np.asarray(getattr(ds, k)) for k in ds._fields})
  assert not np.array_equal(data.make_dataset("npz", 60, 5, None, data_file=plain).x_train,
                            ds.x_train)
  for kw, msg in ((dict(P=61), "has 60 and 30"), (dict(d=4), "d = 5"),
                  (dict(classes="0-4/5-9"), "do not apply")):
    args = dict(P=60, d=5) | kw
    with pytest.raises(data.DataError, match=msg):
      data.make_dataset("npz", args.pop("P"), args.pop("d"), data_file=path, **args)
