"""Training of QCFS networks: `train_and_evaluate(config, workdir)`.

The workdir holds the run: orbax checkpoints, `config.json` and `metrics.jsonl`. Running again
with the same workdir resumes from the last checkpoint; batches and dropout keys are pure
functions of (seed, step), so a resumed run ends with the parameters an uninterrupted one has.
Training is data-parallel over every device: the batch axis is sharded over a one-axis mesh.
"""

import functools
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import traverse_util

from cos_jax import (
  config_checks,
  conversion_report,
  input_pipeline,
  interrupts,
  optimizer,
  parallel,
  precision,
  recipe,
  run_state,
  sources,
  xla,
)
from cos_jax import workdir as workdir_lib
from cos_jax.augment import EvalTransform, TrainTransform


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


def _cast_floats(tree, dtype):
  return jax.tree.map(
    lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
  )


def train_step(
  state: run_state.TrainState,
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
  x = input_pipeline.normalise(images, mean, std)
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
  logits = apply_fn(variables, input_pipeline.normalise(images, mean, std), train=False)
  return ((logits.argmax(-1) == labels) & real).sum()


def evaluate(
  variables,
  split: sources.Split,
  *,
  apply_fn,
  mesh,
  batch_size: int,
  transform: EvalTransform,
  mean,
  std,
  threads: int,
) -> float:
  """Top-1 accuracy of the ANN on a split, data-parallel over the mesh; each process reads its
  share of every batch of `batch_size`."""
  parallel.check_divisible(batch_size, 'eval_batch_size')
  step = _jitted_eval_step(apply_fn, tuple(mean), tuple(std))
  replicated = parallel.replicate(variables, mesh)
  correct = 0
  for images, labels, real in input_pipeline.eval_batches(
    split, batch_size, transform, threads=threads
  ):
    interrupts.raise_if_requested()
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


def _raise_on_non_finite(history: list[tuple[int, dict]], last_saved: int | None) -> None:
  """Raises NonFiniteLossError at the first step of `history` whose loss is NaN or infinite.

  It runs before every checkpoint save too, so that no checkpoint holds a diverged state.
  """
  for step, metrics in history:
    if not math.isfinite(float(metrics['loss'])):
      saved = (
        f'the newest checkpoint, of step {last_saved}, is from before it'
        if last_saved
        else 'no checkpoint was saved before it'
      )
      raise NonFiniteLossError(
        f'The training loss is {float(metrics["loss"])} at step {step}; {saved}. A resumed '
        'run keeps its settings and would diverge the same way: start a new run (another '
        '--workdir) with a lower learning_rate, or check the data normalisation (mean, std).'
      )


def _format_eta(seconds: float) -> str:
  return time.strftime('%H:%M:%S', time.gmtime(max(seconds, 0)))


def _thresholds_from_data(config, model, state: run_state.TrainState, split: sources.Split) -> dict:
  """`data_driven_thresholds` on a fixed random subset of the (unaugmented) training images."""
  images, _ = input_pipeline.examples(
    sources.subset(split, config.threshold_init_examples), EvalTransform.from_config(config)
  )
  params = recipe.data_driven_thresholds(
    model,
    {'params': state.params, 'batch_stats': state.batch_stats},
    input_pipeline.normalise(jnp.asarray(images), config.mean, config.std),
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> run_state.TrainState:
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
  levels_phases = recipe.parse_levels_schedule(config.levels_schedule, config.levels)
  workdir = Path(workdir).expanduser().resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  with workdir_lib.exclusive(workdir):
    workdir_lib.check_resumed_config(workdir, config)
    with precision.matmul_precision(config.train_precision or None):  # the report sets its own
      return _train_and_evaluate(config, workdir, levels_phases)


def _train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: Path, levels_phases: list[tuple[float, int]]
) -> run_state.TrainState:
  """train_and_evaluate with a checked config and levels phases, in a workdir this process
  holds."""
  dataset = sources.load(config)
  if dataset.num_classes != config.num_classes:
    raise ValueError(
      f'The data set has {dataset.num_classes} classes but the config says '
      f'num_classes={config.num_classes}.'
    )
  parallel.check_divisible(config.batch_size, 'batch_size')
  steps_per_epoch = input_pipeline.epoch_steps(len(dataset.train), config.batch_size)
  total_steps = config.num_epochs * steps_per_epoch
  model = run_state.create_model(config)
  tx, learning_rate_fn = optimizer.create_optimizer(config, steps_per_epoch)
  state = run_state.create_train_state(model, tx, jax.random.key(config.seed))

  # Every process creates the folder first, so that all of them see it and open the same
  # checkpoint managers in the same order (each one's creation is a barrier over processes).
  (workdir / 'checkpoints').mkdir(exist_ok=True)
  mesh = parallel.data_mesh()
  restored, start_step, damaged = workdir_lib.restore_newest_whole(
    workdir / 'checkpoints', parallel.replicated_shapes(state, mesh)
  )
  workdir_lib.set_aside(workdir / 'checkpoints', damaged)
  checkpoints = ocp.CheckpointManager(
    workdir / 'checkpoints', options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
  )
  if restored is not None:
    state = restored
    print(f'Resumed from the checkpoint at step {start_step} in {workdir}.', flush=True)
  else:
    if config.threshold_init == 'percentile':
      state = state.replace(params=_thresholds_from_data(config, model, state, dataset.train))
    if jax.process_index() == 0:
      workdir_lib.write_config(workdir, config)
  metrics_log = workdir_lib.MetricsLog(workdir / 'metrics.jsonl', start_step)

  state = parallel.replicate(state, mesh)
  step_fn = _jitted_train_step(
    tuple(config.mean),
    tuple(config.std),
    config.label_smoothing,
    jnp.bfloat16 if config.half_precision else None,
  )
  evaluate_test_set = functools.partial(
    evaluate,
    split=dataset.test,
    mesh=mesh,
    batch_size=config.eval_batch_size,
    transform=EvalTransform.from_config(config),
    mean=config.mean,
    std=config.std,
    threads=config.data_threads,
  )
  dropout_key = jax.random.key(config.seed + 1)
  batches = input_pipeline.train_batches(
    dataset.train,
    batch_size=config.batch_size,
    seed=config.seed,
    start_step=start_step,
    num_steps=total_steps,
    transform=TrainTransform.from_config(config),
    threads=config.data_threads,
    workers=config.data_workers,
  )
  history, window_start = [], time.time()
  last_saved = start_step if restored is not None else None
  try:  # closing waits for a save in flight, on Ctrl-C or an error too, then lets go
    for step in range(start_step, total_steps):
      interrupts.raise_if_requested()
      levels = recipe.levels_at(levels_phases, step, total_steps)
      if step == start_step or levels != recipe.levels_at(levels_phases, step - 1, total_steps):
        model = run_state.create_model(config, levels)  # a new L compiles the step anew
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
        _raise_on_non_finite(history, last_saved)
        elapsed = time.time() - window_start
        rate = len(history) * config.batch_size / elapsed
        mean = {k: float(np.mean([m[k] for _, m in history])) for k in history[0][1]}
        epoch = done / steps_per_epoch
        eta = _format_eta((total_steps - done) * config.batch_size / rate)
        print(
          f'step {done}/{total_steps} epoch {epoch:.2f} loss {mean["loss"]:.4f} '
          f'accuracy {mean["accuracy"]:.4f} lr {float(learning_rate_fn(done)):.5f} '
          f'{rate:.0f} images/s ETA {eta}',
          flush=True,
        )
        metrics_log.write(step=done, epoch=epoch, images_per_second=rate, **mean)
        history, window_start = [], time.time()
      end_of_epoch = done % steps_per_epoch == 0
      if done % config.checkpoint_every_steps == 0 or end_of_epoch or done == total_steps:
        _raise_on_non_finite(jax.device_get(history), last_saved)
        last_saved = done
        checkpoints.save(
          done,
          args=ocp.args.StandardSave(state),
          custom_metadata={'state_sha256': workdir_lib.state_digest(state)},
        )
      epochs_done = done // steps_per_epoch
      if end_of_epoch and config.eval_every_epochs and epochs_done % config.eval_every_epochs == 0:
        accuracy = evaluate_test_set(
          {'params': state.params, 'batch_stats': state.batch_stats}, apply_fn=model.apply
        )
        print(f'epoch {epochs_done} test accuracy {accuracy:.4f}', flush=True)
        metrics_log.write(step=done, epoch=epochs_done, test_accuracy=accuracy)
  finally:
    checkpoints.close()

  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  accuracy = evaluate_test_set(variables, apply_fn=model.apply)
  print(f'final ANN test accuracy {accuracy:.4f}', flush=True)
  metrics_log.write(step=total_steps, final_test_accuracy=accuracy)
  if config.conversion.enabled:
    conversion_report.write_report(config, workdir, model, jax.device_get(variables), dataset.test)
  return state
