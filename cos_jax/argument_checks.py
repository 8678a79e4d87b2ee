"""Checks of the API's arguments that run before anything is traced, so that bad input gets a
plain-language error."""

from collections.abc import Mapping

import jax
import numpy as np
from flax import traverse_util


def check_images(images, input_shape: tuple[int, int, int]) -> None:
  """Raises ValueError unless `images` is a finite float [B, *input_shape] batch."""
  shape = getattr(images, 'shape', None)
  if shape is None:
    raise TypeError(f'images must be an array, got {type(images).__name__}.')
  expected = '[batch, ' + ', '.join(map(str, input_shape)) + '] (NHWC)'
  if len(shape) != 4:
    raise ValueError(f'images must have rank 4, {expected}; got shape {tuple(shape)}.')
  if tuple(shape[1:3]) != tuple(input_shape[:2]):
    raise ValueError(
      f'images must be {input_shape[0]}x{input_shape[1]} for this model, '
      f'{expected}; got shape {tuple(shape)}.'
    )
  if shape[3] != input_shape[2]:
    raise ValueError(
      f'images must have {input_shape[2]} channels (NHWC, channels last), '
      f'{expected}; got shape {tuple(shape)}.'
    )
  if shape[0] < 1:
    raise ValueError('images is an empty batch.')
  if not jax.numpy.issubdtype(images.dtype, jax.numpy.floating):
    raise ValueError(
      f'images must be floating point and already normalised, got dtype {images.dtype}.'
    )
  if not bool(jax.numpy.isfinite(images).all()):
    raise ValueError('images contain NaN or infinite values.')


def static_int(value):
  """A 0-d integer array (NumPy's or JAX's, `jnp.int32(3)`) as the Python int it holds, which
  compiled functions take as a static argument; anything else as it is, to be checked."""
  dtype = getattr(value, 'dtype', None)
  if dtype is not None and np.ndim(value) == 0 and np.issubdtype(dtype, np.integer):
    return int(value)
  return value


def check_positive_int(name: str, value, minimum: int = 1) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}.')


def listed(problems: list[str], shown: int = 20) -> str:
  """The first `shown` problems joined by semicolons, and how many more there are."""
  more = f' (and {len(problems) - shown} more)' if len(problems) > shown else ''
  return '; '.join(problems[:shown]) + more


def tree_differences(given: Mapping, expected: Mapping):
  """How the leaves of `given` differ from those of `expected`, by 'a/b' path: `missing`
  [(path, expected shape)], `unexpected` [path] and `reshaped` [(path, given shape, expected
  shape)], each in tree order."""
  given_flat = {'/'.join(k): v for k, v in traverse_util.flatten_dict(dict(given)).items()}
  expected_flat = {'/'.join(k): v for k, v in traverse_util.flatten_dict(dict(expected)).items()}
  missing = [(k, tuple(v.shape)) for k, v in expected_flat.items() if k not in given_flat]
  unexpected = [k for k in given_flat if k not in expected_flat]
  reshaped = [
    (k, tuple(np.shape(given_flat[k])), tuple(v.shape))
    for k, v in expected_flat.items()
    if k in given_flat and tuple(np.shape(given_flat[k])) != tuple(v.shape)
  ]
  return missing, unexpected, reshaped


def check_same_tree(given: Mapping, expected: Mapping, what: str) -> None:
  """Raises ValueError naming every missing, unexpected or mis-shaped leaf of `given`."""
  missing, unexpected, reshaped = tree_differences(given, expected)
  problems = [f'missing {k} (expected shape {shape})' for k, shape in missing]
  problems += [f'unexpected {k}' for k in unexpected]
  problems += [f'{k} has shape {shape}, expected {wanted}' for k, shape, wanted in reshaped]
  if problems:
    raise ValueError(f'{what} do not fit the model: {listed(problems)}.')


def check_variables_usable(variables: Mapping) -> None:
  """Raises ValueError naming every leaf of `params` / `batch_stats` that no network can use.

  Every value must be finite, every BatchNorm variance (`batch_stats/.../var`) > 0 and every
  QCFS threshold > 0: a NaN kernel or a zero threshold would otherwise turn into an SNN that
  runs and reports plausible numbers.
  """
  problems = []
  for collection in ('params', 'batch_stats'):
    for path, value in traverse_util.flatten_dict(dict(variables.get(collection, {}))).items():
      name = '/'.join((collection,) + path)
      value = np.asarray(value)
      if not np.isfinite(value).all():
        problems.append(f'{name} has {int((~np.isfinite(value)).sum())} NaN or infinite values')
      elif path[-1] == 'threshold' and not (value > 0).all():
        problems.append(f'{name} (a QCFS threshold) is {value.tolist()}, must be > 0')
      elif collection == 'batch_stats' and path[-1] == 'var' and not (value > 0).all():
        problems.append(f'{name} (a BatchNorm variance) has {int((value <= 0).sum())} values <= 0')
  if problems:
    raise ValueError(
      f'The variables cannot make a working network: {listed(problems)}. '
      'Retrain, or check the checkpoint these variables came from.'
    )
