"""The tiny-map convolution equals `nn.Conv`, BatchNorm `nn.BatchNorm`: parameters and results."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from cos_jax.layers import BatchNorm, Conv
from tests import reference


@pytest.mark.parametrize(
  'side,padding,strides',
  [
    (1, 1, 1),
    (2, 1, 1),
    (3, 1, 1),
    (2, 'SAME', 1),
    (2, 0, 1),  # the matrix-product form
    (4, 1, 1),
    (3, 1, 2),  # nn.Conv itself
  ],
)
def test_conv_equals_nn_conv(side, padding, strides):
  x = reference.dyadic_images((2, 3, side, side, 5), side)  # a leading time axis too
  plain = nn.Conv(6, (3, 3), strides, padding=padding)
  tiny = Conv(6, (3, 3), strides, padding=padding)
  variables = plain.init(jax.random.key(0), x)
  assert jax.tree.map(np.shape, tiny.init(jax.random.key(0), x)) == jax.tree.map(
    np.shape, variables
  )
  variables = {
    'params': traverse_util.unflatten_dict(
      {
        k: np.random.default_rng(1).integers(-4, 5, np.shape(v)).astype(np.float32) / 8
        for k, v in traverse_util.flatten_dict(variables['params']).items()
      }
    )
  }
  # Dyadic values: both forms are exact, so they agree bit for bit.
  np.testing.assert_array_equal(
    np.asarray(tiny.apply(variables, x)), np.asarray(plain.apply(variables, x))
  )
  random_x = np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
  np.testing.assert_allclose(
    np.asarray(tiny.apply(variables, random_x)),
    np.asarray(plain.apply(variables, random_x)),
    rtol=1e-5,
    atol=1e-5,
  )


def test_tiny_map_form_is_used_only_where_it_costs_no_more():
  conv = Conv(4, (3, 3), padding=1)
  assert conv._tiny_map_padding(np.zeros((1, 2, 2, 3))) == ((1, 1), (1, 1))
  assert conv._tiny_map_padding(np.zeros((1, 3, 3, 3))) == ((1, 1), (1, 1))
  assert conv._tiny_map_padding(np.zeros((1, 4, 4, 3))) is None
  assert Conv(4, (3, 3), 2, padding=1)._tiny_map_padding(np.zeros((1, 2, 2, 3))) is None


@pytest.mark.parametrize('dtype,rtol', [(np.float32, 1e-5), (np.float64, 1e-11)])
def test_batch_norm_equals_nn_batch_norm(dtype, rtol):
  """Training mode: outputs, running statistics and every gradient equal nn.BatchNorm's up to
  the order of the float sums; with running statistics it is nn.BatchNorm bit for bit."""
  rng = np.random.default_rng(0)
  with jax.enable_x64(dtype == np.float64):
    x = jnp.asarray(rng.normal(1.5, 3.0, (2, 6, 5, 5, 7)), dtype)  # a time axis too
    weights = jnp.asarray(rng.normal(size=x.shape), dtype)
    # As the models build it: the mode fixed at construction.
    ours, plain = (
      module(use_running_average=False, momentum=0.9, epsilon=1e-5, param_dtype=dtype)
      for module in (BatchNorm, nn.BatchNorm)
    )
    variables = plain.init(jax.random.key(0), x)
    assert jax.tree.map(np.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(
      np.shape, variables
    )
    variables = {
      'params': {
        'scale': jnp.asarray(rng.normal(size=7), dtype),
        'bias': jnp.asarray(rng.normal(size=7), dtype),
      },
      'batch_stats': {
        'mean': jnp.asarray(rng.normal(size=7), dtype),
        'var': jnp.asarray(rng.uniform(0.5, 2, size=7), dtype),
      },
    }

    def loss(module, params, x):
      y, updates = module.apply(
        {'params': params, 'batch_stats': variables['batch_stats']}, x, mutable=['batch_stats']
      )
      return jnp.sum(weights * y), (y, updates['batch_stats'])

    results = [
      jax.jit(jax.value_and_grad(functools.partial(loss, module), argnums=(0, 1), has_aux=True))(
        variables['params'], x
      )
      for module in (ours, plain)
    ]
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]), strict=True):
      assert a.dtype == b.dtype == dtype
      np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * float(np.abs(b).max()))
    ours, plain = (
      module(momentum=0.9, epsilon=1e-5, param_dtype=dtype) for module in (BatchNorm, nn.BatchNorm)
    )
    for module in (ours, plain):
      assert module.apply(variables, x, use_running_average=True).dtype == dtype
    np.testing.assert_array_equal(
      ours.apply(variables, x, use_running_average=True),
      plain.apply(variables, x, use_running_average=True),
    )
