"""Bring your own network: a flax CNN on the 8x8 digits, as a vmapped ensemble.

    python examples/flax_cnn_digits.py [K] [MAX_STEPS]

``nets.from_flax`` turns the linen module into a config that the trainer takes
like a ``NetConfig``; ``nets.make_net`` gives its ``apply_fn`` for the Hessian
(``curvature``) and the empirical kernel (``ntk``). The images stay flat
([P, 64]) in the Dataset and are reshaped to [P, 8, 8, 1] for the module.
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

jax.config.update("jax_enable_x64", True)  # training near jamming needs float64
from lossland import curvature, data, losses, nets, ntk, train  # noqa: E402


class CNN(nn.Module):
  features: int = 4

  @nn.compact
  def __call__(self, x):  # [B, 8, 8, 1] -> [B, 1]
    x = nn.tanh(nn.Conv(self.features, (3, 3))(x))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    return nn.Dense(1)(x.reshape(x.shape[0], -1))


K = int(sys.argv[1]) if len(sys.argv) > 1 else 4
MAX_STEPS = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
# Raw pixels (no PCA, so each image keeps its 8x8 layout), parity labels +-1,
# the balanced order of data.digits, each image of norm sqrt(64).
ds = data.digits(P=300, d=64, n_test=500, dtype=jnp.float64, pca=False)
net = nets.from_flax(CNN(), jnp.zeros((1, 8, 8, 1)))
loss_cfg = losses.LossConfig("quadratic_hinge")
res = train.train_ensemble(range(K), ds, net, loss_cfg,
                           train.TrainConfig(optimizer="adam", lr=1e-2,
                                             max_steps=MAX_STEPS))
print(f"{net}\nP={ds.P}, N={nets.n_params(net)}: final loss "
      f"{np.array2string(res.final['loss'], precision=2)}, N_Delta {res.final['n_delta'].astype(int)}, "
      f"test errors {res.final['test_error'].round(3)}, ensemble average "
      f"{np.mean(np.sign(res.f_test.mean(0)) != np.asarray(ds.y_test)):.3f}")

# Hessian at the end of training of the member with the most unsatisfied
# points (a member that fits every point has H = 0): H = H0 + Hp, dense.
k = int(np.argmax(res.final["n_delta"]))
_, apply_fn = nets.make_net(net)
params = jax.tree_util.tree_map(lambda a: a[k], res.params)
fns = curvature.curvature_fns(apply_fn, loss_cfg)
batch = curvature.examples(ds.x_train, ds.y_train)
h, h0, hp = jax.jit(curvature.dense_split, static_argnums=0)(fns, params, batch)
eigs = [np.linalg.eigvalsh(np.asarray(m)) for m in (h, h0, hp)]
counts = curvature.spectral_counts(*eigs, n_delta=int(res.final["n_delta"][k]))
print(f"Hessian of member {k}:", {k: counts[k] for k in ("lambda_max_h", "lambda_min_h",
                                         "rank_h0", "n_negative_hp", "stable")})

# Empirical NTK of that member on the training set: its spectrum.
theta = jax.jit(ntk.empirical_ntk_fn(apply_fn))(params, ds.x_train, ds.x_train)
lam = np.linalg.eigvalsh(np.asarray(theta))[::-1]
print(f"NTK: top eigenvalues {lam[:3].round(2)}, rank "
      f"{int(np.sum(lam > lam[0] * ds.P * np.finfo(float).eps))} (<= N)")
