"""The tiny-map convolution equals `nn.Conv`, parameters and results."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util

from cos_jax.layers import Conv
from tests import reference


@pytest.mark.parametrize('side,padding,strides', [
    (1, 1, 1), (2, 1, 1), (3, 1, 1), (2, 'SAME', 1), (2, 0, 1),  # the matrix-product form
    (4, 1, 1), (3, 1, 2),  # nn.Conv itself
])
def test_conv_equals_nn_conv(side, padding, strides):
  x = reference.dyadic_images((2, 3, side, side, 5), side)  # a leading time axis too
  plain = nn.Conv(6, (3, 3), strides, padding=padding)
  tiny = Conv(6, (3, 3), strides, padding=padding)
  variables = plain.init(jax.random.key(0), x)
  assert jax.tree.map(np.shape, tiny.init(jax.random.key(0), x)) == jax.tree.map(
      np.shape, variables)
  variables = {'params': traverse_util.unflatten_dict(
      {k: np.random.default_rng(1).integers(-4, 5, np.shape(v)).astype(np.float32) / 8
       for k, v in traverse_util.flatten_dict(
           variables['params']).items()})}
  # Dyadic values: both forms are exact, so they agree bit for bit.
  np.testing.assert_array_equal(np.asarray(tiny.apply(variables, x)),
                                np.asarray(plain.apply(variables, x)))
  random_x = np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
  np.testing.assert_allclose(np.asarray(tiny.apply(variables, random_x)),
                             np.asarray(plain.apply(variables, random_x)), rtol=1e-5, atol=1e-5)


def test_tiny_map_form_is_used_only_where_it_costs_no_more():
  conv = Conv(4, (3, 3), padding=1)
  assert conv._tiny_map_padding(np.zeros((1, 2, 2, 3))) == ((1, 1), (1, 1))
  assert conv._tiny_map_padding(np.zeros((1, 3, 3, 3))) == ((1, 1), (1, 1))
  assert conv._tiny_map_padding(np.zeros((1, 4, 4, 3))) is None
  assert Conv(4, (3, 3), 2, padding=1)._tiny_map_padding(np.zeros((1, 2, 2, 3))) is None
