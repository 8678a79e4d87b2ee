"""train.py and convert.py end to end, resume after interruption, data sources, multi-device."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

import cos_jax
from configs import test as test_config
from cos_jax import augment, conversion_report, data, parallel, torch_import, training, workdir

ROOT = Path(__file__).resolve().parents[1]


def _config(**overrides):
  config = test_config.get_config()
  config.update(overrides)
  return config


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('run')
  state = training.train_and_evaluate(_config(), str(workdir))
  return workdir, state


def test_end_to_end_writes_checkpoint_metrics_and_report(finished_run):
  workdir, state = finished_run
  assert int(state.step) == 16  # 2 epochs of 256 // 32 steps
  config = json.loads((workdir / 'config.json').read_text())
  assert config['arch'] == 'tiny'
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records if 'loss' in r] == [4, 8, 12, 16]
  assert records[-1]['final_test_accuracy'] > 0.5  # synthetic classes are easy
  report = json.loads((workdir / 'report.json').read_text())
  assert set(report['methods']) == {'qcfs', 'cos_rho2'}
  assert len(report['methods']['cos_rho2']['accuracy_by_T']) == 4
  assert report['methods']['cos_rho2']['latency_by_T'] == [3, 4, 5, 6]
  assert '| cos_rho2 | 2 |' in (workdir / 'report.md').read_text()
  for name in ('report_accuracy.png', 'report_offset_spikes.png'):
    assert (workdir / name).read_bytes()[:4] == b'\x89PNG'


def test_convert_py_rereads_the_workdir(finished_run):
  workdir, _ = finished_run
  before = json.loads((workdir / 'report.json').read_text())
  after = training.convert_and_report(workdir)  # config from the workdir's config.json
  assert after['methods']['qcfs']['accuracy_by_T'] == before['methods']['qcfs']['accuracy_by_T']
  assert after['ann_accuracy'] == before['ann_accuracy']


def test_convert_py_takes_new_report_settings_but_refuses_another_run(finished_run, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(finished_run[0], workdir)
  with pytest.raises(
    ValueError,
    match=r"another config \(arch: 'tiny' in the run, 'resnet20' "
    r'now; num_epochs: 2 in the run, 3 now\)',
  ):
    training.convert_and_report(workdir, _config(arch='resnet20', num_epochs=3))
  config = _config()
  config.conversion.update(max_T=2, statistics_T=2, rhos=(1,))
  report = training.convert_and_report(workdir, config)
  assert set(report['methods']) == {'qcfs', 'cos_rho1'}
  assert len(report['methods']['cos_rho1']['accuracy_by_T']) == 2


def test_an_interrupted_conversion_report_resumes_where_it_stopped(
  finished_run, tmp_path, monkeypatch
):
  """Totals saved after each batch: a report stopped in its second batch (of two) resumes there
  and equals the uninterrupted report exactly; the saved totals are removed at the end."""
  workdir, state = finished_run
  config = _config()
  model = training.create_model(config)
  variables = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  split = data.load(config).test
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


KILLED_RUN_SCRIPT = textwrap.dedent("""
    import sys, time
    from configs import test as test_config
    from cos_jax import data, training
    real_batches = data.train_batches

    def stalling_batches(*args, **kwargs):  # stalls in step 8, after the checkpoint of step 5
      for index, batch in enumerate(real_batches(*args, **kwargs)):
        if kwargs['start_step'] + index == 7 and sys.argv[2] == 'stall':
          print('stalled', flush=True)
          time.sleep(600)
        yield batch

    data.train_batches = stalling_batches
    config = test_config.get_config()
    config.conversion.enabled = False
    training.train_and_evaluate(config, sys.argv[1])
""")


def test_kill_9_and_restart_gives_the_same_parameters(finished_run, tmp_path):
  _, uninterrupted = finished_run
  command = [sys.executable, '-c', KILLED_RUN_SCRIPT, str(tmp_path)]
  process = subprocess.Popen(command + ['stall'], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert any(line.strip() == 'stalled' for line in iter(process.stdout.readline, ''))
  finally:
    process.kill()  # SIGKILL: no clean-up of any kind
    process.wait()
  subprocess.run(command + ['run'], cwd=ROOT, check=True, capture_output=True, timeout=600)
  config = test_config.get_config()
  _, resumed = training.restore_variables(config, tmp_path)
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


def test_convert_py_reports_an_imported_pytorch_checkpoint(tmp_path):
  """--torch_checkpoint: a reference state_dict (here .npz) goes through the whole report."""
  config = _config(arch='resnet20', input_shape=(32, 32, 3), synthetic_test_size=16)
  config.mean, config.std = (0.5,) * 3, (0.25,) * 3
  config.conversion.update(num_examples=16, batch_size=16, max_T=2, rhos=(1,), statistics_T=2)
  model = training.create_model(config)
  variables = jax.device_get(cos_jax.init_variables(model, jax.random.key(0)))
  np.savez(tmp_path / 'resnet20.npz', **torch_import.export_state_dict(model, variables))
  report = training.convert_and_report(tmp_path / 'run', config, str(tmp_path / 'resnet20.npz'))
  test = data.load(config).test
  logits = model.apply(variables, data.normalise(test.images, config.mean, config.std))
  assert report['ann_accuracy'] == float((np.asarray(logits).argmax(-1) == test.labels).mean())
  assert set(report['methods']) == {'qcfs', 'cos_rho1'}
  assert (tmp_path / 'run' / 'report.md').exists()


def test_nan_loss_names_the_step(tmp_path):
  config = _config(learning_rate=1e30)
  config.conversion.enabled = False
  with pytest.raises(training.NonFiniteLossError, match=r'at step \d+'):
    training.train_and_evaluate(config, str(tmp_path))


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
  config = _config(num_epochs=1, log_every_steps=8, eval_every_epochs=0)
  config.conversion.enabled = False
  train_steps = _SlowSteps(training._jitted_train_step.__wrapped__, delay=0.3)
  monkeypatch.setattr(training, '_jitted_train_step', train_steps)
  state = training.train_and_evaluate(config, str(tmp_path))
  assert len(train_steps.ready_two_calls_back) == 6 and all(train_steps.ready_two_calls_back)

  eval_steps = _SlowSteps(training._jitted_eval_step.__wrapped__, delay=0.3)
  monkeypatch.setattr(training, '_jitted_eval_step', eval_steps)
  test = data.ArraySplit(np.zeros((128, *config.input_shape), np.uint8), np.zeros(128, np.int32))
  training.evaluate(
    {'params': state.params, 'batch_stats': state.batch_stats},
    test,
    apply_fn=state.apply_fn,
    config=config,
    mesh=parallel.data_mesh(),
  )
  assert len(eval_steps.ready_two_calls_back) == 2 and all(eval_steps.ready_two_calls_back)


def _identity(image, rng):
  del rng
  return image


def test_batch_order_is_a_function_of_the_step():
  split = data.ArraySplit(np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1), np.arange(40))
  whole = list(
    data.train_batches(split, batch_size=8, seed=3, start_step=0, num_steps=12, transform=_identity)
  )
  tail = list(
    data.train_batches(split, batch_size=8, seed=3, start_step=7, num_steps=12, transform=_identity)
  )
  for (a, la), (b, lb) in zip(whole[7:], tail, strict=True):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
  epochs = [np.concatenate([labels for _, labels in whole[5 * e : 5 * e + 5]]) for e in (0, 1)]
  assert sorted(epochs[0]) == list(range(40))  # an epoch visits every example once
  assert (epochs[0] != epochs[1]).any()  # and every epoch in a new order


def test_processes_read_disjoint_shares_that_make_the_global_batch():
  split = data.ArraySplit(np.arange(48, dtype=np.uint8).reshape(48, 1, 1, 1), np.arange(48))

  def batches(index, count):
    return list(
      data.train_batches(
        split,
        batch_size=8,
        seed=1,
        start_step=2,
        num_steps=9,
        process_index=index,
        process_count=count,
        transform=augment.TrainTransform('cifar', 1, 1, flip=True),
      )
    )

  whole = batches(0, 1)
  shares = [batches(index, 4) for index in range(4)]
  for step, (images, labels) in enumerate(whole):
    assert all(len(share[step][1]) == 2 for share in shares)
    np.testing.assert_array_equal(np.concatenate([share[step][1] for share in shares]), labels)
    np.testing.assert_array_equal(np.concatenate([share[step][0] for share in shares]), images)


def _write_cifar_pickles(root: Path, n: int = 4):
  folder = root / 'cifar-10-batches-py'
  folder.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
    entry = {
      b'data': rng.integers(0, 255, (n, 3072), dtype=np.uint8),
      b'labels': list(rng.integers(0, 10, n)),
    }
    with open(folder / name, 'wb') as f:
      pickle.dump(entry, f)
  with open(folder / 'batches.meta', 'wb') as f:
    pickle.dump({b'label_names': [f'c{i}'.encode() for i in range(10)]}, f)
  return entry


def test_cifar_pickle_source(tmp_path):
  last = _write_cifar_pickles(tmp_path)
  dataset = data.load(
    _config(
      dataset='cifar10', data_source='cifar_pickle', data_dir=str(tmp_path), input_shape=(32, 32, 3)
    )
  )
  assert dataset.train.images.shape == (20, 32, 32, 3)
  assert dataset.class_names[3] == 'c3'
  # CIFAR rows are channel-major (R plane, G plane, B plane): pixel (0, 1) red is byte 1.
  np.testing.assert_array_equal(dataset.test.images[0, 0, 1], last[b'data'][0, [1, 1025, 2049]])
  (tmp_path / 'cifar-10-batches-py' / 'data_batch_3').write_bytes(b'not a pickle')
  with pytest.raises(data.DataError, match='data_batch_3 is not a CIFAR python batch'):
    data.load(_config(dataset='cifar10', data_source='cifar_pickle', data_dir=str(tmp_path)))


def test_image_folder_source_reads_one_file_per_example_when_asked(tmp_path, monkeypatch):
  root = tmp_path / 'images'
  for split in ('train', 'test'):
    for label, name in enumerate(['cat', 'ant']):
      (root / split / name).mkdir(parents=True)
      for i in range(3):
        pixels = np.full((8, 8 + i, 3), 40 * label + 10 * i, np.uint8)  # sizes may differ
        Image.fromarray(pixels).save(root / split / name / f'{i}.png')
  config = _config(
    data_source='image_folder', data_dir=str(root), input_shape=(8, 8, 3), preload_images=False
  )
  decode = data._decode_image
  monkeypatch.setattr(data, '_decode_image', lambda *args: pytest.fail('decoded at load'))
  dataset = data.load(config)
  assert dataset.class_names == ('ant', 'cat')  # sorted by name, as the labels are
  assert len(dataset.train) == 6 and list(dataset.train.labels) == [0, 0, 0, 1, 1, 1]
  monkeypatch.setattr(data, '_decode_image', decode)
  image, label = dataset.train[2]
  assert image.shape == (8, 10, 3) and image[0, 0, 0] == 60 and label == 0  # its own size
  # An image replaced in place is read as it is now.
  Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(root / 'train' / 'ant' / '0.png')
  assert dataset.train[0][0][0, 0, 0] == 7
  images, labels, real = next(
    data.eval_batches(
      dataset.test, 4, augment.EvalTransform.from_config(config), process_index=0, process_count=1
    )
  )
  assert images.shape == (4, 8, 8, 3) and real.all()  # every image at the model's size


def test_preloaded_image_folder_holds_what_reading_each_file_gives(tmp_path):
  root = tmp_path / 'images'
  rng = np.random.default_rng(0)
  for split in ('train', 'test'):
    for name in ('cat', 'ant'):
      (root / split / name).mkdir(parents=True)
      for i in range(3):
        pixels = rng.integers(0, 256, (8, 6, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(root / split / name / f'{i}.jpg', quality=75)
  for channels in (3, 1):
    config = _config(
      data_source='image_folder',
      data_dir=str(root),
      input_shape=(8, 6, channels),
      mean=(0.5,) * channels,
      std=(0.5,) * channels,
    )
    preloaded = data.load(config)
    read_each_time = data.load(_config(**{**config.to_dict(), 'preload_images': False}))
    assert isinstance(data.load(config, preload=False).test, data.ImageFolderSplit)  # convert.py
    for split in ('train', 'test'):
      held, read = getattr(preloaded, split), getattr(read_each_time, split)
      assert isinstance(held, data.ArraySplit) and held.images.shape == (6, 8, 6, channels)
      for index in range(len(read)):
        np.testing.assert_array_equal(held[index][0], read[index][0])
        assert held[index][1] == read[index][1]
  Image.fromarray(np.zeros((9, 6, 3), np.uint8)).save(root / 'test' / 'ant' / 'tall.png')
  with pytest.raises(
    data.DataError,
    match=r'must share a size.*ant/tall.png is \(9, 6, 3\) where '
    r'most are \(8, 6, 3\).*--config.preload_images=False',
  ):
    data.load(_config(data_source='image_folder', data_dir=str(root), input_shape=(8, 6, 3)))


def _image_folder(root: Path, write_first) -> None:
  for split in ('train', 'test'):
    for name in ('a', 'b'):
      (root / split / name).mkdir(parents=True)
      for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 60, np.uint8)).save(root / split / name / f'{i}.png')
  write_first(root / 'train' / 'a' / '0.png')


def test_image_folder_data_errors_name_the_file(tmp_path):
  def load(root, **overrides):
    return data.load(
      _config(
        **{
          'data_source': 'image_folder',
          'data_dir': str(root),
          'input_shape': (8, 8, 3),
          **overrides,
        }
      )
    )

  truncated = tmp_path / 'truncated'
  _image_folder(
    truncated, lambda path: path.with_suffix('.jpg').write_bytes(b'\xff\xd8\xff\xe0' + b'\x00' * 20)
  )
  with pytest.raises(data.DataError, match=r'cannot decode .*truncated/train/a/0.jpg'):
    list(
      data.train_batches(
        load(truncated).train, batch_size=2, seed=0, start_step=0, num_steps=2, transform=_identity
      )
    )
  empty = tmp_path / 'empty'
  _image_folder(empty, lambda path: None)
  (empty / 'train' / 'c').mkdir()
  (empty / 'test' / 'c').mkdir()
  with pytest.raises(data.DataError, match=r'class folder .*empty/train/c holds no'):
    load(empty)
  deep = tmp_path / 'deep'
  _image_folder(deep, lambda path: Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(path))
  assert load(deep).train[0][0][0, 0, 0] == 40000 >> 8  # 16 bits -> the top 8
  gray = load(deep, input_shape=(8, 8, 1), mean=(0.5,), std=(0.5,))
  assert gray.train[0][0].shape == (8, 8, 1)


def test_missing_data_folders_say_what_was_expected(tmp_path):
  with pytest.raises(data.DataError, match='expected a folder at .*nowhere.*found nothing'):
    data.load(_config(data_source='image_folder', data_dir=str(tmp_path / 'nowhere')))
  (tmp_path / 'train').mkdir()
  with pytest.raises(data.DataError, match="the 'test' split"):
    data.load(_config(data_source='image_folder', data_dir=str(tmp_path)))
  with pytest.raises(data.DataError, match='cifar-10-python.tar.gz'):
    data.load(
      _config(dataset='cifar10', data_source='cifar_pickle', data_dir=str(tmp_path / 'none'))
    )
  with pytest.raises(data.DataError, match="Unknown data_source 'ftp'"):
    data.load(_config(data_source='ftp'))


def test_tfds_failure_tells_what_to_do(monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')

  def offline(*args, **kwargs):
    raise ConnectionError('no route to host')

  monkeypatch.setattr(tfds, 'data_source', offline)
  with pytest.raises(data.DataError, match='data_source=cifar_pickle'):
    data.load(_config(dataset='cifar10', data_source='tfds'))
  with pytest.raises(data.DataError, match='downloads/manual'):
    data.load(_config(dataset='imagenet', data_source='tfds'))


def test_subset_spans_a_class_sorted_split():
  split = data.ArraySplit(np.zeros((100, 1, 1, 1), np.uint8), np.repeat(np.arange(10), 10))
  labels = [label for _, label in data.subset(split, 20)]
  assert len(labels) == 20 and len(set(labels)) >= 6
  assert labels == [label for _, label in data.subset(split, 20)]
  assert data.subset(split, -1) is split


def test_digits_source_is_real_and_offline():
  dataset = data.load(_config(dataset='digits', data_source='digits'))
  assert dataset.train.images.shape == (1437, 8, 8, 1)
  assert len(dataset.test) == 360 and dataset.num_classes == 10
  with pytest.raises(data.DataError, match=r'1-channel images, but input_shape \(8, 8, 3\)'):
    data.load(_config(dataset='digits', data_source='digits', input_shape=(8, 8, 3)))


def test_augmentations_keep_shape_and_are_seeded():
  image = np.random.default_rng(0).integers(0, 255, (32, 32, 3)).astype(np.uint8)
  full = augment.TrainTransform('cifar', 32, 32, 4, True, True, 16, (0.5, 0.5, 0.5))
  a = full(image, np.random.default_rng(1))
  b = full(image, np.random.default_rng(1))
  assert a.shape == image.shape and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  crops = [augment.pad_and_crop(image, 4, np.random.default_rng(seed)) for seed in range(8)]
  assert any((crop == 0).all(-1).any() for crop in crops)  # zero padding shows
  square = augment.cutout(np.ones((32, 32, 1), np.uint8), 16, np.zeros(1), np.random.default_rng(3))
  assert 0 < (square == 0).sum() <= 256


MULTI_DEVICE_SCRIPT = textwrap.dedent("""
    import functools, json, pathlib, sys
    import jax, numpy as np
    from configs import test as test_config
    from cos_jax import conversion_report, data, parallel, training
    assert jax.device_count() == 8, jax.device_count()
    config = test_config.get_config()
    config.conversion.num_examples = 32
    state = training.train_and_evaluate(config, sys.argv[1] + '/eight')
    dataset = data.load(config)
    images, labels = dataset.train.images[:32], dataset.train.labels[:32]
    step = jax.jit(functools.partial(training.train_step, mean=tuple(config.mean),
                                     std=tuple(config.std)))
    key = jax.random.key(3)
    eight, single = parallel.data_mesh(), jax.make_mesh(
        (1,), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1])
    model = training.create_model(config)
    outcome = {}
    for name, mesh in (('eight', eight), ('one', single)):
      parallel.data_mesh = lambda mesh=mesh: mesh
      stepped, _ = step(parallel.replicate(state, mesh),
                        *parallel.shard_batch(mesh, images, labels), key)
      variables = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
      report_dir = pathlib.Path(sys.argv[1], f'report_{name}')
      report_dir.mkdir()
      report = conversion_report.run(config, report_dir, model, variables, dataset.test)
      outcome[name] = {'params': jax.device_get(stepped.params),
                       'ann': report['ann_accuracy'],
                       'cos': report['methods']['cos_rho2']['accuracy_by_T']}
    difference = max(float(np.abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(outcome['eight']['params']), jax.tree.leaves(outcome['one']['params'])))
    print(json.dumps({'difference': difference,
                      'accuracies': [outcome[n]['cos'] for n in ('eight', 'one')],
                      'ann': [outcome[n]['ann'] for n in ('eight', 'one')]}))
""")


def test_eight_devices_give_the_single_device_results(tmp_path):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
  result = subprocess.run(
    [sys.executable, '-c', MULTI_DEVICE_SCRIPT, str(tmp_path)],
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


HOLD_LOCK_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from cos_jax import workdir
    with workdir.exclusive(Path(sys.argv[1])):
      print('locked', flush=True)
      time.sleep(600)
""")


def test_a_second_process_on_a_workdir_is_refused_until_the_first_dies(tmp_path):
  process = subprocess.Popen(
    [sys.executable, '-c', HOLD_LOCK_SCRIPT, str(tmp_path)],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert process.stdout.readline().strip() == 'locked'
    with pytest.raises(
      workdir.WorkdirBusyError, match=f'in use by another process \\(pid {process.pid}\\)'
    ):
      training.train_and_evaluate(_config(), str(tmp_path))
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
    training.train_and_evaluate(_config(learning_rate=0.3, seed=1), str(run))
  # What may change does not stop it: the finished run is simply evaluated again.
  state = training.train_and_evaluate(_config(log_every_steps=2), str(run))
  assert int(state.step) == 16


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
  _, variables = training.restore_variables(_config(), run)
  assert f'Skipped the damaged checkpoint of step {steps[-1]}' in capsys.readouterr().out
  np.testing.assert_array_equal(
    variables['params']['head']['bias'], restored_at(run, steps[-2])['params']['head']['bias']
  )
  # Training resumes from the whole one, sets the damaged one aside and ends as it should have.
  state = training.train_and_evaluate(_config(), str(run))
  assert f'Moved the damaged checkpoint of step {steps[-1]}' in capsys.readouterr().out
  for a, b in zip(
    jax.tree.leaves(state.params), jax.tree.leaves(finished_run[1].params), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def restored_at(run: Path, step: int) -> dict:
  model = training.create_model(_config())
  abstract = jax.eval_shape(
    lambda: training.create_train_state(_config(), model, 1, jax.random.key(0))
  )
  state = ocp.CheckpointManager(run / 'checkpoints').restore(
    step, args=ocp.args.StandardRestore(abstract)
  )
  return {'params': state.params}


def test_a_torn_last_metrics_line_is_dropped(finished_run, tmp_path, capsys):
  run = _copy_of(finished_run, tmp_path)
  metrics = run / 'metrics.jsonl'
  metrics.write_text(metrics.read_text() + '{"step": 16, "loss": 0.3')
  training.train_and_evaluate(_config(), str(run))
  assert 'Dropped the torn last line' in capsys.readouterr().out
  for line in metrics.read_text().splitlines():
    json.loads(line)


INTERRUPTED_SAVE_SCRIPT = textwrap.dedent("""
    import sys, time
    import orbax.checkpoint as ocp
    from configs import test as test_config
    from cos_jax import training
    real_save = ocp.CheckpointManager.save

    def save_then_wait(self, step, *args, **kwargs):  # Ctrl-C arrives while step 10 is written
      saved = real_save(self, step, *args, **kwargs)
      if step == 10:
        print('saving', flush=True)
        for _ in range(6000):  # not one sleep(600): a SIGINT that lands on another thread
          time.sleep(0.1)      # (grain's, orbax's) is raised only when this one runs Python
      return saved

    ocp.CheckpointManager.save = save_then_wait
    config = test_config.get_config()
    config.conversion.enabled = False
    training.train_and_evaluate(config, sys.argv[1])
""")


def test_ctrl_c_during_a_checkpoint_write_exits_promptly_leaving_checkpoints_whole(tmp_path):
  process = subprocess.Popen(
    [sys.executable, '-c', INTERRUPTED_SAVE_SCRIPT, str(tmp_path)],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    assert any(line.strip() == 'saving' for line in iter(process.stdout.readline, ''))
    process.send_signal(signal.SIGINT)
    process.wait(timeout=120)  # a hang (the save sleeps 600 s) fails; 60 s was short under load
  finally:
    process.kill()
  assert process.returncode != 0 and 'KeyboardInterrupt' in process.stderr.read()
  _, variables = training.restore_variables(_config(), tmp_path)
  assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(variables))


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


CONVERT_INTERRUPTED_SCRIPT = textwrap.dedent("""
    import runpy, sys
    from cos_jax import training

    def interrupted(*args):
      raise KeyboardInterrupt

    training.convert_and_report = interrupted
    sys.argv = ['convert.py', '--workdir=' + sys.argv[1]]
    runpy.run_path('convert.py', run_name='__main__')
""")


def test_ctrl_c_in_convert_py_names_only_the_report_as_what_resumes(tmp_path):
  process = subprocess.run(
    [sys.executable, '-c', CONVERT_INTERRUPTED_SCRIPT, str(tmp_path)],
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


def test_worker_processes_give_the_batches_of_threads():
  split = data.ArraySplit(np.arange(32, dtype=np.uint8).reshape(32, 1, 1, 1) * 7, np.arange(32))
  transform = augment.TrainTransform('cifar', 1, 1, flip=True)
  threads, workers = (
    list(
      data.train_batches(
        split, batch_size=8, seed=2, start_step=1, num_steps=6, transform=transform, workers=count
      )
    )
    for count in (0, 2)
  )
  for (a, la), (b, lb) in zip(threads, workers, strict=True):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
