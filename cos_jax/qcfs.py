"""QCFS, the quantization-clip-floor-shift activation that replaces ReLU (SPEC section 1).

    h(z) = lambda * clip(floor(z * L / lambda + 1/2) / L, 0, 1)

`floor` is the identity in the backward pass (straight-through); everything else, the learnable
threshold `lambda` included, is differentiated normally. The clip passes the gradient on its
closed interval [0, 1], as PyTorch's `clamp` does in the reference code (`jnp.clip` would halve
it at the bounds, which the floor makes common).
"""

import jax
import jax.numpy as jnp


@jax.custom_jvp
def floor_straight_through(x: jax.Array) -> jax.Array:
  """`jnp.floor` in the forward pass, the identity in the backward pass."""
  return jnp.floor(x)


@floor_straight_through.defjvp
def _floor_straight_through_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  return jnp.floor(x), dx


def qcfs(z: jax.Array, threshold: jax.Array, levels: int) -> jax.Array:
  """The QCFS activation with `levels` (L) quantization steps and threshold `lambda`.

  Args:
    z: pre-activations, any shape.
    threshold: the scalar threshold lambda (> 0).
    levels: the number of quantization levels L (>= 1).

  Returns:
    An array shaped like `z` with values in {0, lambda/L, ..., lambda}.
  """
  level = floor_straight_through(z * levels / threshold + 0.5) / levels
  clipped = jnp.where(level < 0.0, 0.0, jnp.where(level > 1.0, 1.0, level))
  return threshold * clipped
