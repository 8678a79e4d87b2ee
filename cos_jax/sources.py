"""Data sources: random-access splits of (uint8 [H, W, C] image, int label) examples.

Every source is a split with `len(split)` examples and `split[i]` one of them, read when asked
for, so nothing but the arrays that are small anyway (digits, synthetic data, CIFAR pickles) is
held in memory:
  tfds          CIFAR-10/100, ImageNet through tensorflow-datasets' random-access `data_source`
                (ArrayRecord files, prepared by tfds once; the download needs the internet).
  cifar_pickle  the `cifar-10-batches-py` / `cifar-100-python` folders other frameworks download.
  image_folder  <data_dir>/<split>/<class>/**/<image>, every format PIL reads, in nested
                folders too (as torchvision's ImageFolder), hidden files and folders skipped
                and what is left out reported; classes sorted by name, one file read and
                decoded per example; or, with `preload_images`, every image decoded once when
                the data set is opened and held in memory (data sets that fit: CIFAR).
  digits        scikit-learn's bundled 8x8 digits: real data that needs no download.
  synthetic     random class-dependent patterns, for tests.

`input_pipeline` turns a split into batches.
"""

import collections
import concurrent.futures
import dataclasses
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np


def image_suffixes() -> frozenset[str]:
  """The file suffixes of every image format PIL can decode here (.jpg, .png, .bmp, .webp, .tif,
  .gif, ...: those of the installed plug-ins, less the stubs that need an outside handler)."""
  from PIL import Image, ImageFile  # pylint: disable=g-import-not-at-top

  Image.init()
  return frozenset(
    suffix
    for suffix, name in Image.registered_extensions().items()
    if name in Image.OPEN
    and not (
      isinstance(Image.OPEN[name][0], type)
      and issubclass(Image.OPEN[name][0], ImageFile.StubImageFile)
    )
  )


TFDS_NAMES = {'cifar10': 'cifar10', 'cifar100': 'cifar100', 'imagenet': 'imagenet2012'}
CIFAR_PICKLE_FOLDERS = {'cifar10': 'cifar-10-batches-py', 'cifar100': 'cifar-100-python'}


class DataError(RuntimeError):
  """A data source is missing or malformed; the message says what was expected and how to fix it."""


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  """Examples held in memory."""

  images: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray  # int32 [N]

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    return self.images[index], int(self.labels[index])


@dataclasses.dataclass(frozen=True)
class ImageFolderSplit:
  """Image files, decoded one at a time when read (any size; 1 or 3 channels)."""

  files: tuple[Path, ...]
  labels: np.ndarray  # int32 [N]
  channels: int

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    return _decode_image(self.files[index], self.channels), int(self.labels[index])


@dataclasses.dataclass(frozen=True)
class TfdsSplit:
  """A tensorflow-datasets `data_source`: random access into its ArrayRecord files."""

  source: Any

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    example = self.source[index]
    return np.asarray(example['image'], np.uint8), int(example['label'])


@dataclasses.dataclass(frozen=True)
class SubsetSplit:
  """The examples of `parent` at `indices`, in that order."""

  parent: Any
  indices: np.ndarray

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    return self.parent[int(self.indices[index])]


Split = ArraySplit | ImageFolderSplit | TfdsSplit | SubsetSplit


@dataclasses.dataclass(frozen=True)
class Dataset:
  train: Split
  test: Split
  num_classes: int
  class_names: tuple[str, ...]


def load(config, *, preload: bool = True) -> Dataset:
  """Opens the data set the config names (`data_source`, `dataset`, `data_dir`).

  preload=False leaves an image folder on disk whatever `preload_images` says: for readers that
  see each image once, like the conversion report.
  """
  if config.data_source not in DATA_SOURCES:
    raise DataError(
      f'Unknown data_source {config.data_source!r}: expected one of {list(DATA_SOURCES)}.'
    )
  if config.data_source == 'image_folder':  # decoded to the channels asked for
    return _load_image_folder(config, preload=preload and config.preload_images)
  dataset = _LOADERS[config.data_source](config)
  channels = np.shape(dataset.train[0][0])[-1]
  if channels != config.input_shape[2]:
    raise DataError(
      f'The {config.data_source} data has {channels}-channel images, but '
      f'input_shape {tuple(config.input_shape)} asks for {config.input_shape[2]}: '
      f'set --config.input_shape with {channels} channels (and mean and std with '
      f'{channels} values each).'
    )
  return dataset


def _load_tfds(config) -> Dataset:
  if config.dataset not in TFDS_NAMES:
    raise DataError(
      f'tfds source: unknown dataset {config.dataset!r}, expected one of {sorted(TFDS_NAMES)}.'
    )
  name = TFDS_NAMES[config.dataset]
  offline_help = (
    'Without internet, download the data elsewhere and point cos_jax at it: '
    '--config.data_source=cifar_pickle --config.data_dir=<folder holding cifar-10-batches-py '
    'or cifar-100-python>, or --config.data_source=image_folder --config.data_dir=<root with '
    'train/<class>/*.jpg and test/<class>/*.jpg>.'
  )
  if name == 'imagenet2012':
    offline_help = (
      'tfds cannot download ImageNet: download ILSVRC2012_img_train.tar and '
      'ILSVRC2012_img_val.tar from image-net.org into ~/tensorflow_datasets/'
      'downloads/manual/ and run again, or use --config.data_source=image_folder '
      '--config.data_dir=<root with train/<class>/ and val/<class>/>.'
    )
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    splits = tfds.data_source(
      name, split=['train', config.test_split], data_dir=config.tfds_dir or None
    )
  except ImportError as error:
    raise DataError(
      f'The tfds source needs tensorflow-datasets and tensorflow ({error}): '
      f'pip install "cos_jax[tfds]". {offline_help}'
    ) from error
  except Exception as error:  # tfds raises many types for network and manual-download problems.
    raise DataError(
      f'tfds could not load {name!r}: {type(error).__name__}: {error}. {offline_help}'
    ) from error
  features = splits[0].dataset_info.features
  num_classes = features['label'].num_classes
  names = (
    tuple(features['label'].names)
    if features['label'].names
    else tuple(str(i) for i in range(num_classes))
  )
  return Dataset(TfdsSplit(splits[0]), TfdsSplit(splits[1]), num_classes, names)


def _require_dir(path: Path, what: str) -> Path:
  if not path.is_dir():
    relative = (
      f' (a relative path, read from the current directory {Path.cwd()}: run from the folder '
      'it was written for, or give the absolute path)'
      if not path.is_absolute()
      else ''
    )
    raise DataError(
      f'{what}: expected a folder at {path}, found {"a file" if path.exists() else "nothing"}'
      f'{relative}.'
    )
  return path


def _load_cifar_pickle(config) -> Dataset:
  if config.dataset not in CIFAR_PICKLE_FOLDERS:
    raise DataError(
      f'cifar_pickle source: dataset must be one of {sorted(CIFAR_PICKLE_FOLDERS)}, '
      f'got {config.dataset!r}.'
    )
  folder = CIFAR_PICKLE_FOLDERS[config.dataset]
  root = Path(config.data_dir).expanduser()
  if (root / folder).is_dir():
    root = root / folder
  how = (
    f'download and unpack https://www.cs.toronto.edu/~kriz/{folder.replace("-batches-py", "")}'
    f'-python.tar.gz so that {root} holds the {folder} files'
  )
  _require_dir(root, f'CIFAR pickles ({how})')
  if config.dataset == 'cifar10':
    train_files, test_files, label_key, names_file = (
      [f'data_batch_{i}' for i in range(1, 6)],
      ['test_batch'],
      b'labels',
      'batches.meta',
    )
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
        raise DataError(
          f'CIFAR pickles: {path} is not a CIFAR python batch '
          f'({type(error).__name__}: {error}); {how}.'
        ) from error
    return ArraySplit(np.concatenate(images).transpose(0, 2, 3, 1), np.concatenate(labels))

  train, test = read(train_files), read(test_files)
  num_classes = 10 if config.dataset == 'cifar10' else 100
  names = tuple(str(i) for i in range(num_classes))
  if (root / names_file).is_file():
    with open(root / names_file, 'rb') as f:
      names = tuple(n.decode() for n in pickle.load(f, encoding='bytes')[names_key])
  return Dataset(train, test, num_classes, names)


def _decode_image(path: Path, channels: int) -> np.ndarray:
  """One image file as uint8 [H, W, channels] at its own size; DataError naming the file."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  try:
    with Image.open(path) as image:
      image.load()
      if image.mode in ('I;16', 'I;16B', 'I;16L', 'I'):  # 16-bit: keep the top 8 bits
        wide = np.asarray(image, np.int64)
        image = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), 'L')
      image = image.convert('RGB' if channels == 3 else 'L')
      return np.asarray(image, np.uint8).reshape(image.size[1], image.size[0], channels)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:  # PIL's
    # errors for damaged files, and for images too large to be taken on trust
    raise DataError(
      f'image_folder: cannot decode {path} ({type(error).__name__}: {error}); '
      'replace or remove the file.'
    ) from error


def _class_files(class_dir: Path, suffixes: frozenset[str]) -> tuple[list[Path], list[Path]]:
  """(images, other files) under a class folder, nested folders included, sorted by path;
  hidden files and folders (a name starting with '.', macOS's `._x.png` too) are neither."""
  images, others = [], []
  for path in sorted(class_dir.rglob('*')):
    if any(part.startswith('.') for part in path.relative_to(class_dir).parts):
      continue
    if path.is_file():
      (images if path.suffix.lower() in suffixes else others).append(path)
  return images, others


def _list_folder(split_dir: Path, classes: list[str], channels: int) -> ImageFolderSplit:
  files, labels, left_out = [], [], []
  suffixes = image_suffixes()
  for label, name in enumerate(classes):
    found, others = _class_files(split_dir / name, suffixes)
    if not found:
      raise DataError(
        f'image_folder: the class folder {split_dir / name} holds no image files (of the '
        'formats PIL reads): add its images or remove the folder.'
      )
    files += found
    labels += [label] * len(found)
    left_out += others
  loose = [p for p in split_dir.iterdir() if p.is_file() and not p.name.startswith('.')]
  if left_out or loose:
    examples = ', '.join(str(p) for p in (left_out + loose)[:3])
    print(
      f'image_folder: left out {len(left_out)} files in the class folders of {split_dir} that '
      f'are not images PIL reads, and {len(loose)} files outside any class folder (e.g. '
      f'{examples}).',
      flush=True,
    )
  return ImageFolderSplit(tuple(files), np.asarray(labels, np.int32), channels)


def _load_image_folder(config, preload: bool) -> Dataset:
  root = _require_dir(
    Path(config.data_dir).expanduser(),
    'image_folder (set --config.data_dir to a root holding train/<class>/*.jpg '
    f'and {config.test_split}/<class>/*.jpg)',
  )
  split_dirs = {split: root / split for split in ('train', config.test_split)}
  for split, path in split_dirs.items():
    _require_dir(path, f'image_folder: the {split!r} split (<root>/{split}/<class>/*.jpg)')
  classes, test_classes = (
    sorted(p.name for p in split_dirs[s].iterdir() if p.is_dir() and not p.name.startswith('.'))
    for s in ('train', config.test_split)
  )
  if not classes:
    raise DataError(f'image_folder: {split_dirs["train"]} has no class folders.')
  if test_classes != classes:
    raise DataError(
      f'image_folder: the class folders of {split_dirs[config.test_split]} '
      f'({test_classes}) differ from those of {split_dirs["train"]} ({classes}).'
    )
  channels = config.input_shape[2]
  if channels not in (1, 3):
    raise DataError(
      f'image_folder decodes to 1 (grayscale) or 3 (RGB) channels; input_shape '
      f'{tuple(config.input_shape)} asks for {channels}.'
    )
  train, test = (
    _list_folder(split_dirs[s], classes, channels) for s in ('train', config.test_split)
  )
  if preload:
    train, test = (
      _preload(split, split_dirs[s], config.data_threads)
      for split, s in ((train, 'train'), (test, config.test_split))
    )
  return Dataset(train, test, len(classes), tuple(classes))


def _preload(split: ImageFolderSplit, split_dir: Path, threads: int) -> ArraySplit:
  """Every image of the split decoded once and held in memory (`preload_images`).

  Decoding costs a training run's host more than the whole CIFAR augmentation does, and on a
  machine whose cores all run the step it is time taken from the step, every epoch again.
  """
  start = time.time()
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    images = list(pool.map(lambda path: _decode_image(path, split.channels), split.files))
  sizes = collections.Counter(image.shape for image in images)
  if len(sizes) > 1:
    (common, _), (other, _) = sizes.most_common(2)
    odd = next(
      path for path, image in zip(split.files, images, strict=True) if image.shape == other
    )
    raise DataError(
      f'preload_images holds a split as one array, so its images must share a '
      f'size: {split_dir} has {dict(sizes)} ([H, W, C]: count), e.g. {odd} is '
      f'{other} where most are {common}. Set --config.preload_images=False to '
      'decode each image when it is read.'
    )
  stacked = np.stack(images)
  print(
    f'Decoded the {len(images)} images of {split_dir} into memory ({stacked.nbytes / 1e6:.0f} '
    f'MB) in {time.time() - start:.0f} s.',
    flush=True,
  )
  return ArraySplit(stacked, split.labels)


def _load_digits(config) -> Dataset:
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  digits = load_digits()
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  order = np.random.default_rng(0).permutation(len(labels))  # a fixed, documented split
  test, train = order[: config.digits_test_size], order[config.digits_test_size :]
  return Dataset(
    ArraySplit(images[train], labels[train]),
    ArraySplit(images[test], labels[test]),
    10,
    tuple(str(i) for i in range(10)),
  )


def _load_synthetic(config) -> Dataset:
  """Class-dependent patterns plus noise: learnable, so tests can see training work."""
  rng = np.random.default_rng(config.seed)
  shape = tuple(config.input_shape)
  prototypes = rng.uniform(0, 255, (config.num_classes,) + shape)

  def make(n):
    labels = rng.integers(0, config.num_classes, n).astype(np.int32)
    noise = rng.normal(0, 40, (n,) + shape)
    return ArraySplit(np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8), labels)

  return Dataset(
    make(config.synthetic_train_size),
    make(config.synthetic_test_size),
    config.num_classes,
    tuple(str(i) for i in range(config.num_classes)),
  )


def subset(split: Split, size: int) -> Split:
  """A fixed random subset of `size` examples in their original order (all if size < 0).

  Not the first `size`: test splits are often sorted by class.
  """
  if size < 0 or size >= len(split):
    return split
  return SubsetSplit(split, np.sort(np.random.default_rng(0).permutation(len(split))[:size]))


_LOADERS = {
  'tfds': _load_tfds,
  'cifar_pickle': _load_cifar_pickle,
  'image_folder': _load_image_folder,
  'digits': _load_digits,
  'synthetic': _load_synthetic,
}
DATA_SOURCES = tuple(_LOADERS)
"""The values of `config.data_source`."""
