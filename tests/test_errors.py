"""Bad input gets an error that names the problem and the expected value, before any compile."""

import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cos_jax
from configs import test as test_config
from cos_jax import training
from tests import reference


@pytest.fixture(scope='module')
def snn(tiny_net):
  return tiny_net.snn


GOOD = np.zeros((2, 8, 8, 1), np.float32)


@pytest.mark.parametrize(
  'images,message',
  [
    (np.zeros((8, 8, 1), np.float32), 'rank 4'),
    (np.zeros((2, 8, 8, 3), np.float32), '1 channels'),
    (np.zeros((2, 16, 16, 1), np.float32), 'must be 8x8'),
    (np.zeros((2, 1, 8, 8), np.float32), 'must be 8x8'),
    (np.zeros((2, 8, 8, 1), np.uint8), 'floating point'),
    (np.full((2, 8, 8, 1), np.nan, np.float32), 'NaN or infinite'),
    (np.zeros((0, 8, 8, 1), np.float32), 'empty batch'),
  ],
)
def test_bad_images(snn, images, message):
  with pytest.raises(ValueError, match=message):
    cos_jax.simulate(snn, images, 4)
  with pytest.raises(ValueError, match=message):
    cos_jax.calibrate(snn, images, rho=2)


@pytest.mark.parametrize(
  'kwargs,message',
  [
    ({'T': 0}, 'T must be an integer >= 1, got 0'),
    ({'T': 2.5}, 'T must be an integer'),
    ({'T': 4, 'chunk': 0}, 'chunk must be'),
  ],
)
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
  for not_a_count in (1.5, 2.7, np.float64(2.0)):
    with pytest.raises(ValueError, match='statistics_T must be an integer >= 0'):
      cos_jax.calibrate_and_simulate(snn, GOOD, 4, rho=2, statistics_T=not_a_count)


def test_integer_arrays_count_as_integers(snn):
  """jnp.int32(3) is an integer like np.int64(3) and 3: each gives the same run."""
  expected = np.asarray(cos_jax.simulate(snn, GOOD, 3))
  for three in (np.int64(3), jnp.int32(3)):
    np.testing.assert_array_equal(np.asarray(cos_jax.simulate(snn, GOOD, three)), expected)
  fused, shifts, _ = cos_jax.calibrate_and_simulate(snn, GOOD, jnp.int32(3), rho=jnp.int32(2))
  assert shifts.rho == 2 and type(shifts.rho) is int
  srp, masks, _ = cos_jax.srp_simulate(snn, GOOD, jnp.int32(3), tau=jnp.int32(2))
  assert masks.tau == 2 and srp.shape[0] == 3
  with pytest.raises(ValueError, match='T must be an integer >= 1'):
    cos_jax.simulate(snn, GOOD, jnp.float32(3))


def test_shifts_from_another_batch(snn):
  shifts = cos_jax.calibrate(snn, GOOD, rho=2)
  with pytest.raises(ValueError, match='found on a batch of 2 images, but 3'):
    cos_jax.simulate(snn, np.zeros((3, 8, 8, 1), np.float32), 4, shifts=shifts)
  with pytest.raises(TypeError, match='Shifts returned by calibrate'):
    cos_jax.simulate(snn, GOOD, 4, shifts=shifts.values)


@pytest.mark.parametrize(
  'kwargs,message',
  [
    ({'arch': 'vgg11'}, "Unknown arch 'vgg11'.*resnet20"),
    ({'levels': 0}, r'levels \(L\) must be an integer >= 1, got 0'),
    ({'levels': 2.5}, r'levels \(L\) must be an integer >= 1, got 2.5'),
    ({'num_classes': 10.0}, 'num_classes must be an integer >= 1, got 10.0'),
    ({'input_shape': (32, 32)}, r'input_shape must be \(height, width, channels\)'),
    ({'input_shape': (32, 0, 3)}, r'input_shape must be \(height, width, channels\)'),
    ({'input_shape': (16, 16, 3)}, 'VGG halves its input 5 times.*at least 32'),
  ],
)
def test_create_model_refuses_bad_arguments(kwargs, message):
  kwargs = {'arch': 'vgg16', 'num_classes': 10, 'levels': 4, **kwargs}
  with pytest.raises(ValueError, match=message):
    cos_jax.create_model(kwargs.pop('arch'), **kwargs)


@pytest.mark.parametrize(
  'edit,message',
  [
    (lambda s: s.replace(rho=0), 'shifts.rho must be an integer >= 1, got 0'),
    (lambda s: s.replace(rounds=-1), 'shifts.rounds must be an integer >= 1, got -1'),
    (lambda s: s.replace(values={}), 'shifts do not fit the model: missing act1/shift'),
    (
      lambda s: s.replace(values=jax.tree.map(lambda v: v.at[0].set(jnp.nan), s.values)),
      'shifts.values/act1/shift holds NaN',
    ),
  ],
)
def test_shifts_edited_by_hand(snn, edit, message):
  shifts = edit(cos_jax.calibrate(snn, GOOD, rho=2))
  with pytest.raises(ValueError, match=message):
    cos_jax.simulate(snn, GOOD, 4, shifts=shifts)


def test_bfloat16_images_are_accepted(snn):
  logits = cos_jax.simulate(snn, GOOD.astype(jnp.bfloat16), 2)
  assert logits.shape == (2, 2, 5)


def test_convert_checks_variables(tiny_net):
  with pytest.raises(ValueError, match="lack the 'batch_stats'"):
    cos_jax.convert(tiny_net.model, {'params': tiny_net.variables['params']})
  params = dict(tiny_net.variables['params'])
  params['fc'] = {'kernel': jnp.zeros((3, 3)), 'bias': params['fc']['bias']}
  with pytest.raises(ValueError, match=r'fc/kernel has shape \(3, 3\), expected \(64, 32\)'):
    cos_jax.convert(tiny_net.model, {**tiny_net.variables, 'params': params})
  with pytest.raises(TypeError, match='needs a QCFS model with the fields spiking and input_shape'):
    cos_jax.convert(object(), tiny_net.variables)
  listed = cos_jax.models.TinyNet(num_classes=5, levels=4, widths=[8, 16])
  with pytest.raises(ValueError, match=r"fields must be hashable .*\['widths'\]"):
    cos_jax.convert(listed, tiny_net.variables)


@pytest.mark.parametrize(
  'collection,layer,leaf,value,message',
  [
    ('params', 'conv1', 'kernel', np.nan, r'params/conv1/kernel has 1 NaN or infinite'),
    ('params', 'act2', 'threshold', np.inf, r'params/act2/threshold has 1 NaN or infinite'),
    ('params', 'act1', 'threshold', 0.0, r'params/act1/threshold \(a QCFS threshold\) is 0.0'),
    ('batch_stats', 'bn2', 'var', -1.0, r'batch_stats/bn2/var \(a BatchNorm variance\) has 1'),
  ],
)
def test_broken_variables_are_refused_naming_the_leaf(
  tiny_net, tmp_path, collection, layer, leaf, value, message
):
  broken = jax.tree.map(np.array, tiny_net.variables)
  target = broken[collection][layer][leaf]
  target.reshape(-1)[0] = value
  broken[collection][layer][leaf] = target
  with pytest.raises(ValueError, match=message):
    cos_jax.convert(tiny_net.model, broken)
  if layer.startswith('act') or collection == 'batch_stats':
    return
  model = cos_jax.create_model('resnet20', num_classes=10, levels=4)
  state_dict = {
    key: np.array(value)
    for key, value in cos_jax.export_state_dict(model, reference.ones_like_variables(model)).items()
  }
  state_dict['conv2_x.1.residual_function.3.weight'][0, 0, 0, 0] = value
  np.savez(tmp_path / 'broken.npz', **state_dict)
  with pytest.raises(ValueError, match='stage1_block1/conv2/kernel has 1 NaN'):
    cos_jax.load_torch_checkpoint(
      tmp_path / 'broken.npz', arch='resnet20', num_classes=10, levels=4
    )


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


@pytest.mark.parametrize(
  'overrides,message',
  [
    ({'conversion.rhos': (0, 2)}, r'conversion.rhos=\(0, 2\) \(distinct integers >= 1'),
    ({'conversion.rhos': (2, 2)}, r'conversion.rhos=\(2, 2\) \(distinct integers >= 1'),
    ({'seed': -1}, r'seed=-1 \(an integer from 0 to 2\*\*32 - 1'),
    ({'conversion.srp_taus': (4, 4)}, r'conversion.srp_taus=\(4, 4\) \(distinct integers >= 1'),
    ({'conversion.srp_taus': (1.5,)}, r'conversion.srp_taus=\(1.5,\) \(distinct integers >= 1'),
    ({'conversion.max_T': 0}, r'conversion.max_T=0 \(an integer >= 1\)'),
    (
      {'conversion.statistics_T': 9},
      r'conversion.statistics_T=9 \(an integer from 0 \(off\) to '
      r'max_T=4\)',
    ),
    ({'conversion.batch_size': 0}, r'conversion.batch_size=0'),
    ({'conversion.num_examples': 0}, r'conversion.num_examples=0 \(-1 for the whole test set'),
    ({'batch_size': 0}, r'batch_size=0 \(an integer >= 1\)'),
    ({'log_every_steps': 0}, r'log_every_steps=0'),
    ({'checkpoint_every_steps': 0}, r'checkpoint_every_steps=0'),
    ({'eval_batch_size': 0}, r'eval_batch_size=0'),
    ({'learning_rate': -0.1}, r'learning_rate=-0.1 \(a number > 0\)'),
    ({'lr_schedule': 'step'}, r"lr_schedule='step' \(one of \['cosine', 'linear'\]\)"),
    ({'std': (0.5, 0.5)}, r'std=\(0.5, 0.5\) \(1 numbers, one per channel\)'),
    ({'data_source': 'image_folder'}, r"data_dir='' \(the data folder"),
    ({'preprocess': 'crop'}, r"preprocess='crop' \(one of \['cifar', 'imagenet'\]\)"),
    ({'data_threads': 0}, r'data_threads=0 \(an integer >= 1\)'),
    ({'data_workers': -1}, r'data_workers=-1 \(an integer >= 0\)'),
    ({'arch': 'nets:Missing'}, r"arch: arch 'nets:Missing': cannot import 'nets'"),
  ],
)
def test_config_errors_come_first_and_name_the_field(tmp_path, overrides, message):
  config = test_config.get_config()
  for field, value in overrides.items():
    target = config
    *parents, leaf = field.split('.')
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  with pytest.raises(ValueError, match=message):
    training.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()  # refused before anything was written


def test_a_batch_larger_than_the_training_set_is_refused_before_training(tmp_path):
  config = test_config.get_config()
  config.batch_size = 512  # the synthetic training set has 256 examples
  with pytest.raises(ValueError, match=r'batch_size=512 is larger than the training set \(256'):
    training.train_and_evaluate(config, str(tmp_path / 'run'))


@pytest.mark.parametrize(
  'script,override,hint',
  [
    ('train.py', '--config.num_epoch=1', 'Did you mean "num_epochs"'),
    ('convert.py', '--config.conversion.max_t=4', 'Did you mean "max_T"'),
  ],
)
def test_scripts_refuse_an_override_of_a_missing_field_in_one_message(
  tmp_path, script, override, hint
):
  result = subprocess.run(
    [sys.executable, script, '--config=configs/test.py', f'--workdir={tmp_path / "run"}', override],
    cwd=Path(__file__).parents[1],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 1
  assert f'{override.split("=")[0]} names a field the config does not have' in result.stderr
  assert hint in result.stderr
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'run').exists()
