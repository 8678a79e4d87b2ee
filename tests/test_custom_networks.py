"""Your own network: user-written Flax CNNs train, convert and simulate spike for spike with the
NumPy reference; what IF neurons cannot compute is refused at `convert`, by name."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import cos_jax
from configs import test as test_config
from cos_jax import config_checks, run_state, training
from cos_jax.convertibility import NotConvertibleError
from tests import custom_networks, reference
from tests.conftest import Net

BATCH, T, RHO = 3, 3, 2

NETWORKS = {
  'vgg11_like': (custom_networks.VGG11Like, reference.vgg11_like),
  'separable': (custom_networks.SeparableNet, reference.separable_net),
}


@pytest.fixture(scope='module', params=sorted(NETWORKS))
def custom_net(request):
  model_class, network = NETWORKS[request.param]
  model = model_class(num_classes=3, levels=4)
  return Net(model, reference.dyadic_variables(model, 3), network, {})


def test_custom_networks_match_the_reference_spike_for_spike(custom_net):
  images = reference.dyadic_images((BATCH,) + custom_net.model.input_shape, 5)
  ann = reference.ann_logits(custom_net.network, custom_net.variables, images, 4)
  np.testing.assert_array_equal(
    np.asarray(custom_net.model.apply(custom_net.variables, images)), ann
  )
  plain, _ = reference.snn_logits(custom_net.network, custom_net.variables, images, T)
  np.testing.assert_array_equal(np.asarray(cos_jax.simulate(custom_net.snn, images, T)), plain)

  expected, expected_shifts = reference.snn_logits(
    custom_net.network, custom_net.variables, images, T, rho=RHO
  )
  logits, shifts, _ = cos_jax.calibrate_and_simulate(custom_net.snn, images, T, rho=RHO)
  np.testing.assert_array_equal(np.asarray(logits), expected)
  got = {
    '/'.join(path[:-1]): np.asarray(value)
    for path, value in traverse_util.flatten_dict(shifts.values).items()
  }
  assert set(got) == set(expected_shifts)
  for name, value in expected_shifts.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)
  assert any(np.any(v != 0) for v in expected_shifts.values()), 'the test exercises no shift'


def test_a_config_naming_a_custom_network_trains_and_converts(tmp_path):
  config = test_config.get_config()
  config.arch = 'tests.custom_networks:SeparableNet'
  config.num_epochs = 1
  training.train_and_evaluate(config, str(tmp_path))
  report = json.loads((tmp_path / 'report.json').read_text())
  assert report['config']['arch'] == config.arch
  assert len(report['methods']['cos_rho2']['accuracy_by_T']) == config.conversion.max_T
  model, variables = run_state.restore_variables(config, str(tmp_path))
  assert isinstance(model, custom_networks.SeparableNet)
  assert 'depthwise_conv' in variables['params']


@pytest.mark.parametrize(
  'arch,message',
  [
    ('tests.custom_networks:Missing', "has no 'Missing'"),
    ('no_such_package.nets:Net', "cannot import 'no_such_package.nets'"),
    ('tests.custom_networks:flatten', 'not a Flax linen Module class'),
    ('vgg11', 'Unknown arch'),
  ],
)
def test_a_bad_arch_name_says_what_is_expected(arch, message):
  with pytest.raises(ValueError, match=message):
    cos_jax.create_model(arch, num_classes=3, levels=4)


class _Between(nn.Module):
  """An activation, `operation`, another activation: the smallest place for a bad operation."""

  operation: object
  num_classes: int = 3
  levels: int = 4
  input_shape: tuple[int, int, int] = (8, 8, 2)
  spiking: cos_jax.Spiking | None = None

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = cos_jax.Activation(self.levels, self.spiking, name='act_in')(nn.Conv(4, (3, 3))(x))
    x = self.operation(x)
    x = cos_jax.Activation(self.levels, self.spiking, name='act_out')(x)
    return nn.Dense(self.num_classes, name='head')(custom_networks.flatten(x))


def _attention(x):
  tokens = x.reshape(x.shape[:-3] + (-1, x.shape[-1]))
  scores = tokens @ jnp.swapaxes(tokens, -1, -2)
  return (scores @ tokens).reshape(x.shape)


REFUSED = {
  'max pooling': (
    lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)),
    ['reduce_window_max', 'average pooling'],
  ),
  'relu': (nn.relu, ['relu (max)', 'cos_jax.Activation']),
  'sigmoid': (jax.nn.sigmoid, ['logistic', 'pointwise nonlinearity']),
  'clip': (lambda x: jnp.clip(x, 0.0, 1.0), ['clip (max)', 'clip (min)']),
  'gating': (lambda x: x * x.mean(axis=-1, keepdims=True), ['mul', 'gating']),
  'attention': (_attention, ['dot_general', 'attention']),
  'layer norm': (lambda x: nn.LayerNorm(name='norm')(x), ['rsqrt', '_Between/norm']),
  'division by activity': (lambda x: x / (1.0 + x.sum()), ['div', 'quotient']),
  'selection': (lambda x: jnp.where(x > 1.0, x, 0.0), ['select_n', 'control flow']),
  'cond': (
    lambda x: jax.lax.cond(x.sum() > 0, lambda y: y, lambda y: 2 * y, x),
    ['cond', 'control flow'],
  ),
  'unconverted activation': (
    lambda x: cos_jax.Activation(4, name='plain')(x),
    ['_Between/plain', 'stay QCFS', 'self.spiking'],
  ),
  'batch axis flattened': (
    lambda x: x.reshape(x.shape[0], 8, 8, 4),
    ['leading time axis', 'x.reshape(x.shape[:-3] + (-1,))'],
  ),
}


@pytest.mark.parametrize('case', sorted(REFUSED))
def test_convert_refuses_what_if_neurons_cannot_compute_naming_it(case):
  operation, expected = REFUSED[case]
  model = _Between(operation)
  variables = reference.ones_like_variables(model)
  with pytest.raises(NotConvertibleError) as error:
    cos_jax.convert(model, variables)
  for text in expected:
    assert text in str(error.value), str(error.value)
  if case not in ('unconverted activation', 'batch axis flattened'):
    assert 'test_custom_networks.py' in str(error.value)  # the user's source line


@pytest.mark.parametrize(
  'operation',
  [
    lambda x: 0.5 * x + 1.0,
    lambda x: jnp.concatenate([x[..., :2], -x[..., 2:]], axis=-1),
    lambda x: jnp.pad(x, ((0, 0),) * (x.ndim - 3) + ((1, 1), (1, 1), (0, 0)))[..., 1:-1, 1:-1, :],
    lambda x: nn.Conv(4, (3, 3), feature_group_count=4)(x),
    lambda x: nn.avg_pool(x, (3, 3), padding='SAME'),
    lambda x: jnp.broadcast_to(x.mean(axis=(-3, -2), keepdims=True), x.shape),
  ],
)
def test_linear_operations_between_activations_convert(operation):
  model = _Between(operation)
  cos_jax.convert(model, reference.ones_like_variables(model))


def test_the_readme_example_network_keeps_the_contract():
  from examples import custom_network  # pylint: disable=import-outside-toplevel

  config = custom_network.get_config()
  config_checks.check_config(config)
  model = run_state.create_model(config)
  cos_jax.convert(model, reference.ones_like_variables(model))
