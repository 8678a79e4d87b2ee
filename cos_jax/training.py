"""Training of QCFS networks: `train_and_evaluate(config, workdir)`.

The workdir holds the run: orbax checkpoints, `config.json` and `metrics.jsonl`. Running again
with the same workdir resumes from the last checkpoint; batches and dropout keys are pure
functions of (seed, step), so a resumed run ends with the parameters an uninterrupted one has.
Training is data-parallel over every device: the batch axis is sharded over a one-axis mesh.
"""

import functools
import json
import math
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import traverse_util
from flax.training import train_state

from cos_jax import config_checks, conversion_report, data, models, parallel, torch_import, xla
from cos_jax import workdir as workdir_lib
from cos_jax.augment import EvalTransform, TrainTransform
from cos_jax.layers import Activation
from cos_jax.qcfs import qcfs


class TrainState(train_state.TrainState):
  batch_stats: Any


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


def create_model(config: ml_collections.ConfigDict, levels: int | None = None) -> nn.Module:
  """The config's model, with `levels` (L) in place of `config.levels` if given."""
  return models.create_model(
    config.arch,
    num_classes=config.num_classes,
    levels=levels or config.levels,
    imagenet=config.get('imagenet', False),
    input_shape=tuple(config.input_shape),
    **config.get('model_kwargs', {}),
  )


def create_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """The learning rate per step: an optional linear warm-up from 0, then a decay to 0.

  `config.lr_schedule` is 'cosine' (SPEC section 7) or 'linear'; `config.warmup_epochs` may be
  fractional.
  """
  total_steps = config.num_epochs * steps_per_epoch
  warmup_steps = int(config.get('warmup_epochs', 0) * steps_per_epoch)
  kind = config.get('lr_schedule', 'cosine')
  if kind == 'cosine':
    if warmup_steps:
      return optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, warmup_steps, total_steps
      )
    return optax.cosine_decay_schedule(config.learning_rate, total_steps)
  if kind == 'linear':
    decay = optax.linear_schedule(config.learning_rate, 0.0, total_steps - warmup_steps)
    if not warmup_steps:
      return decay
    return optax.join_schedules(
      [optax.linear_schedule(0.0, config.learning_rate, warmup_steps), decay], [warmup_steps]
    )
  raise ValueError(f"lr_schedule must be 'cosine' or 'linear', got {kind!r}.")


def _kernels_only(params):
  """True for convolution and dense kernels: weight decay skips BatchNorm, biases, thresholds."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params
  )


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """SGD with momentum and weight decay, on the schedule of `create_schedule`.

  Weight decay covers every parameter (SPEC section 7) unless `config.weight_decay_on` is
  'kernels'; `config.nesterov` turns on Nesterov momentum.
  """
  schedule = create_schedule(config, steps_per_epoch)
  decay_on = config.get('weight_decay_on', 'all')
  if decay_on not in ('all', 'kernels'):
    raise ValueError(f"weight_decay_on must be 'all' or 'kernels', got {decay_on!r}.")
  decay = optax.add_decayed_weights(
    config.weight_decay, mask=_kernels_only if decay_on == 'kernels' else None
  )
  return optax.chain(
    decay, optax.sgd(schedule, momentum=config.momentum, nesterov=config.get('nesterov', False))
  ), schedule


def create_train_state(config, model: nn.Module, steps_per_epoch: int, rng: jax.Array):
  variables = models.init_variables(model, rng)
  tx, _ = create_optimizer(config, steps_per_epoch)
  return TrainState.create(
    apply_fn=model.apply,
    params=variables['params'],
    tx=tx,
    batch_stats=variables.get('batch_stats', {}),
  )


def levels_schedule(config: ml_collections.ConfigDict) -> list[tuple[float, int]]:
  """`config.levels_schedule` ('fraction:L,...') as (fraction, L) pairs, checked.

  Each L holds from its fraction of the training steps on; the last L must be `config.levels`,
  the L the trained model keeps. Empty: [(0, config.levels)].
  """
  text = config.get('levels_schedule', '')
  if not text:
    return [(0.0, config.levels)]
  try:
    schedule = [
      (float(fraction), int(levels))
      for fraction, levels in (entry.split(':') for entry in text.split(','))
    ]
  except ValueError:
    schedule = None
  fractions = [fraction for fraction, _ in schedule or ()]
  if (
    not schedule
    or fractions != sorted(fractions)
    or fractions[0] != 0
    or fractions[-1] >= 1
    or any(levels < 1 for _, levels in schedule)
    or schedule[-1][1] != config.levels
  ):
    raise ValueError(
      f'levels_schedule={text!r} must read "fraction:L,fraction:L,..." with fractions rising '
      f'from 0 to below 1, integer L >= 1, and end with levels={config.levels}, the L the '
      "trained model keeps (e.g. '0:32,0.6:4')."
    )
  return schedule


def levels_at(schedule: list[tuple[float, int]], step: int, total_steps: int) -> int:
  """The QCFS levels L of training step `step` under a `levels_schedule`."""
  return [levels for fraction, levels in schedule if step >= int(fraction * total_steps)][-1]


def data_driven_thresholds(
  model: nn.Module, variables: dict, images: jax.Array, percentile: float
) -> dict:
  """Every QCFS threshold set to a percentile of its layer's input, layer by layer.

  One forward pass in training mode (batch statistics) over `images`: each activation layer,
  in forward order, takes as threshold the `percentile` of the values reaching it, computed with
  the thresholds already chosen for the layers before it, and applies QCFS with it.

  Returns:
    `variables['params']` with every threshold replaced.
  """
  chosen = {}

  def choose(next_fun, args, kwargs, context):
    module = context.module
    if not isinstance(module, Activation) or context.method_name != '__call__':
      return next_fun(*args, **kwargs)
    x = args[0]
    threshold = jnp.maximum(jnp.percentile(x, percentile), jnp.finfo(x.dtype).tiny)
    chosen[tuple(module.path)] = threshold
    return qcfs(x, threshold.astype(x.dtype), module.levels)

  def forward(variables, images):
    with nn.intercept_methods(choose):
      model.apply(
        variables, images, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.key(0)}
      )
    return chosen

  thresholds = jax.jit(forward)(variables, images)
  flat = traverse_util.flatten_dict(variables['params'])
  for path, threshold in thresholds.items():
    flat[path + ('threshold',)] = threshold.astype(flat[path + ('threshold',)].dtype)
  return traverse_util.unflatten_dict(flat)


def _normalise_on_device(images: jax.Array, mean, std) -> jax.Array:
  return (images.astype(jnp.float32) / 255.0 - jnp.asarray(mean)) / jnp.asarray(std)


def _cast_floats(tree, dtype):
  return jax.tree.map(
    lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
  )


def train_step(
  state: TrainState,
  images: jax.Array,
  labels: jax.Array,
  dropout_key: jax.Array,
  *,
  mean,
  std,
  label_smoothing: float = 0.0,
  compute_dtype=None,
):
  """One SGD step on uint8 images; returns the new state and the step's loss and accuracy.

  With `compute_dtype` (bfloat16 for `config.half_precision`) the forward and backward pass run
  on the images and parameters cast to it, while the parameters, their gradients, the optimizer
  and the BatchNorm statistics stay in their own dtype (float32), as mixed precision does on
  TPUs and GPUs; the loss is computed from logits of at least float32.
  """
  x = _normalise_on_device(images, mean, std)
  key = jax.random.fold_in(dropout_key, state.step)

  def loss_fn(params):
    inputs = x
    if compute_dtype is not None:
      params, inputs = _cast_floats(params, compute_dtype), x.astype(compute_dtype)
    logits, updates = state.apply_fn(
      {'params': params, 'batch_stats': state.batch_stats},
      inputs,
      train=True,
      mutable=['batch_stats'],
      rngs={'dropout': key},
    )
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    if label_smoothing:
      targets = optax.smooth_labels(
        jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype), label_smoothing
      )
      loss = optax.softmax_cross_entropy(logits, targets).mean()
    else:
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    batch_stats = jax.tree.map(
      lambda new, old: new.astype(old.dtype), updates.get('batch_stats', {}), state.batch_stats
    )
    return loss, (logits, batch_stats)

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  accuracy = (logits.argmax(-1) == labels).mean()
  return state, {'loss': loss, 'accuracy': accuracy}


def eval_step(variables, images, labels, real, *, apply_fn, mean, std):
  """Counts of correct predictions among the real (not padding) examples."""
  logits = apply_fn(variables, _normalise_on_device(images, mean, std), train=False)
  return ((logits.argmax(-1) == labels) & real).sum()


def evaluate(variables, split: data.Split, *, apply_fn, config, mesh) -> float:
  """Top-1 accuracy of the ANN on a split, data-parallel over the mesh; each process reads its
  share of every batch."""
  batch_size = config.eval_batch_size
  parallel.check_divisible(batch_size, 'eval_batch_size')
  step = _jitted_eval_step(apply_fn, tuple(config.mean), tuple(config.std))
  replicated = parallel.replicate(variables, mesh)
  correct = 0
  batches = data.eval_batches(
    split, batch_size, EvalTransform.from_config(config), threads=data.pipeline_threads(config)
  )
  for images, labels, real in batches:
    batch_correct = step(replicated, *parallel.shard_batch(mesh, images, labels, real))
    correct = jax.block_until_ready(correct) + batch_correct  # one batch ahead, as in training
  return float(correct) / len(split)


@functools.cache
def _jitted_train_step(mean, std, label_smoothing, compute_dtype):
  """One compiled step per normalisation, smoothing and precision: runs in one process share it."""
  return xla.jit(
    functools.partial(
      train_step, mean=mean, std=std, label_smoothing=label_smoothing, compute_dtype=compute_dtype
    ),
    donate_argnums=0,
  )


@functools.cache
def _jitted_eval_step(apply_fn, mean, std):
  return xla.jit(functools.partial(eval_step, apply_fn=apply_fn, mean=mean, std=std))


class _MetricsLog:
  """metrics.jsonl: one JSON object per line; a resumed run drops the lines past its checkpoint.

  A kill while a line is being written leaves it torn: a last line that does not parse is
  dropped (with a note); an unreadable line anywhere else is an error naming the file and line.
  """

  def __init__(self, path: Path, resumed_step: int):
    self.path = path
    if path.exists() and jax.process_index() == 0:
      lines = path.read_text().splitlines()
      records = []
      for number, line in enumerate(lines, start=1):
        if not line.strip():
          continue
        try:
          records.append((line, json.loads(line)))
        except json.JSONDecodeError as error:
          if number < len(lines):
            raise ValueError(
              f'{path}, line {number}, is not JSON ({error}): repair or remove that line to resume.'
            ) from error
          print(
            f'Dropped the torn last line of {path} (a write interrupted): {line[:80]!r}', flush=True
          )
      kept = [line for line, record in records if record.get('step', 0) <= resumed_step]
      path.write_text(''.join(line + '\n' for line in kept))

  def write(self, **record) -> None:
    if jax.process_index():
      return  # one writer on a shared workdir
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')


def _raise_on_non_finite(history: list[tuple[int, dict]]) -> None:
  for step, metrics in history:
    if not math.isfinite(metrics['loss']):
      raise NonFiniteLossError(
        f'The training loss is {metrics["loss"]} at step {step}: lower the learning rate, '
        'check the data normalisation, or resume from the last checkpoint with other settings.'
      )


def _format_eta(seconds: float) -> str:
  return time.strftime('%H:%M:%S', time.gmtime(max(seconds, 0)))


def restore_variables(config: ml_collections.ConfigDict, workdir) -> tuple[nn.Module, dict]:
  """The model of a config and the `params` and `batch_stats` of the run's latest checkpoint."""
  checkpoint_dir = Path(workdir).expanduser().resolve() / 'checkpoints'
  model = create_model(config)
  state = jax.eval_shape(lambda: create_train_state(config, model, 1, jax.random.key(0)))
  state, _, _ = workdir_lib.restore_newest_whole(checkpoint_dir, state)
  if state is None:
    raise FileNotFoundError(
      f'No checkpoint in {checkpoint_dir}: train first with '
      f'python train.py --config=... --workdir={workdir}.'
    )
  return model, {'params': state.params, 'batch_stats': state.batch_stats}


def _thresholds_from_data(config, model, state: TrainState, split: data.Split) -> dict:
  """`data_driven_thresholds` on a fixed random subset of the (unaugmented) training images."""
  images, _ = data.examples(
    data.subset(split, config.threshold_init_examples), EvalTransform.from_config(config)
  )
  params = data_driven_thresholds(
    model,
    {'params': state.params, 'batch_stats': state.batch_stats},
    _normalise_on_device(jnp.asarray(images), tuple(config.mean), tuple(config.std)),
    config.threshold_percentile,
  )
  chosen = [
    float(t) for path, t in traverse_util.flatten_dict(params).items() if path[-1] == 'threshold'
  ]
  print(
    f'Thresholds set to the {config.threshold_percentile}th percentile of their inputs on '
    f'{len(images)} training images: {min(chosen):.3g} to {max(chosen):.3g}.',
    flush=True,
  )
  return params


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains the config's QCFS model, checkpointing to `workdir`, then evaluates and converts.

  Args:
    config: a config from `configs/`, checked whole before anything starts.
    workdir: the run's folder, held exclusively while training; an existing run there is
      resumed from its newest whole checkpoint if its config.json matches `config` (see
      `workdir.RESUMABLE_CHANGES`).

  Returns:
    The final training state.
  """
  config_checks.check_config(config)
  l_schedule = levels_schedule(config)
  workdir = Path(workdir).expanduser().resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  with workdir_lib.exclusive(workdir):
    workdir_lib.check_resumed_config(workdir, config)
    return _train_and_evaluate(config, workdir, l_schedule)


def _train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: Path, l_schedule: list[tuple[float, int]]
) -> TrainState:
  """train_and_evaluate with a checked config and L schedule, in a workdir this process holds."""
  dataset = data.load(config)
  if dataset.num_classes != config.num_classes:
    raise ValueError(
      f'The data set has {dataset.num_classes} classes but the config says '
      f'num_classes={config.num_classes}.'
    )
  parallel.check_divisible(config.batch_size, 'batch_size')
  steps_per_epoch = len(dataset.train) // config.batch_size
  if steps_per_epoch < 1:
    raise ValueError(
      f'batch_size={config.batch_size} is larger than the training set '
      f'({len(dataset.train)} examples): lower --config.batch_size.'
    )
  total_steps = config.num_epochs * steps_per_epoch
  model = create_model(config)
  state = create_train_state(config, model, steps_per_epoch, jax.random.key(config.seed))

  restored, start_step, damaged = workdir_lib.restore_newest_whole(
    workdir / 'checkpoints', jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  )
  workdir_lib.set_aside(workdir / 'checkpoints', damaged)
  checkpoints = ocp.CheckpointManager(
    workdir / 'checkpoints', options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
  )
  if restored is not None:
    state = restored
    print(f'Resumed from the checkpoint at step {start_step} in {workdir}.', flush=True)
  else:
    if config.get('threshold_init', 'constant') == 'percentile':
      state = state.replace(params=_thresholds_from_data(config, model, state, dataset.train))
    if jax.process_index() == 0:
      (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  metrics_log = _MetricsLog(workdir / 'metrics.jsonl', start_step)

  mesh = parallel.data_mesh()
  state = parallel.replicate(state, mesh)
  step_fn = _jitted_train_step(
    tuple(config.mean),
    tuple(config.std),
    config.get('label_smoothing', 0.0),
    jnp.bfloat16 if config.get('half_precision', False) else None,
  )
  dropout_key = jax.random.key(config.seed + 1)
  _, schedule = create_optimizer(config, steps_per_epoch)
  batches = data.train_batches(
    dataset.train,
    batch_size=config.batch_size,
    seed=config.seed,
    start_step=start_step,
    num_steps=total_steps,
    transform=TrainTransform.from_config(config),
    threads=data.pipeline_threads(config),
    workers=config.get('data_workers', 0),
  )
  history, window_start = [], time.time()
  try:  # closing waits for a save in flight, on Ctrl-C or an error too, then lets go
    for step in range(start_step, total_steps):
      levels = levels_at(l_schedule, step, total_steps)
      if step == start_step or levels != levels_at(l_schedule, step - 1, total_steps):
        model = create_model(config, levels)  # a new L compiles the step anew
        state = state.replace(apply_fn=model.apply)
        print(f'step {step}: training with L = {levels}', flush=True)
      images, labels = parallel.shard_batch(mesh, *next(batches))
      state, metrics = step_fn(state, images, labels, dropout_key)
      if history:  # wait for the step before: one step queued behind the running one keeps the
        # device busy, while a loop that runs ahead (the host can outpace the device) makes
        # Ctrl-C or an error wait for every queued step, minutes for VGG-16 on a CPU
        jax.block_until_ready(history[-1][1])
      history.append((step + 1, metrics))
      done = step + 1
      if done % config.log_every_steps == 0 or done == total_steps:
        history = [(s, {k: float(v) for k, v in m.items()}) for s, m in jax.device_get(history)]
        _raise_on_non_finite(history)
        elapsed = time.time() - window_start
        rate = len(history) * config.batch_size / elapsed
        mean = {k: float(np.mean([m[k] for _, m in history])) for k in history[0][1]}
        epoch = done / steps_per_epoch
        eta = _format_eta((total_steps - done) * config.batch_size / rate)
        print(
          f'step {done}/{total_steps} epoch {epoch:.2f} loss {mean["loss"]:.4f} '
          f'accuracy {mean["accuracy"]:.4f} lr {float(schedule(done)):.5f} '
          f'{rate:.0f} images/s ETA {eta}',
          flush=True,
        )
        metrics_log.write(step=done, epoch=epoch, images_per_second=rate, **mean)
        history, window_start = [], time.time()
      end_of_epoch = done % steps_per_epoch == 0
      if done % config.checkpoint_every_steps == 0 or end_of_epoch or done == total_steps:
        checkpoints.save(
          done,
          args=ocp.args.StandardSave(state),
          custom_metadata={'state_sha256': workdir_lib.state_digest(state)},
        )
      eval_every = config.get('eval_every_epochs', 0)
      if end_of_epoch and eval_every and (done // steps_per_epoch) % eval_every == 0:
        accuracy = evaluate(
          {'params': state.params, 'batch_stats': state.batch_stats},
          dataset.test,
          apply_fn=model.apply,
          config=config,
          mesh=mesh,
        )
        print(f'epoch {done // steps_per_epoch} test accuracy {accuracy:.4f}', flush=True)
        metrics_log.write(step=done, epoch=done // steps_per_epoch, test_accuracy=accuracy)
  finally:
    checkpoints.close()

  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  accuracy = evaluate(variables, dataset.test, apply_fn=model.apply, config=config, mesh=mesh)
  print(f'final ANN test accuracy {accuracy:.4f}', flush=True)
  metrics_log.write(step=total_steps, final_test_accuracy=accuracy)
  if config.conversion.enabled:
    conversion_report.run(config, workdir, model, jax.device_get(variables), dataset.test)
  return state


def convert_and_report(
  workdir, config: ml_collections.ConfigDict | None = None, torch_checkpoint: str | None = None
) -> dict:
  """convert.py: the report of a run's checkpoint, or of an imported PyTorch checkpoint."""
  workdir = Path(workdir).expanduser()
  if config is None:
    config_path = workdir / 'config.json'
    if not config_path.is_file():
      raise FileNotFoundError(f'{config_path} not found: pass --config=configs/<name>.py.')
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  elif not torch_checkpoint:
    workdir_lib.check_conversion_config(workdir, config)
  config_checks.check_config(config, training=False)
  if torch_checkpoint:
    workdir.mkdir(parents=True, exist_ok=True)
    model, variables = torch_import.load_torch_checkpoint(
      torch_checkpoint,
      arch=config.arch,
      num_classes=config.num_classes,
      L=config.levels,
      imagenet=config.get('imagenet', False),
      input_shape=tuple(config.input_shape),
      **config.get('model_kwargs', {}),
    )
  else:
    model, variables = restore_variables(config, workdir)
  return conversion_report.run(
    config, workdir, model, variables, data.load(config, preload=False).test
  )
