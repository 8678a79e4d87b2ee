"""Two real processes (JAX's distributed runtime on 127.0.0.1, collectives over gloo) train
configs/test.py with one global batch, are killed, resume, convert across both, and end where
one process ends; a process that dies ends the other with an error, not a hang.

Two processes of one device each reduce the batch as one process with two devices does: their
parameters are equal bit for bit. (A process with one device sums in another order, and over the
16 steps the difference grows wherever it moves a QCFS floor: 2.7e-3 at most, measured on
2026-12-02; so that is not the comparison.)
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from cos_jax import conversion_report, run_state, sources
from tests.conftest import ROOT, config_with

TIMEOUT_S = 300  # each phase; a hang fails the test instead of the suite


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start(workdir, stall_at=None, heartbeat_timeout=100, overrides=(), stalling=(0, 1)):
  """Both processes of one run: train.py with --distributed on a fresh loopback port; those in
  `stalling` stall before step `stall_at` + 1."""
  port = _free_port()
  processes = []
  for process_id in range(2):
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    env.pop('XLA_FLAGS', None)
    if stall_at is not None and process_id in stalling:
      env['STALL_AT_STEP'] = str(stall_at)
    command = [
      sys.executable,
      '-m',
      'tests.programs.distributed_train',
      '--config=configs/test.py',
      f'--workdir={workdir}',
      '--distributed',
      f'--coordinator_address=127.0.0.1:{port}',
      '--num_processes=2',
      f'--process_id={process_id}',
      f'--heartbeat_timeout={heartbeat_timeout}',
      *overrides,
    ]
    processes.append(
      subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
      )
    )
  return processes


def _wait_for_line(process, text: str) -> None:
  deadline = time.time() + TIMEOUT_S
  for line in iter(process.stdout.readline, ''):
    if line.strip() == text:
      return
    assert time.time() < deadline, f'no {text!r} within {TIMEOUT_S} s'
  raise AssertionError(f'ended without {text!r}: {process.stderr.read()[-3000:]}')


def _finish(processes) -> list[str]:
  outputs = []
  for process in processes:
    try:
      stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    finally:
      process.kill()
    outputs.append(stdout)
    assert process.returncode == 0, stderr[-3000:]
  return outputs


def test_two_processes_train_resume_and_convert_as_one(tmp_path):
  workdir = tmp_path / 'run'
  stalled = _start(workdir, stall_at=7)  # after the checkpoint of step 5
  try:
    for process in stalled:
      _wait_for_line(process, 'stalled')
    deadline = time.time() + TIMEOUT_S  # the save of step 5 commits in the background
    while not (workdir / 'checkpoints' / '5').is_dir():
      assert time.time() < deadline, 'the checkpoint of step 5 was never committed'
      time.sleep(0.2)
  finally:
    for process in stalled:
      process.send_signal(signal.SIGKILL)
      process.wait()
  outputs = _finish(_start(workdir))
  assert all('Resumed from the checkpoint at step 5' in out for out in outputs)

  config = config_with()
  model, variables = run_state.restore_variables(config, workdir)
  two_devices = tmp_path / 'two_devices'
  subprocess.run(
    [
      sys.executable,
      'train.py',
      '--config=configs/test.py',
      f'--workdir={two_devices}',
      '--config.conversion.enabled=False',
    ],
    cwd=ROOT,
    env=dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=2'),
    check=True,
    capture_output=True,
    timeout=TIMEOUT_S,
  )
  _, one_process = run_state.restore_variables(config, two_devices)
  for ours, alone in zip(
    jax.tree.leaves(variables['params']), jax.tree.leaves(one_process['params']), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(alone))

  # The report both processes computed, each on its share of every batch, and process 0 wrote,
  # counts what one process counts with the same parameters.
  report = json.loads((workdir / 'report.json').read_text())
  alone = conversion_report.evaluate_conversion(
    config, model, jax.device_get(variables), sources.load(config).test
  )
  assert report['ann_accuracy'] == alone['ann_accuracy']
  for name, method in alone['methods'].items():
    assert report['methods'][name]['accuracy_by_T'] == method['accuracy_by_T']


def test_a_process_that_dies_ends_the_other_with_an_error(tmp_path):
  survivor, victim = _start(tmp_path / 'run', stall_at=0, heartbeat_timeout=10, stalling=(1,))
  try:
    _wait_for_line(victim, 'stalled')
    victim.send_signal(signal.SIGKILL)  # process 0 waits for it in the first step's all-reduce
    victim.wait()
    started = time.time()
    _, stderr = survivor.communicate(timeout=TIMEOUT_S)
  finally:
    survivor.kill()
    victim.kill()
  assert survivor.returncode != 0
  assert time.time() - started < 120, 'the survivor took too long to give up'
  lost = ('crashed', 'heartbeat', 'connection closed by peer')  # JAX's words, or gloo's when
  # the all-reduce notices first (the survivor then ends at once: cos_jax.cli)
  assert any(word in stderr.lower() for word in lost), stderr[-3000:]
