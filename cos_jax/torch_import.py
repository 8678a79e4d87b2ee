"""Import of the reference PyTorch code's checkpoints (state_dict names in docs/method.md §6).

`load_torch_checkpoint` reads a state_dict saved as `.pth` (needs torch, the `torch` extra) or
as `.npz` (numpy arrays under the same key names; no torch needed) and returns a cos_jax model
with its variables. `export_state_dict` is the inverse, for round trips and for going back.
Layouts: PyTorch convs are OIHW (Flax HWIO), dense weights (out, in) (Flax (in, out)), and
PyTorch flattens feature maps as (C, H, W) where Flax flattens (H, W, C).
"""

import os
import re
import zipfile
from pathlib import Path

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cos_jax import argument_checks, models

# Flax leaf name -> PyTorch leaf name, per layer kind.
_LEAF_NAMES = {
  'Conv': {'kernel': 'weight', 'bias': 'bias'},
  'Dense': {'kernel': 'weight', 'bias': 'bias'},
  'BatchNorm': {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'},
  'Activation': {'threshold': 'up'},
}
_BLOCK_PARTS = {
  'conv1': 'residual_function.0',
  'bn1': 'residual_function.1',
  'act1': 'residual_function.2',
  'conv2': 'residual_function.3',
  'bn2': 'residual_function.4',
  'shortcut_conv': 'shortcut.0',
  'shortcut_bn': 'shortcut.1',
  'act_out': 'relu',
}
_RESNET_STEM = {'stem_conv': 'conv1.0', 'stem_bn': 'conv1.1', 'stem_act': 'conv1.2', 'head': 'fc'}
_VGG_CLASSIFIER = {
  'fc1': 'classifier.1',
  'act_fc1': 'classifier.2',
  'fc2': 'classifier.4',
  'act_fc2': 'classifier.5',
  'head': 'classifier.7',
}
_VGG_OFFSETS = {'conv': 0, 'bn': 1, 'act': 2}


def _torch_prefix(model: nn.Module, path: tuple[str, ...]) -> str:
  """The PyTorch module name of the Flax layer at `path`."""
  if isinstance(model, models.VGG):
    if path[0] in _VGG_CLASSIFIER:
      return _VGG_CLASSIFIER[path[0]]
    kind, stage, index = re.fullmatch(r'(conv|bn|act)(\d+)_(\d+)', path[0]).groups()
    return f'layer{stage}.{4 * int(index) + _VGG_OFFSETS[kind]}'
  if path[0] in _RESNET_STEM:
    return _RESNET_STEM[path[0]]
  stage, block = re.fullmatch(r'stage(\d+)_block(\d+)', path[0]).groups()
  return f'conv{int(stage) + 1}_x.{block}.{_BLOCK_PARTS[path[1]]}'


def _layer_kinds(model: nn.Module) -> dict[tuple[str, ...], str]:
  """Flax module path -> layer kind ('Conv', 'Dense', 'BatchNorm', 'Activation')."""
  kinds = {}

  def record(next_fun, args, kwargs, context):
    kind = type(context.module).__name__
    if kind in _LEAF_NAMES:
      kinds[tuple(context.module.path)] = kind
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    models.abstract_variables(model)
  return kinds


def _flatten_order(model: nn.Module, path: tuple[str, ...], in_features: int):
  """(H, W, C) of the feature map a VGG classifier's first dense layer flattens, else None."""
  if isinstance(model, models.VGG) and path == ('fc1',):
    channels = model.stages[-1][-1]
    side = int(round((in_features // channels) ** 0.5))
    if side > 1:
      return side, side, channels
  return None


def _to_torch(model, kind, path, leaf, value: np.ndarray) -> np.ndarray:
  value = np.asarray(value)
  if leaf == 'threshold':
    return value.reshape(1)
  if kind == 'Conv' and leaf == 'kernel':
    return value.transpose(3, 2, 0, 1)
  if kind == 'Dense' and leaf == 'kernel':
    hwc = _flatten_order(model, path, value.shape[0])
    if hwc is not None:  # rows (h, w, c) -> columns (c, h, w)
      value = value.reshape(hwc + (-1,)).transpose(2, 0, 1, 3).reshape(value.shape)
    return value.T
  return value


def _from_torch(model, kind, path, leaf, value: np.ndarray, shape) -> np.ndarray:
  value = np.asarray(value, np.float32)
  if leaf == 'threshold':
    return value.reshape(())
  if kind == 'Conv' and leaf == 'kernel':
    return value.transpose(2, 3, 1, 0)
  if kind == 'Dense' and leaf == 'kernel':
    value = value.T
    hwc = _flatten_order(model, path, shape[0])
    if hwc is not None:  # rows (c, h, w) -> (h, w, c)
      c, h, w = hwc[2], hwc[0], hwc[1]
      value = value.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(shape)
    return value
  return value


def _expected_keys(model: nn.Module):
  """Yields (torch key, collection, flax path, leaf, kind, flax shape) of every model leaf."""
  kinds = _layer_kinds(model)
  for collection, tree in models.abstract_variables(model).items():
    for full_path, leaf_value in traverse_util.flatten_dict(tree).items():
      path, leaf = full_path[:-1], full_path[-1]
      kind = kinds[path]
      key = f'{_torch_prefix(model, path)}.{_LEAF_NAMES[kind][leaf]}'
      yield key, collection, path, leaf, kind, leaf_value.shape


def _torch_shape(kind: str, leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  if leaf == 'threshold':
    return (1,)
  if kind == 'Conv' and leaf == 'kernel':
    return (shape[3], shape[2], shape[0], shape[1])
  if kind == 'Dense' and leaf == 'kernel':
    return (shape[1], shape[0])
  return tuple(shape)


def _batch_norm_counters(model: nn.Module) -> list[str]:
  return [
    f'{_torch_prefix(model, path)}.num_batches_tracked'
    for path, kind in _layer_kinds(model).items()
    if kind == 'BatchNorm'
  ]


def state_dict_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
  """The key names and shapes of the reference PyTorch state_dict that fits `model`."""
  shapes = {
    key: _torch_shape(kind, leaf, shape) for key, _, _, leaf, kind, shape in _expected_keys(model)
  }
  shapes.update({key: () for key in _batch_norm_counters(model)})
  return shapes


def _check_has_reference(model: nn.Module) -> None:
  if not isinstance(model, (models.VGG, models.ResNet)):
    raise ValueError(
      f'{type(model).__name__} has no PyTorch reference layout: only VGG and the '
      'ResNets (vgg16, resnet18, resnet20, resnet34) import and export.'
    )


def export_state_dict(model: nn.Module, variables: dict) -> dict[str, np.ndarray]:
  """The PyTorch state_dict (numpy arrays, PyTorch names and layouts) of a cos_jax model."""
  _check_has_reference(model)
  expected = models.abstract_variables(model)
  for collection in ('params', 'batch_stats'):
    argument_checks.check_same_tree(variables.get(collection, {}), expected[collection], collection)
  state_dict = {}
  for key, collection, path, leaf, kind, _ in _expected_keys(model):
    value = traverse_util.flatten_dict(variables[collection])[path + (leaf,)]
    state_dict[key] = _to_torch(model, kind, path, leaf, value)
  for key in _batch_norm_counters(model):
    state_dict[key] = np.zeros((), np.int64)
  return state_dict


def _is_torch_archive(path: Path) -> bool:
  """torch.save writes a zip archive holding <name>/data.pkl (an .npz is a zip of .npy files)."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as archive:
    return any(name.endswith('data.pkl') for name in archive.namelist())


def _read_state_dict(path: Path) -> dict[str, np.ndarray]:
  """The arrays of a checkpoint file, told apart by their content, not their file name."""
  if not path.is_file():
    raise FileNotFoundError(f'No checkpoint file at {path}.')
  with open(path, 'rb') as f:
    if f.read(6) == b'\x93NUMPY':
      raise ValueError(
        f"{path} is a single NumPy array (.npy), not an archive of the state_dict's arrays: "
        'save it with np.savez(path, **state_dict), one array per PyTorch key.'
      )
  torch_archive = _is_torch_archive(path)
  if not torch_archive and (zipfile.is_zipfile(path) or path.suffix.lower() == '.npz'):
    try:
      with np.load(path) as arrays:
        return {key: arrays[key] for key in arrays.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
      raise ValueError(
        f'{path} is not a readable .npz archive ({type(error).__name__}: '
        f'{error}): a checkpoint in .npz form is np.savez(path, **state_dict), one '
        'array per PyTorch state_dict key.'
      ) from error
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ImportError(
      f'Reading {path.name} needs PyTorch: pip install "cos_jax[torch]", or save '
      'the state_dict as .npz: np.savez(path, **{k: v.numpy() for k, v in '
      'state_dict.items()}).'
    ) from error
  try:
    loaded = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as error:  # torch raises many types for a damaged or foreign file
    raise ValueError(
      f'{path} is not a readable PyTorch checkpoint ({type(error).__name__}: '
      f'{error}): expected a file written by torch.save(model.state_dict(), '
      'path).'
    ) from error
  for wrapper in ('state_dict', 'model', 'net'):
    if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
      loaded = loaded[wrapper]
  if not isinstance(loaded, dict):
    raise ValueError(
      f'{path} holds a {type(loaded).__name__}, not a state_dict: save it with '
      'torch.save(model.state_dict(), path).'
    )
  return {
    key: (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    if isinstance(value, torch.Tensor)
    else np.asarray(value)
    for key, value in loaded.items()
  }


def _without_wrapper_prefix(state_dict: dict, known: set[str]) -> dict:
  """The keys without the first name a wrapper gave every one of them (DataParallel's
  `module.`, a Lightning module's `model.`, or both), while no key is one the model knows."""
  while state_dict and not known.intersection(state_dict):
    firsts = {key.split('.', 1)[0] for key in state_dict}
    if len(firsts) != 1 or not all('.' in key for key in state_dict):
      break
    state_dict = {key.split('.', 1)[1]: value for key, value in state_dict.items()}
  return state_dict


def _not_numbers(key: str, value) -> str | None:
  dtype = np.asarray(value).dtype
  if np.issubdtype(dtype, np.number):
    return None
  hint = ' (bfloat16 saved through NumPy? cast to float32 first)' if dtype.kind == 'V' else ''
  return f'{key} holds {dtype} values, not numbers{hint}'


def state_dict_to_variables(model: nn.Module, state_dict: dict[str, np.ndarray]) -> dict:
  """Checks a reference state_dict against the model and converts it to Flax variables."""
  expected = list(_expected_keys(model))
  known = {key for key, *_ in expected} | set(_batch_norm_counters(model))
  state_dict = _without_wrapper_prefix(state_dict, known)
  problems = [
    f'missing {key} (expected shape {_torch_shape(kind, leaf, shape)})'
    for key, _, _, leaf, kind, shape in expected
    if key not in state_dict
  ]
  problems += [f'unexpected {key}' for key in state_dict if key not in known]
  problems += [
    f'{key} has shape {tuple(np.shape(state_dict[key]))}, expected '
    f'{_torch_shape(kind, leaf, shape)}'
    for key, _, _, leaf, kind, shape in expected
    if key in state_dict and tuple(np.shape(state_dict[key])) != _torch_shape(kind, leaf, shape)
  ]
  problems += filter(
    None, (_not_numbers(key, state_dict[key]) for key, *_ in expected if key in state_dict)
  )
  if problems:
    raise ValueError(
      f'The state_dict does not fit {type(model).__name__} '
      f'(num_classes={model.num_classes}): {argument_checks.listed(problems)}.'
    )
  flat = {}
  for key, collection, path, leaf, kind, shape in expected:
    flat[(collection,) + path + (leaf,)] = jnp.asarray(
      _from_torch(model, kind, path, leaf, state_dict[key], shape)
    )
  variables = traverse_util.unflatten_dict(flat)
  argument_checks.check_variables_usable(variables)
  return variables


def load_torch_checkpoint(
  path, arch: str, num_classes: int, levels: int, *, imagenet: bool = False, **model_overrides
) -> tuple[nn.Module, dict]:
  """Loads a checkpoint of the reference PyTorch code as a cos_jax model and its variables.

  Args:
    path: a `.pth` state_dict (needs torch) or a `.npz` of the same arrays under the same names
      (told apart by content, whatever the file is named).
    arch: 'vgg16', 'resnet18', 'resnet20' or 'resnet34'.
    num_classes: the number of classes the checkpoint was trained for.
    levels: the QCFS quantization levels L it was trained with.
    imagenet: the ImageNet variant of the architecture.
    **model_overrides: further model fields (e.g. `input_shape`).

  Returns:
    `(model, variables)`, with `model.apply(variables, images, train=False)` the QCFS ANN.
  """
  if not isinstance(path, (str, os.PathLike)):
    raise TypeError(f'path must be a file path (str or pathlib.Path), got {path!r}.')
  model = models.create_model(
    arch, num_classes=num_classes, levels=levels, imagenet=imagenet, **model_overrides
  )
  _check_has_reference(model)
  return model, state_dict_to_variables(model, _read_state_dict(Path(path).expanduser()))
