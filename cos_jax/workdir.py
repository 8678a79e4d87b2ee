"""A run's folder: one process at a time, resumed only by the config that started it, its
metrics log, and its restore from the newest checkpoint that is whole.

    with workdir.exclusive(path):           # a second train.py on the same folder is refused
      workdir.check_resumed_config(path, config)
      state, step, _ = workdir.restore_newest_whole(path / 'checkpoints', abstract_state)
"""

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from cos_jax import argument_checks

# Fields a resumed run may change: where the data lie, how often it logs, saves and evaluates,
# and everything the conversion report after training reads. Any other change would make one
# run out of two configs.
RESUMABLE_CHANGES = (
  'data_dir',
  'data_threads',
  'data_workers',
  'preload_images',
  'log_every_steps',
  'checkpoint_every_steps',
  'eval_every_epochs',
  'eval_batch_size',
  'conversion',
)


class MetricsLog:
  """metrics.jsonl: one JSON object per line; a resumed run drops the lines past its checkpoint
  and the final accuracy, which it writes again at its end.

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
      kept = [  # a finished run run again writes its final accuracy again: once in the file
        line
        for line, record in records
        if record.get('step', 0) <= resumed_step and 'final_test_accuracy' not in record
      ]
      path.write_text(''.join(line + '\n' for line in kept))

  def write(self, **record) -> None:
    if jax.process_index():
      return  # one writer on a shared workdir
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')


class WorkdirBusyError(RuntimeError):
  """Another process holds the workdir."""


@contextlib.contextmanager
def exclusive(workdir: Path):
  """Holds an exclusive lock on `workdir/.lock` for the duration (process 0 only).

  The lock is the operating system's (flock): it is released when the process ends, however it
  ends, so a killed run never leaves a stale lock behind.
  """
  if jax.process_index():
    yield
    return
  path = workdir / '.lock'
  with open(path, 'a+') as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as error:
      lock.seek(0)
      holder = lock.read().strip() or 'unknown'
      raise WorkdirBusyError(
        f'{workdir} is in use by another process (pid {holder}): wait for it to finish, stop '
        'it, or give this run another --workdir.'
      ) from error
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


# Fields the configs gained after runs were written without them, each with the value such a run
# had (the behaviour before the field existed): a config.json without one reads as that.
FIELDS_BEFORE_THEY_EXISTED = {
  'data_threads': 1,
  'data_workers': 0,
  'digits_test_size': 360,
  'half_precision': False,
  'label_smoothing': 0.0,
  'levels_schedule': '',
  'lr_schedule': 'cosine',
  'nesterov': False,
  'preload_images': False,
  'preprocess': 'cifar',
  'tfds_dir': '',
  'train_precision': '',
  'threshold_init': 'constant',
  'threshold_init_examples': 256,
  'threshold_percentile': 99.0,
  'warmup_epochs': 0.0,
  'weight_decay_on': 'all',
  'conversion.precision': 'highest',  # a report setting, free to change: today's default
  'conversion.srp_taus': (4,),  # likewise
}


def write_config(workdir: Path, config) -> None:
  """Writes `config.json` whole or not at all (another process may be reading it)."""
  temporary = workdir / 'config.json.tmp'
  temporary.write_text(config.to_json_best_effort(indent=2))
  temporary.replace(workdir / 'config.json')


def read_config(workdir: Path) -> ml_collections.ConfigDict | None:
  """The run's `config.json` (None if there is none), with the fields it predates filled in.

  Raises:
    ValueError: the file is not JSON; the message names it.
  """
  path = workdir / 'config.json'
  if not path.is_file():
    return None
  try:
    stored = json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise ValueError(
      f"{path} is not valid JSON ({error}): restore it from the run's log or pass the "
      'config the run was trained with (--config=...).'
    ) from error
  config = ml_collections.ConfigDict(stored)
  for dotted, value in FIELDS_BEFORE_THEY_EXISTED.items():
    *parents, field = dotted.split('.')
    section = config
    for parent in parents:
      section = section.get(parent)
    if section is not None and field not in section:
      section[field] = value
  return config


def _flat(tree: dict) -> dict:
  return {'.'.join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def check_resumed_config(workdir: Path, config) -> None:
  """Raises ValueError if `config` differs from the run's `config.json` beyond what may change.

  A field the run's config.json predates compares as the value the run had
  (`FIELDS_BEFORE_THEY_EXISTED`); one the given config lacks is not compared.
  """
  changed = _changed_fields(workdir, config, RESUMABLE_CHANGES)
  if changed:
    raise ValueError(
      f'{workdir} holds a run started with another config ({changed}). Resuming it would mix '
      'two runs: use another --workdir, or the original settings.'
    )


def check_conversion_config(workdir: Path, config) -> None:
  """Raises ValueError if `config` describes another network or training run than the one whose
  checkpoint `workdir` holds: only the data's source and reading, intervals and the conversion
  report's settings may differ from the run's `config.json`."""
  changed = _changed_fields(workdir, config, RESUMABLE_CHANGES + ('data_source',))
  if changed:
    raise ValueError(
      f'{workdir} holds a run trained with another config ({changed}): its checkpoint does '
      "not fit this one. Leave out --config to use the run's own config.json, or pass the "
      'config and the --config.x overrides it was trained with.'
    )


def _changed_fields(workdir: Path, config, may_change: tuple[str, ...]) -> str:
  """The fields of `config` that differ from the run's `config.json` outside `may_change`, each
  with both values ('' if none or no config.json)."""
  run_config = read_config(workdir)
  if run_config is None:
    return ''
  stored = _flat(json.loads(run_config.to_json_best_effort()))
  given = _flat(json.loads(config.to_json_best_effort()))
  changed = sorted(
    key
    for key in stored.keys() & given.keys()
    if stored[key] != given[key] and key.split('.')[0] not in may_change
  )
  return '; '.join(f'{key}: {stored[key]!r} in the run, {given[key]!r} now' for key in changed)


def _all_finite(tree) -> bool:
  return all(
    np.isfinite(np.asarray(leaf)).all()
    for leaf in jax.tree.leaves(tree)
    if np.issubdtype(np.asarray(leaf).dtype, np.inexact)
  )


def state_digest(state) -> str:
  """SHA-256 of every leaf of a (replicated) state: its path, dtype, shape and bytes.

  Saved with each checkpoint and checked on restore: a flipped byte in a compressed checkpoint
  file otherwise restores silently into slightly different, finite numbers.
  """
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]:
    value = np.asarray(leaf)
    if value.dtype.kind in 'biu':  # the step restores as a Python int: compare integers as int64
      value = value.astype(np.int64)
    digest.update(f'{jax.tree_util.keystr(path)}|{value.dtype}|{value.shape}|'.encode())
    digest.update(np.ascontiguousarray(value).tobytes())
  return digest.hexdigest()


def _restore(directory: Path, step: int, abstract_state):
  """(state, the digest saved with it or None) of one step, with a manager of its own, closed
  after: one that failed on a damaged step fails on the next, and an open one leaks threads."""
  with ocp.CheckpointManager(directory) as manager:
    state = manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    metadata = manager.metadata(step)
  return state, (getattr(metadata, 'custom_metadata', None) or {}).get('state_sha256')


def _shapes_not_fitting(directory: Path, step: int, abstract_state) -> list[str]:
  """The network variables whose saved shape differs from the config's, read from the step's
  metadata; [] when they fit or the metadata cannot be read (damage is found by the restore)."""
  try:
    with ocp.CheckpointManager(directory, item_handlers=ocp.StandardCheckpointHandler()) as manager:
      saved = manager.item_metadata(step).tree
  except Exception:  # pylint: disable=broad-exception-caught  # a damaged step: restore tells
    return []
  problems = []
  for collection in ('params', 'batch_stats'):
    missing, unexpected, reshaped = argument_checks.tree_differences(
      saved.get(collection) or {}, getattr(abstract_state, collection)
    )
    problems += [f'{collection}/{k} is not in the checkpoint' for k, _ in missing]
    problems += [
      f'{collection}/{k} is {shape} in the checkpoint, {wanted} now'
      for k, shape, wanted in reshaped
    ]
    problems += [f'{collection}/{k} is in the checkpoint only' for k in unexpected]
  return problems


def restore_newest_whole(directory: Path, abstract_state):
  """The newest checkpoint that restores and holds only finite values, and its step.

  A checkpoint cut short (a missing file, an empty step folder), whose bytes differ from what was
  saved (`state_digest`), or holding NaN or infinite values is skipped with a message saying
  which and why.

  Returns:
    `(state, step, skipped)`: `skipped` lists the steps of the newer, damaged checkpoints;
    `(None, 0, [])` when there is no checkpoint at all.

  Raises:
    ValueError: the newest checkpoint holds a network of other shapes than the config builds
      (the config is not the run's): nothing is skipped or moved.
    RuntimeError: checkpoints exist but none restores.
  """
  if not directory.is_dir():
    return None, 0, []
  with ocp.CheckpointManager(directory) as manager:
    steps = sorted(manager.all_steps(), reverse=True)
  skipped = []
  for step in steps:
    not_fitting = _shapes_not_fitting(directory, step, abstract_state)
    if not_fitting:
      raise ValueError(
        f'The checkpoint of step {step} in {directory} holds a network of other shapes than '
        f'the config builds ({argument_checks.listed(not_fitting, 5)}): the config is not the '
        'one the run was trained with (num_classes, arch, widths, ...: an edited config.json?). '
        'Restore that config, or pass it with --config; the checkpoints are left as they are.'
      )
    try:
      state, saved_digest = _restore(directory, step, abstract_state)
    except Exception as error:  # orbax and TensorStore raise many types for a damaged folder
      skipped.append((step, f'{type(error).__name__}: {str(error)[:200]}'))
      continue
    if saved_digest is not None and state_digest(state) != saved_digest:
      skipped.append(
        (step, 'its contents differ from what was saved (checksum mismatch: corrupted on disk)')
      )
      continue
    if not _all_finite(state):
      skipped.append((step, 'it holds NaN or infinite values'))
      continue
    for bad_step, reason in skipped:
      print(f'Skipped the damaged checkpoint of step {bad_step}: {reason}', flush=True)
    return state, step, [bad_step for bad_step, _ in skipped]
  if steps:
    raise RuntimeError(
      f'No checkpoint in {directory} restores: '
      + ' | '.join(f'step {step}: {reason}' for step, reason in skipped)
      + '. Move the checkpoints folder away to start over.'
    )
  return None, 0, []


def set_aside(directory: Path, steps: list[int]) -> None:
  """Moves the given step folders to `<directory>_damaged/`, out of the resumed run's way."""
  if not steps or jax.process_index():
    return
  aside = directory.with_name(directory.name + '_damaged')
  aside.mkdir(exist_ok=True)
  for step in steps:
    target = aside / str(step)
    if target.exists():
      target = aside / f'{step}.{os.getpid()}'
    (directory / str(step)).rename(target)
    print(f'Moved the damaged checkpoint of step {step} to {target}.', flush=True)
