"""Known-answer tests of the Fourier low-pass filter, both windows, against
numpy's FFT, and the `lowpass` CLI recording the window."""

import json

import numpy as np
import pytest

from tests.conftest import random_image_folder
from vit_jax.analysis import cli
from vit_jax.analysis import frequency


def _cosine(shape, ky, kx):
  y, x = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing='ij')
  return np.cos(2 * np.pi * (ky * y / shape[0] + kx * x / shape[1]))


def _numpy_low_pass(img, keep_unshifted):
  """Reference: numpy FFT of one channel, mask, inverse, real part."""
  return np.real(np.fft.ifft2(np.fft.fft2(img) * keep_unshifted))


@pytest.mark.parametrize('window', frequency.WINDOWS)
@pytest.mark.parametrize('shape', [(32, 24), (15, 21)])
def test_full_band_returns_the_image(window, shape):
  rng = np.random.default_rng(0)
  img = rng.uniform(-1, 1, size=(2, *shape, 3)).astype(np.float32)
  np.testing.assert_allclose(frequency.low_pass(img, 1.0, window=window),
                             img, atol=1e-5)


@pytest.mark.parametrize('window', frequency.WINDOWS)
def test_zero_band_keeps_the_mean_colour(window):
  rng = np.random.default_rng(1)
  img = rng.uniform(-1, 1, size=(1, 16, 16, 3)).astype(np.float32)
  out = np.asarray(frequency.low_pass(img, 0.0, window=window))
  np.testing.assert_allclose(out, np.broadcast_to(
      img.mean(axis=(1, 2), keepdims=True), img.shape), atol=1e-5)


@pytest.mark.parametrize('shape', [(20, 14), (17, 30)])
@pytest.mark.parametrize('fraction', [0.0, 0.1, 0.3, 0.5, 0.7, 1.0])
def test_rectangle_mask_equals_a_fftfreq_mask(shape, fraction):
  h, w = shape
  fy = np.fft.fftfreq(h, d=1.0 / h)  # cycles per image, np.fft order
  fx = np.fft.fftfreq(w, d=1.0 / w)
  ref = np.zeros(shape, bool)
  for i in range(h):
    for j in range(w):
      ref[i, j] = abs(fy[i]) <= fraction * h / 2 and abs(fx[j]) <= (
          fraction * w / 2)
  np.testing.assert_array_equal(
      frequency.low_pass_mask(shape, fraction, 'rectangle'), ref)


def test_rectangle_filter_equals_numpy_with_a_centred_box():
  rng = np.random.default_rng(3)
  img = rng.uniform(-1, 1, size=(1, 20, 16, 1)).astype(np.float32)
  # Centred (fftshift) coordinates: rows -10..9, columns -8..7.
  yy, xx = np.meshgrid(np.arange(20) - 10, np.arange(16) - 8, indexing='ij')
  keep = (np.abs(yy) <= 0.3 * 10) & (np.abs(xx) <= 0.3 * 8)
  ref = _numpy_low_pass(img[0, ..., 0], np.fft.ifftshift(keep))
  out = frequency.low_pass(img, 0.3, clip=None, window='rectangle')
  np.testing.assert_allclose(np.asarray(out)[0, ..., 0], ref, atol=1e-5)


def test_circle_filter_equals_numpy_with_a_centred_disc():
  rng = np.random.default_rng(2)
  img = rng.uniform(-1, 1, size=(1, 20, 20, 1)).astype(np.float32)
  yy, xx = np.meshgrid(np.arange(20) - 10, np.arange(20) - 10, indexing='ij')
  keep = np.sqrt(yy ** 2 + xx ** 2) <= 0.3 * np.sqrt(200)
  ref = _numpy_low_pass(img[0, ..., 0], np.fft.ifftshift(keep))
  out = frequency.low_pass(img, 0.3, clip=None)
  np.testing.assert_allclose(np.asarray(out)[0, ..., 0], ref, atol=1e-5)


# A cosine of (ky, kx) = (3, 5) cycles on a 32 x 48 image, plus a DC offset.
# Rectangle: kept iff fraction >= max(3 / 16, 5 / 24) = 5 / 24 (the x axis
# decides). Circle: kept iff fraction >= sqrt(3^2 + 5^2) / sqrt(16^2 + 24^2).
SHAPE, KY, KX, DC = (32, 48), 3, 5, 0.2
CUTOFF = {'rectangle': 5 / 24, 'circle': np.sqrt(34) / np.sqrt(16 ** 2 +
                                                            24 ** 2)}


@pytest.mark.parametrize('window', frequency.WINDOWS)
def test_a_cosine_passes_exactly_from_its_cutoff(window):
  wave = 0.5 * _cosine(SHAPE, KY, KX)
  img = np.stack([DC + wave] * 3, -1)[None].astype(np.float32)
  cut = CUTOFF[window]
  at = np.asarray(frequency.low_pass(img, cut, clip=None, window=window))
  below = np.asarray(frequency.low_pass(img, cut - 1e-4, clip=None,
                                        window=window))
  np.testing.assert_allclose(at[0, ..., 1], DC + wave, atol=1e-5)
  np.testing.assert_allclose(below[0, ..., 1], DC, atol=1e-5)


def test_the_rectangle_lies_inside_the_disc_of_the_same_fraction():
  # Its corners f * (H/2, W/2) are at radius f * sqrt((H/2)^2 + (W/2)^2).
  for f in np.linspace(0, 1, 21):
    rect = frequency.low_pass_mask(SHAPE, f, 'rectangle')
    disc = frequency.low_pass_mask(SHAPE, f, 'circle')
    assert not (rect & ~disc).any()
  # A cosine along y at 12 cycles, fraction 0.6: the rectangle keeps
  # |ky| <= 0.6 * 16 = 9.6 (removed), the disc r <= 0.6 * 28.8 = 17.3 (kept).
  wave = _cosine(SHAPE, 12, 0)[None, ..., None].astype(np.float32)
  rect = np.asarray(frequency.low_pass(wave, 0.6, clip=None,
                                       window='rectangle'))
  disc = np.asarray(frequency.low_pass(wave, 0.6, clip=None))
  np.testing.assert_allclose(rect[0, ..., 0], 0.0, atol=1e-5)
  np.testing.assert_allclose(disc[0, ..., 0], wave[0, ..., 0], atol=1e-5)


def test_clipping_bounds_the_ringing():
  img = np.zeros((1, 16, 16, 1), np.float32)
  img[:, 4:12, 4:12] = 1.0  # a square edge rings under an ideal filter
  raw = np.asarray(frequency.low_pass(img, 0.3, clip=None))
  clipped = np.asarray(frequency.low_pass(img, 0.3, clip=(0.0, 1.0)))
  assert raw.max() > 1.0 and raw.min() < 0.0
  np.testing.assert_allclose(clipped, np.clip(raw, 0.0, 1.0), atol=1e-6)


def test_unknown_window_names_the_allowed():
  with pytest.raises(ValueError, match='allowed circle, rectangle'):
    frequency.low_pass_mask((8, 8), 0.5, 'square')


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """<root>/<class>/<n>.png, 2 classes x 2 random 32x32 images."""
  return random_image_folder(tmp_path_factory.mktemp('lp_imgs'), ('a', 'b'),
                             2)


def test_cli_records_the_window(folder, tmp_path, capsys):
  base = ['lowpass', '--model', 'mu/16', '--resolution', '32',
          '--num_classes', '2', '--data', str(folder), '--batch_size', '4',
          '--fractions', '1,0.1', '--out', str(tmp_path)]
  assert cli.main(base + ['--window', 'rectangle']) == 0
  res = json.loads((tmp_path / 'lowpass.json').read_text())
  assert res['window'] == 'rectangle' and res['x'] == [1.0, 0.1]
  assert 'per axis' in res['xlabel'] and len(res['top1']) == 2
  capsys.readouterr()
  rc = cli.main(base + ['--window', 'square'])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 1 and len(err) == 1
  assert err[0] == ("error: window 'square' is not known: allowed circle, "
                    'rectangle')
