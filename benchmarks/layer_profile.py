"""Per-layer times of VGG-16 (CIFAR shapes) on this backend: where XLA's slow paths are.

    python -m benchmarks.layer_profile --batch=50

Times every distinct convolution, pooling and dense shape of VGG-16 alone, as `nn.Conv` and as
cos_jax's `Conv` (the matrix-product form on tiny maps), and prints GFLOP/s per layer: a layer
far below the others is a slow path. Writes JSON next to the other benchmark results.
"""

import argparse

import flax.linen as nn
import jax

from benchmarks.common import median_seconds, write_result
from cos_jax import models, xla
from cos_jax.layers import Conv


def layer_cases(batch: int):
  side, channels = 32, 3
  for stage, widths in enumerate(models.VGG16_STAGES, start=1):
    for index, width in enumerate(widths):
      flops = 2 * batch * side * side * 9 * channels * width
      shape = (batch, side, side, channels)
      yield f'conv{stage}_{index} {side}x{side} {channels}->{width}', shape, 'conv', width, flops
      channels = width
    yield (
      f'avg_pool{stage} {side}x{side}x{channels}',
      (batch, side, side, channels),
      'pool',
      0,
      batch * side * side * channels,
    )
    side //= 2
  for name, fan_in, width in (('fc1', 512, 4096), ('fc2', 4096, 4096), ('head', 4096, 10)):
    yield f'{name} {fan_in}->{width}', (batch, fan_in), 'dense', width, 2 * batch * fan_in * width


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=50)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--out', default='docs/benchmarks/layer_profile.json')
  args = parser.parse_args()
  rows = []
  for name, shape, kind, width, flops in layer_cases(args.batch):
    x = jax.random.normal(jax.random.key(0), shape)
    variants = {
      'conv': {
        'nn.Conv': nn.Conv(width, (3, 3), padding=1),
        'cos_jax Conv': Conv(width, (3, 3), padding=1),
      },
      'dense': {'nn.Dense': nn.Dense(width)},
    }.get(kind)
    if variants is None:
      pool = xla.jit(lambda x: nn.avg_pool(x, (2, 2), (2, 2)))
      variants_seconds = {
        'nn.avg_pool': median_seconds(lambda pool=pool, x=x: pool(x), args.repeats)
      }
    else:
      variables = next(iter(variants.values())).init(jax.random.key(1), x)
      variants_seconds = {}
      for label, module in variants.items():
        apply = xla.jit(module.apply)
        variants_seconds[label] = median_seconds(
          lambda apply=apply, variables=variables, x=x: apply(variables, x), args.repeats
        )
    for label, seconds in variants_seconds.items():
      rows.append(
        {
          'layer': name,
          'implementation': label,
          'seconds': seconds,
          'gflops_per_second': flops / seconds / 1e9,
        }
      )
      print(
        f'| {name} | {label} | {1000 * seconds:.2f} | {flops / seconds / 1e9:.1f} |', flush=True
      )
  write_result(args.out, batch=args.batch, rows=rows)


if __name__ == '__main__':
  main()
