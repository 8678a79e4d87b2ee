"""cos_jax's simulation and calibration against the NumPy reference, spike for spike."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cos_jax
from tests import reference

BATCH = 6


def _images(net, seed=0):
  return reference.dyadic_images((BATCH,) + tuple(net.model.input_shape), seed)


def test_ann_matches_reference(net):
  images = _images(net)
  expected = reference.ann_logits(
    net.network, net.variables, images, net.model.levels, **net.kwargs
  )
  np.testing.assert_array_equal(np.asarray(net.model.apply(net.variables, images)), expected)


@pytest.mark.parametrize('T,chunk', [(7, 3), (4, 8)])
def test_plain_conversion_matches_reference(net, T, chunk):
  images = _images(net)
  expected, _ = reference.snn_logits(net.network, net.variables, images, T, **net.kwargs)
  logits = cos_jax.simulate(net.snn, images, T, chunk=chunk)
  assert logits.shape == (T, BATCH, net.model.num_classes)
  np.testing.assert_array_equal(np.asarray(logits), expected)


@pytest.mark.parametrize('T,rho,rounds', [(6, 2, 1), (2, 4, 1), (5, 3, 2)])
def test_cos_matches_reference(net, T, rho, rounds):
  images = _images(net, seed=1)
  expected, expected_shifts = reference.snn_logits(
    net.network, net.variables, images, T, rho=rho, rounds=rounds, **net.kwargs
  )
  shifts = cos_jax.calibrate(net.snn, images, rho=rho, rounds=rounds)
  got_shifts = reference.by_layer(shifts.values, 'shift')
  assert set(got_shifts) == set(expected_shifts)
  for name, value in expected_shifts.items():
    assert got_shifts[name].shape == (BATCH,) + value.shape[1:]
    np.testing.assert_array_equal(got_shifts[name], value, err_msg=name)
  assert any(np.any(v != 0) for v in expected_shifts.values()), 'the test exercises no shift'

  separate = cos_jax.simulate(net.snn, images, T, shifts=shifts, chunk=2)
  fused, fused_shifts, _ = cos_jax.calibrate_and_simulate(
    net.snn, images, T, rho=rho, rounds=rounds, chunk=2
  )
  np.testing.assert_array_equal(np.asarray(separate), expected)
  np.testing.assert_array_equal(np.asarray(fused), expected)
  for name, value in reference.by_layer(fused_shifts.values, 'shift').items():
    np.testing.assert_array_equal(value, got_shifts[name])


def test_calibrate_then_simulate_equals_fused_run_on_random_weights(tiny_resnet):
  """Float weights, where rounding could differ between programs: still bit for bit."""
  model = tiny_resnet.model
  variables = cos_jax.init_variables(model, jax.random.key(3))
  variables = jax.tree.map(
    lambda x: x + 0.1 * jax.random.normal(jax.random.key(4), x.shape), variables
  )
  variables['params'] = jax.tree.map(
    lambda x: jnp.abs(x) + 0.5 if x.ndim == 0 else x, variables['params']
  )
  variables['batch_stats'] = jax.tree.map(jnp.abs, variables['batch_stats'])
  snn = cos_jax.convert(model, variables)
  images = jax.random.normal(jax.random.key(5), (BATCH,) + model.input_shape)
  shifts = cos_jax.calibrate(snn, images, rho=3)
  for T in (2, 9):
    fused, _, _ = cos_jax.calibrate_and_simulate(snn, images, T, rho=3, chunk=4)
    separate = cos_jax.simulate(snn, images, T, shifts=shifts, chunk=4)
    np.testing.assert_array_equal(np.asarray(fused), np.asarray(separate))


def test_statistics_offset_spikes_and_spike_counts(tiny_net):
  images = _images(tiny_net, seed=2)
  T = 5
  logits, _, stats = cos_jax.calibrate_and_simulate(
    tiny_net.snn, images, 11, rho=0, chunk=3, statistics_T=T
  )
  counts = cos_jax.neuron_counts(tiny_net.snn)
  assert set(counts) == {'act1', 'act2', 'act_fc'}
  # Reference: per-neuron spike counts and total currents over T steps, layer act_fc.
  thresholds = reference.flat_thresholds(tiny_net.variables['params'])
  recorded = {}

  def act(name, x):
    x = np.broadcast_to(x, (T,) + x.shape[1:])
    out = reference.Simulation(thresholds, 0, 1).act(name, x)
    recorded[name] = (out / thresholds[name]['threshold'], x / thresholds[name]['threshold'])
    return out

  reference.tiny_net(tiny_net.variables, images, act)
  for name, (spikes, currents) in recorded.items():
    actual = spikes.sum(0)
    desired = np.clip(np.floor(currents.sum(0) + 0.5), 0, T)
    psi = np.clip(actual - desired, -3, 3)
    histogram = [(psi == b).sum() for b in cos_jax.OFFSET_SPIKE_BINS]
    np.testing.assert_array_equal(np.asarray(stats[name]['psi_histogram']), histogram)
    assert float(stats[name]['spikes']) == actual.sum()
    assert sum(histogram) == counts[name] * BATCH
  # non-zero inputs of the head are the hidden layer's output spikes
  assert float(stats['head']['nonzero_inputs']) == (recorded['act_fc'][0] != 0).sum()


def test_memory_state_is_per_layer_not_per_step(tiny_net):
  """The compiled simulation carries potentials, not time: its size does not grow with T."""
  images = _images(tiny_net)
  sizes = []
  for T in (8, 64):
    compiled = (
      jax.jit(
        lambda x, T=T: cos_jax.snn._run(
          tiny_net.snn,
          x,
          steps=T,
          first_chunk=8,
          rounds=0,
          chunk=8,
          shift_values=None,
          statistics_steps=0,
        )[0]
      )
      .lower(jnp.asarray(images))
      .compile()
    )
    sizes.append(compiled.memory_analysis().temp_size_in_bytes)
  assert sizes[1] <= sizes[0] * 1.3 + 4096
