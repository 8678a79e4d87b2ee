"""The training step against its own eval forward, against PyTorch, and inside train.py's loop.

    python -m benchmarks.train_step                       # ResNet-20 and VGG-16, batch 128
    python -m benchmarks.train_step --models=resnet20 --parts=step,loop --repeats=5

Everything is measured in this one run, so the ratios hold on a noisy machine; times are medians
of --repeats runs after a compile-and-warm-up run. A shared machine's speed still drifts by 10-20 %
within minutes: --rounds=N repeats the step and loop measurements and gives each figure's median
over the rounds (each ratio too, taken within its round); the JSON keeps every round. CIFAR
shapes, random initialisation, the published optimizer (`configs/cifar10.py`: SGD with momentum and
weight decay, cosine decay).
  step:  cos_jax's `train_step` as train.py runs it (cos_jax.xla.jit, train state donated), its
         eval forward (`model.apply(train=False)`) on the same batch, step / forward, and the
         same step under plain `jax.jit` (XLA's default CPU options) for the before/after.
  torch: the PyTorch reference's step (`benchmarks.torch_reference`, 2 threads) in a
         subprocess between two halves of the cos_jax repeats; skipped when torch is missing.
  parts: the pieces at ResNet-20's and VGG-16's first-stage shapes (batch 128), forward and
         backward: a 3x3 convolution (forward, input gradient, weight gradient: the floor under
         step / forward), BatchNorm in training mode (`nn.BatchNorm` against cos_jax's) and QCFS
         (its formula differentiated automatically against cos_jax's written-out backward).
  loop:  `train_and_evaluate` for --loop_steps steps on synthetic CIFAR-shaped data with the full
         augmentation (crop, flip, AutoAugment, Cutout): the images/s it logs, after the first
         log window (which holds the compile), against the bare step timed just before and just
         after it (the median of both sets of repeats: machine speed drifts). With
         --loop_data_dir (a CIFAR image folder, e.g. ../shared/data/cifar10-jpeg) also on a random
         part of its JPEG files (linked, not copied), each decoded when read, and all decoded once
         at the start (`preload_images`).
"""

import argparse
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import write_result
from benchmarks.report import loop_table, step_table
from configs import cifar10
from cos_jax import input_pipeline, optimizer, run_state, training, xla
from cos_jax.layers import BatchNorm
from cos_jax.qcfs import qcfs

TORCH_MISSING = 3  # benchmarks.torch_reference's exit status without torch


def _config(arch: str, batch: int):
  config = cifar10.get_config()
  config.arch = arch
  config.batch_size = batch
  return config


def _timed(fn, repeats: int) -> list[float]:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def _state_stepper(step, state, *args):
  """A no-argument function running the donating step on the state it last returned."""
  holder = [state]

  def run():
    holder[0], metrics = step(holder[0], *args)
    return metrics['loss']

  return run


def _torch_seconds(arch: str, batch: int, repeats: int) -> float | None:
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'benchmarks.torch_reference',
      f'--models={arch}',
      f'--batch={batch}',
      f'--repeats={repeats}',
    ],
    capture_output=True,
    text=True,
    check=False,
  )
  if result.returncode == TORCH_MISSING:
    return None
  if result.returncode:
    raise RuntimeError(f'benchmarks.torch_reference failed:\n{result.stderr[-2000:]}')
  return json.loads(result.stdout.strip().splitlines()[-1])['seconds']


def measure_step(arch: str, args) -> tuple[dict, Callable[[], jax.Array]]:
  """The step's figures, and the timed step itself (train.py's, on its own state) for the loops."""
  config = _config(arch, args.batch)
  model = run_state.create_model(config)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (args.batch, 32, 32, 3)), jnp.uint8)
  labels = jnp.asarray(rng.integers(0, 10, args.batch), jnp.int32)
  normalised = input_pipeline.normalise(images, config.mean, config.std)
  key = jax.random.key(1)
  step = functools.partial(training.train_step, mean=tuple(config.mean), std=tuple(config.std))

  def new_state():
    tx, _ = optimizer.create_optimizer(config, steps_per_epoch=390)
    return run_state.create_train_state(model, tx, jax.random.key(0))

  steppers = {
    'cos_jax': _state_stepper(xla.jit(step, donate_argnums=0), new_state(), images, labels, key)
  }
  if 'plain_jit' in args.parts:
    steppers['plain_jit'] = _state_stepper(
      jax.jit(step, donate_argnums=0), new_state(), images, labels, key
    )
  state = new_state()
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  forward = xla.jit(lambda v, x: model.apply(v, x, train=False))
  timed = {'forward': functools.partial(forward, variables, normalised), **steppers}
  for fn in timed.values():
    jax.block_until_ready(fn())  # compile and warm up
  times = {name: [] for name in timed}
  half = (args.repeats + 1) // 2
  torch_seconds = None
  for part in (half, args.repeats - half):
    for name, fn in timed.items():
      times[name] += _timed(fn, part)
    if torch_seconds is None and 'torch' in args.parts:
      torch_seconds = _torch_seconds(arch, args.batch, args.repeats)
  seconds = {name: statistics.median(t) for name, t in times.items()}
  result = {
    'arch': arch,
    'batch': args.batch,
    'step_seconds': seconds['cos_jax'],
    'forward_seconds': seconds['forward'],
    'step_images_per_second': args.batch / seconds['cos_jax'],
    'forward_images_per_second': args.batch / seconds['forward'],
    'step_over_forward': seconds['cos_jax'] / seconds['forward'],
  }
  if 'plain_jit' in seconds:
    result['plain_jit_step_seconds'] = seconds['plain_jit']
    result['plain_jit_step_images_per_second'] = args.batch / seconds['plain_jit']
  if torch_seconds is not None:
    result['torch_step_seconds'] = torch_seconds
    result['torch_step_images_per_second'] = args.batch / torch_seconds
    result['torch_over_cos_jax'] = torch_seconds / seconds['cos_jax']
  print(json.dumps(result), flush=True)
  return result, steppers['cos_jax']


def _plain_qcfs(z, threshold, levels):
  """docs/method.md §1's formula with a straight-through floor, for automatic differentiation."""
  floor = z * levels / threshold + 0.5
  floor = floor + jax.lax.stop_gradient(jnp.floor(floor) - floor)
  level = floor / levels
  return threshold * jnp.where(level < 0.0, 0.0, jnp.where(level > 1.0, 1.0, level))


def measure_parts(args) -> list[dict]:
  """Forward and backward times of the step's pieces at two first-stage shapes."""
  rows = []
  for shape in ((args.batch, 32, 32, 16), (args.batch, 32, 32, 64)):
    x = jax.random.normal(jax.random.key(0), shape) * 2.0
    weights = jax.random.normal(jax.random.key(1), shape)
    kernel = jax.random.normal(jax.random.key(2), (3, 3, shape[-1], shape[-1])) * 0.1

    def conv(k, x):
      return jax.lax.conv_general_dilated(
        x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
      )

    cases = {
      'conv3x3 forward': (conv, (kernel, x)),
      'conv3x3 input gradient': (
        lambda k, x, g: jax.vjp(lambda x: conv(k, x), x)[1](g)[0],
        (kernel, x, weights),
      ),
      'conv3x3 weight gradient': (
        lambda k, x, g: jax.vjp(lambda k: conv(k, x), k)[1](g)[0],
        (kernel, x, weights),
      ),
    }
    for label, module in (('nn.BatchNorm', nn.BatchNorm), ('cos_jax BatchNorm', BatchNorm)):
      bn = module(use_running_average=False, momentum=0.9, epsilon=1e-5)
      variables = bn.init(jax.random.key(0), x)

      def bn_vjp(params, x, g, bn=bn, stats=variables['batch_stats']):
        apply = lambda p, x: bn.apply(
          {'params': p, 'batch_stats': stats}, x, mutable=['batch_stats']
        )[0]
        return jax.vjp(apply, params, x)[1](g)

      cases[f'{label} forward + backward'] = (bn_vjp, (variables['params'], x, weights))
    for label, activation in (
      ('QCFS, automatic backward', _plain_qcfs),
      ('QCFS, cos_jax backward', qcfs),
    ):
      cases[f'{label}'] = (
        lambda t, x, g, activation=activation: jax.vjp(lambda t, x: activation(x, t, 4), t, x)[1](
          g
        ),
        (jnp.float32(2.0), x, weights),
      )
    for name, (fn, fn_args) in cases.items():
      compiled = xla.jit(fn)
      jax.block_until_ready(compiled(*fn_args))
      seconds = statistics.median(_timed(functools.partial(compiled, *fn_args), args.repeats))
      rows.append({'shape': list(shape), 'part': name, 'seconds': seconds})
      print(f'{shape} {name}: {1000 * seconds:.2f} ms', flush=True)
  return rows


def _link_folder_part(source: Path, target: Path, sizes: dict[str, int]) -> None:
  """target/<split>/<class>/ holding links to `sizes[split]` random files of source's split."""
  rng = np.random.default_rng(0)
  for split, size in sizes.items():
    files = sorted(source.glob(f'{split}/*/*'))
    if len(files) < size:
      raise ValueError(
        f'--loop_data_dir: {source / split} holds {len(files)} files, the loop '
        f'needs {size}: lower --loop_steps or --batch.'
      )
    for index in rng.choice(len(files), size, replace=False):
      link = target / split / files[index].parent.name / files[index].name
      link.parent.mkdir(parents=True, exist_ok=True)
      link.symlink_to(files[index].resolve())


def measure_loop(arch: str, args, data_dir: str | None = None, preload: bool = False) -> dict:
  """train.py's logged images/s with the full augmentation, on synthetic data or JPEG files."""
  config = _config(arch, args.batch)
  config.num_epochs = 1
  config.log_every_steps = args.loop_log_every
  config.checkpoint_every_steps = 10**9
  config.eval_every_epochs = 0
  config.conversion.enabled = False
  train_size = args.batch * args.loop_steps
  with tempfile.TemporaryDirectory() as workdir:
    if data_dir is None:
      config.data_source = 'synthetic'
      config.synthetic_train_size = train_size
      config.synthetic_test_size = config.eval_batch_size
    else:
      config.data_source = 'image_folder'
      config.preload_images = preload
      config.data_dir = str(Path(workdir) / 'data')
      _link_folder_part(
        Path(data_dir), Path(config.data_dir), {'train': train_size, 'test': config.eval_batch_size}
      )
    training.train_and_evaluate(config, Path(workdir) / 'run')
    records = [json.loads(line) for line in (Path(workdir) / 'run/metrics.jsonl').open()]
  rates = [r['images_per_second'] for r in records if 'images_per_second' in r][1:]
  return {
    'arch': arch,
    'batch': args.batch,
    'steps': args.loop_steps,
    'data': (
      'synthetic'
      if data_dir is None
      else f'{data_dir} ({"preloaded" if preload else "decoded when read"})'
    ),
    'logged_images_per_second': statistics.median(rates),
    'windows': len(rates),
  }


def _median_of_rounds(results: list[dict]) -> dict:
  """One measurement's results over the rounds: each figure's median, and every round's."""
  if len(results) == 1:
    return results[0]
  merged = {
    key: (statistics.median(r[key] for r in results) if isinstance(value, float) else value)
    for key, value in results[0].items()
  }
  return {**merged, 'rounds': results}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='resnet20,vgg16')
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--parts', default='step,plain_jit,torch,parts,loop')
  parser.add_argument('--repeats', type=int, default=6)
  parser.add_argument(
    '--rounds',
    type=int,
    default=1,
    help='the step and loop measurements this many times (the machine drifts); '
    "each figure is the rounds' median, ratios too",
  )
  parser.add_argument('--loop_steps', type=int, default=60)
  parser.add_argument('--loop_log_every', type=int, default=10)
  parser.add_argument(
    '--loop_data_dir', default='', help='a CIFAR image folder: the loop also runs on its JPEG files'
  )
  parser.add_argument('--out', default='docs/benchmarks/train_step.json')
  args = parser.parse_args()
  args.parts = set(args.parts.split(','))
  archs = args.models.split(',')
  if 'loop' in args.parts and 'step' not in args.parts:
    parser.error('--parts=loop needs step: the bare step is timed around every loop')
  parts = measure_parts(args) if 'parts' in args.parts else []
  sources = [(None, False)]
  if args.loop_data_dir:
    sources += [(args.loop_data_dir, False), (args.loop_data_dir, True)]
  step_rounds, loop_rounds = [], []
  for _ in range(args.rounds):
    measured = [measure_step(arch, args) for arch in archs] if 'step' in args.parts else []
    step_rounds.append([result for result, _ in measured])
    loops = []
    for arch, (_, bare_step) in zip(archs, measured, strict=True):
      for source in sources if 'loop' in args.parts else []:
        bare_times = _timed(bare_step, args.repeats)
        loop = measure_loop(arch, args, *source)
        bare_rate = args.batch / statistics.median(bare_times + _timed(bare_step, args.repeats))
        loop.update(
          bare_step_images_per_second=bare_rate,
          logged_over_bare=loop['logged_images_per_second'] / bare_rate,
        )
        loops.append(loop)
    loop_rounds.append(loops)
  steps = [_median_of_rounds(list(results)) for results in zip(*step_rounds, strict=True)]
  loops = [_median_of_rounds(list(results)) for results in zip(*loop_rounds, strict=True)]
  print('\n' + '\n'.join(step_table(steps)))
  if loops:
    print('\n' + '\n'.join(loop_table(loops)))
  write_result(args.out, repeats=args.repeats, steps=steps, parts=parts, loops=loops)


if __name__ == '__main__':
  main()
