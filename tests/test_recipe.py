"""The short-budget recipe's pieces: L schedule, thresholds from data, schedules, decay mask."""

import functools
import importlib
import re
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cos_jax
from configs import test as test_config
from cos_jax import config_checks, input_pipeline, optimizer, recipe, run_state, training
from cos_jax.layers import Activation

ROOT = Path(__file__).resolve().parents[1]


def _recipe_config():
  config = test_config.get_config()
  config.update(
    levels_schedule='0:16,0.5:4',
    threshold_init='percentile',
    threshold_init_examples=64,
    lr_schedule='linear',
    warmup_epochs=0.5,
    nesterov=True,
    weight_decay_on='kernels',
    label_smoothing=0.1,
  )
  config.conversion.enabled = False
  return config


def test_levels_schedule():
  config = _recipe_config()
  phases = recipe.parse_levels_schedule(config.levels_schedule, config.levels)
  assert [recipe.levels_at(phases, step, 16) for step in (0, 7, 8, 15)] == [16, 16, 4, 4]
  assert recipe.parse_levels_schedule('', config.levels) == [(0.0, 4)]
  for bad in ('0:16,0.5:8', '0.5:16,0.2:4', '0.2:16,0.5:4', '0:16;0.5:4', '0:16,1:4', '0:x'):
    with pytest.raises(ValueError, match='levels_schedule=.*must read'):
      recipe.parse_levels_schedule(bad, config.levels)


def test_thresholds_are_percentiles_of_each_layers_input_layer_by_layer():
  model = cos_jax.create_model('tiny', num_classes=5, levels=4)
  variables = cos_jax.init_variables(model, jax.random.key(0))
  images = jax.random.normal(jax.random.key(1), (32, 8, 8, 1))
  params = recipe.data_driven_thresholds(model, variables, images, 90.0)
  inputs = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, Activation):
      inputs[tuple(context.module.path)] = args[0]
    return next_fun(*args, **kwargs)

  def forward(params, images):  # the ordinary model, with the chosen thresholds
    with nn.intercept_methods(record):
      model.apply(
        {'params': params, 'batch_stats': variables['batch_stats']},
        images,
        train=True,
        mutable=['batch_stats'],
      )
    return inputs

  inputs = jax.jit(forward)(params, images)
  assert len(inputs) == 3
  for path, x in inputs.items():
    threshold = params[path[0]]['threshold']
    np.testing.assert_allclose(threshold, np.percentile(np.asarray(x), 90.0), rtol=1e-5)
    assert threshold != variables['params'][path[0]]['threshold']


def test_schedules_and_the_kernel_only_weight_decay():
  config = _recipe_config()
  config.update(num_epochs=4, learning_rate=0.4, warmup_epochs=1)
  schedule = optimizer.create_learning_rate_fn(config, 10)
  np.testing.assert_allclose(
    [schedule(s) for s in (0, 5, 10, 25, 40)], [0.0, 0.2, 0.4, 0.2, 0.0], atol=1e-6
  )
  config.warmup_epochs = 0.0  # a non-zero rate at step 0
  tx, _ = optimizer.create_optimizer(config, 10)
  model = cos_jax.create_model('tiny', num_classes=5, levels=4)
  params = cos_jax.init_variables(model, jax.random.key(0))['params']
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(tx.update)(zero_grads, tx.init(params), params)
  decayed = jax.tree_util.tree_map_with_path(
    lambda path, u: (path[-1].key, bool(jnp.any(u != 0))), updates
  )
  for name, changed in jax.tree.leaves(decayed, is_leaf=lambda x: isinstance(x, tuple)):
    assert changed == (name == 'kernel'), name


def test_train_step_loss_with_label_smoothing():
  config = _recipe_config()
  model = run_state.create_model(config)
  tx, _ = optimizer.create_optimizer(config, steps_per_epoch=8)
  state = run_state.create_train_state(model, tx, jax.random.key(0))
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 8, 8, 1)), jnp.uint8)
  labels = jnp.arange(8) % config.num_classes
  step = jax.jit(
    functools.partial(training.train_step, mean=config.mean, std=config.std, label_smoothing=0.3)
  )
  _, metrics = step(state, images, labels, jax.random.key(1))
  logits, _ = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))(
    {'params': state.params, 'batch_stats': state.batch_stats},
    input_pipeline.normalise(images, config.mean, config.std),
  )
  classes = config.num_classes
  targets = 0.7 * jax.nn.one_hot(labels, classes) + 0.3 / classes
  expected = -(targets * jax.nn.log_softmax(logits)).sum(-1).mean()
  np.testing.assert_allclose(metrics['loss'], expected, rtol=1e-6)


def test_half_precision_computes_in_bfloat16_and_keeps_float32_state():
  config = test_config.get_config()  # no warm-up: the first step changes the parameters
  model = run_state.create_model(config)
  tx, _ = optimizer.create_optimizer(config, steps_per_epoch=8)
  state = run_state.create_train_state(model, tx, jax.random.key(0))
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 8, 8, 1)), jnp.uint8)
  labels = jnp.arange(8) % config.num_classes
  steps = {
    dtype: functools.partial(
      training.train_step, mean=config.mean, std=config.std, compute_dtype=dtype
    )
    for dtype in (None, jnp.bfloat16)
  }
  programs = {
    dtype: str(jax.make_jaxpr(step)(state, images, labels, jax.random.key(1)))
    for dtype, step in steps.items()
  }
  assert re.search(r'bf16\[[0-9,]*\] = conv_general_dilated', programs[jnp.bfloat16])
  assert 'bf16' not in programs[None]
  (full, full_metrics), (half, half_metrics) = (
    jax.jit(steps[dtype])(state, images, labels, jax.random.key(1)) for dtype in steps
  )
  for leaf in jax.tree.leaves((half.params, half.batch_stats, half.opt_state)):
    assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
  np.testing.assert_allclose(half_metrics['loss'], full_metrics['loss'], rtol=2e-2)
  for a, b in zip(jax.tree.leaves(half.params), jax.tree.leaves(full.params), strict=True):
    np.testing.assert_allclose(a, b, atol=2e-2)
  assert any(
    bool((a != b).any())
    for a, b in zip(jax.tree.leaves(half.params), jax.tree.leaves(full.params), strict=True)
  )


class _Interrupted(Exception):
  pass


def test_recipe_trains_switches_l_and_resumes_bit_identically(tmp_path, monkeypatch, capsys):
  config = _recipe_config()
  straight = training.train_and_evaluate(config, str(tmp_path / 'straight'))
  out = capsys.readouterr().out
  assert 'step 0: training with L = 16' in out and 'step 8: training with L = 4' in out
  assert 'Thresholds set to the 99.0th percentile' in out
  real_batches = input_pipeline.train_batches

  def interrupted_batches(*args, **kwargs):  # dies in step 7, after the checkpoint of step 5
    for index, batch in enumerate(real_batches(*args, **kwargs)):
      if kwargs['start_step'] + index == 6:
        raise _Interrupted
      yield batch

  monkeypatch.setattr(input_pipeline, 'train_batches', interrupted_batches)
  with pytest.raises(_Interrupted):
    training.train_and_evaluate(config, str(tmp_path / 'resumed'))
  monkeypatch.setattr(input_pipeline, 'train_batches', real_batches)
  resumed = training.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert 'Resumed from the checkpoint at step 5' in capsys.readouterr().out
  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
  'name', sorted(path.stem for path in (ROOT / 'configs').glob('*.py') if path.stem != '__init__')
)
def test_every_shipped_config_passes_the_checks(name, tmp_path):
  config = importlib.import_module(f'configs.{name}').get_config()
  if config.data_source == 'image_folder':  # these name their data on the command line
    config.data_dir = str(tmp_path)
  config_checks.check_config(config)
