"""The device check: what cos_jax computes and how fast on the machine it runs on, in one command.

    python -m benchmarks.accelerator --out=docs/benchmarks/accelerator.json   # < 8 min on a GPU

1. The backend and the device kind.
2. Exactness: on the reference fixtures (tests/data/reference_r20: the authors' ResNet-20 and
   its float64 outputs for 32 CIFAR-10 images, plain conversion and COS rho = 4, T = 8), the
   share of per-step output rows equal to the float64 truth, in float32 at 'highest' and at
   the backend's 'default' precision, and in float64. A row is equal when every logit is
   within float32 rounding (1e-4 of the largest, 1e-9 in float64): one spike flipped anywhere
   moves a row by far more. On CPUs float32 gives 93-97 % (rounding ties); float64 should give
   100 % everywhere.
3. The training step (train.py's, on its own state) in images/s, per model, batch and dtype
   (float32; bfloat16 as with --config.half_precision=True).
4. The fused COS run (rho = 4, T = 8) in images/s per batch, and its time against max(T, rho)
   ANN forwards of the same batch.
5. The input pipeline's images/s with the CIFAR recipe (crop, flip, AutoAugment, Cutout), in
   the training process and in grain worker processes.
6. The device's peak memory, where the backend reports it.
Times are medians of --repeats runs after a compile-and-warm-up run. `--tiny` runs every part
at sizes a CPU does in seconds (the test suite's run).
"""

import argparse
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import cos_jax
from benchmarks.common import median_seconds, write_result
from benchmarks.input_pipeline import pipeline_rate
from configs import cifar10
from cos_jax import augment, optimizer, run_state, sources, training, xla

FIXTURES = Path(__file__).resolve().parents[1] / 'tests' / 'data' / 'reference_r20'
REFERENCE_T, REFERENCE_RHO = 8, 4
EXACTNESS_CASES = (('float32', 'highest'), ('float32', 'default'), ('float64', 'highest'))
FULL = dict(
  exactness_cases=EXACTNESS_CASES,
  exactness_rhos=(0, REFERENCE_RHO),
  exactness_T=REFERENCE_T,
  train_archs=('resnet20', 'vgg16'),
  train_batches=(128, 512),
  cos_arch='vgg16',
  cos_batches=(50, 500),
  workers=(0, 4, 8),
  pipeline_steps=20,
)
TINY = dict(
  exactness_cases=(('float32', 'highest'),),
  exactness_rhos=(0,),
  exactness_T=2,  # the first 2 of the reference's 8 steps: a smaller program to compile
  train_archs=('tiny',),
  train_batches=(8,),
  cos_arch='tiny',
  cos_batches=(4,),
  workers=(0, 1),
  pipeline_steps=2,
)


def device_facts() -> dict:
  device = jax.devices()[0]
  return {
    'backend': jax.default_backend(),
    'device_kind': device.device_kind,
    'device_count': jax.device_count(),
  }


def equal_rows(actual, expected, rtol: float) -> float:
  """The share of [T, B] rows (one image's logits at one step) within `rtol` of the truth."""
  actual = np.asarray(actual, np.float64)
  return float((np.abs(actual - expected) <= rtol * np.abs(expected).max()).all(-1).mean())


def exactness(cases, rhos, T: int) -> list[dict]:
  """Per (dtype, precision) case, the share of output rows equal to the reference's float64
  ones over the first T steps, per rho (0: plain conversion)."""
  model, variables = cos_jax.load_torch_checkpoint(
    FIXTURES / 'r20_fix_w.npz', arch='resnet20', num_classes=10, levels=4
  )
  images = np.load(FIXTURES / 'x32_cifar.npy').transpose(0, 2, 3, 1)  # NCHW -> NHWC
  expected = {rho: np.load(FIXTURES / f'r20_rho{rho}_f64.npz')['snn_out'] for rho in (0, 4)}
  results = []
  for dtype, precision in cases:
    with jax.enable_x64(dtype == 'float64'):
      cast = jax.tree.map(lambda v, dtype=dtype: jnp.asarray(v, dtype), variables)
      network = cos_jax.convert(model, cast)
      row = {'dtype': dtype, 'precision': precision}
      for rho in rhos:
        logits, _, _ = cos_jax.calibrate_and_simulate(
          network, jnp.asarray(images, dtype), T, rho=rho, precision=precision
        )
        rtol = 1e-9 if dtype == 'float64' else 1e-4
        row[f'equal_rows_rho{rho}'] = equal_rows(logits, expected[rho][:T], rtol)
      results.append(row)
      print(row, flush=True)
  return results


def _config(arch: str, batch: int, half_precision: bool):
  config = cifar10.get_config()
  config.update(arch=arch, batch_size=batch, half_precision=half_precision)
  return config


def training_step(arch: str, batch: int, half_precision: bool, repeats: int) -> dict:
  """Images/s of train.py's step on random CIFAR-shaped uint8 images."""
  config = _config(arch, batch, half_precision)
  model = run_state.create_model(config)
  tx, _ = optimizer.create_optimizer(config, steps_per_epoch=100)
  state = run_state.create_train_state(model, tx, jax.random.key(0))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (batch, *config.input_shape)), jnp.uint8)
  labels = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
  step = training._jitted_train_step(  # pylint: disable=protected-access
    tuple(config.mean), tuple(config.std), 0.0, jnp.bfloat16 if half_precision else None
  )
  key = jax.random.key(1)
  holder = [state]

  def one_step():
    holder[0], metrics = step(holder[0], images, labels, key)
    return metrics['loss']

  seconds = median_seconds(one_step, repeats)
  return {
    'arch': arch,
    'batch': batch,
    'dtype': 'bfloat16' if half_precision else 'float32',
    'images_per_second': batch / seconds,
  }


def fused_cos(arch: str, batch: int, repeats: int) -> dict:
  """Images/s of calibrate_and_simulate (rho 4, T 8) and its time / (8 ANN forwards)."""
  model = cos_jax.create_model(arch, num_classes=10, levels=4, input_shape=(32, 32, 3))
  variables = cos_jax.init_variables(model, jax.random.key(0))
  # Thresholds as after training, so that neurons fire at realistic rates.
  variables['params'] = jax.tree.map(
    lambda x: jnp.full_like(x, 2.0) if x.ndim == 0 else x, variables['params']
  )
  network = cos_jax.convert(model, variables)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(batch, 32, 32, 3)), jnp.float32)
  ann = xla.jit(lambda v, x: model.apply(v, x, train=False))
  ann_seconds = median_seconds(functools.partial(ann, variables, images), repeats)
  T, rho = 8, 4
  seconds = median_seconds(
    lambda: cos_jax.calibrate_and_simulate(network, images, T, rho=rho)[0], repeats
  )
  return {
    'arch': arch,
    'batch': batch,
    'T': T,
    'rho': rho,
    'images_per_second': batch / seconds,
    'ratio_to_ann_bound': seconds / (max(T, rho) * ann_seconds),
  }


def input_pipeline_rate(workers: int, steps: int, batch: int = 128) -> dict:
  """Images/s of the CIFAR recipe through train_batches, in the training process (one thread)
  or in `workers` grain worker processes."""
  images = np.random.default_rng(0).integers(0, 256, (50 * batch, 32, 32, 3), dtype=np.uint8)
  split = sources.ArraySplit(images, np.zeros(len(images), np.int32))
  transform = augment.TrainTransform.from_config(cifar10.get_config())
  rate = pipeline_rate(split, transform, batch=batch, steps=steps, threads=1, workers=workers)
  return {'workers': workers, 'images_per_second': rate}


def peak_memory_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def run(args) -> dict:
  result = {'device': device_facts()}
  print(f'{result["device"]}', flush=True)
  result['exactness'] = exactness(args.exactness_cases, args.exactness_rhos, args.exactness_T)
  result['training_step'] = []
  for arch in args.train_archs:
    for batch in args.train_batches:
      for half_precision in (False, True):
        result['training_step'].append(training_step(arch, batch, half_precision, args.repeats))
        print(result['training_step'][-1], flush=True)
  result['fused_cos'] = [fused_cos(args.cos_arch, b, args.repeats) for b in args.cos_batches]
  print(result['fused_cos'], flush=True)
  result['input_pipeline'] = [input_pipeline_rate(w, args.pipeline_steps) for w in args.workers]
  print(result['input_pipeline'], flush=True)
  result['peak_memory_bytes'] = peak_memory_bytes()
  return result


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='docs/benchmarks/accelerator.json')
  parser.add_argument('--tiny', action='store_true', help='seconds on a CPU (the test suite)')
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args(argv)
  sizes = TINY if args.tiny else FULL
  return argparse.Namespace(out=args.out, repeats=1 if args.tiny else args.repeats, **sizes)


def main(argv=None) -> dict:
  args = parse_args(argv)
  result = run(args)
  write_result(args.out, **result)
  return result


if __name__ == '__main__':
  main()
