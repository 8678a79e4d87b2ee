"""Training augmentation on uint8 NHWC batches (SPEC section 7), run on the host.

Random crop with zero padding, horizontal flip, AutoAugment's CIFAR-10 policy (Cubuk et al.,
2019, as the reference code implements it: grey fill, bicubic shears) and Cutout (DeVries &
Taylor, 2017: one square hole, filled with the mean colour so that it normalises to about
zero). Every random choice comes from the generator passed in.
"""

import dataclasses

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

MAGNITUDE_BINS = 10

# (operation, probability, magnitude bin) pairs, the 25 sub-policies of AutoAugment on CIFAR-10.
CIFAR10_POLICY = (
    (('Invert', 0.1, 0), ('Contrast', 0.2, 6)),
    (('Rotate', 0.7, 2), ('TranslateX', 0.3, 9)),
    (('Sharpness', 0.8, 1), ('Sharpness', 0.9, 3)),
    (('ShearY', 0.5, 8), ('TranslateY', 0.7, 9)),
    (('AutoContrast', 0.5, 0), ('Equalize', 0.9, 0)),
    (('ShearY', 0.2, 7), ('Posterize', 0.3, 7)),
    (('Color', 0.4, 3), ('Brightness', 0.6, 7)),
    (('Sharpness', 0.3, 9), ('Brightness', 0.7, 9)),
    (('Equalize', 0.6, 0), ('Equalize', 0.5, 0)),
    (('Contrast', 0.6, 7), ('Sharpness', 0.6, 5)),
    (('Color', 0.7, 7), ('TranslateX', 0.5, 8)),
    (('Equalize', 0.3, 0), ('AutoContrast', 0.4, 0)),
    (('TranslateY', 0.4, 3), ('Sharpness', 0.2, 6)),
    (('Brightness', 0.9, 6), ('Color', 0.2, 8)),
    (('Solarize', 0.5, 2), ('Invert', 0.0, 0)),
    (('Equalize', 0.2, 0), ('AutoContrast', 0.6, 0)),
    (('Equalize', 0.2, 0), ('Equalize', 0.6, 0)),
    (('Color', 0.9, 9), ('Equalize', 0.6, 0)),
    (('AutoContrast', 0.8, 0), ('Solarize', 0.2, 8)),
    (('Brightness', 0.1, 3), ('Color', 0.7, 0)),
    (('Solarize', 0.4, 5), ('AutoContrast', 0.9, 0)),
    (('TranslateY', 0.9, 9), ('TranslateY', 0.7, 9)),
    (('AutoContrast', 0.9, 0), ('Solarize', 0.8, 3)),
    (('Equalize', 0.8, 0), ('Invert', 0.1, 0)),
    (('TranslateY', 0.7, 9), ('AutoContrast', 0.9, 0)),
)


FILL = (128, 128, 128)
"""The grey that AutoAugment's geometric operations fill uncovered pixels with."""


def _signed(magnitude: float, rng: np.random.Generator) -> float:
  return magnitude if rng.random() < 0.5 else -magnitude


def _magnitude(low: float, high: float, level: int) -> float:
  """Bin `level` of MAGNITUDE_BINS spread from low to high, as the reference's np.linspace."""
  return float(np.linspace(low, high, MAGNITUDE_BINS)[level])


def _apply_op(image: Image.Image, name: str, level: int, rng: np.random.Generator) -> Image.Image:
  """One AutoAugment operation at magnitude bin `level`, as the reference's policy defines it:
  shears bicubic, translations and rotations nearest, uncovered pixels grey, rotations
  counter-clockwise only, solarize thresholds from 256 down to 0."""
  width, height = image.size
  if name in ('ShearX', 'ShearY'):
    shear = _signed(_magnitude(0, 0.3, level), rng)
    matrix = (1, shear, 0, 0, 1, 0) if name == 'ShearX' else (1, 0, 0, shear, 1, 0)
    return image.transform(image.size, Image.AFFINE, matrix, Image.BICUBIC, fillcolor=FILL)
  if name in ('TranslateX', 'TranslateY'):
    shift = _signed(_magnitude(0, 150 / 331, level), rng)
    matrix = ((1, 0, shift * width, 0, 1, 0) if name == 'TranslateX'
              else (1, 0, 0, 0, 1, shift * height))
    return image.transform(image.size, Image.AFFINE, matrix, Image.NEAREST, fillcolor=FILL)
  if name == 'Rotate':
    return image.rotate(_magnitude(0, 30, level), Image.NEAREST, fillcolor=FILL)
  if name in ('Color', 'Contrast', 'Brightness', 'Sharpness'):
    return getattr(ImageEnhance, name)(image).enhance(1 + _signed(_magnitude(0, 0.9, level), rng))
  if name == 'Posterize':
    return ImageOps.posterize(image, int(np.round(_magnitude(8, 4, level))))
  if name == 'Solarize':
    return ImageOps.solarize(image, _magnitude(256, 0, level))
  if name == 'AutoContrast':
    return ImageOps.autocontrast(image)
  if name == 'Equalize':
    return ImageOps.equalize(image)
  if name == 'Invert':
    return ImageOps.invert(image)
  raise ValueError(f'Unknown AutoAugment operation {name!r}.')


def autoaugment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Applies one randomly chosen CIFAR-10 sub-policy to one uint8 HWC RGB image."""
  pil = Image.fromarray(image)
  for name, probability, level in CIFAR10_POLICY[rng.integers(len(CIFAR10_POLICY))]:
    if rng.random() < probability:
      pil = _apply_op(pil, name, level, rng)
  return np.asarray(pil, np.uint8)


def random_crop(images: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
  """Pads each image with zeros by `padding` pixels and crops it back at a random offset."""
  n, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  dy = rng.integers(0, 2 * padding + 1, n)
  dx = rng.integers(0, 2 * padding + 1, n)
  rows = dy[:, None] + np.arange(h)[None]
  cols = dx[:, None] + np.arange(w)[None]
  return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def random_flip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  flip = rng.random(len(images)) < 0.5
  return np.where(flip[:, None, None, None], images[:, :, ::-1], images)


def cutout(images: np.ndarray, size: int, fill: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Fills one size x size square per image (centre uniform, clipped at the border) with `fill`."""
  n, h, w, _ = images.shape
  cy, cx = rng.integers(0, h, n), rng.integers(0, w, n)
  ys, xs = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
  inside = ((np.abs(ys - cy[:, None, None]) * 2 < size + (ys >= cy[:, None, None]))
            & (np.abs(xs - cx[:, None, None]) * 2 < size + (xs >= cx[:, None, None])))
  return np.where(inside[..., None], fill.astype(images.dtype), images)


@dataclasses.dataclass(frozen=True)
class Augment:
  """The training augmentation of a config: `Augment.from_config(config)(images, rng)`."""
  crop_padding: int
  flip: bool
  autoaugment: bool
  cutout_size: int
  mean: tuple[float, ...]

  @classmethod
  def from_config(cls, config) -> 'Augment | None':
    augment = cls(config.crop_padding, config.flip, config.autoaugment, config.cutout_size,
                  tuple(config.mean))
    return augment if augment.active else None

  @property
  def active(self) -> bool:
    return bool(self.crop_padding or self.flip or self.autoaugment or self.cutout_size)

  def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if self.crop_padding:
      images = random_crop(images, self.crop_padding, rng)
    if self.flip:
      images = random_flip(images, rng)
    if self.autoaugment:
      images = np.stack([autoaugment(image, rng) for image in images])
    if self.cutout_size:
      fill = np.round(np.asarray(self.mean) * 255)
      images = cutout(images, self.cutout_size, fill, rng)
    return images
