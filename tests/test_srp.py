"""SRP (docs/method.md §9): the mask rule on hand-built sequences, and whole runs against the NumPy
reference spike for spike, fused and unfused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cos_jax
from cos_jax import neuron
from cos_jax.layers import Activation, Spiking
from tests import reference

BATCH = 6


def _images(net, seed=0):
  return reference.dyadic_images((BATCH,) + tuple(net.model.input_shape), seed)


def _presimulate_one_layer(currents, dtype):
  """One activation layer (threshold 1, so currents are inputs) over SRP's pre-simulation of
  len(currents) steps: its masks, its potentials after the reset, and its output spikes."""
  x = jnp.asarray(np.asarray(currents, dtype).T[:, None, :])  # [tau, batch 1, neurons]
  layer = Activation(levels=4, spiking=Spiking(x.shape[0], srp_presimulation=True))
  spikes, state = layer.apply(
    {'params': {'threshold': jnp.ones((), dtype)}},
    x,
    mutable=['membrane', 'residual_masks'],
  )
  return state['residual_masks']['mask'][0], state['membrane']['potential'][0], spikes[:, 0]


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_mask_rule_on_hand_built_sequences(dtype):
  with jax.enable_x64(dtype == np.float64):
    bound = dtype(neuron.RESIDUAL_BOUND)
    # Two steps from 1/2; each row is one neuron's currents and ends at the potential noted.
    cases = {
      'exactly at the bound': ([0.5, bound], False),  # 1/2 + 1/2 fires -> 0, then 0 + bound
      'just above it': ([0.5, np.nextafter(bound, dtype(1))], True),
      'just below it': ([0.5, np.nextafter(bound, dtype(0))], False),
      'fired every step, residual 1/2': ([1.0, 1.0], True),
      'fired every step, no residual': ([0.5, 1.0], False),
      'never fired, residual 1/2': ([0.0, 0.0], True),
      'never fired, negative': ([-0.5, -0.25], False),
    }
    masks, potentials, spikes = _presimulate_one_layer([c for c, _ in cases.values()], dtype)
    assert masks.dtype == jnp.bool_
    assert potentials.dtype == dtype
    for (name, (_, expected)), got in zip(cases.items(), np.asarray(masks), strict=True):
      assert got == expected, name
    # after the pre-simulation every neuron restarts at 1/2; its spikes were sent unmasked
    np.testing.assert_array_equal(np.asarray(potentials), np.full(len(cases), 0.5, dtype))
    np.testing.assert_array_equal(np.asarray(spikes)[:, 3], [1, 1])  # fired every step


def test_masked_layer_silences_masked_neurons_but_keeps_their_dynamics():
  """A masked neuron still integrates and resets; only its output is zero."""
  x = jnp.asarray([[[1.0, 1.0]], [[0.25, 0.25]], [[1.0, 1.0]]], jnp.float32)  # [3, 1, 2]
  layer = Activation(levels=4, spiking=Spiking(3, residual_masked=True))
  spikes, state = layer.apply(
    {
      'params': {'threshold': jnp.ones(())},
      'residual_masks': {'mask': jnp.asarray([[True, False]])},
    },
    x,
    mutable=['membrane'],
  )
  np.testing.assert_array_equal(np.asarray(spikes[:, 0]), [[1, 0], [0, 0], [1, 0]])
  np.testing.assert_array_equal(np.asarray(state['membrane']['potential']), [[0.75, 0.75]])


@pytest.mark.parametrize('T,tau,chunk', [(3, 4, None), (7, 3, 2)])  # T < tau; several chunks
def test_srp_matches_reference(net, T, tau, chunk):
  images = _images(net, seed=3)
  expected, expected_masks = reference.srp_logits(
    net.network, net.variables, images, T, tau, **net.kwargs
  )
  fused, masks, _ = cos_jax.srp_simulate(net.snn, images, T, tau=tau, chunk=chunk)
  assert fused.shape == (T, BATCH, net.model.num_classes)
  np.testing.assert_array_equal(np.asarray(fused), expected)
  got_masks = reference.by_layer(masks.values, 'mask')
  assert set(got_masks) == set(expected_masks) and masks.tau == tau
  for name, value in expected_masks.items():
    np.testing.assert_array_equal(got_masks[name], value, err_msg=name)
  silenced = sum(int((~v).sum()) for v in expected_masks.values())
  assert 0 < silenced < sum(v.size for v in expected_masks.values()), 'masks all alike'

  separate_masks = cos_jax.srp_masks(net.snn, images, tau=tau)
  for name, value in reference.by_layer(separate_masks.values, 'mask').items():
    np.testing.assert_array_equal(value, got_masks[name], err_msg=name)
  separate = cos_jax.simulate(net.snn, images, T, masks=separate_masks, chunk=chunk)
  np.testing.assert_array_equal(np.asarray(separate), expected)


def test_srp_differs_from_plain_conversion_continued(tiny_resnet):
  """The masks and the reset matter: SRP is not the plain run's steps tau + 1 .. tau + T."""
  images = _images(tiny_resnet, seed=3)
  plain = cos_jax.simulate(tiny_resnet.snn, images, 2 + 6)[2:]
  srp, _, _ = cos_jax.srp_simulate(tiny_resnet.snn, images, 6, tau=2)
  assert np.any(np.asarray(plain) != np.asarray(srp))


def test_srp_statistics_count_the_steps_after_the_presimulation(tiny_net):
  images = _images(tiny_net, seed=4)
  T, tau, counted = 7, 3, 5
  _, _, stats = cos_jax.srp_simulate(tiny_net.snn, images, T, tau=tau, statistics_T=counted)
  thresholds = reference.flat_thresholds(tiny_net.variables['params'])
  sim = reference.Simulation(thresholds, 0, 1, tau=tau)
  recorded = {}

  def act(name, x):
    x = np.broadcast_to(x, (tau + T,) + x.shape[1:])
    out = sim.act(name, x)
    recorded[name] = (out / thresholds[name]['threshold'], x / thresholds[name]['threshold'])
    return out

  reference.tiny_net(tiny_net.variables, images, act)
  after = slice(tau, tau + counted)
  for name, (spikes, currents) in recorded.items():
    actual = spikes[after].sum(0)
    desired = np.clip(np.floor(currents[after].sum(0) + 0.5), 0, counted)
    psi = np.clip(actual - desired, -3, 3)
    histogram = [(psi == b).sum() for b in cos_jax.OFFSET_SPIKE_BINS]
    np.testing.assert_array_equal(np.asarray(stats[name]['psi_histogram']), histogram)
    assert float(stats[name]['spikes']) == actual.sum()
  head_inputs = recorded['act_fc'][0]
  assert float(stats['head']['nonzero_inputs']) == (head_inputs[after] != 0).sum()
  assert float(stats['head']['presimulation_nonzero_inputs']) == (head_inputs[:tau] != 0).sum()


def test_srp_keeps_float64(tiny_resnet):
  """Float64 in, float64 throughout: the dyadic network is exact in float64 too once its
  BatchNorm variances make var + eps exactly 1 in float64, so the reference still applies."""
  unit_variance = np.float64(1) - 1e-5  # Flax's epsilon, as a float64
  with jax.enable_x64(True):
    variables = jax.tree.map(lambda v: np.asarray(v, np.float64), tiny_resnet.variables)
    variables['batch_stats'] = jax.tree_util.tree_map_with_path(
      lambda path, v: np.full_like(v, unit_variance) if path[-1].key == 'var' else v,
      variables['batch_stats'],
    )
    snn = cos_jax.convert(tiny_resnet.model, variables)
    images = _images(tiny_resnet, seed=3)
    logits, masks, _ = cos_jax.srp_simulate(snn, images.astype(np.float64), 3, tau=2)
    assert logits.dtype == np.float64
    assert jax.tree.leaves(masks.values)[0].dtype == np.bool_
  expected, _ = reference.srp_logits(
    tiny_resnet.network, tiny_resnet.variables, images, 3, 2, model=tiny_resnet.model
  )
  np.testing.assert_array_equal(np.asarray(logits), expected)


def test_srp_memory_does_not_grow_with_T(tiny_net):
  images = jnp.asarray(_images(tiny_net))
  sizes = []
  for T in (8, 64):
    chunks = cos_jax.snn.chunking(T, 0, None, tau=4)
    compiled = cos_jax.snn._srp_jit.lower(tiny_net.snn, images, None, tau=4, steps=T, **chunks)
    sizes.append(compiled.compile().memory_analysis().temp_size_in_bytes)
  assert sizes[1] <= sizes[0] * 1.3 + 4096


def test_masks_are_checked(tiny_net):
  images = _images(tiny_net)
  masks = cos_jax.srp_masks(tiny_net.snn, images, tau=2)
  with pytest.raises(ValueError, match='batch of 6 images, but 3'):
    cos_jax.simulate(tiny_net.snn, images[:3], 4, masks=masks)
  with pytest.raises(ValueError, match='missing act2/mask'):
    values = {k: v for k, v in masks.values.items() if k != 'act2'}
    cos_jax.simulate(tiny_net.snn, images, 4, masks=cos_jax.Masks(values, 2))
  with pytest.raises(ValueError, match='must be bool arrays'):
    values = jax.tree.map(lambda m: m.astype(np.float32), masks.values)
    cos_jax.simulate(tiny_net.snn, images, 4, masks=cos_jax.Masks(values, 2))
  with pytest.raises(ValueError, match='masks.tau must be an integer >= 1'):
    cos_jax.simulate(tiny_net.snn, images, 4, masks=cos_jax.Masks(masks.values, 0))
  with pytest.raises(TypeError, match='Masks returned by srp_masks'):
    cos_jax.simulate(tiny_net.snn, images, 4, masks=masks.values)
  shifts = cos_jax.calibrate(tiny_net.snn, images, rho=2)
  with pytest.raises(ValueError, match='not both'):
    cos_jax.simulate(tiny_net.snn, images, 4, shifts=shifts, masks=masks)
  for bad in (0, 1.5, np.float64(2.0)):
    with pytest.raises(ValueError, match='tau must be an integer >= 1'):
      cos_jax.srp_simulate(tiny_net.snn, images, 4, tau=bad)
  with pytest.raises(ValueError, match='statistics_T must be 0'):
    cos_jax.srp_simulate(tiny_net.snn, images, 4, tau=2, statistics_T=5)
