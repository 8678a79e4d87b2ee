"""Images/s of the host input pipeline alone, to set against the training step.

    python -m benchmarks.input_pipeline

Augments CIFAR-shaped uint8 batches of 128 with each stage of SPEC section 7 alone and all of
them together (crop + flip + AutoAugment + Cutout), on one host thread, as train.py's background
producer does. The training step's images/s comes from benchmarks/snn_cost.py.
"""

import argparse
import statistics
import time

import numpy as np

from benchmarks.common import write_result
from cos_jax.augment import Augment

MEAN = (0.4914, 0.4822, 0.4465)
STAGES = {
    'crop': Augment(4, False, False, 0, MEAN),
    'flip': Augment(0, True, False, 0, MEAN),
    'autoaugment': Augment(0, False, True, 0, MEAN),
    'cutout': Augment(0, False, False, 16, MEAN),
    'all (SPEC section 7)': Augment(4, True, True, 16, MEAN),
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--batches', type=int, default=20)
  parser.add_argument('--out', default='docs/benchmarks/input_pipeline.json')
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (args.batch, 32, 32, 3), dtype=np.uint8)
  rows = []
  print('| augmentation | images/s (one thread) |\n|---|---|')
  for name, augment in STAGES.items():
    times = []
    for _ in range(args.batches):
      start = time.perf_counter()
      augment(images, rng)
      times.append(time.perf_counter() - start)
    rate = args.batch / statistics.median(times)
    rows.append({'augmentation': name, 'images_per_second': rate})
    print(f'| {name} | {rate:.0f} |')
  write_result(args.out, batch=args.batch, rows=rows)


if __name__ == '__main__':
  main()
