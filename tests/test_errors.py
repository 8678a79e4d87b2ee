"""Bad input gets an error that names the problem and the expected value, before any compile."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest

import cos_jax


@pytest.fixture(scope='module')
def snn(tiny_net):
  return tiny_net.snn


GOOD = np.zeros((2, 8, 8, 1), np.float32)


@pytest.mark.parametrize('images,message', [
    (np.zeros((8, 8, 1), np.float32), 'rank 4'),
    (np.zeros((2, 8, 8, 3), np.float32), '1 channels'),
    (np.zeros((2, 16, 16, 1), np.float32), 'must be 8x8'),
    (np.zeros((2, 1, 8, 8), np.float32), 'must be 8x8'),
    (np.zeros((2, 8, 8, 1), np.uint8), 'floating point'),
    (np.full((2, 8, 8, 1), np.nan, np.float32), 'NaN or infinite'),
    (np.zeros((0, 8, 8, 1), np.float32), 'empty batch'),
])
def test_bad_images(snn, images, message):
  with pytest.raises(ValueError, match=message):
    cos_jax.simulate(snn, images, 4)
  with pytest.raises(ValueError, match=message):
    cos_jax.calibrate(snn, images, rho=2)


@pytest.mark.parametrize('kwargs,message', [
    ({'T': 0}, 'T must be an integer >= 1, got 0'),
    ({'T': 2.5}, 'T must be an integer'),
    ({'T': 4, 'chunk': 0}, 'chunk must be'),
])
def test_bad_steps(snn, kwargs, message):
  with pytest.raises(ValueError, match=message):
    cos_jax.simulate(snn, GOOD, **kwargs)


def test_bad_rho_and_rounds(snn):
  with pytest.raises(ValueError, match='rho must be an integer >= 0, got -1'):
    cos_jax.calibrate_and_simulate(snn, GOOD, 4, rho=-1)
  with pytest.raises(ValueError, match='rho must be an integer >= 1, got 0'):
    cos_jax.calibrate(snn, GOOD, rho=0)
  with pytest.raises(ValueError, match='rounds must be an integer >= 1'):
    cos_jax.calibrate(snn, GOOD, rho=2, rounds=0)
  with pytest.raises(ValueError, match='statistics_T'):
    cos_jax.calibrate_and_simulate(snn, GOOD, 4, rho=2, statistics_T=5)


def test_shifts_from_another_batch(snn):
  shifts = cos_jax.calibrate(snn, GOOD, rho=2)
  with pytest.raises(ValueError, match='calibrated on a batch of 2 images, but 3'):
    cos_jax.simulate(snn, np.zeros((3, 8, 8, 1), np.float32), 4, shifts=shifts)
  with pytest.raises(TypeError, match='Shifts returned by calibrate'):
    cos_jax.simulate(snn, GOOD, 4, shifts=shifts.values)


def test_unknown_arch_and_levels():
  with pytest.raises(ValueError, match="Unknown arch 'vgg11'.*resnet20"):
    cos_jax.create_model('vgg11', num_classes=10, levels=4)
  with pytest.raises(ValueError, match='levels'):
    cos_jax.create_model('vgg16', num_classes=10, levels=0)


def test_convert_checks_variables(tiny_net):
  with pytest.raises(ValueError, match="lack the 'batch_stats'"):
    cos_jax.convert(tiny_net.model, {'params': tiny_net.variables['params']})
  params = dict(tiny_net.variables['params'])
  params['fc'] = {'kernel': jnp.zeros((3, 3)), 'bias': params['fc']['bias']}
  with pytest.raises(ValueError, match=r'fc/kernel has shape \(3, 3\), expected \(64, 32\)'):
    cos_jax.convert(tiny_net.model, {**tiny_net.variables, 'params': params})
  with pytest.raises(TypeError, match='cos_jax QCFS model'):
    cos_jax.convert(object(), tiny_net.variables)


def test_simulation_compiles_once_per_shape(snn):
  """Repeated calls with new data of the same shape reuse the compiled simulation."""
  traced = chex.assert_max_traces(n=1)(cos_jax.snn._run)
  original, cos_jax.snn._run = cos_jax.snn._run, traced
  cos_jax.snn._simulate_jit.clear_cache()
  try:
    for seed in range(3):
      images = np.random.default_rng(seed).normal(size=(2, 8, 8, 1)).astype(np.float32)
      cos_jax.simulate(snn, images, 3)
  finally:
    cos_jax.snn._run = original
    cos_jax.snn._simulate_jit.clear_cache()
