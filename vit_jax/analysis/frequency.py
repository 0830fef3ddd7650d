"""Fourier low-pass filtering of images (Ghiasi et al. 2022, Table 2).

A frequency (ky, kx), in cycles per image, is kept when its radius
sqrt(ky^2 + kx^2) is at most `fraction` times the largest radius on the
grid, sqrt((H/2)^2 + (W/2)^2). `fraction=1` keeps every frequency (the image
comes back unchanged); `fraction=0` keeps only the mean colour.
"""

import jax
import jax.numpy as jnp
import numpy as np


def radius(shape) -> np.ndarray:
  """Radial frequency of each DFT bin (cycles per image), [H, W]."""
  h, w = shape
  ky = np.fft.fftfreq(h) * h
  kx = np.fft.fftfreq(w) * w
  return np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)


def max_radius(shape) -> float:
  h, w = shape
  return float(np.sqrt((h / 2) ** 2 + (w / 2) ** 2))


def low_pass_mask(shape, fraction: float) -> np.ndarray:
  """Boolean [H, W] DFT mask of the frequencies kept."""
  return radius(shape) <= fraction * max_radius(shape) + 1e-9


@jax.jit
def _apply_mask(images, mask):
  f = jnp.fft.fft2(images, axes=(-3, -2))
  return jnp.real(jnp.fft.ifft2(f * mask[:, :, None], axes=(-3, -2)))


def low_pass(images, fraction: float, clip=(-1.0, 1.0)):
  """Low-pass filters images [B, H, W, C] (float) channel by channel.

  Args:
    images: float [B, H, W, C].
    fraction: cut-off as a fraction of the largest radial frequency, in
      [0, 1] (module doc).
    clip: range the result is clipped to (the filter can overshoot), or None.

  Returns:
    float32 [B, H, W, C].
  """
  mask = jnp.asarray(low_pass_mask(images.shape[-3:-1], fraction),
                     jnp.complex64)
  out = _apply_mask(jnp.asarray(images, jnp.float32), mask)
  if clip is not None:
    out = jnp.clip(out, *clip)
  return out
