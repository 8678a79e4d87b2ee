"""QCFS, the quantization-clip-floor-shift activation that replaces ReLU (docs/method.md §1).

    h(z) = lambda * clip(floor(z * L / lambda + 1/2) / L, 0, 1)

`floor` is the identity in the backward pass (straight-through); everything else, the learnable
threshold `lambda` included, is differentiated normally. The clip passes the gradient on its
closed interval [0, 1], as PyTorch's `clamp` does in the reference code (`jnp.clip` would halve
it at the bounds, which the floor makes common).

The backward pass is written out: with u = floor(z L / lambda + 1/2) / L and `inside` meaning
0 <= u <= 1,

    dh/dz = inside,    dh/dlambda = clip(u, 0, 1) - inside * z / lambda.

Differentiating the forward formula gives the same values, but through a chain of scalings that
XLA runs as several passes over the activations; this is one pass for each gradient
(`tests/test_qcfs.py` checks it against the automatic one).
"""

import functools

import jax
import jax.numpy as jnp


def _level(z: jax.Array, threshold: jax.Array, levels: int) -> jax.Array:
  """u = floor(z L / lambda + 1/2) / L, not yet clipped."""
  return jnp.floor(z * levels / threshold + 0.5) / levels


def _clip_unit(level: jax.Array) -> jax.Array:
  return jnp.where(level < 0.0, 0.0, jnp.where(level > 1.0, 1.0, level))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def qcfs(z: jax.Array, threshold: jax.Array, levels: int) -> jax.Array:
  """The QCFS activation with `levels` (L) quantization steps and threshold `lambda`.

  Args:
    z: pre-activations, any shape.
    threshold: the scalar threshold lambda (> 0).
    levels: the number of quantization levels L (>= 1).

  Returns:
    An array shaped like `z` with values in {0, lambda/L, ..., lambda}.
  """
  return threshold * _clip_unit(_level(z, threshold, levels))


def _qcfs_forward(z, threshold, levels):
  return qcfs(z, threshold, levels), (z, threshold)


def _qcfs_backward(levels, residuals, grad):
  z, threshold = residuals
  level = _level(z, threshold, levels)
  inside = (level >= 0.0) & (level <= 1.0)
  grad_z = jnp.where(inside, grad, jnp.zeros_like(grad))
  grad_threshold = jnp.sum(grad * (_clip_unit(level) - jnp.where(inside, z / threshold, 0.0)))
  return grad_z, grad_threshold.astype(threshold.dtype).reshape(jnp.shape(threshold))


qcfs.defvjp(_qcfs_forward, _qcfs_backward)
