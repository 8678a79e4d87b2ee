"""The optimizer: SGD with momentum and weight decay on a decaying learning rate.

The published recipe (docs/method.md §7) is SGD with momentum 0.9, weight decay on every
parameter and a cosine decay to 0; the config's short-budget options add a linear warm-up, a
linear decay, Nesterov momentum and decay on the kernels only.
"""

import jax
import ml_collections
import optax


def create_learning_rate_fn(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """The learning rate per step: an optional linear warm-up from 0, then a decay to 0.

  `config.lr_schedule` is 'cosine' (the published recipe) or 'linear'; `config.warmup_epochs`
  may be fractional.
  """
  total_steps = config.num_epochs * steps_per_epoch
  warmup_steps = int(config.warmup_epochs * steps_per_epoch)
  if config.lr_schedule == 'cosine':
    if warmup_steps:
      return optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, warmup_steps, total_steps
      )
    return optax.cosine_decay_schedule(config.learning_rate, total_steps)
  if config.lr_schedule == 'linear':
    decay = optax.linear_schedule(config.learning_rate, 0.0, total_steps - warmup_steps)
    if not warmup_steps:
      return decay
    return optax.join_schedules(
      [optax.linear_schedule(0.0, config.learning_rate, warmup_steps), decay], [warmup_steps]
    )
  raise ValueError(f"lr_schedule must be 'cosine' or 'linear', got {config.lr_schedule!r}.")


def _kernels_only(params):
  """True for convolution and dense kernels: weight decay skips BatchNorm, biases, thresholds."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params
  )


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """SGD with momentum and weight decay on the learning rate of `create_learning_rate_fn`.

  Weight decay covers every parameter (the published recipe) unless `config.weight_decay_on` is
  'kernels'; `config.nesterov` turns on Nesterov momentum.

  Returns:
    `(tx, learning_rate_fn)`: the optax transformation and the learning rate it follows.
  """
  learning_rate_fn = create_learning_rate_fn(config, steps_per_epoch)
  if config.weight_decay_on not in ('all', 'kernels'):
    raise ValueError(f"weight_decay_on must be 'all' or 'kernels', got {config.weight_decay_on!r}.")
  decay = optax.add_decayed_weights(
    config.weight_decay, mask=_kernels_only if config.weight_decay_on == 'kernels' else None
  )
  sgd = optax.sgd(learning_rate_fn, momentum=config.momentum, nesterov=config.nesterov)
  return optax.chain(decay, sgd), learning_rate_fn
