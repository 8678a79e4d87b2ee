"""Per-image training and evaluation views (docs/method.md §7), run on the host by the pipeline.

Random crop with zero padding, horizontal flip, AutoAugment's CIFAR-10 policy (Cubuk et al.,
2019, as the reference code implements it: grey fill, bicubic shears) and Cutout (DeVries &
Taylor, 2017: one square hole, filled with the mean colour so that it normalises to about
zero); ImageNet's RandomResizedCrop and flips, and its resize-and-centre-crop evaluation view.
Every random choice comes from the generator passed in.
"""

import dataclasses
import functools
import math

import numpy as np
from PIL import Image, ImageEnhance

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


FILL = 128
"""The grey that AutoAugment's geometric operations fill uncovered pixels with (every channel)."""


def _signed(magnitude: float, rng: np.random.Generator) -> float:
  return magnitude if rng.random() < 0.5 else -magnitude


@functools.cache
def _magnitude(low: float, high: float, level: int) -> float:
  """Bin `level` of MAGNITUDE_BINS spread from low to high, as the reference's np.linspace."""
  return float(np.linspace(low, high, MAGNITUDE_BINS)[level])


def _per_channel_lut(image: np.ndarray, luts: np.ndarray) -> np.ndarray:
  """Maps channel c of a uint8 [H, W, C] image through the 256-entry table luts[c]."""
  return luts[np.arange(image.shape[-1]), image]


def autocontrast(image: np.ndarray) -> np.ndarray:
  """PIL's `ImageOps.autocontrast(image)` in NumPy, equal to it: each channel stretched linearly
  from its [min, max] to [0, 255], truncating; a constant channel is left as it is."""
  luts = np.tile(np.arange(256, dtype=np.int64), (image.shape[-1], 1))
  for channel, (low, high) in enumerate(
    zip(image.min((0, 1)).tolist(), image.max((0, 1)).tolist(), strict=True)
  ):
    if high > low:  # PIL's table: int(ix * scale + offset) in float64, clipped to 0..255
      scale = 255.0 / (high - low)
      luts[channel] = np.clip(np.trunc(np.arange(256) * scale + -low * scale), 0, 255)
  return _per_channel_lut(image, luts.astype(np.uint8))


def equalize(image: np.ndarray) -> np.ndarray:
  """PIL's `ImageOps.equalize(image)` in NumPy, equal to it: per channel, the table
  (step // 2 + pixels below the value) // step with step = (pixels - pixels at the maximum) // 255,
  clipped to 255; a channel with one value or step 0 is left as it is."""
  luts = np.tile(np.arange(256, dtype=np.int64), (image.shape[-1], 1))
  for channel in range(image.shape[-1]):
    counts = np.bincount(image[..., channel].ravel(), minlength=256)
    present = counts[counts > 0]
    step = (int(present.sum()) - int(present[-1])) // 255 if len(present) > 1 else 0
    if step:
      below = np.cumsum(counts) - counts
      luts[channel] = np.minimum((step // 2 + below) // step, 255)
  return _per_channel_lut(image, luts.astype(np.uint8))


def _pil_op(image: np.ndarray, op) -> np.ndarray:
  """`op` applied to the image as PIL's, back as an array."""
  return _array(op(_pil(image)), image.shape[-1])


def _apply_op(image: np.ndarray, name: str, level: int, rng: np.random.Generator) -> np.ndarray:
  """One AutoAugment operation at magnitude bin `level` on a uint8 [H, W, C] image, as the
  reference's policy defines it with PIL: shears bicubic, translations and rotations nearest,
  uncovered pixels grey, rotations counter-clockwise only, solarize thresholds from 256 down to 0.
  The table operations (posterize, solarize, autocontrast, equalize, invert) run in NumPy with
  PIL's results: PIL builds their tables in Python, which made them the pipeline's slowest ops."""
  height, width = image.shape[:2]
  fill = (FILL,) * image.shape[-1]
  if name in ('ShearX', 'ShearY'):
    shear = _signed(_magnitude(0, 0.3, level), rng)
    matrix = (1, shear, 0, 0, 1, 0) if name == 'ShearX' else (1, 0, 0, shear, 1, 0)
    return _pil_op(
      image,
      lambda pil: pil.transform(pil.size, Image.AFFINE, matrix, Image.BICUBIC, fillcolor=fill),
    )
  if name in ('TranslateX', 'TranslateY'):
    shift = _signed(_magnitude(0, 150 / 331, level), rng)
    matrix = (
      (1, 0, shift * width, 0, 1, 0) if name == 'TranslateX' else (1, 0, 0, 0, 1, shift * height)
    )
    return _pil_op(
      image,
      lambda pil: pil.transform(pil.size, Image.AFFINE, matrix, Image.NEAREST, fillcolor=fill),
    )
  if name == 'Rotate':
    angle = _magnitude(0, 30, level)
    return _pil_op(image, lambda pil: pil.rotate(angle, Image.NEAREST, fillcolor=fill))
  if name in ('Color', 'Contrast', 'Brightness', 'Sharpness'):
    factor = 1 + _signed(_magnitude(0, 0.9, level), rng)
    return _pil_op(image, lambda pil: getattr(ImageEnhance, name)(pil).enhance(factor))
  if name == 'Posterize':
    bits = int(np.round(_magnitude(8, 4, level)))
    return image & np.uint8(~(2 ** (8 - bits) - 1) & 0xFF)
  if name == 'Solarize':
    return np.where(image < _magnitude(256, 0, level), image, 255 - image)
  if name == 'AutoContrast':
    return autocontrast(image)
  if name == 'Equalize':
    return equalize(image)
  if name == 'Invert':
    return 255 - image
  raise ValueError(f'Unknown AutoAugment operation {name!r}.')


def autoaugment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Applies one randomly chosen CIFAR-10 sub-policy to one uint8 [H, W, C] image."""
  for name, probability, level in CIFAR10_POLICY[rng.integers(len(CIFAR10_POLICY))]:
    if rng.random() < probability:
      image = _apply_op(image, name, level, rng)
  return image


def pad_and_crop(image: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
  """Pads with zeros by `padding` pixels and crops back to the image's size at a random offset."""
  height, width = image.shape[:2]
  dy, dx = rng.integers(0, 2 * padding + 1, 2)
  padded = np.zeros((height + 2 * padding, width + 2 * padding) + image.shape[2:], image.dtype)
  padded[padding : padding + height, padding : padding + width] = image
  return padded[dy : dy + height, dx : dx + width]


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  return image[:, ::-1] if rng.random() < 0.5 else image


def cutout(image: np.ndarray, size: int, fill: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Fills one size x size square (centre uniform, clipped at the border) with `fill`."""
  height, width = image.shape[:2]
  cy, cx = rng.integers(0, height), rng.integers(0, width)
  top, left = max(cy - size // 2, 0), max(cx - size // 2, 0)
  out = image.copy()
  out[top : cy + (size + 1) // 2, left : cx + (size + 1) // 2] = fill.astype(image.dtype)
  return out


def _pil(image: np.ndarray) -> Image.Image:
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _array(image: Image.Image, channels: int) -> np.ndarray:
  return np.asarray(image, np.uint8).reshape(image.size[1], image.size[0], channels)


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear resize to (height, width) (PIL's, antialiased when shrinking); no-op at that size."""
  if image.shape[:2] == (height, width):
    return image
  return _array(_pil(image).resize((width, height), Image.BILINEAR), image.shape[-1])


def random_resized_crop_box(
  height: int, width: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
  """(top, left, h, w) of torchvision's RandomResizedCrop: up to 10 draws of an area fraction in
  `scale` and a log-uniform aspect ratio in `ratio`, else the centre crop of the nearest ratio."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  if width / height < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif width / height > ratio[1]:
    w, h = int(round(height * ratio[1])), height
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """RandomResizedCrop(size): a random box (random_resized_crop_box), resized bilinearly."""
  top, left, h, w = random_resized_crop_box(*image.shape[:2], rng)
  return resize(image[top : top + h, left : left + w], size, size)


def resize_and_center_crop(image: np.ndarray, size: int, shorter_side: int) -> np.ndarray:
  """torchvision's Resize(shorter_side) then CenterCrop(size): the evaluation view of ImageNet."""
  height, width = image.shape[:2]
  if height <= width:
    new_h, new_w = shorter_side, int(shorter_side * width / height)
  else:
    new_h, new_w = int(shorter_side * height / width), shorter_side
  image = resize(image, new_h, new_w)
  top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
  return image[top : top + size, left : left + size]


RECIPES = ('cifar', 'imagenet')
IMAGENET_CROP_FRACTION = 224 / 256
"""ImageNet evaluation: the shorter side is resized to size / this, then centre-cropped."""


@dataclasses.dataclass(frozen=True)
class TrainTransform:
  """The training view of one uint8 [H, W, C] image (docs/method.md §7), by recipe:

  'cifar': the image at the model's size (resized if it differs), a crop of it padded by
  `crop_padding`, a flip, AutoAugment's CIFAR-10 policy, Cutout; each step optional.
  'imagenet': RandomResizedCrop to the model's size (scale 0.08-1, ratio 3/4-4/3), a flip.
  """

  recipe: str
  height: int
  width: int
  crop_padding: int = 0
  flip: bool = False
  autoaugment: bool = False
  cutout_size: int = 0
  mean: tuple[float, ...] = ()

  @classmethod
  def from_config(cls, config) -> 'TrainTransform':
    height, width = config.input_shape[:2]
    return cls(
      config.preprocess,
      height,
      width,
      config.crop_padding,
      config.flip,
      config.autoaugment,
      config.cutout_size,
      tuple(config.mean),
    )

  def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if self.recipe == 'imagenet':
      image = random_resized_crop(image, self.height, rng)
      return random_flip(image, rng) if self.flip else image
    image = resize(image, self.height, self.width)
    if self.crop_padding:
      image = pad_and_crop(image, self.crop_padding, rng)
    if self.flip:
      image = random_flip(image, rng)
    if self.autoaugment:
      image = autoaugment(image, rng)
    if self.cutout_size:
      image = cutout(image, self.cutout_size, np.round(np.asarray(self.mean) * 255), rng)
    return np.ascontiguousarray(image)


@dataclasses.dataclass(frozen=True)
class EvalTransform:
  """The evaluation view: 'cifar' the image at the model's size; 'imagenet' the shorter side
  resized to size / IMAGENET_CROP_FRACTION (256 for 224), then the centre crop."""

  recipe: str
  height: int
  width: int
  channels: int = 3

  @classmethod
  def from_config(cls, config) -> 'EvalTransform':
    height, width, channels = config.input_shape
    return cls(config.preprocess, height, width, channels)

  @property
  def shape(self) -> tuple[int, int, int]:
    """The (height, width, channels) of every view."""
    return self.height, self.width, self.channels

  def __call__(self, image: np.ndarray) -> np.ndarray:
    if self.recipe == 'imagenet':
      return resize_and_center_crop(
        image, self.height, int(round(self.height / IMAGENET_CROP_FRACTION))
      )
    return resize(image, self.height, self.width)
