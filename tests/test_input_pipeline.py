"""The grain input pipeline on real formats: an ImageNet-style folder through the ImageNet config,
and tensorflow-datasets through its random-access data_source."""

import json

import numpy as np
import pytest
from PIL import Image

from configs import imagenet
from configs import test as test_config
from cos_jax import augment, data, training

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
  config.conversion.update(batch_size=6, max_T=1, rhos=(1,), statistics_T=1)
  return config


def test_an_imagenet_folder_trains_through_the_imagenet_config(tmp_path):
  root = tmp_path / 'imagenet'
  _imagenet_folder(root)
  broken = root / 'train' / 'n01443537' / 'broken.JPEG'
  broken.write_bytes(b'\xff\xd8\xff\xe0 not a whole JPEG')
  config = _shrunk_imagenet_config(root)
  assert config.preprocess == 'imagenet'
  with pytest.raises(data.DataError, match=r'cannot decode .*n01443537/broken.JPEG.*replace or'):
    training.train_and_evaluate(config, str(tmp_path / 'with_broken_file'))
  broken.unlink()
  state = training.train_and_evaluate(config, str(tmp_path / 'run'))
  assert int(state.step) == 2  # 13 images, batches of 6: 2 steps per epoch
  report = json.loads((tmp_path / 'run' / 'report.json').read_text())
  assert report['examples'] == 12 and set(report['methods']) == {'qcfs', 'cos_rho1'}


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
    dataset = data.load(config)
    assert isinstance(dataset.train, data.TfdsSplit) and dataset.num_classes == 10
    images, labels = next(
      data.train_batches(
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
