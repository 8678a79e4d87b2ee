"""The cost of spiking against the ANN: speed, scaling in T and memory.

    python -m benchmarks.snn_cost                      # VGG-16 and ResNet-20, CIFAR shapes
    python -m benchmarks.snn_cost --models=resnet20 --repeats=3 --out=docs/benchmarks/x.json

Prints tables and writes JSON with the machine and the date. Times are medians of --repeats
runs after a compile-and-warm-up run; every ratio compares times measured in this one process.
  1. ANN forward images/s at each batch size.
  2. SNN images/s for T in --Ts, without shifts (rho = 0) and with COS (rho = 4, fused run), and
     ratio = SNN time / (max(T, rho) x ANN forward time), at the first batch size.
  3. Peak memory of the compiled simulation against T (XLA's buffer assignment: arguments,
     outputs and temporaries), at the first batch size, with and without COS.
The training step has its own benchmark, `benchmarks.train_step`.
"""

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

import cos_jax
from benchmarks.common import median_seconds, peak_bytes, write_result
from cos_jax import snn as snn_lib
from cos_jax import xla


def compiled_peak_bytes(snn, images, T: int, rho: int, chunk: int | None) -> int:
  lowered = xla.jit(
    lambda x: snn_lib._run(
      snn,
      x,
      steps=T,
      rounds=1 if rho else 0,
      **snn_lib.chunking(T, rho, chunk),
      shift_values=None,
      statistics_steps=0,
    )[0]
  ).lower(images)
  return peak_bytes(lowered)


def firing_network(arch: str):
  """(model, variables, snn) of `arch` at CIFAR shapes: random weights with every threshold at 2,
  so that neurons fire at rates like a trained network's."""
  model = cos_jax.create_model(arch, num_classes=10, levels=4)
  variables = cos_jax.init_variables(model, jax.random.key(0))
  variables['params'] = jax.tree.map(
    lambda x: jnp.full_like(x, 2.0) if x.ndim == 0 else x, variables['params']
  )
  return model, variables, cos_jax.convert(model, variables)


def benchmark_model(arch: str, args) -> dict:
  model, variables, snn = firing_network(arch)
  ann = xla.jit(lambda v, x: model.apply(v, x, train=False))
  result = {'arch': arch, 'ann': {}, 'snn': [], 'memory': []}
  rng = np.random.default_rng(0)
  for batch in args.batches if 'ann' in args.parts else ():
    images = jnp.asarray(rng.normal(size=(batch, 32, 32, 3)), jnp.float32)
    seconds = median_seconds(functools.partial(ann, variables, images), args.repeats)
    result['ann'][batch] = {'seconds': seconds, 'images_per_second': batch / seconds}
  batch = args.batches[0]
  images = jnp.asarray(rng.normal(size=(batch, 32, 32, 3)), jnp.float32)
  for rho in (0, 4) if 'snn' in args.parts else ():
    ann_seconds = result['ann'][batch]['seconds']
    for T in args.Ts:
      run = functools.partial(
        cos_jax.calibrate_and_simulate, snn, images, T, rho=rho, chunk=args.chunk or None
      )
      seconds = median_seconds(lambda run=run: run()[0], args.repeats)
      result['snn'].append(
        {
          'rho': rho,
          'T': T,
          'batch': batch,
          'seconds': seconds,
          'images_per_second': batch / seconds,
          'ratio_to_ann_bound': seconds / (max(T, rho) * ann_seconds),
        }
      )
      print(
        f'{arch} rho={rho} T={T}: {seconds:.3f} s, '
        f'ratio {result["snn"][-1]["ratio_to_ann_bound"]:.2f}',
        flush=True,
      )
  for rho in (0, 4) if 'memory' in args.parts else ():
    for T in args.memory_Ts:
      result['memory'].append(
        {
          'T': T,
          'batch': batch,
          'rho': rho,
          'peak_bytes': compiled_peak_bytes(snn, images, T, rho, args.chunk),
        }
      )
  return result


def print_tables(results: list[dict]) -> None:
  print('\n| model | batch | ANN images/s |\n|---|---|---|')
  for r in results:
    for batch, v in r['ann'].items():
      print(f'| {r["arch"]} | {batch} | {v["images_per_second"]:.1f} |')
  print('\n| model | rho | T | SNN images/s | SNN time / (max(T, rho) x ANN time) |')
  print('|---|---|---|---|---|')
  for r in results:
    for v in r['snn']:
      print(
        f'| {r["arch"]} | {v["rho"]} | {v["T"]} | {v["images_per_second"]:.1f} | '
        f'{v["ratio_to_ann_bound"]:.2f} |'
      )
  print('\n| model | rho | T | peak MB | / peak at the first T |\n|---|---|---|---|---|')
  for r in results:
    for v in r['memory']:
      first = next(m for m in r['memory'] if m['rho'] == v['rho'])['peak_bytes']
      print(
        f'| {r["arch"]} | {v["rho"]} | {v["T"]} | {v["peak_bytes"] / 2**20:.1f} | '
        f'{v["peak_bytes"] / first:.2f} |'
      )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='vgg16,resnet20')
  parser.add_argument('--batches', default='50,128')
  parser.add_argument('--Ts', default='1,2,4,8,16,32')
  parser.add_argument('--memory_Ts', default='8,16,64,128')
  parser.add_argument(
    '--parts', default='ann,snn,memory', help='which measurements (snn needs ann)'
  )
  parser.add_argument('--chunk', type=int, default=0, help='0: the library default')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--out', default='docs/benchmarks/snn_cost.json')
  args = parser.parse_args()
  args.batches = [int(b) for b in args.batches.split(',')]
  args.Ts = [int(t) for t in args.Ts.split(',')]
  args.memory_Ts = [int(t) for t in args.memory_Ts.split(',')]
  args.parts = set(args.parts.split(','))
  results = [benchmark_model(arch, args) for arch in args.models.split(',')]
  print_tables(results)
  write_result(args.out, chunk=args.chunk, repeats=args.repeats, results=results)


if __name__ == '__main__':
  main()
