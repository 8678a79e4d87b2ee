"""The grain input pipeline: batches of a split, sharded by process, reproducible by step.

`train_batches` and `eval_batches` are grain `MapDataset`s: batch k of the run is a pure
function of (seed, k), so a resumed run starts at its checkpoint's step and sees exactly the
batches an uninterrupted one would; each process reads and transforms only its own share of
every global batch, in threads or worker processes.
"""

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import grain
import jax
import numpy as np
from absl import flags

from cos_jax.sources import Split


def normalise(images, mean, std):
  """uint8 [..., C] images to float32, scaled to [0, 1] then normalised per channel.

  The same arithmetic on the host (NumPy arrays) and, inside jit, on the device (JAX arrays).
  """
  return (images.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(
    std, np.float32
  )


def epoch_steps(num_examples: int, batch_size: int) -> int:
  """Steps of one epoch over `num_examples` in global batches of `batch_size` (the remainder
  dropped); ValueError if not even one batch fits."""
  if batch_size > num_examples:
    raise ValueError(
      f'batch_size={batch_size} is larger than the training set ({num_examples} examples): '
      'lower --config.batch_size.'
    )
  return num_examples // batch_size


@dataclasses.dataclass(frozen=True)
class _Share:
  """Where this process's examples lie: global batches of `batch_size`, of which the process
  holds the `local` slots from `first`. Maps an index of the process's example stream to the
  example's position in the global stream."""

  batch_size: int
  local: int
  first: int

  @classmethod
  def of(cls, batch_size: int, process_index: int | None, process_count: int | None) -> '_Share':
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if batch_size % process_count:
      raise ValueError(
        f'The batch of {batch_size} cannot be split evenly over {process_count} '
        'processes: make it a multiple of the process count.'
      )
    local = batch_size // process_count
    return cls(batch_size, local, process_index * local)

  def position(self, index: int) -> tuple[int, int]:
    """(global batch, global position) of the process's `index`-th example."""
    batch, slot = divmod(index, self.local)
    return batch, batch * self.batch_size + self.first + slot


@dataclasses.dataclass(frozen=True)
class _TrainExample:
  """The process's `index`-th training example, transformed with a generator seeded by its
  position in the global stream (so the process count does not change what any example is)."""

  split: Split
  order: grain.MapDataset  # example indices, reshuffled every epoch
  share: _Share
  steps_per_epoch: int
  transform: Any
  seed: int

  def __call__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    step, position = self.share.position(index)
    epoch = step // self.steps_per_epoch
    within = position - epoch * self.steps_per_epoch * self.share.batch_size
    image, label = self.split[self.order[epoch * len(self.split) + within]]
    rng = np.random.default_rng([self.seed, position])
    return self.transform(image, rng), np.int32(label)


def _iterate(dataset: grain.MapDataset, threads: int, workers: int) -> Iterator:
  iterable = dataset.to_iter_dataset(
    grain.ReadOptions(num_threads=max(threads, 1), prefetch_buffer_size=max(2 * threads, 2))
  )
  if workers:
    if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags; train.py parses them
      flags.FLAGS.mark_as_parsed()
    iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iter(iterable)


def train_batches(
  split: Split,
  *,
  batch_size: int,
  seed: int,
  start_step: int,
  num_steps: int,
  transform,
  threads: int = 1,
  workers: int = 0,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields this process's share (uint8 images, int32 labels) of the global batches of steps
  start_step..num_steps-1; every epoch is a new permutation of the split, its remainder dropped.

  Args:
    split: the training split.
    batch_size: the global batch size (over every process).
    seed: the run's seed; batch k depends on (seed, k) only.
    start_step, num_steps: the steps to produce.
    transform: `transform(image, rng) -> image` of the fixed training shape.
    threads: threads reading and transforming batches ahead of the step.
    workers: grain worker processes doing that instead (0: in this process).
    process_index, process_count: which share to read (default: this JAX process's).
  """
  steps_per_epoch = epoch_steps(len(split), batch_size)
  share = _Share.of(batch_size, process_index, process_count)
  epochs = math.ceil(num_steps / steps_per_epoch)
  order = grain.MapDataset.range(len(split)).shuffle(seed=seed).repeat(epochs)
  example = _TrainExample(split, order, share, steps_per_epoch, transform, seed)
  dataset = (
    grain.MapDataset.range(num_steps * share.local)
    .map(example)
    .batch(share.local, drop_remainder=True)
  )
  return _iterate(dataset[start_step:num_steps], threads, workers)


@dataclasses.dataclass(frozen=True)
class _EvalExample:
  """The process's `index`-th evaluation example and whether it is real (not batch padding)."""

  split: Split
  share: _Share
  transform: Any

  def __call__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _, position = self.share.position(index)
    if position >= len(self.split):
      return np.zeros(self.transform.shape, np.uint8), np.int32(0), np.bool_(False)
    image, label = self.split[position]
    return self.transform(image), np.int32(label), np.bool_(True)


def eval_batches(
  split: Split,
  batch_size: int,
  transform,
  *,
  threads: int = 1,
  process_index: int | None = None,
  process_count: int | None = None,
  start_batch: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Yields this process's share (images, labels, real) of the split in order, in global
  batches of `batch_size`, from batch `start_batch` on; the last one is padded with blank images
  that `real` marks False.

  `transform(image) -> image` of `transform.shape` (H, W, C) makes every image the model's size
  (`augment.EvalTransform`).
  """
  share = _Share.of(batch_size, process_index, process_count)
  batches = math.ceil(len(split) / batch_size)
  example = _EvalExample(split, share, transform)
  dataset = grain.MapDataset.range(batches * share.local).map(example).batch(share.local)
  return _iterate(dataset[start_batch:], threads, workers=0)


def examples(split: Split, transform, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Every example of a (small) split, transformed, as (images, labels) arrays in this process."""
  parts = [
    (images[real], labels[real])
    for images, labels, real in eval_batches(
      split, batch_size, transform, process_index=0, process_count=1
    )
  ]
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
