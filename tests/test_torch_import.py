"""Import of reference PyTorch state_dicts: names, layouts and strict key checks."""

import functools

import numpy as np
import pytest

import cos_jax
from cos_jax import run_state, torch_import
from tests import reference
from tests.conftest import SMALL_RESNET

SMALL_VGG = dict(stages=((4,), (8, 8)), classifier_width=16, input_shape=(8, 8, 3))


def _export(model, seed):
  variables = reference.dyadic_variables(model, seed)
  return variables, torch_import.export_state_dict(model, variables)


def test_vgg16_and_resnet_key_names_match_the_reference():
  vgg = cos_jax.create_model('vgg16', num_classes=10, levels=4)
  shapes = torch_import.state_dict_shapes(vgg)
  keys = set(shapes)
  assert len(keys) == 112  # docs/method.md §6
  assert shapes['layer1.0.weight'] == (64, 3, 3, 3)
  assert shapes['classifier.1.weight'] == (4096, 512)
  assert shapes['layer5.10.up'] == (1,)
  for key in (
    'layer1.0.weight',
    'layer1.1.num_batches_tracked',
    'layer1.2.up',
    'layer1.4.bias',
    'layer3.8.weight',
    'layer5.10.up',
    'classifier.1.weight',
    'classifier.2.up',
    'classifier.4.bias',
    'classifier.5.up',
    'classifier.7.weight',
  ):
    assert key in keys, key
  resnet = cos_jax.create_model('resnet20', num_classes=10, levels=4)
  keys = set(torch_import.state_dict_shapes(resnet))
  assert keys == set(torch_import.export_state_dict(resnet, reference.ones_like_variables(resnet)))
  for key in (
    'conv1.0.weight',
    'conv1.1.running_var',
    'conv1.2.up',
    'conv2_x.0.residual_function.0.weight',
    'conv2_x.2.residual_function.4.bias',
    'conv3_x.0.shortcut.0.weight',
    'conv3_x.0.shortcut.1.running_mean',
    'conv4_x.2.relu.up',
    'fc.weight',
    'fc.bias',
  ):
    assert key in keys, key
  assert not any(k.startswith('conv5_x') or k.startswith('conv2_x.0.shortcut') for k in keys)
  imagenet_vgg = cos_jax.create_model('vgg16', num_classes=1000, levels=8, imagenet=True)
  assert torch_import.state_dict_shapes(imagenet_vgg)['classifier.1.weight'] == (4096, 25088)
  resnet34 = torch_import.state_dict_shapes(
    cos_jax.create_model('resnet34', num_classes=100, levels=4)
  )
  assert sum(k.endswith('relu.up') for k in resnet34) == 16 and resnet34['fc.weight'] == (100, 512)


@pytest.mark.parametrize('arch', ['vgg', 'resnet'])
def test_npz_round_trip_gives_the_numpy_network(tmp_path, arch):
  """A hand-made state_dict in PyTorch layout -> cos_jax -> logits equal the NumPy network."""
  if arch == 'vgg':
    model = cos_jax.models.VGG(num_classes=4, levels=4, **SMALL_VGG)
  else:
    model = cos_jax.models.ResNet(num_classes=3, levels=2, input_shape=(8, 8, 3), **SMALL_RESNET)
  variables, state_dict = _export(model, 7)
  # PyTorch layouts: OIHW convs, (out, in) dense, (1,) thresholds.
  first_conv = 'layer1.0.weight' if arch == 'vgg' else 'conv1.0.weight'
  assert state_dict[first_conv].shape == (4, 3, 3, 3)
  path = tmp_path / 'checkpoint.npz'
  np.savez(path, **{'module.' + k: v for k, v in state_dict.items()})  # DataParallel prefix
  imported_model, imported = cos_jax.load_torch_checkpoint(
    path,
    arch='vgg16' if arch == 'vgg' else 'resnet20',
    num_classes=model.num_classes,
    levels=model.levels,
    **_overrides(model),
  )
  images = reference.dyadic_images((3, 8, 8, 3), 8)
  logits = np.asarray(imported_model.apply(imported, images, train=False))
  if arch == 'vgg':
    expected = _numpy_small_vgg(state_dict, images, model.levels)
  else:
    expected = reference.ann_logits(
      reference.tiny_resnet, variables, images, model.levels, model=model
    )
  np.testing.assert_array_equal(logits, expected)
  again = torch_import.export_state_dict(imported_model, imported)
  assert set(again) == set(state_dict)
  for key, value in state_dict.items():
    np.testing.assert_array_equal(again[key], value, err_msg=key)


def _overrides(model):
  if isinstance(model, cos_jax.models.VGG):
    return SMALL_VGG
  return dict(
    stage_sizes=model.stage_sizes,
    widths=model.widths,
    strides=model.strides,
    stem_width=model.stem_width,
    input_shape=model.input_shape,
  )


def _numpy_small_vgg(sd, images, levels):
  """The small VGG written out from the PyTorch state_dict itself (NCHW flatten included)."""
  x = images
  for stage, convs in ((1, 1), (2, 2)):
    for j in range(convs):
      p = f'layer{stage}.{4 * j}'
      bn = f'layer{stage}.{4 * j + 1}'
      layer = {'kernel': sd[f'{p}.weight'].transpose(2, 3, 1, 0), 'bias': sd[f'{p}.bias']}
      x = reference.batch_norm(
        reference.conv(x, layer),
        {'scale': sd[f'{bn}.weight'], 'bias': sd[f'{bn}.bias']},
        {'mean': sd[f'{bn}.running_mean'], 'var': sd[f'{bn}.running_var']},
      )
      x = reference.qcfs(x, sd[f'layer{stage}.{4 * j + 2}.up'][0], levels)
    x = reference.avg_pool(x)
  x = x.transpose(0, 3, 1, 2).reshape(len(x), -1)  # PyTorch flattens NCHW
  for dense, up in (('classifier.1', 'classifier.2'), ('classifier.4', 'classifier.5')):
    x = reference.qcfs(x @ sd[f'{dense}.weight'].T + sd[f'{dense}.bias'], sd[f'{up}.up'][0], levels)
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
    cos_jax.load_torch_checkpoint(
      tmp_path / 'bad.npz', arch='vgg16', num_classes=4, levels=4, **SMALL_VGG
    )
  message = str(error.value)
  assert 'missing layer1.2.up (expected shape (1,))' in message
  assert 'unexpected layer9.0.weight' in message
  assert 'classifier.7.weight has shape (5, 16), expected (4, 16)' in message


def test_missing_file_and_tiny_arch(tmp_path):
  with pytest.raises(FileNotFoundError, match='No checkpoint file'):
    cos_jax.load_torch_checkpoint(tmp_path / 'none.npz', arch='vgg16', num_classes=10, levels=4)
  with pytest.raises(ValueError, match='no PyTorch reference'):
    cos_jax.load_torch_checkpoint(tmp_path / 'none.npz', arch='tiny', num_classes=10, levels=4)


@pytest.mark.parametrize('content', [b'', b'not a zip archive', b'PK\x03\x04 truncated'])
def test_unreadable_npz_names_the_file(tmp_path, content):
  path = tmp_path / 'broken.npz'
  path.write_bytes(content)
  with pytest.raises(ValueError, match=r'broken.npz is not a readable .npz archive.*np.savez'):
    cos_jax.load_torch_checkpoint(path, arch='resnet20', num_classes=10, levels=4)


def test_a_checkpoint_is_read_by_its_content_whatever_its_name(tmp_path):
  model = cos_jax.models.VGG(num_classes=4, levels=4, **SMALL_VGG)
  variables, state_dict = _export(model, 1)
  load = functools.partial(
    cos_jax.load_torch_checkpoint, arch='vgg16', num_classes=4, levels=4, **SMALL_VGG
  )
  for name in ('upper.NPZ', 'state.bin'):
    with open(tmp_path / name, 'wb') as f:
      np.savez(f, **state_dict)
    _, loaded = load(tmp_path / name)
    np.testing.assert_array_equal(
      loaded['params']['head']['kernel'], variables['params']['head']['kernel']
    )
  np.save(tmp_path / 'one_array.npy', state_dict['layer1.0.weight'])
  (tmp_path / 'one_array.npy').rename(tmp_path / 'renamed.npz')
  with pytest.raises(ValueError, match=r'renamed.npz is a single NumPy array \(.npy\).*np.savez'):
    load(tmp_path / 'renamed.npz')
  with pytest.raises(TypeError, match='path must be a file path .* got None'):
    load(None)


def test_wrapper_prefixes_are_taken_off_and_non_numbers_named(tmp_path):
  model = cos_jax.models.VGG(num_classes=4, levels=4, **SMALL_VGG)
  variables, state_dict = _export(model, 1)
  for prefix in ('module.', 'model.', 'module.model.'):
    wrapped = {prefix + key: value for key, value in state_dict.items()}
    loaded = torch_import.state_dict_to_variables(model, wrapped)
    np.testing.assert_array_equal(
      loaded['params']['head']['kernel'], variables['params']['head']['kernel']
    )
  broken = dict(state_dict)
  broken['layer1.2.up'] = np.asarray(['8.0'])
  broken['classifier.7.bias'] = np.zeros(4, np.dtype('V2'))  # bfloat16 through NumPy
  with pytest.raises(ValueError) as error:
    torch_import.state_dict_to_variables(model, broken)
  assert 'layer1.2.up holds <U3 values, not numbers' in str(error.value)
  assert 'classifier.7.bias holds |V2 values, not numbers (bfloat16 saved' in str(error.value)


def test_export_refuses_what_does_not_fit():
  tiny = cos_jax.create_model('tiny', num_classes=3, levels=4)
  with pytest.raises(ValueError, match='TinyNet has no PyTorch reference'):
    cos_jax.export_state_dict(tiny, reference.ones_like_variables(tiny))
  model = cos_jax.models.ResNet(num_classes=3, levels=2, input_shape=(8, 8, 3), **SMALL_RESNET)
  other = cos_jax.models.ResNet(num_classes=5, levels=2, input_shape=(8, 8, 3), **SMALL_RESNET)
  with pytest.raises(ValueError, match=r'do not fit the model: .*head/kernel has shape \(8, 5\)'):
    cos_jax.export_state_dict(model, reference.ones_like_variables(other))


def _batch_norm_keys(prefix: str, width: int) -> dict:
  return {
    **{f'{prefix}.{leaf}': (width,) for leaf in ('weight', 'bias', 'running_mean', 'running_var')},
    f'{prefix}.num_batches_tracked': (),
  }


def _authors_resnet34_shapes(num_classes: int) -> dict:
  """Key -> shape of the authors' `resnet34(num_classes)`, written out from docs/method.md §6 (the
  same class for CIFAR and ImageNet: a 3x3 stride-1 stem)."""
  shapes = {'conv1.0.weight': (64, 3, 3, 3), **_batch_norm_keys('conv1.1', 64), 'conv1.2.up': (1,)}
  width_in = 64
  for stage, (blocks, width, stride) in enumerate(
    zip((3, 4, 6, 3), (64, 128, 256, 512), (1, 2, 2, 2), strict=True), start=2
  ):
    for block in range(blocks):
      prefix = f'conv{stage}_x.{block}'
      shapes.update(
        {
          f'{prefix}.residual_function.0.weight': (width, width_in, 3, 3),
          **_batch_norm_keys(f'{prefix}.residual_function.1', width),
          f'{prefix}.residual_function.2.up': (1,),
          f'{prefix}.residual_function.3.weight': (width, width, 3, 3),
          **_batch_norm_keys(f'{prefix}.residual_function.4', width),
          f'{prefix}.relu.up': (1,),
        }
      )
      if block == 0 and (stride != 1 or width_in != width):
        shapes.update(
          {
            f'{prefix}.shortcut.0.weight': (width, width_in, 1, 1),
            **_batch_norm_keys(f'{prefix}.shortcut.1', width),
          }
        )
      width_in = width
  return {**shapes, 'fc.weight': (num_classes, 512), 'fc.bias': (num_classes,)}


def _authors_vgg16_shapes(num_classes: int, classifier_in: int) -> dict:
  """Key -> shape of the authors' `vgg16(num_classes)`, written out from docs/method.md §6."""
  shapes, width_in = {}, 3
  for stage, widths in enumerate(cos_jax.models.VGG16_STAGES, start=1):
    for n, width in enumerate(widths):
      shapes.update(
        {
          f'layer{stage}.{4 * n}.weight': (width, width_in, 3, 3),
          f'layer{stage}.{4 * n}.bias': (width,),
          **_batch_norm_keys(f'layer{stage}.{4 * n + 1}', width),
          f'layer{stage}.{4 * n + 2}.up': (1,),
        }
      )
      width_in = width
  for index, (fan_in, fan_out) in zip((1, 4), ((classifier_in, 4096), (4096, 4096)), strict=True):
    shapes.update(
      {
        f'classifier.{index}.weight': (fan_out, fan_in),
        f'classifier.{index}.bias': (fan_out,),
        f'classifier.{index + 1}.up': (1,),
      }
    )
  return {**shapes, 'classifier.7.weight': (num_classes, 4096), 'classifier.7.bias': (num_classes,)}


@pytest.mark.parametrize('arch', ['resnet34', 'vgg16'])
def test_the_authors_imagenet_checkpoints_import_into_the_imagenet_config(arch):
  from configs import imagenet  # pylint: disable=import-outside-toplevel

  config = imagenet.get_config()
  config.arch = arch
  shapes = (
    _authors_resnet34_shapes(1000)
    if arch == 'resnet34'
    else _authors_vgg16_shapes(1000, 512 * 7 * 7)
  )
  # Constant arrays as broadcast views: VGG-16's 138 M parameters cost no memory until imported.
  state_dict = {
    key: np.zeros(shape, np.int64)
    if key.endswith('num_batches_tracked')
    else np.broadcast_to(np.float32(0.5), shape)
    for key, shape in shapes.items()
  }
  model = run_state.create_model(config)
  variables = torch_import.state_dict_to_variables(model, state_dict)
  assert variables['params']['stem_conv' if arch == 'resnet34' else 'conv1_0']['kernel'].shape == (
    3,
    3,
    3,
    64,
  )
  assert torch_import.state_dict_shapes(model) == shapes
