"""Spike-exact against the authors' PyTorch code: its float64 outputs for a CIFAR ResNet-20.

The fixtures in `tests/data/reference_r20/` (see its README) are the per-step outputs of the
reference's plain conversion and of its COS (rho = 4), T = 8, in float64. cos_jax imports the
same state_dict through `load_torch_checkpoint`, runs in float64 under JAX's scoped x64 switch
(nothing leaks into the other tests) and must give every per-step output row to a relative 1e-9:
one spike flipped anywhere moves a row by far more.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cos_jax

FIXTURES = Path(__file__).parent / 'data' / 'reference_r20'
T, RHO = 8, 4
RTOL = 1e-9


@pytest.fixture(scope='module')
def reference_run():
  """The imported network and images in float64, and the reference's outputs."""
  model, variables = cos_jax.load_torch_checkpoint(
    FIXTURES / 'r20_fix_w.npz', arch='resnet20', num_classes=10, levels=4
  )
  images = np.load(FIXTURES / 'x32_cifar.npy').transpose(0, 2, 3, 1)  # NCHW -> NHWC
  expected = {rho: dict(np.load(FIXTURES / f'r20_rho{rho}_f64.npz')) for rho in (0, RHO)}
  return model, variables, images, expected


def _assert_rows_equal(actual, expected):
  actual = np.asarray(actual)
  assert actual.dtype == np.float64
  assert actual.shape == expected.shape
  np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * np.abs(expected).max())


def test_float64_outputs_equal_the_reference_row_for_row(reference_run):
  model, variables, images, expected = reference_run
  with jax.enable_x64(True):
    variables = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), variables)
    images = jnp.asarray(images, jnp.float64)
    ann = jax.jit(lambda v, x: model.apply(v, x, train=False))
    _assert_rows_equal(ann(variables, images), expected[0]['ann_out'])
    snn = cos_jax.convert(model, variables)
    _assert_rows_equal(cos_jax.simulate(snn, images, T), expected[0]['snn_out'])
    shifts = cos_jax.calibrate(snn, images, rho=RHO)
    assert all(v.dtype == jnp.float64 for v in jax.tree.leaves(shifts.values))
    _assert_rows_equal(cos_jax.simulate(snn, images, T, shifts=shifts), expected[RHO]['snn_out'])
    fused, _, _ = cos_jax.calibrate_and_simulate(snn, images, T, rho=RHO)
    _assert_rows_equal(fused, expected[RHO]['snn_out'])
    np.testing.assert_array_equal(expected[0]['ann_out'], expected[RHO]['ann_out'])


def test_the_fixtures_are_not_trivial(reference_run):
  """The check means something only if the reference's rows differ between the two methods
  and every step's output is non-zero (the network spikes)."""
  *_, expected = reference_run
  plain, cos = expected[0]['snn_out'], expected[RHO]['snn_out']
  assert np.abs(plain - cos).max() > 1e-3
  assert (np.abs(plain).max(axis=(1, 2)) > 0).all()
  assert (np.abs(cos).max(axis=(1, 2)) > 0).all()


def test_x64_does_not_leak():
  assert jnp.zeros(1).dtype == jnp.float32
