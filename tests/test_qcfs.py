"""QCFS's written-out backward pass equals differentiating its formula automatically."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cos_jax.qcfs import qcfs


@jax.custom_jvp
def _floor_straight_through(x):
  return jnp.floor(x)


@_floor_straight_through.defjvp
def _floor_straight_through_jvp(primals, tangents):
  return jnp.floor(primals[0]), tangents[0]


def plain_qcfs(z, threshold, levels):
  """docs/method.md §1 as written, left to automatic differentiation."""
  level = _floor_straight_through(z * levels / threshold + 0.5) / levels
  return threshold * jnp.where(level < 0.0, 0.0, jnp.where(level > 1.0, 1.0, level))


def _loss(activation, levels):
  # A weight per element, so that the gradients are not plain sums.
  return lambda threshold, z, w: jnp.sum(w * activation(z, threshold, levels))


@pytest.mark.parametrize('dtype,rtol', [(np.float32, 2e-6), (np.float64, 1e-13)])
@pytest.mark.parametrize('levels', [1, 4, 16])
def test_values_and_gradients_equal_the_automatic_ones(dtype, rtol, levels):
  rng = np.random.default_rng(levels)
  with jax.enable_x64(dtype == np.float64):
    threshold = jnp.asarray(2.5, dtype)
    # Random pre-activations, and every rounding tie and clip bound exactly.
    ties = (np.arange(-2 * levels, 3 * levels + 1) - 0.5) / levels * 2.5
    z = jnp.asarray(np.concatenate([rng.normal(1.0, 2.0, 4000), ties, ties + 0.5]), dtype)
    w = jnp.asarray(rng.normal(size=z.shape), dtype)
    np.testing.assert_array_equal(qcfs(z, threshold, levels), plain_qcfs(z, threshold, levels))
    ours = jax.jit(jax.grad(_loss(qcfs, levels), argnums=(0, 1)))(threshold, z, w)
    auto = jax.jit(jax.grad(_loss(plain_qcfs, levels), argnums=(0, 1)))(threshold, z, w)
    assert ours[0].dtype == ours[1].dtype == dtype
    # Gradients to z pass whole or not at all in both: the masks agree exactly.
    np.testing.assert_array_equal(ours[1] == 0, auto[1] == 0)
    np.testing.assert_allclose(ours[1], auto[1], rtol=rtol)
    np.testing.assert_allclose(ours[0], auto[0], rtol=50 * rtol)  # a sum over 4,000 terms
