"""QCFS networks (docs/method.md §6): VGG-16, ResNet-18/20/34 and a tiny net for tests and digits.

Every model is written once for both lives: with `spiking=None` it is the QCFS ANN taking
[B, H, W, C] images; `convert` clones it with a `Spiking` mode, and the same layers then run a
chunk of time steps on inputs with a leading time axis. The layers never care about the leading
axes (convolutions, BatchNorm and pooling act on the trailing image axes), so no layer guesses
what its input is.
"""

import functools
import importlib
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cos_jax import argument_checks
from cos_jax.layers import Activation, BatchNorm, Conv, Spiking

BN_MOMENTUM = 0.9  # PyTorch's momentum 0.1
BN_EPSILON = 1e-5

VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
VGG_CLASSIFIER_WIDTH = 4096


def _flatten_image(x: jax.Array) -> jax.Array:
  """Flattens the trailing (H, W, C) axes, keeping any leading (time, batch) axes."""
  return x.reshape(x.shape[:-3] + (-1,))


def _average_pool(x: jax.Array) -> jax.Array:
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


class VGG(nn.Module):
  """VGG with QCFS activations and 2x2 average pooling; VGG-16 by default."""

  num_classes: int
  levels: int
  stages: Sequence[Sequence[int]] = VGG16_STAGES
  classifier_width: int = VGG_CLASSIFIER_WIDTH
  dropout_rate: float = 0.0
  input_shape: tuple[int, int, int] = (32, 32, 3)
  spiking: Spiking | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    act = functools.partial(Activation, levels=self.levels, spiking=self.spiking)
    norm = functools.partial(
      BatchNorm, use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON
    )
    for stage, widths in enumerate(self.stages, start=1):
      for index, width in enumerate(widths):
        name = f'{stage}_{index}'
        x = Conv(width, (3, 3), padding=1, name=f'conv{name}')(x)
        x = act(name=f'act{name}')(norm(name=f'bn{name}')(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = _average_pool(x)
    x = _flatten_image(x)
    for index in (1, 2):
      x = nn.Dense(self.classifier_width, name=f'fc{index}')(x)
      x = act(name=f'act_fc{index}')(x)
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name='head')(x)


class BasicBlock(nn.Module):
  """conv3x3(stride), BN, QCFS, conv3x3, BN, plus the shortcut, then the output QCFS."""

  width: int
  stride: int
  levels: int
  spiking: Spiking | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv = functools.partial(Conv, self.width, use_bias=False)
    norm = functools.partial(
      BatchNorm, use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON
    )
    act = functools.partial(Activation, levels=self.levels, spiking=self.spiking)
    strides = (self.stride, self.stride)
    y = conv((3, 3), strides, padding=1, name='conv1')(x)
    y = act(name='act1')(norm(name='bn1')(y))
    y = norm(name='bn2')(conv((3, 3), padding=1, name='conv2')(y))
    if self.stride != 1 or x.shape[-1] != self.width:
      x = norm(name='shortcut_bn')(conv((1, 1), strides, name='shortcut_conv')(x))
    return act(name='act_out')(y + x)


class ResNet(nn.Module):
  """ResNet of BasicBlocks with QCFS activations.

  The stem is a 3x3 stride-1 convolution without pooling, as in the authors' code for CIFAR and
  ImageNet alike; `imagenet_stem=True` is the torchvision-style 7x7/2 convolution followed by
  2x2 pooling, an option outside the paper.
  """

  num_classes: int
  levels: int
  stage_sizes: Sequence[int]
  widths: Sequence[int]
  strides: Sequence[int]
  stem_width: int = 64
  imagenet_stem: bool = False
  input_shape: tuple[int, int, int] = (32, 32, 3)
  spiking: Spiking | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    if self.imagenet_stem:  # 7x7/2 conv; 2x2 average pooling stands in for the max pooling.
      x = Conv(self.stem_width, (7, 7), (2, 2), padding=3, use_bias=False, name='stem_conv')(x)
    else:
      x = Conv(self.stem_width, (3, 3), padding=1, use_bias=False, name='stem_conv')(x)
    x = BatchNorm(
      use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name='stem_bn'
    )(x)
    x = Activation(self.levels, self.spiking, name='stem_act')(x)
    if self.imagenet_stem:
      x = _average_pool(x)
    for stage, (size, width, stride) in enumerate(
      zip(self.stage_sizes, self.widths, self.strides, strict=True)
    ):
      for block in range(size):
        x = BasicBlock(
          width,
          stride if block == 0 else 1,
          self.levels,
          self.spiking,
          name=f'stage{stage + 1}_block{block}',
        )(x, train=train)
    x = x.mean(axis=(-3, -2))
    return nn.Dense(self.num_classes, name='head')(x)


class TinyNet(nn.Module):
  """Two conv stages and a hidden dense layer: for tests and the offline digits config."""

  num_classes: int
  levels: int
  widths: Sequence[int] = (8, 16)
  hidden: int = 32
  input_shape: tuple[int, int, int] = (8, 8, 1)
  spiking: Spiking | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    for index, width in enumerate(self.widths, start=1):
      x = Conv(width, (3, 3), padding=1, name=f'conv{index}')(x)
      x = BatchNorm(
        use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f'bn{index}'
      )(x)
      x = _average_pool(Activation(self.levels, self.spiking, name=f'act{index}')(x))
    x = Activation(self.levels, self.spiking, name='act_fc')(
      nn.Dense(self.hidden, name='fc')(_flatten_image(x))
    )
    return nn.Dense(self.num_classes, name='head')(x)


ResNet18 = functools.partial(
  ResNet, stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512), strides=(1, 2, 2, 2)
)
ResNet34 = functools.partial(
  ResNet, stage_sizes=(3, 4, 6, 3), widths=(64, 128, 256, 512), strides=(1, 2, 2, 2)
)
ResNet20 = functools.partial(
  ResNet, stage_sizes=(3, 3, 3), widths=(16, 32, 64), strides=(1, 2, 2), stem_width=16
)

ARCHITECTURES = {
  'vgg16': VGG,  # VGG-16 are its defaults
  'resnet18': ResNet18,
  'resnet20': ResNet20,
  'resnet34': ResNet34,
  'tiny': TinyNet,
}
IMAGENET_SHAPE = (224, 224, 3)


def _checked_input_shape(model_class, shape, fields: dict) -> tuple[int, int, int]:
  """`shape` as (height, width, channels), large enough for the model's pooling stages."""
  try:
    shape = tuple(int(side) for side in shape)
  except (TypeError, ValueError):
    shape = None
  if shape is None or len(shape) != 3 or min(shape) < 1:
    raise ValueError(
      f'input_shape must be (height, width, channels) of positive integers, got {shape!r}.'
    )
  poolings = {
    VGG: len(fields.get('stages', VGG.stages)),
    TinyNet: len(fields.get('widths', TinyNet.widths)),
  }.get(model_class, 0)
  if min(shape[:2]) < 2**poolings:
    raise ValueError(
      f'{model_class.__name__} halves its input {poolings} times: input_shape '
      f'{shape} needs a height and width of at least {2**poolings}.'
    )
  return shape


def architecture(arch: str):
  """The model class (or partial) named by `arch`: a key of `ARCHITECTURES`, or
  'package.module:ClassName' for your own network (see `cos_jax.convertibility`)."""
  if arch in ARCHITECTURES:
    return ARCHITECTURES[arch]
  if not isinstance(arch, str) or ':' not in arch:
    raise ValueError(
      f'Unknown arch {arch!r}: expected one of {sorted(ARCHITECTURES)}, or your '
      "own network as 'package.module:ClassName'."
    )
  module_name, _, class_name = arch.partition(':')
  try:
    module = importlib.import_module(module_name)
  except ImportError as error:
    raise ValueError(
      f'arch {arch!r}: cannot import {module_name!r} ({error}); it must be '
      'importable from where you run (e.g. on PYTHONPATH).'
    ) from error
  model_class = getattr(module, class_name, None)
  if model_class is None:
    raise ValueError(f'arch {arch!r}: {module_name} has no {class_name!r}.')
  model_type = getattr(model_class, 'func', model_class)
  if not (isinstance(model_type, type) and issubclass(model_type, nn.Module)):
    raise ValueError(f'arch {arch!r} is {model_class!r}, not a Flax linen Module class.')
  missing = [
    field
    for field in ('num_classes', 'levels', 'input_shape', 'spiking')
    if field not in model_type.__dataclass_fields__
  ]
  if missing:
    raise ValueError(
      f'arch {arch!r} lacks the fields {missing}: a convertible network has '
      'num_classes, levels, input_shape and spiking (cos_jax.convertibility).'
    )
  return model_class


def create_model(
  arch: str, *, num_classes: int, levels: int, imagenet: bool = False, **overrides: Any
) -> nn.Module:
  """Builds a QCFS model by name.

  Args:
    arch: one of `ARCHITECTURES` ('vgg16', 'resnet18', 'resnet20', 'resnet34', 'tiny'), or your
      own network as 'package.module:ClassName' (`cos_jax.convertibility` says what it needs).
    num_classes: the number of output classes.
    levels: the QCFS quantization levels L.
    imagenet: the ImageNet variant as the authors build it (docs/method.md §6): 224x224 input
      (VGG-16's classifier then takes the 512x7x7 map); the ResNets keep their CIFAR-style 3x3
      stride-1 stem without pooling, so the authors' ImageNet checkpoints import.
    **overrides: further model fields (e.g. `dropout_rate`, `input_shape`, or
      `imagenet_stem=True` for a ResNet with the torchvision-style 7x7/2 stem and pooling, which
      the authors' networks do not have).
  """
  model_class = architecture(arch)
  argument_checks.check_positive_int('levels (L)', levels)
  argument_checks.check_positive_int('num_classes', num_classes)
  if 'input_shape' in overrides:
    overrides['input_shape'] = _checked_input_shape(
      getattr(model_class, 'func', model_class), overrides['input_shape'], overrides
    )
  if imagenet:
    overrides.setdefault('input_shape', IMAGENET_SHAPE)
  return model_class(num_classes=num_classes, levels=levels, **overrides)


def abstract_variables(model: nn.Module) -> dict:
  """The shapes and dtypes of `model`'s variables, traced on one image without computing them."""
  images = jax.ShapeDtypeStruct((1,) + tuple(model.input_shape), jnp.float32)
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), images)


def init_variables(model: nn.Module, rng: jax.Array) -> dict:
  """Initial `params` and `batch_stats` for `model`, traced on one image of its input shape."""
  init = jax.jit(functools.partial(model.init, train=False))  # also traced inside eval_shape
  return init(rng, jnp.zeros((1,) + tuple(model.input_shape)))
