"""Your own network, end to end: a convertible CNN written here, trained on the bundled digits,
converted to an SNN, calibrated with COS, and its accuracy table printed.

    python -m examples.custom_network --workdir=workdirs/custom_network

Run from the repository root (the config names the network as 'examples.custom_network:...',
which is how `convert.py --workdir=...` finds it again). About a minute on a 2-core CPU.
"""

import argparse

import flax.linen as nn

import cos_jax
from configs import digits
from cos_jax import training


class SeparableDigitsNet(nn.Module):
  """A depthwise-separable block with a residual connection, then a dense head.

  Everything between the activations is linear in their spikes (convolutions, BatchNorm with
  running statistics, average pooling, the addition), and every nonlinearity is a
  `cos_jax.Activation` receiving `self.spiking`: that is all `cos_jax.convert` needs.
  """

  num_classes: int
  levels: int
  width: int = 16
  input_shape: tuple[int, int, int] = (8, 8, 1)
  spiking: cos_jax.Spiking | None = None

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    act = lambda name: cos_jax.Activation(self.levels, self.spiking, name=name)
    norm = lambda name: nn.BatchNorm(use_running_average=not train, name=name)
    x = act('stem_act')(norm('stem_bn')(nn.Conv(self.width, (3, 3), name='stem_conv')(x)))
    y = nn.Conv(
      self.width, (3, 3), feature_group_count=self.width, use_bias=False, name='depthwise'
    )(x)
    y = act('depthwise_act')(norm('depthwise_bn')(y))
    y = norm('pointwise_bn')(nn.Conv(self.width, (1, 1), use_bias=False, name='pointwise')(y))
    x = act('block_act')(x + y)
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = act('fc_act')(nn.Dense(64, name='fc')(x.reshape(x.shape[:-3] + (-1,))))
    return nn.Dense(self.num_classes, name='head')(x)


def get_config():
  """The digits config with this network: 10 epochs, COS at rho = 2 and 4, T up to 8."""
  config = digits.get_config()
  config.arch = 'examples.custom_network:SeparableDigitsNet'
  config.num_epochs = 10
  config.eval_every_epochs = 0
  config.conversion.max_T = 8
  return config


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    '--workdir',
    default='workdirs/custom_network',
    help='folder for the run and its report (an existing run resumes)',
  )
  training.train_and_evaluate(get_config(), parser.parse_args().workdir)  # prints the table


if __name__ == '__main__':
  main()
