"""Data sources and the host-side input pipeline.

Every source yields the same thing: uint8 images [N, H, W, C] and int32 labels [N], held in
memory (CIFAR is 150 MB; ImageNet-sized image folders are decoded once into a cache file).
Batches are drawn in an order that is a pure function of (seed, epoch, step), so a resumed run
sees exactly the batches an uninterrupted one would.

Sources (`config.data_source`):
  tfds          CIFAR-10/100, ImageNet through tensorflow-datasets (downloads; needs tensorflow).
  cifar_pickle  the `cifar-10-batches-py` / `cifar-100-python` folders other frameworks download.
  image_folder  <data_dir>/<split>/<class>/*.jpg|*.png, classes sorted by name.
  digits        scikit-learn's bundled 8x8 digits: real data that needs no download.
  synthetic     random class-dependent patterns, for tests.
"""

import dataclasses
import hashlib
import os
import pickle
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
TFDS_NAMES = {'cifar10': 'cifar10', 'cifar100': 'cifar100', 'imagenet': 'imagenet2012'}
CIFAR_PICKLE_FOLDERS = {'cifar10': 'cifar-10-batches-py', 'cifar100': 'cifar-100-python'}


class DataError(RuntimeError):
  """A data source is missing or malformed; the message says what was expected and how to fix it."""


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray  # int32 [N]

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
  train: Split
  test: Split
  num_classes: int
  class_names: tuple[str, ...]


def load(config) -> Dataset:
  """Loads the data set the config names (`data_source`, `dataset`, `data_dir`)."""
  loaders = {'tfds': _load_tfds, 'cifar_pickle': _load_cifar_pickle,
             'image_folder': _load_image_folder, 'digits': _load_digits,
             'synthetic': _load_synthetic}
  if config.data_source not in loaders:
    raise DataError(f'Unknown data_source {config.data_source!r}: expected one of '
                    f'{sorted(loaders)}.')
  return loaders[config.data_source](config)


def _load_tfds(config) -> Dataset:
  if config.dataset not in TFDS_NAMES:
    raise DataError(f'tfds source: unknown dataset {config.dataset!r}, expected one of '
                    f'{sorted(TFDS_NAMES)}.')
  name = TFDS_NAMES[config.dataset]
  offline_help = (
      'Without internet, download the data elsewhere and point cos_jax at it: '
      "--config.data_source=cifar_pickle --config.data_dir=<folder holding cifar-10-batches-py "
      "or cifar-100-python>, or --config.data_source=image_folder --config.data_dir=<root with "
      "train/<class>/*.jpg and test/<class>/*.jpg>.")
  if name == 'imagenet2012':
    offline_help = ('tfds cannot download ImageNet: download ILSVRC2012_img_train.tar and '
                    'ILSVRC2012_img_val.tar from image-net.org into ~/tensorflow_datasets/'
                    'downloads/manual/ and run again, or use --config.data_source=image_folder '
                    '--config.data_dir=<root with train/<class>/ and test/<class>/>.')
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    splits = tfds.as_numpy(tfds.load(name, split=['train', config.test_split], batch_size=-1,
                                     as_supervised=True, data_dir=config.get('tfds_dir') or None))
  except ImportError as error:
    raise DataError(f'The tfds source needs tensorflow-datasets and tensorflow ({error}): '
                    f'pip install "cos_jax[tfds]". {offline_help}') from error
  except Exception as error:  # tfds raises many types for network and manual-download problems.
    raise DataError(f'tfds could not load {name!r}: {type(error).__name__}: {error}. '
                    f'{offline_help}') from error
  (train_x, train_y), (test_x, test_y) = splits
  num_classes = int(max(train_y.max(), test_y.max()) + 1)
  return Dataset(Split(train_x, train_y.astype(np.int32)), Split(test_x, test_y.astype(np.int32)),
                 num_classes, tuple(str(i) for i in range(num_classes)))


def _require_dir(path: Path, what: str) -> Path:
  if not path.is_dir():
    raise DataError(f'{what}: expected a folder at {path}, found '
                    f'{"a file" if path.exists() else "nothing"}.')
  return path


def _load_cifar_pickle(config) -> Dataset:
  if config.dataset not in CIFAR_PICKLE_FOLDERS:
    raise DataError(f'cifar_pickle source: dataset must be one of {sorted(CIFAR_PICKLE_FOLDERS)}, '
                    f'got {config.dataset!r}.')
  folder = CIFAR_PICKLE_FOLDERS[config.dataset]
  root = Path(config.data_dir).expanduser()
  if (root / folder).is_dir():
    root = root / folder
  how = (f'download and unpack https://www.cs.toronto.edu/~kriz/{folder.replace("-batches-py", "")}'
         f'-python.tar.gz so that {root} holds the {folder} files')
  _require_dir(root, f'CIFAR pickles ({how})')
  if config.dataset == 'cifar10':
    train_files, test_files, label_key, names_file = (
        [f'data_batch_{i}' for i in range(1, 6)], ['test_batch'], b'labels', 'batches.meta')
    names_key = b'label_names'
  else:
    train_files, test_files, label_key, names_file = (['train'], ['test'], b'fine_labels', 'meta')
    names_key = b'fine_label_names'

  def read(files):
    images, labels = [], []
    for name in files:
      path = root / name
      if not path.is_file():
        raise DataError(f'CIFAR pickles: {path} is missing ({how}).')
      try:
        with open(path, 'rb') as f:
          entry = pickle.load(f, encoding='bytes')
        images.append(np.asarray(entry[b'data'], np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(entry[label_key], np.int32))
      except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as error:
        raise DataError(f'CIFAR pickles: {path} is not a CIFAR python batch '
                        f'({type(error).__name__}: {error}); {how}.') from error
    return Split(np.concatenate(images).transpose(0, 2, 3, 1), np.concatenate(labels))

  train, test = read(train_files), read(test_files)
  num_classes = 10 if config.dataset == 'cifar10' else 100
  names = tuple(str(i) for i in range(num_classes))
  if (root / names_file).is_file():
    with open(root / names_file, 'rb') as f:
      names = tuple(n.decode() for n in pickle.load(f, encoding='bytes')[names_key])
  return Dataset(train, test, num_classes, names)


def _decode_image(path: Path, image_size: int, channels: int) -> np.ndarray:
  """One image file as uint8 [image_size, image_size, channels]; DataError naming the file."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      image.load()
      if image.mode in ('I;16', 'I;16B', 'I;16L', 'I'):  # 16-bit: keep the top 8 bits
        wide = np.asarray(image, np.int64)
        image = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), 'L')
      image = image.convert('RGB' if channels == 3 else 'L')
      if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.BILINEAR)
      return np.asarray(image, np.uint8).reshape(image_size, image_size, channels)
  except (OSError, ValueError, SyntaxError) as error:  # PIL's errors for damaged files
    raise DataError(f'image_folder: cannot decode {path} ({type(error).__name__}: {error}); '
                    'replace or remove the file.') from error


def _decode_folder(split_dir: Path, classes: list[str], image_size: int,
                   channels: int) -> Split:
  images, labels = [], []
  for label, name in enumerate(classes):
    files = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
      raise DataError(f'image_folder: the class folder {split_dir / name} holds no '
                      f'{"/".join(IMAGE_SUFFIXES)} files: add its images or remove the folder.')
    images += [_decode_image(path, image_size, channels) for path in files]
    labels += [label] * len(files)
  return Split(np.stack(images), np.asarray(labels, np.int32))


def _load_image_folder(config) -> Dataset:
  root = _require_dir(Path(config.data_dir).expanduser(),
                      'image_folder (set --config.data_dir to a root holding train/<class>/*.jpg '
                      f'and {config.test_split}/<class>/*.jpg)')
  split_dirs = {split: root / split for split in ('train', config.test_split)}
  for split, path in split_dirs.items():
    _require_dir(path, f'image_folder: the {split!r} split (<root>/{split}/<class>/*.jpg)')
  classes = sorted(p.name for p in split_dirs['train'].iterdir() if p.is_dir())
  test_classes = sorted(p.name for p in split_dirs[config.test_split].iterdir() if p.is_dir())
  if not classes:
    raise DataError(f'image_folder: {split_dirs["train"]} has no class folders.')
  if test_classes != classes:
    raise DataError(f'image_folder: the class folders of {split_dirs[config.test_split]} '
                    f'({test_classes}) differ from those of {split_dirs["train"]} ({classes}).')
  image_size, channels = config.input_shape[0], config.input_shape[2]
  if channels not in (1, 3):
    raise DataError(f'image_folder decodes to 1 (grayscale) or 3 (RGB) channels; input_shape '
                    f'{tuple(config.input_shape)} asks for {channels}.')
  cache = _cache_path(config, root, image_size, channels)
  if cache.is_file():
    with np.load(cache) as arrays:
      splits = [Split(arrays[f'{s}_images'], arrays[f'{s}_labels']) for s in ('train', 'test')]
  else:
    splits = [_decode_folder(split_dirs[s], classes, image_size, channels)
              for s in ('train', config.test_split)]
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix('.partial.npz')
    np.savez(partial, train_images=splits[0].images, train_labels=splits[0].labels,
             test_images=splits[1].images, test_labels=splits[1].labels)
    os.replace(partial, cache)
  return Dataset(splits[0], splits[1], len(classes), tuple(classes))


def _cache_path(config, root: Path, image_size: int, channels: int) -> Path:
  """The decoded-array cache of an image folder, keyed by its path, the image size and channels,
  and every file's name, size and modification time (an image replaced in place is seen)."""
  listing = sorted(f'{p.relative_to(root)}|{p.stat().st_size}|{p.stat().st_mtime_ns}'
                   for p in root.glob('*/*/*'))
  key = hashlib.sha256(f'{root.resolve()}|{image_size}|{channels}|{config.test_split}|'
                       f'{chr(10).join(listing)}'.encode()).hexdigest()[:16]
  cache_dir = Path(config.get('cache_dir') or '~/.cache/cos_jax').expanduser()
  return cache_dir / f'image_folder_{key}.npz'


def _load_digits(config) -> Dataset:
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  order = np.random.default_rng(0).permutation(len(labels))  # a fixed, documented split
  test = order[:config.get('digits_test_size', 360)]
  train = order[config.get('digits_test_size', 360):]
  return Dataset(Split(images[train], labels[train]), Split(images[test], labels[test]), 10,
                 tuple(str(i) for i in range(10)))


def _load_synthetic(config) -> Dataset:
  """Class-dependent patterns plus noise: learnable, so tests can see training work."""
  rng = np.random.default_rng(config.seed)
  shape = tuple(config.input_shape)
  prototypes = rng.uniform(0, 255, (config.num_classes,) + shape)

  def make(n):
    labels = rng.integers(0, config.num_classes, n).astype(np.int32)
    noise = rng.normal(0, 40, (n,) + shape)
    return Split(np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8), labels)

  return Dataset(make(config.synthetic_train_size), make(config.synthetic_test_size),
                 config.num_classes, tuple(str(i) for i in range(config.num_classes)))


def subset(split: Split, size: int) -> Split:
  """A fixed random subset of `size` examples in their original order (all if size < 0).

  Not the first `size`: test splits are often sorted by class.
  """
  if size < 0 or size >= len(split):
    return split
  chosen = np.sort(np.random.default_rng(0).permutation(len(split))[:size])
  return Split(split.images[chosen], split.labels[chosen])


def normalise(images: np.ndarray, mean, std) -> np.ndarray:
  """uint8 [..., C] images to float32, scaled to [0, 1] then normalised per channel."""
  return ((images.astype(np.float32) / 255.0 - np.asarray(mean, np.float32))
          / np.asarray(std, np.float32))


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The example order of one epoch: a pure function of (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def train_batches(split: Split, *, batch_size: int, seed: int, start_step: int, num_steps: int,
                  augment, prefetch: int = 2) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields (uint8 images, labels) for steps start_step..num_steps-1, drop-remainder epochs.

  A background thread prepares (and augments) batches ahead of the training step. Batch k of the
  run depends only on (seed, k), so resuming at start_step replays nothing and skips nothing.
  """
  steps_per_epoch = len(split) // batch_size
  if steps_per_epoch < 1:
    raise DataError(f'batch_size {batch_size} is larger than the training set ({len(split)}).')

  def make(step):
    epoch, index = divmod(step, steps_per_epoch)
    order = epoch_order(len(split), seed, epoch)[index * batch_size:(index + 1) * batch_size]
    images = split.images[order]
    if augment is not None:
      images = augment(images, np.random.default_rng([seed, epoch, index, 1]))
    return images, split.labels[order]

  ready: queue.Queue = queue.Queue(maxsize=prefetch)
  stop = threading.Event()

  def produce():
    try:
      for step in range(start_step, num_steps):
        if stop.is_set():
          return
        ready.put(make(step))
    except Exception as error:  # handed to the consumer, which re-raises it
      ready.put(error)

  threading.Thread(target=produce, daemon=True).start()
  try:
    for _ in range(start_step, num_steps):
      batch = ready.get()
      if isinstance(batch, Exception):
        raise batch
      yield batch
  finally:
    stop.set()


def eval_batches(split: Split, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
  """Yields (images, labels, n_valid), the last batch zero-padded to batch_size."""
  for start in range(0, len(split), batch_size):
    images = split.images[start:start + batch_size]
    labels = split.labels[start:start + batch_size]
    valid = len(labels)
    if valid < batch_size:
      pad = batch_size - valid
      images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
      labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    yield images, labels, valid
