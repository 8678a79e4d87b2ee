"""Images/s and host memory of the grain input pipeline alone, to set against the training step.

    python -m benchmarks.input_pipeline [--cifar_dir=../shared/data/cifar10-jpeg]

1. Each stage of the CIFAR recipe (docs/method.md §7) alone and all together, per image
   on one thread.
2. `input_pipeline.train_batches` end to end: CIFAR (the JPEG folder if given, else in-memory
   arrays) with the whole recipe, and a folder of ~224 px JPEGs of mixed sizes with the ImageNet
   recipe (RandomResizedCrop, flip), in threads and in 1 and 2 grain worker processes.
3. Peak resident memory of a process that streams 3 epochs of a JPEG folder of 500 and of 5,000
   images: it must not grow with the data set (nothing is decoded ahead into memory).
"""

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import write_result
from cos_jax import augment, input_pipeline, sources

MEAN = (0.4914, 0.4822, 0.4465)
STAGES = {
  'crop': augment.TrainTransform('cifar', 32, 32, crop_padding=4, mean=MEAN),
  'flip': augment.TrainTransform('cifar', 32, 32, flip=True, mean=MEAN),
  'autoaugment': augment.TrainTransform('cifar', 32, 32, autoaugment=True, mean=MEAN),
  'cutout': augment.TrainTransform('cifar', 32, 32, cutout_size=16, mean=MEAN),
  'all (the CIFAR recipe)': augment.TrainTransform('cifar', 32, 32, 4, True, True, 16, MEAN),
}
CIFAR_RECIPE = STAGES['all (the CIFAR recipe)']
IMAGENET_RECIPE = augment.TrainTransform('imagenet', 224, 224, flip=True)


def _stage_rates(images: np.ndarray, repeats: int) -> list[dict]:
  rows = []
  print('| stage | images/s (one thread) |\n|---|---|')
  for name, transform in STAGES.items():
    rng = np.random.default_rng(0)
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      for image in images:
        transform(image, rng)
      times.append(time.perf_counter() - start)
    rate = len(images) / statistics.median(times)
    rows.append({'stage': name, 'images_per_second': rate})
    print(f'| {name} | {rate:.0f} |')
  return rows


def write_jpeg_folder(root: Path, count: int, seed: int = 0) -> sources.ImageFolderSplit:
  """`count` JPEGs (q90) of ImageNet-like sizes, 200-500 px a side, in 10 class folders."""
  rng = np.random.default_rng(seed)
  for index in range(count):
    folder = root / f'class{index % 10}'
    folder.mkdir(parents=True, exist_ok=True)
    height, width = rng.integers(200, 501, 2)
    base = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3)).astype(np.uint8)
    image = Image.fromarray(base).resize((int(width), int(height)), Image.BILINEAR)
    image.save(folder / f'{index}.jpg', quality=90)
  files = sorted(root.glob('*/*.jpg'))
  return sources.ImageFolderSplit(tuple(files), np.zeros(len(files), np.int32), 3)


def pipeline_rate(split, transform, *, batch: int, steps: int, threads: int, workers: int) -> float:
  """Images/s of train_batches over `steps` batches, after the first (start-up) one."""
  batches = input_pipeline.train_batches(
    split,
    batch_size=batch,
    seed=0,
    start_step=0,
    num_steps=steps + 1,
    transform=transform,
    threads=threads,
    workers=workers,
  )
  next(batches)
  start = time.perf_counter()
  for _ in range(steps):
    next(batches)
  return steps * batch / (time.perf_counter() - start)


STREAM_SCRIPT = """
import resource, sys
from pathlib import Path
import numpy as np
from benchmarks.input_pipeline import IMAGENET_RECIPE
from cos_jax import input_pipeline, sources
files = sorted(Path(sys.argv[1]).glob('*/*.jpg'))[:int(sys.argv[2])]
split = sources.ImageFolderSplit(tuple(files), np.zeros(len(files), np.int32), 3)
steps = 3 * (len(split) // 50)
for _ in input_pipeline.train_batches(split, batch_size=50, seed=0, start_step=0, num_steps=steps,
                            transform=IMAGENET_RECIPE, threads=2):
  pass
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_memory_mb(folder: Path, count: int) -> float:
  """Peak RSS (MB) of a fresh process streaming 3 epochs of the first `count` images."""
  out = subprocess.run(
    [sys.executable, '-c', STREAM_SCRIPT, str(folder), str(count)],
    capture_output=True,
    text=True,
    check=True,
  )
  return int(out.stdout.strip().splitlines()[-1]) / 1024


def _folder_config(root: str):
  from configs import cifar10  # pylint: disable=import-outside-toplevel

  config = cifar10.get_config()
  config.data_source, config.data_dir = 'image_folder', root
  return config


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--cifar_dir', default='', help='a CIFAR-10 JPEG folder (train/<class>/)')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--out', default='docs/benchmarks/input_pipeline.json')
  args = parser.parse_args()
  images = np.random.default_rng(0).integers(0, 256, (256, 32, 32, 3), dtype=np.uint8)
  stages = _stage_rates(images, args.repeats)

  if args.cifar_dir:
    cifar = sources.load(_folder_config(args.cifar_dir)).train
    cifar_name = f'CIFAR-10 JPEG folder ({len(cifar)} images)'
  else:
    cifar = sources.ArraySplit(np.repeat(images, 40, axis=0), np.zeros(len(images) * 40, np.int32))
    cifar_name = f'CIFAR-shaped arrays ({len(cifar)} images)'
  pipelines = []
  print('\n| data | recipe | threads | worker processes | images/s |\n|---|---|---|---|---|')
  with tempfile.TemporaryDirectory() as tmp:
    folder = Path(tmp)
    large = write_jpeg_folder(folder, 5000)
    cases = [(cifar_name, cifar, 'cifar', CIFAR_RECIPE, 128, 20, threads, 0) for threads in (1, 2)]
    cases += [
      (
        '224 px JPEG folder (200-500 px, q90)',
        large,
        'imagenet',
        IMAGENET_RECIPE,
        64,
        8,
        2,
        workers,
      )
      for workers in (0, 1, 2)
    ]
    for name, split, recipe, transform, batch, steps, threads, workers in cases:
      rates = [
        pipeline_rate(split, transform, batch=batch, steps=steps, threads=threads, workers=workers)
        for _ in range(args.repeats)
      ]
      rate = statistics.median(rates)
      pipelines.append(
        {
          'data': name,
          'recipe': recipe,
          'threads': threads,
          'workers': workers,
          'batch': batch,
          'images_per_second': rate,
        }
      )
      print(f'| {name} | {recipe} | {threads} | {workers} | {rate:.0f} |')
    memory = []
    print('\n| JPEG folder images | peak RSS streaming 3 epochs (MB) |\n|---|---|')
    for count in (500, 5000):
      peak = _peak_memory_mb(folder, count)
      memory.append({'images': count, 'peak_rss_mb': peak})
      print(f'| {count} | {peak:.0f} |')
  write_result(
    args.out,
    stages=stages,
    pipelines=pipelines,
    memory=memory,
    parent_peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  )


if __name__ == '__main__':
  main()
