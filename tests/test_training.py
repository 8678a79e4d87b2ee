"""train.py end to end: a run, its resume after kill -9, a NaN, the loop's pace, eight devices."""

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cos_jax import augment, parallel, run_state, sources, training
from tests.conftest import ROOT, config_with


def test_end_to_end_writes_checkpoint_metrics_and_report(finished_run):
  workdir, state = finished_run
  assert int(state.step) == 16  # 2 epochs of 256 // 32 steps
  config = json.loads((workdir / 'config.json').read_text())
  assert config['arch'] == 'tiny'
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records if 'loss' in r] == [4, 8, 12, 16]
  assert records[-1]['final_test_accuracy'] > 0.5  # synthetic classes are easy
  report = json.loads((workdir / 'report.json').read_text())
  assert set(report['methods']) == {'qcfs', 'cos_rho2', 'srp_tau2'}
  assert len(report['methods']['cos_rho2']['accuracy_by_T']) == 4
  assert report['methods']['cos_rho2']['latency_by_T'] == [3, 4, 5, 6]
  assert '| cos_rho2 | 2 |' in (workdir / 'report.md').read_text()
  for name in ('report_accuracy.png', 'report_offset_spikes.png'):
    assert (workdir / name).read_bytes()[:4] == b'\x89PNG'


def test_kill_9_and_restart_gives_the_same_parameters(finished_run, tmp_path):
  _, uninterrupted = finished_run
  command = [sys.executable, '-m', 'tests.programs.killed_run', str(tmp_path)]
  process = subprocess.Popen(command + ['stall'], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert any(line.strip() == 'stalled' for line in iter(process.stdout.readline, ''))
  finally:
    process.kill()  # SIGKILL: no clean-up of any kind
    process.wait()
  subprocess.run(command + ['run'], cwd=ROOT, check=True, capture_output=True, timeout=600)
  config = config_with()
  _, resumed = run_state.restore_variables(config, tmp_path)
  for a, b in zip(
    jax.tree.leaves(resumed['params']), jax.tree.leaves(uninterrupted.params), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  steps = [
    json.loads(line)['step']
    for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()
    if 'loss' in line
  ]
  assert steps == [4, 8, 12, 16]  # no step logged twice or lost


def test_nan_loss_names_the_step_and_no_checkpoint_holds_it(tmp_path):
  """Logged every 8 steps but saved every step: the loss is checked before each save, so the
  run stops at the first diverged save and what is on disk is finite."""
  config = config_with(learning_rate=1e30, log_every_steps=8, checkpoint_every_steps=1)
  config.conversion.enabled = False
  with pytest.raises(
    training.NonFiniteLossError, match=r'at step \d+; .*start a new run \(another --workdir\)'
  ):
    training.train_and_evaluate(config, str(tmp_path))
  saved = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
  for step in saved:
    state = ocp.CheckpointManager(tmp_path / 'checkpoints').restore(step)
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(state['params']))


class _SlowSteps:
  """Stands in for a jitted-step factory: every result of its steps becomes ready only `delay`
  seconds after the call returns (a host callback), like a device slower than the host; each
  call notes whether the result of the call two before was ready by then."""

  def __init__(self, make_step, delay: float):
    self.make_step, self.delay = make_step, delay
    self.results, self.ready_two_calls_back = [], []

  def _sleep(self, tree):
    time.sleep(self.delay)
    return tree

  def __call__(self, *factory_args):
    step = self.make_step(*factory_args)
    delayed = jax.jit(
      lambda tree: jax.pure_callback(
        self._sleep, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree), tree
      )
    )

    def slow_step(*args):
      if len(self.results) >= 2:
        self.ready_two_calls_back.append(self.results[-2].is_ready())
      result = step(*args)
      if isinstance(result, tuple):  # a training step's (state, metrics): delaying the state
        # would make the next step, to which it is donated, wait for it at dispatch
        result = (result[0], delayed(result[1]))
      else:
        result = delayed(result)
      self.results.append(jax.tree.leaves(result)[-1])
      return result

    return slow_step


def test_training_and_evaluation_run_at_most_one_step_ahead_of_the_device(tmp_path, monkeypatch):
  """A loop that dispatches ahead of the device leaves steps queued that Ctrl-C must wait for."""
  config = config_with(num_epochs=1, log_every_steps=8, eval_every_epochs=0)
  config.conversion.enabled = False
  train_steps = _SlowSteps(training._jitted_train_step.__wrapped__, delay=0.3)
  monkeypatch.setattr(training, '_jitted_train_step', train_steps)
  state = training.train_and_evaluate(config, str(tmp_path))
  assert len(train_steps.ready_two_calls_back) == 6 and all(train_steps.ready_two_calls_back)

  eval_steps = _SlowSteps(training._jitted_eval_step.__wrapped__, delay=0.3)
  monkeypatch.setattr(training, '_jitted_eval_step', eval_steps)
  test = sources.ArraySplit(np.zeros((128, *config.input_shape), np.uint8), np.zeros(128, np.int32))
  training.evaluate(
    {'params': state.params, 'batch_stats': state.batch_stats},
    test,
    apply_fn=state.apply_fn,
    mesh=parallel.data_mesh(),
    batch_size=config.eval_batch_size,
    transform=augment.EvalTransform.from_config(config),
    mean=config.mean,
    std=config.std,
    threads=config.data_threads,
  )
  assert len(eval_steps.ready_two_calls_back) == 2 and all(eval_steps.ready_two_calls_back)


def test_eight_devices_give_the_single_device_results(tmp_path):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
  result = subprocess.run(
    [sys.executable, '-m', 'tests.programs.eight_devices', str(tmp_path)],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  outcome = json.loads(result.stdout.strip().splitlines()[-1])
  # One step from the same state: only the order of the batch reductions differs. (Over a whole
  # run such rounding differences grow wherever they move a QCFS floor, so the runs themselves
  # are not compared.)
  assert outcome['difference'] < 1e-5
  assert outcome['ann'][0] == outcome['ann'][1]
  assert outcome['accuracies'][0] == outcome['accuracies'][1]
