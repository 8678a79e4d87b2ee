"""AutoAugment's operations against the reference's definitions, op by op, on small images."""

import numpy as np
import pytest
from PIL import Image, ImageOps

from cos_jax import augment

GREY = 128


class _Sign:
  """A generator stand-in whose `random()` fixes the sign of a signed magnitude (< 0.5: +)."""

  def __init__(self, value: float):
    self.value = value

  def random(self):
    return self.value


def _gradient(height=12, width=16) -> Image.Image:
  y, x = np.mgrid[:height, :width]
  return Image.fromarray(np.stack([x * 15, y * 20, (x + y) * 8], -1).astype(np.uint8))


def _op(image, name, level, sign=0.0) -> np.ndarray:
  return augment._apply_op(np.asarray(image), name, level, _Sign(sign))  # pylint: disable=protected-access


def test_shear_is_bicubic_with_grey_fill():
  image = _gradient()
  shear = np.linspace(0, 0.3, 10)[9]
  expected = image.transform(
    image.size, Image.AFFINE, (1, shear, 0, 0, 1, 0), Image.BICUBIC, fillcolor=(GREY,) * 3
  )
  got = _op(image, 'ShearX', 9)
  np.testing.assert_array_equal(got, np.asarray(expected))
  assert (got[-1, -3:] == GREY).all()  # the uncovered corner is grey, not black
  nearest = image.transform(image.size, Image.AFFINE, (1, shear, 0, 0, 1, 0), Image.NEAREST)
  assert (got != np.asarray(nearest)).any()  # and the resampling is not nearest
  flipped = _op(image, 'ShearY', 9, sign=0.9)
  expected_y = image.transform(
    image.size, Image.AFFINE, (1, 0, 0, -shear, 1, 0), Image.BICUBIC, fillcolor=(GREY,) * 3
  )
  np.testing.assert_array_equal(flipped, np.asarray(expected_y))


def test_translation_scales_with_its_own_axis_and_fills_grey():
  image = _gradient(height=10, width=20)
  fraction = np.linspace(0, 150 / 331, 10)[9]
  got_y = _op(image, 'TranslateY', 9)  # by 4.53 rows (of the height; the width would give 9)
  np.testing.assert_array_equal(got_y[:5], np.asarray(image)[5:])
  assert (got_y[5:] == GREY).all()
  got_x = _op(image, 'TranslateX', 9, sign=0.9)  # by -9.06 columns: the content moves right
  columns = int(round(fraction * 20))
  assert (got_x[:, :columns] == GREY).all()
  np.testing.assert_array_equal(got_x[:, columns:], np.asarray(image)[:, :-columns])


def test_rotation_is_counter_clockwise_only_with_grey_corners():
  image = Image.fromarray(np.full((16, 16, 3), 200, np.uint8))
  for sign in (0.0, 0.9):  # the generator's sign draw is ignored
    got = _op(image, 'Rotate', 9, sign)
    np.testing.assert_array_equal(
      got, np.asarray(image.rotate(30.0, Image.NEAREST, fillcolor=(GREY,) * 3))
    )
    assert got[0, 0].tolist() == [GREY] * 3 and got[8, 8].tolist() == [200] * 3


@pytest.mark.parametrize('level,threshold', [(0, 256), (2, 199.11), (9, 0)])
def test_solarize_thresholds_run_from_256_to_0(level, threshold):
  values = np.arange(256, dtype=np.uint8).reshape(16, 16)
  image = Image.fromarray(np.stack([values] * 3, -1))
  expected = np.where(values >= threshold, 255 - values, values)
  np.testing.assert_array_equal(_op(image, 'Solarize', level)[..., 0], expected)


def test_posterize_bits_run_from_8_to_4():
  image = Image.fromarray(np.full((2, 2, 3), 0b10111111, np.uint8))
  bits = [int(_op(image, 'Posterize', level)[0, 0, 0]) for level in range(10)]
  assert (
    bits
    == [0b10111111] * 2 + [0b10111110] * 2 + [0b10111100] * 2 + [0b10111000] * 2 + [0b10110000] * 2
  )


def _histogram_cases() -> list[np.ndarray]:
  """Images whose histograms reach every branch of PIL's table operations: full-range noise,
  constant and two-valued channels, narrow and skewed ranges, one pixel at the maximum (whose
  equalized value PIL clips from 300 to 255), RGB and grayscale."""
  rng = np.random.default_rng(0)
  one_at_max = np.zeros((301, 1, 1), np.uint8)
  one_at_max[0] = 1
  cases = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(20)]
  cases += [np.full((8, 8, 3), value, np.uint8) for value in (0, 9, 255)]
  cases += [rng.integers(100, 102, (16, 16, 3), dtype=np.uint8) for _ in range(5)]
  cases += [(rng.random((32, 32, 3)) ** power * 255).astype(np.uint8) for power in (2, 8, 30)]
  cases += [
    np.dstack(
      [
        np.full((8, 8), 5, np.uint8),
        rng.integers(0, 256, (8, 8), np.uint8),
        np.eye(8, dtype=np.uint8) * 200,
      ]
    )
  ]
  cases += [one_at_max, rng.integers(0, 256, (32, 32, 1), dtype=np.uint8)]
  return cases


@pytest.mark.parametrize(
  'name,level,pil_op',
  [
    ('AutoContrast', 0, ImageOps.autocontrast),
    ('Equalize', 0, ImageOps.equalize),
    ('Invert', 0, ImageOps.invert),
    ('Solarize', 2, lambda image: ImageOps.solarize(image, np.linspace(256, 0, 10)[2])),
    ('Posterize', 7, lambda image: ImageOps.posterize(image, 5)),
  ],
)
def test_table_operations_equal_pils(name, level, pil_op):
  for image in _histogram_cases():
    expected = np.asarray(
      pil_op(Image.fromarray(np.squeeze(image, -1) if image.shape[-1] == 1 else image))
    )
    np.testing.assert_array_equal(_op(image, name, level), expected.reshape(image.shape))


@pytest.mark.parametrize(
  'name', sorted({op for policy in augment.CIFAR10_POLICY for op, _, _ in policy})
)
def test_every_operation_keeps_grayscale_images_grayscale(name):
  image = np.random.default_rng(2).integers(0, 256, (12, 12, 1), dtype=np.uint8)
  got = _op(image, name, 9)
  assert got.shape == image.shape and got.dtype == np.uint8


def test_random_resized_crop_boxes_keep_the_reference_bounds():
  rng = np.random.default_rng(0)
  for _ in range(300):
    top, left, h, w = augment.random_resized_crop_box(60, 80, rng)
    assert 0 <= top <= 60 - h and 0 <= left <= 80 - w
    # Rounding the sides to pixels moves area and ratio by at most half a pixel per side.
    assert 0.08 * 4800 - (h + w) <= h * w <= 4800
    assert 3 / 4 - 1 / h <= w / h <= 4 / 3 + 1 / h


@pytest.mark.parametrize(
  'height,width,box',
  [
    (2, 100, (0, 48, 2, 3)),  # no draw fits: the centre crop at the widest ratio, 4/3
    (100, 2, (48, 0, 3, 2)),  # and at the narrowest, 3/4 (round(2 / 0.75) = 3)
  ],
)
def test_random_resized_crop_falls_back_to_the_centre_crop(height, width, box):
  assert augment.random_resized_crop_box(height, width, np.random.default_rng(0)) == box


def test_random_resized_crop_resizes_its_box_bilinearly():
  image = np.asarray(_gradient(40, 50))
  top, left, h, w = augment.random_resized_crop_box(40, 50, np.random.default_rng(5))
  expected = Image.fromarray(image[top : top + h, left : left + w]).resize((24, 24), Image.BILINEAR)
  got = augment.random_resized_crop(image, 24, np.random.default_rng(5))
  np.testing.assert_array_equal(got, np.asarray(expected))


@pytest.mark.parametrize(
  'height,width,resized,corner',
  [
    (300, 400, (256, 341), (16, 58)),  # round(58.5) = 58, as torchvision's int(round(.))
    (400, 300, (341, 256), (58, 16)),
    (256, 256, (256, 256), (16, 16)),
  ],
)
def test_evaluation_view_resizes_the_shorter_side_and_centre_crops(height, width, resized, corner):
  image = np.random.default_rng(1).integers(0, 256, (height, width, 3)).astype(np.uint8)
  top, left = corner
  expected = np.asarray(Image.fromarray(image).resize(resized[::-1], Image.BILINEAR))
  got = augment.EvalTransform('imagenet', 224, 224)(image)
  np.testing.assert_array_equal(got, expected[top : top + 224, left : left + 224])


def test_imagenet_training_view_is_a_resized_crop_and_a_flip():
  image = np.asarray(_gradient(30, 45))
  transform = augment.TrainTransform('imagenet', 16, 16, flip=True)
  views = [transform(image, np.random.default_rng(seed)) for seed in range(6)]
  assert all(view.shape == (16, 16, 3) for view in views)
  for seed, view in enumerate(views):
    rng = np.random.default_rng(seed)
    crop = augment.random_resized_crop(image, 16, rng)
    np.testing.assert_array_equal(view, crop[:, ::-1] if rng.random() < 0.5 else crop)


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
