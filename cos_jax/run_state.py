"""What a run checkpoints and how it comes back: the train state, the config's model, and the
variables of a workdir's newest whole checkpoint. Training writes it; convert.py reads it."""

from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import optax
from flax.training import train_state

from cos_jax import models, optimizer, parallel
from cos_jax import workdir as workdir_lib


class TrainState(train_state.TrainState):
  batch_stats: Any


def model_arguments(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config's model as `models.create_model` and `load_torch_checkpoint` take it."""
  return dict(
    arch=config.arch,
    num_classes=config.num_classes,
    levels=config.levels,
    input_shape=tuple(config.input_shape),
    **config.model_kwargs,
  )


def create_model(config: ml_collections.ConfigDict, levels: int | None = None) -> nn.Module:
  """The config's model, with `levels` (L) in place of `config.levels` if given."""
  return models.create_model(**{**model_arguments(config), 'levels': levels or config.levels})


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array):
  """The model's initial variables and the optimizer's state for them."""
  variables = models.init_variables(model, rng)
  return TrainState.create(
    apply_fn=model.apply,
    params=variables['params'],
    tx=tx,
    batch_stats=variables.get('batch_stats', {}),
  )


def restore_variables(config: ml_collections.ConfigDict, workdir) -> tuple[nn.Module, dict]:
  """The model of a config and the `params` and `batch_stats` of the run's latest checkpoint."""
  checkpoint_dir = Path(workdir).expanduser().resolve() / 'checkpoints'
  model = create_model(config)
  tx, _ = optimizer.create_optimizer(config, steps_per_epoch=1)
  state = jax.eval_shape(lambda: create_train_state(model, tx, jax.random.key(0)))
  state, step, _ = workdir_lib.restore_newest_whole(
    checkpoint_dir, parallel.replicated_shapes(state, parallel.data_mesh())
  )
  if state is None:
    raise FileNotFoundError(
      f'No checkpoint in {checkpoint_dir}: train first with '
      f'python train.py --config=... --workdir={workdir}.'
    )
  print(f'Restored the checkpoint of step {step} in {checkpoint_dir}.', flush=True)
  return model, {'params': state.params, 'batch_stats': state.batch_stats}
