"""convert.py: the report of a finished run again, with new settings, resumed after an
interruption, and of an imported PyTorch checkpoint."""

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import cos_jax
from cos_jax import (
  conversion_report,
  input_pipeline,
  report_rendering,
  run_state,
  sources,
  torch_import,
)
from tests.conftest import ROOT, config_with


def test_convert_py_rereads_the_workdir_and_says_which_step(finished_run, capsys):
  workdir, _ = finished_run
  before = json.loads((workdir / 'report.json').read_text())
  after = conversion_report.convert_and_report(workdir)  # config from the workdir's config.json
  assert after['methods']['qcfs']['accuracy_by_T'] == before['methods']['qcfs']['accuracy_by_T']
  assert after['ann_accuracy'] == before['ann_accuracy']
  assert f'Restored the checkpoint of step 16 in {workdir}/checkpoints.' in capsys.readouterr().out


def test_convert_py_reads_the_test_data_where_data_dir_says(finished_run, monkeypatch):
  read_from = []

  def stop_at_load(config, preload):
    read_from.append(config.data_dir)
    raise sources.DataError('stop here')

  monkeypatch.setattr(conversion_report.sources, 'load', stop_at_load)
  with pytest.raises(sources.DataError, match='stop here'):
    conversion_report.convert_and_report(finished_run[0], data_dir='/data/on/this/machine')
  assert read_from == ['/data/on/this/machine']


def test_convert_py_takes_new_report_settings_but_refuses_another_run(finished_run, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(finished_run[0], workdir)
  with pytest.raises(
    ValueError,
    match=r"another config \(arch: 'tiny' in the run, 'resnet20' "
    r'now; num_epochs: 2 in the run, 3 now\)',
  ):
    conversion_report.convert_and_report(workdir, config_with(arch='resnet20', num_epochs=3))
  config = config_with()
  config.conversion.update(max_T=2, statistics_T=2, rhos=(1,), srp_taus=(1, 3))
  report = conversion_report.convert_and_report(workdir, config)
  assert set(report['methods']) == {'qcfs', 'cos_rho1', 'srp_tau1', 'srp_tau3'}
  assert len(report['methods']['cos_rho1']['accuracy_by_T']) == 2
  srp = report['methods']['srp_tau3']
  assert srp['method'] == 'srp' and srp['tau'] == 3 and srp['latency_by_T'] == [4, 5]
  assert srp['presimulation_synaptic_ops_per_image'] > 0
  assert report['methods']['cos_rho1']['presimulation_synaptic_ops_per_image'] == 0
  assert '## Accuracy at equal latency' in (workdir / 'report.md').read_text()


def test_the_equal_latency_table_shifts_each_method_by_its_presimulation():
  """Hand-built: at latency n a method shows its accuracy at T = n - rho (or tau)."""
  report = {
    'max_T': 4,
    'methods': {
      'qcfs': {'method': 'qcfs', 'rho': 0, 'accuracy_by_T': [0.1, 0.2, 0.3, 0.4]},
      'cos_rho2': {'method': 'cos', 'rho': 2, 'accuracy_by_T': [0.5, 0.6, 0.7, 0.8]},
      'srp_tau2': {'method': 'srp', 'tau': 2, 'accuracy_by_T': [0.45, 0.6, 0.75, 0.7]},
    },
  }
  lines = report_rendering._equal_latency(report)  # pylint: disable=protected-access
  assert '| method | latency 1 | latency 2 | latency 4 |' in lines
  assert '| qcfs | 10.00 | 20.00 | 40.00 |' in lines
  assert '| cos_rho2 | - | - | 60.00 |' in lines  # latency 4 = 2 + T=2
  assert '| srp_tau2 | - | - | 60.00 |' in lines
  assert lines[-1] == (
    'cos_rho2 against srp_tau2 (the same latency at every T): COS above at 2, equal at 1 and '
    'below at 1 of the 4 T.'
  )


def test_an_interrupted_conversion_report_resumes_where_it_stopped(
  finished_run, tmp_path, monkeypatch
):
  """Totals saved after each batch: a report stopped in its second batch (of two) resumes there
  and equals the uninterrupted report exactly; the saved totals are removed at the end."""
  workdir, state = finished_run
  config = config_with()
  model = run_state.create_model(config)
  variables = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  split = sources.load(config).test
  uninterrupted = conversion_report.evaluate_conversion(config, model, variables, split)
  real_simulation = conversion_report.snn_lib.calibrate_and_simulate
  calls = []

  def stopping_simulation(*args, **kwargs):
    calls.append(kwargs['rho'])
    if len(calls) == 3:  # batch 2's first method: Ctrl-C
      raise KeyboardInterrupt
    return real_simulation(*args, **kwargs)

  monkeypatch.setattr(conversion_report.snn_lib, 'calibrate_and_simulate', stopping_simulation)
  progress_path = tmp_path / 'report_progress.json'
  with pytest.raises(KeyboardInterrupt):
    conversion_report.evaluate_conversion(config, model, variables, split, progress_path)
  assert json.loads(progress_path.read_text())['batches_done'] == 1
  other_settings = conversion_report._Progress(progress_path, 'another fingerprint')  # pylint: disable=protected-access
  assert other_settings.load() is None  # totals of other variables or settings are not reused
  calls.clear()
  resumed = conversion_report.evaluate_conversion(config, model, variables, split, progress_path)
  assert calls == [0, 2]  # only batch 2, each method once
  assert resumed == uninterrupted
  assert not progress_path.exists()


def test_convert_py_reports_an_imported_pytorch_checkpoint(tmp_path):
  """--torch_checkpoint: a reference state_dict (here .npz) goes through the whole report."""
  config = config_with(arch='resnet20', input_shape=(32, 32, 3), synthetic_test_size=16)
  config.mean, config.std = (0.5,) * 3, (0.25,) * 3
  config.conversion.update(
    num_examples=16, batch_size=16, max_T=2, rhos=(1,), srp_taus=(), statistics_T=2
  )
  model = run_state.create_model(config)
  variables = jax.device_get(cos_jax.init_variables(model, jax.random.key(0)))
  np.savez(tmp_path / 'resnet20.npz', **torch_import.export_state_dict(model, variables))
  report = conversion_report.convert_and_report(
    tmp_path / 'run', config, str(tmp_path / 'resnet20.npz')
  )
  test = sources.load(config).test
  logits = model.apply(variables, input_pipeline.normalise(test.images, config.mean, config.std))
  assert report['ann_accuracy'] == float((np.asarray(logits).argmax(-1) == test.labels).mean())
  assert set(report['methods']) == {'qcfs', 'cos_rho1'}  # SRP's rows: the test above
  assert (tmp_path / 'run' / 'report.md').exists()


def test_ctrl_c_in_convert_py_names_only_the_report_as_what_resumes(tmp_path):
  process = subprocess.run(
    [sys.executable, '-m', 'tests.programs.interrupted_convert', str(tmp_path)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert process.returncode == 130
  assert process.stderr.strip().endswith(
    f'resumes the run in {tmp_path}: the conversion report from its last finished batch.'
  )
  assert 'Traceback' not in process.stderr


def test_a_ctrl_c_swallowed_by_a_finaliser_still_stops_the_report(finished_run, tmp_path):
  """A Ctrl-C that lands in a clean-up (grain's iterator's) is printed as "Exception ignored"
  by Python, which goes on: the report stops at its next batch all the same, status 130, its
  first batch kept for the resume, instead of finishing with status 0."""
  workdir = tmp_path / 'run'
  shutil.copytree(finished_run[0], workdir)
  (workdir / 'report.md').unlink()
  process = subprocess.run(
    [sys.executable, '-m', 'tests.programs.swallowed_interrupt', str(workdir)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert 'swallowed' in process.stdout  # Python's "Exception ignored" report is held back too
  assert 'Exception ignored' not in process.stderr
  assert process.returncode == 130, process.stderr
  assert process.stderr.strip().splitlines()[-1].startswith('Interrupted. The same command')
  assert json.loads((workdir / 'report_progress.json').read_text())['batches_done'] == 1
  assert not (workdir / 'report.md').exists()
