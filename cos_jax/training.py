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
from flax.training import train_state

from cos_jax import conversion_report, data, models, parallel, torch_import
from cos_jax.augment import Augment


class TrainState(train_state.TrainState):
  batch_stats: Any


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
  return models.create_model(config.arch, num_classes=config.num_classes, levels=config.levels,
                             imagenet=config.get('imagenet', False),
                             input_shape=tuple(config.input_shape),
                             **config.get('model_kwargs', {}))


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """SGD with momentum, weight decay on every parameter and a cosine decay to 0 (SPEC section 7)."""
  total_steps = config.num_epochs * steps_per_epoch
  warmup_steps = int(config.get('warmup_epochs', 0) * steps_per_epoch)
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, warmup_steps, total_steps) if warmup_steps else (
          optax.cosine_decay_schedule(config.learning_rate, total_steps))
  return optax.chain(optax.add_decayed_weights(config.weight_decay),
                     optax.sgd(schedule, momentum=config.momentum)), schedule


def create_train_state(config, model: nn.Module, steps_per_epoch: int, rng: jax.Array):
  variables = models.init_variables(model, rng)
  tx, _ = create_optimizer(config, steps_per_epoch)
  return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                           batch_stats=variables['batch_stats'])


def _normalise_on_device(images: jax.Array, mean, std) -> jax.Array:
  return (images.astype(jnp.float32) / 255.0 - jnp.asarray(mean)) / jnp.asarray(std)


def train_step(state: TrainState, images: jax.Array, labels: jax.Array, dropout_key: jax.Array,
               *, mean, std):
  """One SGD step on uint8 images; returns the new state and the step's loss and accuracy."""
  x = _normalise_on_device(images, mean, std)
  key = jax.random.fold_in(dropout_key, state.step)

  def loss_fn(params):
    logits, updates = state.apply_fn({'params': params, 'batch_stats': state.batch_stats}, x,
                                     train=True, mutable=['batch_stats'], rngs={'dropout': key})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (logits, updates['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  accuracy = (logits.argmax(-1) == labels).mean()
  return state, {'loss': loss, 'accuracy': accuracy}


def eval_step(variables, images, labels, valid, *, apply_fn, mean, std):
  """Counts of correct predictions among the first `valid` (unpadded) examples."""
  logits = apply_fn(variables, _normalise_on_device(images, mean, std), train=False)
  mask = jnp.arange(labels.shape[0]) < valid
  return ((logits.argmax(-1) == labels) & mask).sum()


def evaluate(variables, split: data.Split, *, apply_fn, config, mesh) -> float:
  """Top-1 accuracy of the ANN on a split, data-parallel over the mesh."""
  batch_size = config.eval_batch_size
  parallel.check_divisible(batch_size, 'eval_batch_size')
  step = _jitted_eval_step(apply_fn, tuple(config.mean), tuple(config.std))
  replicated = parallel.replicate(variables, mesh)
  correct = 0
  for images, labels, valid in data.eval_batches(split, batch_size):
    images, labels = parallel.shard_batch(mesh, images, labels)
    correct += step(replicated, images, labels, valid)
  return float(correct) / len(split)


@functools.cache
def _jitted_eval_step(apply_fn, mean, std):
  return jax.jit(functools.partial(eval_step, apply_fn=apply_fn, mean=mean, std=std))


class _MetricsLog:
  """metrics.jsonl: one JSON object per line; a resumed run drops the lines past its checkpoint."""

  def __init__(self, path: Path, resumed_step: int):
    self.path = path
    if path.exists() and jax.process_index() == 0:
      kept = [line for line in path.read_text().splitlines()
              if line and json.loads(line).get('step', 0) <= resumed_step]
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
          'check the data normalisation, or resume from the last checkpoint with other settings.')


def _format_eta(seconds: float) -> str:
  return time.strftime('%H:%M:%S', time.gmtime(max(seconds, 0)))


def restore_variables(config: ml_collections.ConfigDict, workdir) -> tuple[nn.Module, dict]:
  """The model of a config and the `params` and `batch_stats` of the run's latest checkpoint."""
  checkpoint_dir = Path(workdir).expanduser().resolve() / 'checkpoints'
  checkpoints = ocp.CheckpointManager(checkpoint_dir)
  if checkpoints.latest_step() is None:
    raise FileNotFoundError(f'No checkpoint in {checkpoint_dir}: train first with '
                            f'python train.py --config=... --workdir={workdir}.')
  model = create_model(config)
  state = jax.eval_shape(lambda: create_train_state(config, model, 1, jax.random.key(0)))
  state = checkpoints.restore(checkpoints.latest_step(), args=ocp.args.StandardRestore(state))
  return model, {'params': state.params, 'batch_stats': state.batch_stats}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains the config's QCFS model, checkpointing to `workdir`, then evaluates and converts.

  Args:
    config: a config from `configs/`.
    workdir: the run's folder; an existing run there is resumed.

  Returns:
    The final training state.
  """
  workdir = Path(workdir).expanduser().resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  dataset = data.load(config)
  if dataset.num_classes != config.num_classes:
    raise ValueError(f'The data set has {dataset.num_classes} classes but the config says '
                     f'num_classes={config.num_classes}.')
  parallel.check_divisible(config.batch_size, 'batch_size')
  steps_per_epoch = len(dataset.train) // config.batch_size
  total_steps = config.num_epochs * steps_per_epoch
  model = create_model(config)
  state = create_train_state(config, model, steps_per_epoch, jax.random.key(config.seed))

  checkpoints = ocp.CheckpointManager(
      workdir / 'checkpoints',
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
  start_step = 0
  if checkpoints.latest_step() is not None:
    start_step = checkpoints.latest_step()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    state = checkpoints.restore(start_step, args=ocp.args.StandardRestore(abstract))
    print(f'Resumed from the checkpoint at step {start_step} in {workdir}.', flush=True)
  elif jax.process_index() == 0:
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  metrics_log = _MetricsLog(workdir / 'metrics.jsonl', start_step)

  mesh = parallel.data_mesh()
  state = parallel.replicate(state, mesh)
  step_fn = jax.jit(functools.partial(train_step, mean=tuple(config.mean), std=tuple(config.std)),
                    donate_argnums=0)
  dropout_key = jax.random.key(config.seed + 1)
  _, schedule = create_optimizer(config, steps_per_epoch)
  batches = data.train_batches(dataset.train, batch_size=config.batch_size, seed=config.seed,
                               start_step=start_step, num_steps=total_steps,
                               augment=Augment.from_config(config))
  history, window_start = [], time.time()
  for step in range(start_step, total_steps):
    images, labels = parallel.shard_batch(mesh, *next(batches))
    state, metrics = step_fn(state, images, labels, dropout_key)
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
      print(f'step {done}/{total_steps} epoch {epoch:.2f} loss {mean["loss"]:.4f} '
            f'accuracy {mean["accuracy"]:.4f} lr {float(schedule(done)):.5f} '
            f'{rate:.0f} images/s ETA {eta}', flush=True)
      metrics_log.write(step=done, epoch=epoch, images_per_second=rate, **mean)
      history, window_start = [], time.time()
    end_of_epoch = done % steps_per_epoch == 0
    if done % config.checkpoint_every_steps == 0 or end_of_epoch or done == total_steps:
      checkpoints.save(done, args=ocp.args.StandardSave(state))
    eval_every = config.get('eval_every_epochs', 0)
    if end_of_epoch and eval_every and (done // steps_per_epoch) % eval_every == 0:
      accuracy = evaluate({'params': state.params, 'batch_stats': state.batch_stats},
                          dataset.test, apply_fn=model.apply, config=config, mesh=mesh)
      print(f'epoch {done // steps_per_epoch} test accuracy {accuracy:.4f}', flush=True)
      metrics_log.write(step=done, epoch=done // steps_per_epoch, test_accuracy=accuracy)
  checkpoints.wait_until_finished()

  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  accuracy = evaluate(variables, dataset.test, apply_fn=model.apply, config=config, mesh=mesh)
  print(f'final ANN test accuracy {accuracy:.4f}', flush=True)
  metrics_log.write(step=total_steps, final_test_accuracy=accuracy)
  if config.conversion.enabled:
    conversion_report.run(config, workdir, model, jax.device_get(variables), dataset.test)
  return state


def convert_and_report(workdir, config: ml_collections.ConfigDict | None = None,
                       torch_checkpoint: str | None = None) -> dict:
  """convert.py: the report of a run's checkpoint, or of an imported PyTorch checkpoint."""
  workdir = Path(workdir).expanduser()
  if config is None:
    config_path = workdir / 'config.json'
    if not config_path.is_file():
      raise FileNotFoundError(f'{config_path} not found: pass --config=configs/<name>.py.')
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  if torch_checkpoint:
    workdir.mkdir(parents=True, exist_ok=True)
    model, variables = torch_import.load_torch_checkpoint(
        torch_checkpoint, arch=config.arch, num_classes=config.num_classes, L=config.levels,
        imagenet=config.get('imagenet', False), input_shape=tuple(config.input_shape),
        **config.get('model_kwargs', {}))
  else:
    model, variables = restore_variables(config, workdir)
  return conversion_report.run(config, workdir, model, variables, data.load(config).test)
