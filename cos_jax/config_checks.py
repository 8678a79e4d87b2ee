"""Checks of a whole config before anything starts: a bad field fails in a second, not after
hours of training (`check_config`)."""

import math

import ml_collections

from cos_jax import augment, models, precision
from cos_jax.sources import DATA_SOURCES


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _field(config, dotted: str):
  """The value of a dotted field ('conversion.max_T'), or None where it is missing."""
  value = config
  for part in dotted.split('.'):
    value = value.get(part) if hasattr(value, 'get') else None
  return value


def check_config(config: ml_collections.ConfigDict, *, training: bool = True) -> None:
  """Raises ValueError listing every field of `config` that cannot work, with what is allowed.

  Args:
    config: a config from `configs/` (or a run's `config.json`), overrides applied.
    training: also check the fields only training reads (optimizer, schedules, logging).
  """
  problems = []

  def need(condition: bool, field: str, allowed: str) -> None:
    if not condition:
      problems.append(f'{field}={_field(config, field)!r} ({allowed})')

  def positive_int(field: str, minimum: int = 1) -> None:
    value = _field(config, field)
    need(_is_int(value) and value >= minimum, field, f'an integer >= {minimum}')

  try:
    models.architecture(_field(config, 'arch'))
  except ValueError as error:
    problems.append(f'arch: {error}')
  for field in ('num_classes', 'levels'):
    positive_int(field)
  shape = _field(config, 'input_shape')
  need(
    isinstance(shape, (tuple, list))
    and len(shape) == 3
    and all(_is_int(s) and s >= 1 for s in shape),
    'input_shape',
    '(height, width, channels) of positive integers',
  )
  channels = shape[-1] if isinstance(shape, (tuple, list)) and shape else None
  for field in ('mean', 'std'):
    value = _field(config, field)
    need(
      isinstance(value, (tuple, list))
      and len(value) == channels
      and all(_is_number(v) for v in value),
      field,
      f'{channels} numbers, one per channel',
    )
  std = _field(config, 'std')
  need(
    not isinstance(std, (tuple, list)) or all(not _is_number(v) or v > 0 for v in std),
    'std',
    'every value > 0',
  )
  need(_field(config, 'data_source') in DATA_SOURCES, 'data_source', f'one of {list(DATA_SOURCES)}')
  if _field(config, 'data_source') in ('image_folder', 'cifar_pickle'):
    need(
      bool(_field(config, 'data_dir')),
      'data_dir',
      f'the data folder; {_field(config, "data_source")} reads from it',
    )

  if _field(config, 'conversion.enabled') is not False:  # missing: its fields are reported
    for field in ('max_T', 'batch_size', 'rounds'):
      positive_int(f'conversion.{field}')
    max_T = _field(config, 'conversion.max_T')
    statistics_T = _field(config, 'conversion.statistics_T')
    need(
      _is_int(statistics_T) and 0 <= statistics_T and (not _is_int(max_T) or statistics_T <= max_T),
      'conversion.statistics_T',
      f'an integer from 0 (off) to max_T={max_T}',
    )
    for field, method in (('rhos', 'COS'), ('srp_taus', 'SRP')):
      lengths = _field(config, f'conversion.{field}')
      need(
        isinstance(lengths, (tuple, list))
        and all(_is_int(r) and r >= 1 for r in lengths)
        and len(set(lengths)) == len(lengths),
        f'conversion.{field}',
        f'distinct integers >= 1, the {method} pre-simulation lengths (or none); the plain '
        'conversion (no pre-simulation) is always reported, as qcfs',
      )
    num_examples = _field(config, 'conversion.num_examples')
    need(
      _is_int(num_examples) and (num_examples == -1 or num_examples >= 1),
      'conversion.num_examples',
      '-1 for the whole test set, or an integer >= 1',
    )
    positive_int('conversion.chunk', minimum=0)
    need(
      _field(config, 'conversion.precision') in precision.PRECISIONS,
      'conversion.precision',
      f'one of {list(precision.PRECISIONS)}',
    )

  need(
    _field(config, 'preprocess') in augment.RECIPES,
    'preprocess',
    f'one of {list(augment.RECIPES)}',
  )

  if training:
    seed = _field(config, 'seed')
    need(
      _is_int(seed) and 0 <= seed < 2**32,
      'seed',
      'an integer from 0 to 2**32 - 1 (it seeds NumPy as well as JAX)',
    )
    for field in (
      'batch_size',
      'num_epochs',
      'log_every_steps',
      'checkpoint_every_steps',
      'eval_batch_size',
      'threshold_init_examples',
    ):
      positive_int(field)
    for field in ('eval_every_epochs', 'crop_padding', 'cutout_size', 'data_workers'):
      positive_int(field, minimum=0)
    positive_int('data_threads')
    rate = _field(config, 'learning_rate')
    need(_is_number(rate) and rate > 0, 'learning_rate', 'a number > 0')
    momentum = _field(config, 'momentum')
    need(_is_number(momentum) and 0 <= momentum < 1, 'momentum', 'a number in [0, 1)')
    decay = _field(config, 'weight_decay')
    need(_is_number(decay) and decay >= 0, 'weight_decay', 'a number >= 0')
    need(
      _field(config, 'train_precision') in ('',) + precision.PRECISIONS,
      'train_precision',
      f"'' (JAX's default) or one of {list(precision.PRECISIONS)}",
    )
    for field in ('preload_images', 'half_precision', 'nesterov', 'flip', 'autoaugment'):
      need(isinstance(_field(config, field), bool), field, 'True or False')
    smoothing = _field(config, 'label_smoothing')
    need(_is_number(smoothing) and 0 <= smoothing < 1, 'label_smoothing', 'a number in [0, 1)')
    warmup, epochs = _field(config, 'warmup_epochs'), _field(config, 'num_epochs')
    need(
      _is_number(warmup) and 0 <= warmup and (not _is_number(epochs) or warmup < epochs),
      'warmup_epochs',
      f'a number from 0 to below num_epochs={epochs}',
    )
    for field, allowed in (
      ('lr_schedule', ('cosine', 'linear')),
      ('weight_decay_on', ('all', 'kernels')),
      ('threshold_init', ('constant', 'percentile')),
    ):
      need(_field(config, field) in allowed, field, f'one of {list(allowed)}')
    percentile = _field(config, 'threshold_percentile')
    need(
      _is_number(percentile) and 0 < percentile <= 100,
      'threshold_percentile',
      'a number in (0, 100]',
    )
  if problems:
    raise ValueError(
      'The config cannot run: ' + '; '.join(problems) + '. Fix these fields '
      '(--config.<field>=...) and start again.'
    )
