"""What the fast precision costs: the shipped ResNet-20's SNN with every convolution and matrix
product in full float32, against an emulation of the TPU's default on the CPU.

A TPU (and, with TF32, a recent GPU) computes a float32 convolution or matrix product at its
default precision by rounding both operands (here to bfloat16: 8 significant bits) and
accumulating the exact products in float32. The CPU always computes in full float32, so the
emulation rounds every Conv and Dense layer's input and kernel to bfloat16 itself and lets the
CPU accumulate; that is the arithmetic of `precision='default'` on a TPU. Both runs see the same
test images; the script reports, per method (plain QCFS conversion and COS) and per T, the
accuracy of each, the share of predictions that agree and of per-step output rows (one image's
logits at one step) that are equal, and the share of neurons whose spike count over the T steps
is the same.

    python -m benchmarks.precision_loss --workdir=docs/results/cifar10_resnet20_short \
        --out=docs/results/precision/resnet20_short.json
"""

import argparse
import contextlib
import functools
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from benchmarks.common import write_result
from cos_jax import input_pipeline, run_state, snn, sources, workdir
from cos_jax.augment import EvalTransform


def round_to_bfloat16(x: jax.Array) -> jax.Array:
  """`x` rounded to the nearest bfloat16, in its own dtype."""
  return x.astype(jnp.bfloat16).astype(x.dtype)


def _round_linear_inputs(next_fun, args, kwargs, context):
  """A method interceptor rounding the input of every Conv and Dense call to bfloat16."""
  if context.method_name == '__call__' and isinstance(context.module, (nn.Conv, nn.Dense)):
    args = (round_to_bfloat16(args[0]),) + tuple(args[1:])
  return next_fun(*args, **kwargs)


def one_bfloat16_pass(variables: dict) -> dict:
  """The variables with every Conv and Dense kernel rounded to bfloat16 (biases are added after
  the product, in float32, so they keep their precision)."""
  return jax.tree_util.tree_map_with_path(
    lambda path, leaf: (
      round_to_bfloat16(leaf) if getattr(path[-1], 'key', None) == 'kernel' else leaf
    ),
    variables,
  )


@functools.partial(jax.jit, static_argnames=('model', 'rounded'))
def _ann(model, variables, images, *, rounded: bool):
  with nn.intercept_methods(_round_linear_inputs) if rounded else contextlib.nullcontext():
    return model.apply(variables, images, train=False)


@functools.partial(jax.jit, static_argnames=('T', 'rho', 'rounded'))
def _snn(network, images, *, T: int, rho: int, rounded: bool):
  """Per-step outputs [T, B, C] and per-neuron spike counts over the T steps of plain
  conversion (rho = 0) or COS, chunked as `cos_jax.calibrate_and_simulate` chunks them."""
  with nn.intercept_methods(_round_linear_inputs) if rounded else contextlib.nullcontext():
    logits, _, spike_stats = snn._run(  # pylint: disable=protected-access
      network,
      images,
      steps=T,
      rounds=1 if rho else 0,
      **snn.chunking(T, rho, None),
      shift_values=None,
      statistics_steps=T,
    )
  counts = [
    leaf
    for path, leaf in traverse_util.flatten_dict(spike_stats).items()
    if path[-1] == 'spike_count'
  ]
  return logits, counts


def compare(model, variables, batches, labels, *, T: int, rho: int) -> dict:
  """Accuracy of both runs, equal spike counts, equal output rows and agreeing predictions."""
  rounded_variables = one_bfloat16_pass(variables)
  networks = {False: snn.convert(model, variables), True: snn.convert(model, rounded_variables)}
  methods = {'qcfs': 0, f'cos_rho{rho}': rho}
  ann = {rounded: [] for rounded in (False, True)}
  logits = {(name, rounded): [] for name in methods for rounded in (False, True)}
  equal_counts = {name: [0, 0] for name in methods}  # neurons with equal counts, neurons
  for images in batches:
    for rounded in (False, True):
      chosen = rounded_variables if rounded else variables
      ann[rounded].append(np.asarray(_ann(model, chosen, images, rounded=rounded)))
    for name, method_rho in methods.items():
      counts = {}
      for rounded in (False, True):
        out, counts[rounded] = _snn(networks[rounded], images, T=T, rho=method_rho, rounded=rounded)
        logits[name, rounded].append(np.asarray(out))
      for full, rounded in zip(counts[False], counts[True], strict=True):
        equal_counts[name][0] += int((full == rounded).sum())
        equal_counts[name][1] += full.size
  full_ann, rounded_ann = (np.concatenate(ann[r]).argmax(-1) for r in (False, True))
  summary = {
    'ann': {
      'accuracy_full': float((full_ann == labels).mean()),
      'accuracy_rounded': float((rounded_ann == labels).mean()),
      'predictions_agree': float((full_ann == rounded_ann).mean()),
    }
  }
  for name in methods:
    a, b = (np.concatenate(logits[name, r], axis=1) for r in (False, True))  # [T, N, C]
    predictions_a, predictions_b = a.cumsum(0).argmax(-1), b.cumsum(0).argmax(-1)  # [T, N]
    summary[name] = {
      'accuracy_full_by_T': (predictions_a == labels).mean(1).tolist(),
      'accuracy_rounded_by_T': (predictions_b == labels).mean(1).tolist(),
      'predictions_agree_by_T': (predictions_a == predictions_b).mean(1).tolist(),
      'equal_rows_by_T': (a == b).all(-1).mean(1).tolist(),
      f'equal_spike_counts_over_T{T}': equal_counts[name][0] / equal_counts[name][1],
    }
  return summary


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='a run with a checkpoint')
  parser.add_argument('--out', required=True, help='the JSON file to write')
  parser.add_argument('--T', type=int, default=8)
  parser.add_argument('--rho', type=int, default=4)
  parser.add_argument('--num_examples', type=int, default=-1, help='-1: the whole test set')
  args = parser.parse_args()
  config = workdir.read_config(Path(args.workdir))
  model, variables = run_state.restore_variables(config, args.workdir)
  variables = jax.device_get(variables)
  split = sources.subset(sources.load(config, preload=False).test, args.num_examples)
  images, labels = input_pipeline.examples(split, EvalTransform.from_config(config))
  normalised = input_pipeline.normalise(images, config.mean, config.std)
  batch = config.conversion.batch_size
  batches = [normalised[i : i + batch] for i in range(0, len(normalised), batch)]

  summary = compare(model, variables, batches, labels, T=args.T, rho=args.rho)
  print(f'{len(labels)} test images of {args.workdir}; T = 1..{args.T}')
  print(json.dumps(summary, indent=1))
  write_result(
    args.out, workdir=args.workdir, examples=len(labels), T=args.T, rho=args.rho, **summary
  )


if __name__ == '__main__':
  main()
