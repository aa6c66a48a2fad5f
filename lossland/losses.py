"""Per-example losses of the margin variable Delta = epsilon - y f.

Every loss here is a function ``ell(delta)`` of one scalar (or elementwise of an
array); reductions (the 1/P mean) happen at the call site. With
``Delta = epsilon - y f(x)``:

==================  =================================  ===============
name                ell(Delta)                         default epsilon
==================  =================================  ===============
quadratic_hinge     1/2 Delta^2 theta(Delta)           1
hinge               Delta theta(Delta)                 1
soft_hinge          softplus(beta Delta) / beta        1
logistic            log(1 + exp(Delta)) (= CE of y f)  0
squared             1/2 Delta^2 (= 1/2 (f - y)^2)      1
==================  =================================  ===============

**Convention at Delta = 0.** A point is *unsatisfied* iff Delta > 0 strictly
(nn_jamming: ``relu(delta)``). The hinge losses are written with a strict
``Delta > 0`` mask, so at Delta = 0 exactly the loss, its first and its second
derivative are all 0 (jax would otherwise give relu'(0) = 0 but
maximum'(0) = 1/2). The curvature code relies on this: H0 and Hp sum only over
unsatisfied points.
"""
import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp


def quadratic_hinge(delta):
  """1/2 Delta^2 theta(Delta), the jamming papers' loss (1809.09349 eq. 2)."""
  return jnp.where(delta > 0, 0.5 * delta * delta, jnp.zeros_like(delta))


def hinge(delta):
  """Delta theta(Delta), the linear hinge."""
  return jnp.where(delta > 0, delta, jnp.zeros_like(delta))


def soft_hinge(delta, beta: float = 5.0):
  """softplus(beta Delta) / beta: a smooth hinge (feature_lazy ``softhinge``)."""
  return jax.nn.softplus(beta * delta) / beta


def logistic(delta):
  """log(1 + exp(Delta)); with epsilon = 0 it is the cross-entropy of y f."""
  return jax.nn.softplus(delta)


def squared(delta):
  """1/2 Delta^2; with y = +-1 and epsilon = 1 it equals 1/2 (f - y)^2."""
  return 0.5 * delta * delta


_LOSSES = {
    "quadratic_hinge": (quadratic_hinge, 1.0),
    "hinge": (hinge, 1.0),
    "soft_hinge": (soft_hinge, 1.0),
    "logistic": (logistic, 0.0),
    "squared": (squared, 1.0),
}

LOSS_NAMES = tuple(_LOSSES)

# Losses that vanish wherever every margin holds (Delta <= 0): a sat state
# has loss 0 (lossland.train.finish.scale_to_sat reaches it).
HINGES = ("quadratic_hinge", "hinge")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """A per-example loss and its margin (hashable, jit-static).

  Attributes:
    name: one of ``LOSS_NAMES``.
    margin: epsilon in Delta = epsilon - y f; None picks the loss's default.
    scale: the training loss is ``scale * (1/P) sum_mu ell(Delta_mu)`` (the
      trainer multiplies by it); 1/alpha^2 in the lazy/feature setting of
      1906.08034 (:func:`alpha_loss_config`). Observables (N_Delta, errors)
      do not depend on it.
  """
  name: str = "quadratic_hinge"
  margin: float | None = None
  scale: float = 1.0

  def __post_init__(self):
    if self.name not in _LOSSES:
      raise ValueError(f"unknown loss {self.name!r}; choose from {sorted(_LOSSES)}")
    if not (self.scale > 0 and math.isfinite(self.scale)):
      raise ValueError(f"loss scale must be positive and finite, got {self.scale}")

  @property
  def epsilon(self) -> float:
    return _LOSSES[self.name][1] if self.margin is None else float(self.margin)

  @property
  def fn(self) -> Callable:
    return _LOSSES[self.name][0]


def alpha_loss_config(name: str = "quadratic_hinge", alpha: float = 1.0,
                      margin: float | None = None) -> LossConfig:
  """The loss of the alpha-scaled model of 1906.08034 (lazy vs feature training).

  The model is F(w; x) = alpha (f(w; x) - f(w0; x)) (``NetConfig(alpha=...)``
  with ``subtract_init``) and the loss
  L(w) = (1 / alpha^2) (1/P) sum_mu ell(epsilon - y_mu F(w; x_mu)).
  Under gradient flow dw/dt = -grad L the outputs move as
  dF/dt = -alpha^2 Theta_f grad_F L = (1/P) sum_mu Theta_f(., x_mu)
  ell'(Delta_mu) y_mu, with Theta_f the NTK of f (alpha = 1): independent of
  alpha as long as Theta_f stays at its initial value (the lazy regime, large
  alpha sqrt(h)), while the weights move by O(1/alpha). The authors' code
  (feature_lazy main.py) divides by alpha instead of alpha^2, which only
  rescales time by alpha; for Adam (invariant to a constant loss factor up to
  its epsilon) the factor does not matter, for SGD/momentum it does.

  Args:
    name: one of ``LOSS_NAMES``.
    alpha: the output scale (> 0).
    margin: epsilon (default: the loss's own).

  Returns:
    ``LossConfig(name, margin, scale=1 / alpha**2)``.
  """
  if not (alpha > 0 and math.isfinite(alpha)):
    raise ValueError(f"alpha must be positive and finite, got {alpha}")
  return LossConfig(name, margin, scale=1.0 / float(alpha) ** 2)


def get_loss(name: str) -> Callable:
  """The per-example loss ell(delta) called ``name``."""
  return LossConfig(name).fn


def margins(f, y, epsilon):
  """Delta = epsilon - y f, elementwise. f and y of the same shape [P]."""
  return epsilon - y * f


def mean_loss(loss_cfg: LossConfig, f, y):
  """scale (1/P) sum_mu ell(Delta_mu): the training loss."""
  return loss_cfg.scale * jnp.mean(loss_cfg.fn(margins(f, y, loss_cfg.epsilon)))


def n_unsatisfied(delta, axis=None):
  """N_Delta = #{mu : Delta_mu > 0} (strict), over ``axis`` (default: all)."""
  return jnp.sum(delta > 0, axis=axis)


def softmax_cross_entropy(logits, labels):
  """Per-example softmax cross-entropy ``-log softmax(z)_y = logsumexp(z) - z_y``.

  The multi-class loss of the landscape networks (Verpoort, Lee & Wales, PNAS
  117, 21857 (2020); OPTIM's ``MLPVB3``); the mean over examples is taken at
  the call site, as for the margin losses above. Keeps the dtype of ``logits``.

  Args:
    logits: [..., K] unnormalized class scores.
    labels: [...] integer class labels in [0, K).

  Returns:
    [...] the loss of each example.
  """
  logp = jax.nn.log_softmax(logits, axis=-1)
  labels = jnp.asarray(labels).astype(jnp.int32)
  return -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
