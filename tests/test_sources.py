"""The data sources on files the tests write: CIFAR pickles, image folders, tfds' failure,
digits."""

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cos_jax import augment, input_pipeline, sources
from tests.conftest import config_with


def _identity(image, rng):
  del rng
  return image


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
  dataset = sources.load(
    config_with(
      dataset='cifar10', data_source='cifar_pickle', data_dir=str(tmp_path), input_shape=(32, 32, 3)
    )
  )
  assert dataset.train.images.shape == (20, 32, 32, 3)
  assert dataset.class_names[3] == 'c3'
  # CIFAR rows are channel-major (R plane, G plane, B plane): pixel (0, 1) red is byte 1.
  np.testing.assert_array_equal(dataset.test.images[0, 0, 1], last[b'data'][0, [1, 1025, 2049]])
  (tmp_path / 'cifar-10-batches-py' / 'data_batch_3').write_bytes(b'not a pickle')
  with pytest.raises(sources.DataError, match='data_batch_3 is not a CIFAR python batch'):
    sources.load(config_with(dataset='cifar10', data_source='cifar_pickle', data_dir=str(tmp_path)))


def test_image_folder_source_reads_one_file_per_example_when_asked(tmp_path, monkeypatch):
  root = tmp_path / 'images'
  for split in ('train', 'test'):
    for label, name in enumerate(['cat', 'ant']):
      (root / split / name).mkdir(parents=True)
      for i in range(3):
        pixels = np.full((8, 8 + i, 3), 40 * label + 10 * i, np.uint8)  # sizes may differ
        Image.fromarray(pixels).save(root / split / name / f'{i}.png')
  config = config_with(
    data_source='image_folder', data_dir=str(root), input_shape=(8, 8, 3), preload_images=False
  )
  decode = sources._decode_image
  monkeypatch.setattr(sources, '_decode_image', lambda *args: pytest.fail('decoded at load'))
  dataset = sources.load(config)
  assert dataset.class_names == ('ant', 'cat')  # sorted by name, as the labels are
  assert len(dataset.train) == 6 and list(dataset.train.labels) == [0, 0, 0, 1, 1, 1]
  monkeypatch.setattr(sources, '_decode_image', decode)
  image, label = dataset.train[2]
  assert image.shape == (8, 10, 3) and image[0, 0, 0] == 60 and label == 0  # its own size
  # An image replaced in place is read as it is now.
  Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(root / 'train' / 'ant' / '0.png')
  assert dataset.train[0][0][0, 0, 0] == 7
  images, labels, real = next(
    input_pipeline.eval_batches(
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
    config = config_with(
      data_source='image_folder',
      data_dir=str(root),
      input_shape=(8, 6, channels),
      mean=(0.5,) * channels,
      std=(0.5,) * channels,
    )
    preloaded = sources.load(config)
    read_each_time = sources.load(config_with(**{**config.to_dict(), 'preload_images': False}))
    assert isinstance(
      sources.load(config, preload=False).test, sources.ImageFolderSplit
    )  # convert.py
    for split in ('train', 'test'):
      held, read = getattr(preloaded, split), getattr(read_each_time, split)
      assert isinstance(held, sources.ArraySplit) and held.images.shape == (6, 8, 6, channels)
      for index in range(len(read)):
        np.testing.assert_array_equal(held[index][0], read[index][0])
        assert held[index][1] == read[index][1]
  Image.fromarray(np.zeros((9, 6, 3), np.uint8)).save(root / 'test' / 'ant' / 'tall.png')
  with pytest.raises(
    sources.DataError,
    match=r'must share a size.*ant/tall.png is \(9, 6, 3\) where '
    r'most are \(8, 6, 3\).*--config.preload_images=False',
  ):
    sources.load(config_with(data_source='image_folder', data_dir=str(root), input_shape=(8, 6, 3)))


def _image_folder(root: Path, write_first) -> None:
  for split in ('train', 'test'):
    for name in ('a', 'b'):
      (root / split / name).mkdir(parents=True)
      for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 60, np.uint8)).save(root / split / name / f'{i}.png')
  write_first(root / 'train' / 'a' / '0.png')


def test_image_folder_data_errors_name_the_file(tmp_path):
  def load(root, **overrides):
    return sources.load(
      config_with(
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
  with pytest.raises(sources.DataError, match=r'cannot decode .*truncated/train/a/0.jpg'):
    list(
      input_pipeline.train_batches(
        load(truncated).train, batch_size=2, seed=0, start_step=0, num_steps=2, transform=_identity
      )
    )
  empty = tmp_path / 'empty'
  _image_folder(empty, lambda path: None)
  (empty / 'train' / 'c').mkdir()
  (empty / 'test' / 'c').mkdir()
  with pytest.raises(sources.DataError, match=r'class folder .*empty/train/c holds no'):
    load(empty)
  deep = tmp_path / 'deep'
  _image_folder(deep, lambda path: Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(path))
  assert load(deep).train[0][0][0, 0, 0] == 40000 >> 8  # 16 bits -> the top 8
  gray = load(deep, input_shape=(8, 8, 1), mean=(0.5,), std=(0.5,))
  assert gray.train[0][0].shape == (8, 8, 1)


def test_image_folder_reads_every_format_and_nested_folder_and_says_what_it_left_out(
  tmp_path, capsys
):
  root = tmp_path / 'images'
  formats = ('png', 'jpg', 'bmp', 'webp', 'tif', 'gif')
  for split in ('train', 'test'):
    for name in ('a', 'b'):
      folder = root / split / name
      (folder / 'nested' / 'deeper').mkdir(parents=True)
      for i, suffix in enumerate(formats):
        image = Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8))
        image.save(folder / f'{i}.{suffix}')
        image.save(folder / 'nested' / 'deeper' / f'{i}.{suffix.upper()}')
      (folder / '._0.png').write_bytes(b'\x00\x05\x16\x07 macOS resource fork')
      (folder / '.DS_Store').write_bytes(b'Bud1')
      (folder / '.thumbnails').mkdir()
      Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / '.thumbnails' / 'x.png')
      (folder / 'labels.txt').write_text('not an image')
    (root / split / '.hidden_class').mkdir()
  (root / 'train' / 'README').write_text('loose')
  config = config_with(
    data_source='image_folder', data_dir=str(root), input_shape=(8, 8, 3), preload_images=False
  )
  dataset = sources.load(config)
  assert dataset.class_names == ('a', 'b')
  assert len(dataset.train) == len(dataset.test) == 2 * 2 * len(formats)  # 24 of 24 images
  names = [p.relative_to(root / 'train').as_posix() for p in dataset.train.files]
  assert 'a/3.webp' in names and 'b/nested/deeper/5.GIF' in names and 'a/4.tif' in names
  assert [int(dataset.train[i][0][0, 0, 0]) for i in range(len(formats))] == [0, 10, 20, 30, 40, 50]
  out = capsys.readouterr().out
  assert (
    f'image_folder: left out 2 files in the class folders of {root / "train"} that are not '
    'images PIL reads, and 1 files outside any class folder (e.g.'
  ) in out
  assert f'left out 2 files in the class folders of {root / "test"}' in out
  assert '._0.png' not in out and 'DS_Store' not in out


def test_an_image_too_large_to_trust_is_named(tmp_path, monkeypatch):
  """PIL refuses images of over 2 x MAX_IMAGE_PIXELS (decompression bombs): the error names the
  file and says what to do (lowered here so that a small image trips it)."""
  path = tmp_path / 'huge.png'
  Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 100)
  with pytest.raises(sources.DataError, match=r'cannot decode .*huge.png \(DecompressionBombError'):
    sources._decode_image(path, 3)  # pylint: disable=protected-access


def test_missing_data_folders_say_what_was_expected(tmp_path):
  with pytest.raises(sources.DataError, match='expected a folder at .*nowhere.*found nothing'):
    sources.load(config_with(data_source='image_folder', data_dir=str(tmp_path / 'nowhere')))
  with pytest.raises(
    sources.DataError, match=r'found nothing \(a relative path, read from the current directory'
  ):
    sources.load(config_with(data_source='image_folder', data_dir='relative/nowhere'))
  (tmp_path / 'train').mkdir()
  with pytest.raises(sources.DataError, match="the 'test' split"):
    sources.load(config_with(data_source='image_folder', data_dir=str(tmp_path)))
  with pytest.raises(sources.DataError, match='cifar-10-python.tar.gz'):
    sources.load(
      config_with(dataset='cifar10', data_source='cifar_pickle', data_dir=str(tmp_path / 'none'))
    )
  with pytest.raises(sources.DataError, match="Unknown data_source 'ftp'"):
    sources.load(config_with(data_source='ftp'))


def test_tfds_failure_tells_what_to_do(monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')

  def offline(*args, **kwargs):
    raise ConnectionError('no route to host')

  monkeypatch.setattr(tfds, 'data_source', offline)
  with pytest.raises(sources.DataError, match='data_source=cifar_pickle'):
    sources.load(config_with(dataset='cifar10', data_source='tfds'))
  with pytest.raises(sources.DataError, match='downloads/manual'):
    sources.load(config_with(dataset='imagenet', data_source='tfds'))


def test_subset_spans_a_class_sorted_split():
  split = sources.ArraySplit(np.zeros((100, 1, 1, 1), np.uint8), np.repeat(np.arange(10), 10))
  labels = [label for _, label in sources.subset(split, 20)]
  assert len(labels) == 20 and len(set(labels)) >= 6
  assert labels == [label for _, label in sources.subset(split, 20)]
  assert sources.subset(split, -1) is split


def test_digits_source_is_real_and_offline():
  dataset = sources.load(config_with(dataset='digits', data_source='digits'))
  assert dataset.train.images.shape == (1437, 8, 8, 1)
  assert len(dataset.test) == 360 and dataset.num_classes == 10
  with pytest.raises(sources.DataError, match=r'1-channel images, but input_shape \(8, 8, 3\)'):
    sources.load(config_with(dataset='digits', data_source='digits', input_shape=(8, 8, 3)))
