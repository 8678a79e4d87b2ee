"""Import of reference PyTorch state_dicts: names, layouts and strict key checks."""

import numpy as np
import pytest

import cos_jax
from cos_jax import torch_import
from tests import reference

SMALL_VGG = dict(stages=((4,), (8, 8)), classifier_width=16, input_shape=(8, 8, 3))


def _export(model, seed):
  variables = reference.dyadic_variables(model, seed)
  return variables, torch_import.export_state_dict(model, variables)


def test_vgg16_and_resnet_key_names_match_the_reference():
  vgg = cos_jax.create_model('vgg16', num_classes=10, levels=4)
  shapes = torch_import.state_dict_shapes(vgg)
  keys = set(shapes)
  assert len(keys) == 112  # SPEC section 6
  assert shapes['layer1.0.weight'] == (64, 3, 3, 3)
  assert shapes['classifier.1.weight'] == (4096, 512)
  assert shapes['layer5.10.up'] == (1,)
  for key in ('layer1.0.weight', 'layer1.1.num_batches_tracked', 'layer1.2.up', 'layer1.4.bias',
              'layer3.8.weight', 'layer5.10.up', 'classifier.1.weight', 'classifier.2.up',
              'classifier.4.bias', 'classifier.5.up', 'classifier.7.weight'):
    assert key in keys, key
  resnet = cos_jax.create_model('resnet20', num_classes=10, levels=4)
  keys = set(torch_import.state_dict_shapes(resnet))
  assert keys == set(torch_import.export_state_dict(resnet, cos_jax.init_variables(resnet, _key())))
  for key in ('conv1.0.weight', 'conv1.1.running_var', 'conv1.2.up',
              'conv2_x.0.residual_function.0.weight', 'conv2_x.2.residual_function.4.bias',
              'conv3_x.0.shortcut.0.weight', 'conv3_x.0.shortcut.1.running_mean',
              'conv4_x.2.relu.up', 'fc.weight', 'fc.bias'):
    assert key in keys, key
  assert not any(k.startswith('conv5_x') or k.startswith('conv2_x.0.shortcut') for k in keys)
  imagenet_vgg = cos_jax.create_model('vgg16', num_classes=1000, levels=8, imagenet=True)
  assert torch_import.state_dict_shapes(imagenet_vgg)['classifier.1.weight'] == (4096, 25088)
  resnet34 = torch_import.state_dict_shapes(cos_jax.create_model('resnet34', num_classes=100,
                                                                 levels=4))
  assert sum(k.endswith('relu.up') for k in resnet34) == 16 and resnet34['fc.weight'] == (100, 512)


def _key():
  import jax  # pylint: disable=g-import-not-at-top
  return jax.random.key(0)


@pytest.mark.parametrize('arch', ['vgg', 'resnet'])
def test_npz_round_trip_gives_the_numpy_network(tmp_path, arch):
  """A hand-made state_dict in PyTorch layout -> cos_jax -> logits equal the NumPy network."""
  if arch == 'vgg':
    model = cos_jax.models.VGG(num_classes=4, levels=4, **SMALL_VGG)
  else:
    model = cos_jax.models.ResNet(num_classes=3, levels=2, stage_sizes=(1, 1), widths=(4, 8),
                                  strides=(1, 2), stem_width=4, input_shape=(8, 8, 3))
  variables, state_dict = _export(model, 7)
  # PyTorch layouts: OIHW convs, (out, in) dense, (1,) thresholds.
  first_conv = 'layer1.0.weight' if arch == 'vgg' else 'conv1.0.weight'
  assert state_dict[first_conv].shape == (4, 3, 3, 3)
  path = tmp_path / 'checkpoint.npz'
  np.savez(path, **{'module.' + k: v for k, v in state_dict.items()})  # DataParallel prefix
  imported_model, imported = cos_jax.load_torch_checkpoint(
      path, arch='vgg16' if arch == 'vgg' else 'resnet20', num_classes=model.num_classes,
      L=model.levels, **_overrides(model))
  images = reference.dyadic_images((3, 8, 8, 3), 8)
  logits = np.asarray(imported_model.apply(imported, images, train=False))
  if arch == 'vgg':
    expected = _numpy_small_vgg(state_dict, images, model.levels)
  else:
    expected = reference.ann_logits(reference.tiny_resnet, variables, images, model.levels,
                                    model=model)
  np.testing.assert_array_equal(logits, expected)
  again = torch_import.export_state_dict(imported_model, imported)
  assert set(again) == set(state_dict)
  for key, value in state_dict.items():
    np.testing.assert_array_equal(again[key], value, err_msg=key)


def _overrides(model):
  if isinstance(model, cos_jax.models.VGG):
    return SMALL_VGG
  return dict(stage_sizes=model.stage_sizes, widths=model.widths, strides=model.strides,
              stem_width=model.stem_width, input_shape=model.input_shape)


def _numpy_small_vgg(sd, images, levels):
  """The small VGG written out from the PyTorch state_dict itself (NCHW flatten included)."""
  x = images
  for stage, convs in ((1, 1), (2, 2)):
    for j in range(convs):
      p = f'layer{stage}.{4 * j}'
      bn = f'layer{stage}.{4 * j + 1}'
      layer = {'kernel': sd[f'{p}.weight'].transpose(2, 3, 1, 0), 'bias': sd[f'{p}.bias']}
      x = reference.batch_norm(reference.conv(x, layer),
                               {'scale': sd[f'{bn}.weight'], 'bias': sd[f'{bn}.bias']},
                               {'mean': sd[f'{bn}.running_mean'], 'var': sd[f'{bn}.running_var']})
      x = reference.qcfs(x, sd[f'layer{stage}.{4 * j + 2}.up'][0], levels)
    x = reference.avg_pool(x)
  x = x.transpose(0, 3, 1, 2).reshape(len(x), -1)  # PyTorch flattens NCHW
  for dense, up in (('classifier.1', 'classifier.2'), ('classifier.4', 'classifier.5')):
    x = reference.qcfs(x @ sd[f'{dense}.weight'].T + sd[f'{dense}.bias'], sd[f'{up}.up'][0],
                       levels)
  return x @ sd['classifier.7.weight'].T + sd['classifier.7.bias']


def test_state_dict_errors_name_the_keys(tmp_path):
  model = cos_jax.models.VGG(num_classes=4, levels=4, **SMALL_VGG)
  _, state_dict = _export(model, 1)
  broken = dict(state_dict)
  del broken['layer1.2.up']
  broken['layer9.0.weight'] = np.zeros(3)
  broken['classifier.7.weight'] = np.zeros((5, 16), np.float32)
  np.savez(tmp_path / 'bad.npz', **broken)
  with pytest.raises(ValueError) as error:
    cos_jax.load_torch_checkpoint(tmp_path / 'bad.npz', arch='vgg16', num_classes=4, L=4,
                                  **SMALL_VGG)
  message = str(error.value)
  assert 'missing layer1.2.up (expected shape (1,))' in message
  assert 'unexpected layer9.0.weight' in message
  assert 'classifier.7.weight has shape (5, 16), expected (4, 16)' in message


def test_missing_file_and_tiny_arch(tmp_path):
  with pytest.raises(FileNotFoundError, match='No checkpoint file'):
    cos_jax.load_torch_checkpoint(tmp_path / 'none.npz', arch='vgg16', num_classes=10, L=4)
  with pytest.raises(ValueError, match='no PyTorch reference'):
    cos_jax.load_torch_checkpoint(tmp_path / 'none.npz', arch='tiny', num_classes=10, L=4)


@pytest.mark.parametrize('content', [b'', b'not a zip archive', b'PK\x03\x04 truncated'])
def test_unreadable_npz_names_the_file(tmp_path, content):
  path = tmp_path / 'broken.npz'
  path.write_bytes(content)
  with pytest.raises(ValueError, match=r'broken.npz is not a readable .npz archive.*np.savez'):
    cos_jax.load_torch_checkpoint(path, arch='resnet20', num_classes=10, L=4)


def test_export_refuses_what_does_not_fit():
  tiny = cos_jax.create_model('tiny', num_classes=3, levels=4)
  with pytest.raises(ValueError, match='TinyNet has no PyTorch reference'):
    cos_jax.export_state_dict(tiny, reference.ones_like_variables(tiny))
  model = cos_jax.models.ResNet(num_classes=3, levels=2, stage_sizes=(1, 1), widths=(4, 8),
                                strides=(1, 2), stem_width=4, input_shape=(8, 8, 3))
  other = cos_jax.models.ResNet(num_classes=5, levels=2, stage_sizes=(1, 1), widths=(4, 8),
                                strides=(1, 2), stem_width=4, input_shape=(8, 8, 3))
  with pytest.raises(ValueError, match=r'do not fit the model: .*head/kernel has shape \(8, 5\)'):
    cos_jax.export_state_dict(model, reference.ones_like_variables(other))
