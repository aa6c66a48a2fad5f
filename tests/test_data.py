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
