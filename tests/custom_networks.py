"""Networks a user might write, outside cos_jax's own models: each keeps the contract of
`cos_jax.convertibility`, and `tests/reference.py` has their NumPy forward."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

import cos_jax


def flatten(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[:-3] + (-1,))


class VGG11Like(nn.Module):
  """VGG-11's shape (1, 1, 2, 2, 2 convolutions per stage, five poolings, two hidden dense
  layers), narrow: plain Flax layers with cos_jax activations."""

  num_classes: int
  levels: int
  widths: Sequence[int] = (4, 8, 8, 8, 8)
  hidden: int = 16
  input_shape: tuple[int, int, int] = (32, 32, 3)
  spiking: cos_jax.Spiking | None = None

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    for stage, (width, convs) in enumerate(zip(self.widths, (1, 1, 2, 2, 2), strict=True)):
      for index in range(convs):
        name = f'{stage}_{index}'
        x = nn.Conv(width, (3, 3), padding=1, name=f'conv{name}')(x)
        x = nn.BatchNorm(use_running_average=not train, name=f'bn{name}')(x)
        x = cos_jax.Activation(self.levels, self.spiking, name=f'act{name}')(x)
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = flatten(x)
    for index in (1, 2):
      x = nn.Dense(self.hidden, name=f'fc{index}')(x)
      x = cos_jax.Activation(self.levels, self.spiking, name=f'act_fc{index}')(x)
    return nn.Dense(self.num_classes, name='head')(x)


class SeparableNet(nn.Module):
  """A stem, then two branches joined by a concatenation: a 1x1 convolution, and a depthwise
  3x3 convolution followed by a pointwise one; then average pooling, a residual scaled by 1/2,
  the mean over positions and a dense head."""

  num_classes: int
  levels: int
  width: int = 4
  input_shape: tuple[int, int, int] = (8, 8, 1)
  spiking: cos_jax.Spiking | None = None

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    def conv_bn_act(x, features, kernel, name, groups=1):
      x = nn.Conv(
        features,
        kernel,
        padding='SAME',
        feature_group_count=groups,
        use_bias=False,
        name=f'{name}_conv',
      )(x)
      x = nn.BatchNorm(use_running_average=not train, name=f'{name}_bn')(x)
      return cos_jax.Activation(self.levels, self.spiking, name=f'{name}_act')(x)

    x = conv_bn_act(x, self.width, (3, 3), 'stem')
    pointwise = conv_bn_act(x, self.width, (1, 1), 'branch1')
    separable = conv_bn_act(x, self.width, (3, 3), 'depthwise', groups=self.width)
    separable = conv_bn_act(separable, self.width, (1, 1), 'pointwise')
    joined = jnp.concatenate([pointwise, separable], axis=-1)
    pooled = nn.avg_pool(joined, (2, 2), strides=(2, 2))
    x = conv_bn_act(pooled, 2 * self.width, (3, 3), 'mix')
    x = cos_jax.Activation(self.levels, self.spiking, name='residual_act')(x + 0.5 * pooled)
    return nn.Dense(self.num_classes, name='head')(x.mean(axis=(-3, -2)))
