"""Fourier low-pass filtering of images (Ghiasi et al. 2022, Table 2).

Each channel of an H x W image is transformed with the 2-D DFT; a frequency
(ky, kx), in cycles per image (ky = np.fft.fftfreq(H) * H, integers in
-H/2..H/2-1 for even H; kx likewise), is kept or zeroed by an ideal
(0/1, no taper) window, and the inverse DFT is taken. Two windows:

  'circle'     keep sqrt(ky^2 + kx^2) <= fraction * sqrt((H/2)^2 + (W/2)^2):
               a disc whose radius is `fraction` of the corner radius (the
               largest radial frequency on the grid).
  'rectangle'  keep |ky| <= fraction * H/2 and |kx| <= fraction * W/2:
               `fraction` of the Nyquist frequency on each axis separately
               (the window shape of the rectangle that the authors'
               unfinished high-pass, experiments/it7/lh_pass.py, zeroes).

The rectangle of a fraction lies inside the circle of the same fraction
(its corners touch it), so at equal `fraction` it removes more.

For both, `fraction=1` keeps every frequency (the image comes back
unchanged) and `fraction=0` keeps only the DC term (the mean colour); the DC
term is kept at every fraction. Both windows are symmetric under
k -> -k, so the filtered image is real (the imaginary rounding residue is
dropped); it is then clipped to the input range, [-1, 1] by default,
because the ideal filter rings past the original pixel range.

The authors' repository has no low-pass code; this definition is ours.
"""

import jax
import jax.numpy as jnp
import numpy as np

WINDOWS = ('circle', 'rectangle')


def frequencies(shape) -> tuple[np.ndarray, np.ndarray]:
  """(ky [H], kx [W]): DFT bin frequencies in cycles per image."""
  h, w = shape
  return np.fft.fftfreq(h) * h, np.fft.fftfreq(w) * w


def radius(shape) -> np.ndarray:
  """Radial frequency of each DFT bin (cycles per image), [H, W]."""
  ky, kx = frequencies(shape)
  return np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)


def max_radius(shape) -> float:
  """Corner radius sqrt((H/2)^2 + (W/2)^2), cycles per image."""
  h, w = shape
  return float(np.sqrt((h / 2) ** 2 + (w / 2) ** 2))


def low_pass_mask(shape, fraction: float,
                  window: str = 'circle') -> np.ndarray:
  """Boolean [H, W] DFT mask (unshifted, np.fft order) of the kept bins.

  Args:
    shape: (H, W) of the image.
    fraction: cut-off in [0, 1]; relative to the corner radius ('circle')
      or to H/2 and W/2 per axis ('rectangle') (module doc).
    window: 'circle' or 'rectangle'.
  """
  if window not in WINDOWS:
    raise ValueError(f'window {window!r} is not known: allowed '
                     f'{", ".join(WINDOWS)}')
  eps = 1e-9  # a bin exactly on the cut-off is kept
  if window == 'circle':
    return radius(shape) <= fraction * max_radius(shape) + eps
  ky, kx = frequencies(shape)
  h, w = shape
  return ((np.abs(ky) <= fraction * h / 2 + eps)[:, None] &
          (np.abs(kx) <= fraction * w / 2 + eps)[None, :])


@jax.jit
def _apply_mask(images, mask):
  f = jnp.fft.fft2(images, axes=(-3, -2))
  return jnp.real(jnp.fft.ifft2(f * mask[:, :, None], axes=(-3, -2)))


def low_pass(images, fraction: float, clip=(-1.0, 1.0),
             window: str = 'circle'):
  """Low-pass filters images [B, H, W, C] (float) channel by channel.

  Ideal DFT window (module doc): 'circle' keeps radial frequencies up to
  `fraction` of the corner radius sqrt((H/2)^2 + (W/2)^2); 'rectangle'
  keeps |ky| <= fraction * H/2 and |kx| <= fraction * W/2. The DC term is
  always kept; the output is the real part of the inverse DFT.

  Args:
    images: float [B, H, W, C].
    fraction: cut-off in [0, 1]; 1 returns the images unchanged, 0 their
      mean colour.
    clip: range the result is clipped to (the filter can overshoot), or None.
    window: 'circle' or 'rectangle'.

  Returns:
    float32 [B, H, W, C].
  """
  mask = jnp.asarray(low_pass_mask(images.shape[-3:-1], fraction, window),
                     jnp.complex64)
  out = _apply_mask(jnp.asarray(images, jnp.float32), mask)
  if clip is not None:
    out = jnp.clip(out, *clip)
  return out
