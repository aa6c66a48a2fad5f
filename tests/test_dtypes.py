import jax
import jax.numpy as jnp
import numpy as np

from lossland import data, dtypes, nets


def test_default_float_is_jax_default_and_a_given_dtype_wins():
  assert dtypes.float_dtype() == jnp.asarray(1.0).dtype  # x64 on or off alike
  assert dtypes.float_dtype(np.float32) == jnp.float32
  assert dtypes.float_dtype("float16") == jnp.float16
  # Library code that creates arrays from nothing follows it.
  ds = data.digits(20, 4, n_test=4)
  assert ds.x_train.dtype == dtypes.float_dtype()
  ds32 = data.digits(20, 4, n_test=4, dtype=jnp.float32)
  assert ds32.x_train.dtype == jnp.float32
  init, _ = nets.make_net(nets.NetConfig(d=4, width=3, depth=1), dtype=jnp.float32)
  leaves = jax.tree_util.tree_leaves(init(jax.random.key(0)))
  assert all(a.dtype == jnp.float32 for a in leaves)
