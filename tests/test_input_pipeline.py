"""The grain input pipeline on real formats: an ImageNet-style folder through the ImageNet config,
and tensorflow-datasets through its random-access data_source."""

import json

import numpy as np
import pytest
from PIL import Image

from configs import imagenet
from configs import test as test_config
from cos_jax import augment, input_pipeline, sources, training

SIZES = ((40, 60), (64, 48), (50, 50), (33, 70))  # (height, width): sizes and shapes differ


def _imagenet_folder(root) -> None:
  rng = np.random.default_rng(0)
  for split in ('train', 'val'):
    for label, name in enumerate(('n01440764', 'n01443537', 'n01484850')):
      folder = root / split / name
      folder.mkdir(parents=True)
      for index, (height, width) in enumerate(SIZES):
        pixels = np.clip(rng.normal(60 + 70 * label, 20, (height, width, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f'{index}.JPEG', quality=90)
  gray = rng.integers(0, 255, (45, 30)).astype(np.uint8)
  Image.fromarray(gray).save(root / 'train' / 'n01440764' / 'gray.JPEG')


def _shrunk_imagenet_config(root):
  config = imagenet.get_config()
  config.update(
    data_source='image_folder',
    data_dir=str(root),
    test_split='val',
    arch='tiny',
    num_classes=3,
    input_shape=(16, 16, 3),
    batch_size=6,
    num_epochs=1,
    eval_batch_size=6,
    log_every_steps=1,
    checkpoint_every_steps=2,
    eval_every_epochs=0,
    data_threads=2,
  )
  config.conversion.update(batch_size=6, max_T=1, rhos=(1,), srp_taus=(1,), statistics_T=1)
  return config


def test_an_imagenet_folder_trains_through_the_imagenet_config(tmp_path):
  root = tmp_path / 'imagenet'
  _imagenet_folder(root)
  broken = root / 'train' / 'n01443537' / 'broken.JPEG'
  broken.write_bytes(b'\xff\xd8\xff\xe0 not a whole JPEG')
  config = _shrunk_imagenet_config(root)
  assert config.preprocess == 'imagenet'
  with pytest.raises(sources.DataError, match=r'cannot decode .*n01443537/broken.JPEG.*replace or'):
    training.train_and_evaluate(config, str(tmp_path / 'with_broken_file'))
  broken.unlink()
  state = training.train_and_evaluate(config, str(tmp_path / 'run'))
  assert int(state.step) == 2  # 13 images, batches of 6: 2 steps per epoch
  report = json.loads((tmp_path / 'run' / 'report.json').read_text())
  assert report['examples'] == 12 and set(report['methods']) == {'qcfs', 'cos_rho1', 'srp_tau1'}


def test_tfds_source_reads_through_its_data_source():
  tfds = pytest.importorskip('tensorflow_datasets')
  config = test_config.get_config()
  config.update(
    dataset='cifar10',
    data_source='tfds',
    num_classes=10,
    input_shape=(32, 32, 3),
    mean=(0.5,) * 3,
    std=(0.25,) * 3,
  )
  with tfds.testing.mock_data(num_examples=12):
    dataset = sources.load(config)
    assert isinstance(dataset.train, sources.TfdsSplit) and dataset.num_classes == 10
    images, labels = next(
      input_pipeline.train_batches(
        dataset.train,
        batch_size=4,
        seed=0,
        start_step=0,
        num_steps=3,
        transform=augment.TrainTransform.from_config(config),
      )
    )
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (4,) and ((0 <= labels) & (labels < 10)).all()
    image, label = dataset.test[0]
    assert image.shape == (32, 32, 3) and isinstance(label, int)


def _identity(image, rng):
  del rng
  return image


def test_batch_order_is_a_function_of_the_step():
  split = sources.ArraySplit(np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1), np.arange(40))
  whole = list(
    input_pipeline.train_batches(
      split, batch_size=8, seed=3, start_step=0, num_steps=12, transform=_identity
    )
  )
  tail = list(
    input_pipeline.train_batches(
      split, batch_size=8, seed=3, start_step=7, num_steps=12, transform=_identity
    )
  )
  for (a, la), (b, lb) in zip(whole[7:], tail, strict=True):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
  epochs = [np.concatenate([labels for _, labels in whole[5 * e : 5 * e + 5]]) for e in (0, 1)]
  assert sorted(epochs[0]) == list(range(40))  # an epoch visits every example once
  assert (epochs[0] != epochs[1]).any()  # and every epoch in a new order


def test_processes_read_disjoint_shares_that_make_the_global_batch():
  split = sources.ArraySplit(np.arange(48, dtype=np.uint8).reshape(48, 1, 1, 1), np.arange(48))

  def batches(index, count):
    return list(
      input_pipeline.train_batches(
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


def test_worker_processes_give_the_batches_of_threads():
  split = sources.ArraySplit(np.arange(32, dtype=np.uint8).reshape(32, 1, 1, 1) * 7, np.arange(32))
  transform = augment.TrainTransform('cifar', 1, 1, flip=True)
  threads, workers = (
    list(
      input_pipeline.train_batches(
        split, batch_size=8, seed=2, start_step=1, num_steps=6, transform=transform, workers=count
      )
    )
    for count in (0, 2)
  )
  for (a, la), (b, lb) in zip(threads, workers, strict=True):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
