"""Architectures: parameter counts against the well-known reference numbers, output shapes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import cos_jax


def _shapes(model):
  images = jax.ShapeDtypeStruct((2,) + tuple(model.input_shape), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), images)
  logits = jax.eval_shape(functools.partial(model.apply, train=False), variables, images)
  return variables, logits


# Weights of the standard CIFAR networks (ResNets as in the COS/QCFS code), plus one threshold
# per QCFS layer.
@pytest.mark.parametrize(
  'arch,weights,thresholds',
  [
    ('vgg16', 33_646_666, 15),
    ('resnet18', 11_173_962, 17),
    ('resnet20', 272_474, 19),
    ('resnet34', 21_282_122, 33),
  ],
)
def test_cifar_parameter_counts(arch, weights, thresholds):
  variables, logits = _shapes(cos_jax.create_model(arch, num_classes=10, levels=4))
  flat = traverse_util.flatten_dict(variables['params'])
  assert sum(1 for path in flat if path[-1] == 'threshold') == thresholds
  assert sum(int(np.prod(v.shape)) for v in flat.values()) == weights + thresholds
  assert logits.shape == (2, 10)


@pytest.mark.parametrize('arch', ['vgg16', 'resnet34'])
def test_imagenet_variants(arch):
  model = cos_jax.create_model(arch, num_classes=1000, levels=8, imagenet=True)
  assert model.input_shape == (224, 224, 3)
  variables, logits = _shapes(model)
  assert logits.shape == (2, 1000)
  if arch == 'vgg16':
    assert variables['params']['fc1']['kernel'].shape == (512 * 7 * 7, 4096)
  else:  # the authors' ImageNet ResNet-34 keeps the CIFAR-style stem (docs/method.md §6)
    assert variables['params']['stem_conv']['kernel'].shape == (3, 3, 3, 64)


def test_the_torchvision_style_stem_is_an_explicit_option():
  model = cos_jax.create_model(
    'resnet18', num_classes=10, levels=4, imagenet=True, imagenet_stem=True
  )
  variables, logits = _shapes(model)
  assert variables['params']['stem_conv']['kernel'].shape == (7, 7, 3, 64)
  assert logits.shape == (2, 10)


def test_thresholds_start_at_8():
  model = cos_jax.create_model('tiny', num_classes=10, levels=4)
  variables = cos_jax.init_variables(model, jax.random.key(0))
  assert float(variables['params']['act1']['threshold']) == 8.0
