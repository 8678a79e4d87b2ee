"""SRP's cost against COS's at the same latency.

    python -m benchmarks.srp_cost                      # ResNet-20 and VGG-16, CIFAR shapes
    python -m benchmarks.srp_cost --models=resnet20 --Ts=1,8 --repeats=1 --out=/tmp/srp.json

At a pre-simulation length p (tau for SRP, rho for COS) and T steps after it, both methods
answer at latency p + T, but COS reuses its rho calibration steps as the first rho of its T
(max(T, rho) steps of synaptic work) while SRP runs its tau steps apart (tau + T). Prints and
writes, per model and T, at the first batch size and p = --presimulation: the wall time of the
fused `calibrate_and_simulate` and `srp_simulate` (medians of --repeats runs after a compile
run, in this one process), their ratio, the steps of work each does, and the peak memory of
SRP's compiled run at each of --memory_Ts (flat in T, as COS's).
"""

import argparse
import functools

import jax.numpy as jnp
import numpy as np

import cos_jax
from benchmarks.common import median_seconds, peak_bytes, write_result
from benchmarks.snn_cost import firing_network
from cos_jax import snn as snn_lib


def srp_peak_bytes(snn, images, T: int, tau: int) -> int:
  chunks = snn_lib.chunking(T, 0, None, tau=tau)
  return peak_bytes(snn_lib._srp_jit.lower(snn, images, None, tau=tau, steps=T, **chunks))  # pylint: disable=protected-access


def benchmark_model(arch: str, args) -> dict:
  _, _, snn = firing_network(arch)
  p = args.presimulation
  images = jnp.asarray(np.random.default_rng(0).normal(size=(args.batch, 32, 32, 3)), jnp.float32)
  rows = []
  for T in args.Ts:
    cos = functools.partial(cos_jax.calibrate_and_simulate, snn, images, T, rho=p)
    srp = functools.partial(cos_jax.srp_simulate, snn, images, T, tau=p)
    cos_seconds = median_seconds(lambda run=cos: run()[0], args.repeats)
    srp_seconds = median_seconds(lambda run=srp: run()[0], args.repeats)
    rows.append(
      {
        'T': T,
        'latency': p + T,
        'cos_seconds': cos_seconds,
        'srp_seconds': srp_seconds,
        'srp_over_cos': srp_seconds / cos_seconds,
        'cos_steps': max(T, p),
        'srp_steps': p + T,
      }
    )
    print(f'{arch} T={T}: COS {cos_seconds:.3f} s, SRP {srp_seconds:.3f} s', flush=True)
  memory = [{'T': T, 'peak_bytes': srp_peak_bytes(snn, images, T, p)} for T in args.memory_Ts]
  return {'arch': arch, 'batch': args.batch, 'presimulation': p, 'rows': rows, 'memory': memory}


def print_tables(results: list[dict]) -> None:
  print(
    '\n| model | p | T | latency | COS s | SRP s | SRP / COS | steps of work, COS : SRP |'
    '\n|---|---|---|---|---|---|---|---|'
  )
  for r in results:
    for v in r['rows']:
      print(
        f'| {r["arch"]} | {r["presimulation"]} | {v["T"]} | {v["latency"]} | '
        f'{v["cos_seconds"]:.3f} | {v["srp_seconds"]:.3f} | {v["srp_over_cos"]:.2f} | '
        f'{v["cos_steps"]} : {v["srp_steps"]} |'
      )
  print('\n| model | T | SRP peak MB |\n|---|---|---|')
  for r in results:
    for v in r['memory']:
      print(f'| {r["arch"]} | {v["T"]} | {v["peak_bytes"] / 2**20:.1f} |')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='resnet20,vgg16')
  parser.add_argument('--batch', type=int, default=50)
  parser.add_argument('--presimulation', type=int, default=4, help='tau = rho')
  parser.add_argument('--Ts', default='1,2,4,8,16,32')
  parser.add_argument('--memory_Ts', default='8,32,128')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--out', default='docs/benchmarks/srp_cost.json')
  args = parser.parse_args()
  args.Ts = [int(t) for t in args.Ts.split(',')]
  args.memory_Ts = [int(t) for t in args.memory_Ts.split(',')]
  results = [benchmark_model(arch, args) for arch in args.models.split(',')]
  print_tables(results)
  write_result(args.out, repeats=args.repeats, results=results)


if __name__ == '__main__':
  main()
