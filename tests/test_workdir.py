"""The workdir: one process at a time, resume only with the run's config, damaged checkpoints and
torn metrics lines, and Ctrl-C during a save or a run."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cos_jax import cli, conversion_report, optimizer, run_state, training, workdir
from tests.conftest import ROOT, config_with


def test_a_second_process_on_a_workdir_is_refused_until_the_first_dies(tmp_path):
  process = subprocess.Popen(
    [sys.executable, '-m', 'tests.programs.hold_lock', str(tmp_path)],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert process.stdout.readline().strip() == 'locked'
    with pytest.raises(
      workdir.WorkdirBusyError, match=f'in use by another process \\(pid {process.pid}\\)'
    ):
      training.train_and_evaluate(config_with(), str(tmp_path))
    with pytest.raises(workdir.WorkdirBusyError):  # convert.py beside a live train.py
      conversion_report.convert_and_report(tmp_path, config_with())
  finally:
    process.kill()  # SIGKILL: the operating system releases the lock
    process.wait()
  with workdir.exclusive(tmp_path):
    pass


def _copy_of(finished_run, tmp_path) -> Path:
  copy = tmp_path / 'run'
  shutil.copytree(finished_run[0], copy)
  return copy


def test_resume_refuses_another_config_naming_the_fields(finished_run, tmp_path):
  run = _copy_of(finished_run, tmp_path)
  with pytest.raises(
    ValueError,
    match=r'another config \(learning_rate: 0.2 in the run, 0.3 '
    r'now; seed: 0 in the run, 1 now\)',
  ):
    training.train_and_evaluate(config_with(learning_rate=0.3, seed=1), str(run))
  # What may change does not stop it: the finished run is simply evaluated again, and its
  # metrics log holds one final accuracy still.
  before = (run / 'metrics.jsonl').read_text()
  state = training.train_and_evaluate(config_with(log_every_steps=2), str(run))
  assert int(state.step) == 16
  assert (run / 'metrics.jsonl').read_text() == before


def test_an_empty_workdir_flag_is_refused():
  for script in ('train.py', 'convert.py'):
    process = subprocess.run(
      [sys.executable, script, '--config=configs/test.py', '--workdir='],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,
    )
    assert process.returncode == 1
    assert '--workdir is empty: name the folder of the run' in process.stderr


@pytest.mark.parametrize('damage', ['empty step folder', 'missing file', 'flipped bit'])
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(
  finished_run, tmp_path, damage, capsys
):
  run = _copy_of(finished_run, tmp_path)
  steps = sorted(int(p.name) for p in (run / 'checkpoints').iterdir() if p.name.isdigit())
  latest = run / 'checkpoints' / str(steps[-1])
  if damage == 'empty step folder':
    shutil.rmtree(latest)
    latest.mkdir()
  elif damage == 'missing file':
    (latest / 'default' / 'manifest.ocdbt').unlink()
  else:  # zstd without checksums: this restores into slightly different, finite values
    largest = max((latest / 'default').rglob('d/*'), key=lambda p: p.stat().st_size)
    data_bytes = bytearray(largest.read_bytes())
    data_bytes[len(data_bytes) // 2] ^= 1
    largest.write_bytes(bytes(data_bytes))
  _, variables = run_state.restore_variables(config_with(), run)
  assert f'Skipped the damaged checkpoint of step {steps[-1]}' in capsys.readouterr().out
  np.testing.assert_array_equal(
    variables['params']['head']['bias'], restored_at(run, steps[-2])['params']['head']['bias']
  )
  # Training resumes from the whole one, sets the damaged one aside and ends as it should have.
  state = training.train_and_evaluate(config_with(), str(run))
  assert f'Moved the damaged checkpoint of step {steps[-1]}' in capsys.readouterr().out
  for a, b in zip(
    jax.tree.leaves(state.params), jax.tree.leaves(finished_run[1].params), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def restored_at(run: Path, step: int) -> dict:
  model = run_state.create_model(config_with())
  tx, _ = optimizer.create_optimizer(config_with(), steps_per_epoch=1)
  abstract = jax.eval_shape(lambda: run_state.create_train_state(model, tx, jax.random.key(0)))
  state = ocp.CheckpointManager(run / 'checkpoints').restore(
    step, args=ocp.args.StandardRestore(abstract)
  )
  return {'params': state.params}


def test_an_edited_config_json_is_told_apart_from_damaged_checkpoints(finished_run, tmp_path):
  """A config.json whose num_classes was edited by hand: the checkpoints are healthy and stay
  where they are; the message says the config is not the run's."""
  run = _copy_of(finished_run, tmp_path)
  config = json.loads((run / 'config.json').read_text())
  config['num_classes'] += 2
  (run / 'config.json').write_text(json.dumps(config))
  before = sorted(p.name for p in (run / 'checkpoints').iterdir())
  with pytest.raises(ValueError, match=r'other shapes than the config builds \(params/head/'):
    conversion_report.convert_and_report(run)
  with pytest.raises(ValueError, match=r'is \(\d+, \d+\) in the checkpoint, \(\d+, \d+\) now'):
    training.train_and_evaluate(workdir.read_config(run), str(run))
  assert sorted(p.name for p in (run / 'checkpoints').iterdir()) == before
  assert not (run / 'checkpoints_damaged').exists()


def test_a_torn_last_metrics_line_is_dropped(finished_run, tmp_path, capsys):
  run = _copy_of(finished_run, tmp_path)
  metrics = run / 'metrics.jsonl'
  metrics.write_text(metrics.read_text() + '{"step": 16, "loss": 0.3')
  training.train_and_evaluate(config_with(), str(run))
  assert 'Dropped the torn last line' in capsys.readouterr().out
  for line in metrics.read_text().splitlines():
    json.loads(line)


SIGINT_DELAYS_S = (0.0, 0.05, 0.3)
"""When the Ctrl-C lands after the save begins, one trial each: before, during and after the
write itself."""


def test_ctrl_c_during_a_checkpoint_write_exits_promptly_leaving_checkpoints_whole(tmp_path):
  """A race in orbax can leave threads that a normal exit waits on for ever: whenever the Ctrl-C
  lands, the process ends within the timeout, with the resume line, and what is on disk
  restores. The trials run at once, each in its own process."""
  processes = [
    subprocess.Popen(
      [sys.executable, '-m', 'tests.programs.interrupted_save', str(tmp_path / f'{i}'), str(d)],
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i, d in enumerate(SIGINT_DELAYS_S)
  ]
  try:
    for process, delay in zip(processes, SIGINT_DELAYS_S, strict=True):
      assert any(line.strip() == 'saving' for line in iter(process.stdout.readline, ''))
      time.sleep(delay)
      process.send_signal(signal.SIGINT)
    for process in processes:
      process.wait(timeout=120)  # a hang (the save sleeps 600 s) fails; 60 s was short under load
  finally:
    for process in processes:
      process.kill()
  for i, process in enumerate(processes):
    stderr = process.stderr.read()
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith('Interrupted. The same command resumes')
    _, variables = run_state.restore_variables(config_with(), tmp_path / f'{i}')
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(variables))


def _train_py(workdir: Path, *overrides: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen:
  """train.py on configs/test.py without its report, started behind `prefix`."""
  return subprocess.Popen(
    [
      *prefix,
      sys.executable,
      'train.py',
      '--config=configs/test.py',
      f'--workdir={workdir}',
      '--config.conversion.enabled=False',
      *overrides,
    ],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _the_one_line_of_a_failed_write(process: subprocess.Popen, workdir: Path) -> str:
  """The process ends promptly with status 1 and one line on stderr, naming a file of the run's
  checkpoints and saying that the same command resumes."""
  try:
    _, stderr = process.communicate(timeout=300)
  finally:
    process.kill()
  assert process.returncode == 1, stderr
  [line] = stderr.strip().splitlines()  # orbax's and tensorstore's reports held back
  assert line.startswith(f'Could not write or read {workdir}/checkpoints/'), line
  assert f'Free space or fix the folder; then the same command resumes the run in {workdir}' in line
  return line


def test_a_checkpoint_path_too_long_ends_the_run_in_one_line(tmp_path):
  """A save that fails (here a path too long for the system) ends the process at once, saying
  which file and why, instead of orbax's traceback and a hang."""
  workdir = tmp_path
  while len(str(workdir)) < 4000:  # the workdir itself fits, a checkpoint's files do not
    workdir = workdir / ('d' * min(200, 4000 - len(str(workdir))))
  workdir.mkdir(parents=True)
  assert ': File name too long. ' in _the_one_line_of_a_failed_write(_train_py(workdir), workdir)


TRIALS = 3
"""Runs at once of each failing save: what reaches stderr besides the one line depends on how
orbax's and tensorstore's threads interleave (on a full disk with orbax's log held back but not
tensorstore's unraisable reports: 0, 6 and 186 more lines in 3 trials)."""


def test_a_full_disk_ends_the_run_in_one_line_saying_so(tmp_path):
  """Each run's workdir lies on a file system of 64 KiB of its own (a tmpfs mounted in a
  private mount namespace, `unshare`), where config.json fits and the first checkpoint does
  not."""
  in_small_file_system = (
    'unshare', '--mount', '--map-root-user', 'sh', '-c',
    'mount -t tmpfs -o size=64k tmpfs "$1" && shift && exec "$@"', 'sh',
  )  # fmt: skip
  if (
    shutil.which('unshare') is None
    or subprocess.run(
      [*in_small_file_system, str(tmp_path), 'true'], capture_output=True, check=False
    ).returncode
  ):
    pytest.skip('this system lets no process mount a file system of its own (unshare)')
  for i in range(TRIALS):
    (tmp_path / f'{i}').mkdir()
  processes = [
    _train_py(tmp_path / f'{i}' / 'run', prefix=(*in_small_file_system, str(tmp_path / f'{i}')))
    for i in range(TRIALS)
  ]
  for i, process in enumerate(processes):
    line = _the_one_line_of_a_failed_write(process, tmp_path / f'{i}' / 'run')
    assert ': No space left on device. ' in line


def _finished_checkpoints(workdir: Path) -> list[str]:
  folder = workdir / 'checkpoints'
  return [p.name for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []


def test_a_checkpoints_folder_turned_read_only_mid_run_ends_it_in_one_line(tmp_path):
  """The checkpoints folder loses its write permission once a checkpoint is in it (every trial
  hung in issue 25). Run by root, train.py runs without the capability that
  overrides file permissions (`setpriv`), as any other user's would."""
  as_a_user = ()
  if os.geteuid() == 0:
    if shutil.which('setpriv') is None:
      pytest.skip('root writes into read-only folders, and setpriv is not here to prevent it')
    as_a_user = ('setpriv', '--bounding-set=-dac_override,-dac_read_search', '--')
  workdirs = [tmp_path / f'{i}' for i in range(TRIALS)]
  processes = [_train_py(w, '--config.num_epochs=40', prefix=as_a_user) for w in workdirs]
  try:
    for workdir, process in zip(workdirs, processes, strict=True):
      for _ in range(2400):  # 120 s; the first checkpoint may be rotated out by then
        if _finished_checkpoints(workdir) or process.poll() is not None:
          break
        time.sleep(0.05)
      (workdir / 'checkpoints').chmod(0o555)
    for workdir, process in zip(workdirs, processes, strict=True):
      assert ': Permission denied. ' in _the_one_line_of_a_failed_write(process, workdir)
  finally:
    for workdir in workdirs:
      if (workdir / 'checkpoints').exists():
        (workdir / 'checkpoints').chmod(0o755)


def test_held_error_reports_are_shown_when_the_run_ends_otherwise(tmp_path, caplog, monkeypatch):
  """A run that succeeds after orbax logged a storage error, or after an unraisable error,
  shows both, once each: they are held only to be replaced by the one line of a failed write."""
  unraisables = []
  monkeypatch.setattr(sys, 'unraisablehook', unraisables.append)
  with cli.resumable_on_interrupt(tmp_path, 'from nowhere'):
    logging.getLogger('absl').error('Error writing "/runs/a/x": No space left on device [t]')
    _Unraisable()
    assert not caplog.records
    assert not unraisables
  assert [r.getMessage() for r in caplog.records] == [
    'Error writing "/runs/a/x": No space left on device [t]'
  ]
  assert [str(u.exc_value) for u in unraisables] == ['from a finaliser']


def test_held_error_reports_are_shown_after_a_while_in_a_run_that_goes_on(
  tmp_path, caplog, monkeypatch
):
  unraisables = []
  monkeypatch.setattr(sys, 'unraisablehook', unraisables.append)
  monkeypatch.setattr(cli, 'HOLD_S', 0.2)
  with cli.resumable_on_interrupt(tmp_path, 'from nowhere'):
    logging.getLogger('absl').error('Error writing "/runs/a/x": No space left on device [t]')
    _Unraisable()
    logging.getLogger('absl').error('not about a file')  # shown at once
    assert [r.getMessage() for r in caplog.records] == ['not about a file']
    time.sleep(1)
    assert len(caplog.records) == 2
    assert [str(u.exc_value) for u in unraisables] == ['from a finaliser']
  assert len(caplog.records) == 2  # nothing is shown twice
  assert len(unraisables) == 1


class _Unraisable:
  def __del__(self):
    raise RuntimeError('from a finaliser')


def test_storage_failures_are_found_in_the_error_chain():
  full = OSError(28, 'No space left on device', '/runs/a/checkpoints/10/x')
  try:
    try:
      raise full
    except OSError as error:
      raise RuntimeError('Save Finalize thread failed') from error
  except RuntimeError as error:
    assert cli.storage_failure(error) == ('/runs/a/checkpoints/10/x', 'No space left on device')
  assert cli.storage_failure(OSError(28, 'No space left on device')) == (
    None,
    'No space left on device',
  )  # the run's folder is named instead
  tensorstore = ValueError(
    'Error opening "zarr" driver: Error writing local file "/runs/a/ocdbt/d/1": '
    'No space left on device [tensorstore_spec=\'{"driver": "zarr"}\']'
  )
  assert cli.storage_failure(tensorstore) == ('/runs/a/ocdbt/d/1', 'No space left on device')
  assert cli.storage_failure(ValueError('conversion.rhos=(2, 2) (distinct integers)')) is None


def test_ctrl_c_in_train_py_ends_in_one_line_saying_how_to_resume(tmp_path):
  process = subprocess.Popen(
    [
      sys.executable,
      'train.py',
      '--config=configs/test.py',
      f'--workdir={tmp_path}',
      '--config.num_epochs=1000',
      '--config.conversion.enabled=False',
    ],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    assert any(line.startswith('step 4/') for line in iter(process.stdout.readline, ''))
    process.send_signal(signal.SIGINT)
    process.wait(timeout=120)
  finally:
    process.kill()
  stderr = process.stderr.read()
  assert process.returncode == 130
  assert f'The same command resumes the run in {tmp_path}: training from' in stderr
  assert 'Traceback' not in stderr
