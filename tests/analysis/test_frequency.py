"""Known-answer tests of the Fourier low-pass filter."""

import numpy as np

from vit_jax.analysis import frequency


def _cosine(size, ky, kx):
  y, x = np.meshgrid(np.arange(size), np.arange(size), indexing='ij')
  return np.cos(2 * np.pi * (ky * y + kx * x) / size)


def test_full_band_returns_the_image():
  rng = np.random.default_rng(0)
  img = rng.uniform(-1, 1, size=(2, 32, 24, 3)).astype(np.float32)
  np.testing.assert_allclose(frequency.low_pass(img, 1.0), img, atol=1e-5)


def test_zero_band_keeps_the_mean_colour():
  rng = np.random.default_rng(1)
  img = rng.uniform(-1, 1, size=(1, 16, 16, 3)).astype(np.float32)
  out = np.asarray(frequency.low_pass(img, 0.0))
  np.testing.assert_allclose(out, np.broadcast_to(
      img.mean(axis=(1, 2), keepdims=True), img.shape), atol=1e-5)


def test_cosines_below_cutoff_pass_and_above_are_removed():
  size = 32
  low = 0.5 * _cosine(size, 2, 1)   # radius sqrt(5) ~ 2.24 cycles
  high = 0.3 * _cosine(size, 9, 8)  # radius sqrt(145) ~ 12.0 cycles
  img = np.stack([low + high] * 3, -1)[None].astype(np.float32)
  frac = 5.0 / frequency.max_radius((size, size))  # cut at 5 cycles/image
  out = np.asarray(frequency.low_pass(img, frac))
  np.testing.assert_allclose(out[0, ..., 0], low, atol=1e-5)


def test_mask_agrees_with_numpy_fft_reference():
  rng = np.random.default_rng(2)
  img = rng.uniform(-1, 1, size=(1, 20, 20, 1)).astype(np.float32)
  f = np.fft.fftshift(np.fft.fft2(img[0, ..., 0]))
  yy, xx = np.meshgrid(np.arange(20) - 10, np.arange(20) - 10, indexing='ij')
  keep = np.sqrt(yy ** 2 + xx ** 2) <= 0.3 * np.sqrt(200)
  ref = np.real(np.fft.ifft2(np.fft.ifftshift(f * keep)))
  out = np.asarray(frequency.low_pass(img, 0.3, clip=None))
  np.testing.assert_allclose(out[0, ..., 0], ref, atol=1e-5)
