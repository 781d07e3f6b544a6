"""Perlin-noise masks for DRAEM's synthetic anomalies.

DRAEM (Zavrtanik et al., ICCV 2021) shapes its simulated defects with thresholded 2-D gradient (Perlin)
noise.  The facts this module follows from the authors' public code (re-implemented here, not copied):

- one octave of gradient noise with the quintic fade ``6t^5 - 15t^4 + 10t^3`` and unit gradients at random
  angles on a ``(res_y + 1) x (res_x + 1)`` lattice, scaled by sqrt(2) (values roughly in [-1, 1]);
- the lattice resolution is drawn per axis and independently as ``2^k`` with ``k`` uniform in
  ``{0, ..., 5}`` (scales 1 to 32 cells across the image);
- the noise field is rotated by an angle uniform in [-90, 90] degrees (areas rotated in from outside the
  image are 0, i.e. never part of the mask);
- the mask is ``noise > 0.5``.

All randomness comes from a ``numpy.random.Generator`` passed in by the caller, so mask sequences are
reproducible from a seed and never touch numpy's global state.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["fade", "perlin_noise", "perlin_mask", "PERLIN_THRESHOLD", "PERLIN_SCALE_EXPONENTS"]

PERLIN_THRESHOLD = 0.5
PERLIN_SCALE_EXPONENTS = (0, 6)  # half-open range of k in 2^k, as in the public code


def fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic interpolant, zero first and second derivative at 0 and 1."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """One octave of 2-D gradient noise of ``shape`` with ``res`` lattice cells along (rows, cols).

    ``shape`` need not be a multiple of ``res``: the lattice is laid over the image with cell size
    ``shape / res`` (fractional sizes are fine).  Returns float64 values in about [-1, 1].
    """
    h, w = int(shape[0]), int(shape[1])
    ry, rx = int(res[0]), int(res[1])
    if h < 1 or w < 1 or ry < 1 or rx < 1:
        raise ValueError(f"perlin_noise needs a positive shape and resolution, got {shape} and {res}")
    angles = rng.uniform(0.0, 2.0 * math.pi, size=(ry + 1, rx + 1))
    gy, gx = np.sin(angles), np.cos(angles)

    # position of every pixel in lattice units
    ys = np.arange(h, dtype=np.float64) * (ry / h)
    xs = np.arange(w, dtype=np.float64) * (rx / w)
    iy = np.minimum(np.floor(ys).astype(np.int64), ry - 1)
    ix = np.minimum(np.floor(xs).astype(np.int64), rx - 1)
    fy = (ys - iy)[:, None]  # (h, 1) offset inside the cell
    fx = (xs - ix)[None, :]  # (1, w)
    Y, X = iy[:, None], ix[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        # dot product of the corner's gradient with the vector from that corner to the pixel
        return gy[Y + dy, X + dx] * (fy - dy) + gx[Y + dy, X + dx] * (fx - dx)

    u, v = fade(fx), fade(fy)
    top = corner(0, 0) + u * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + u * (corner(1, 1) - corner(1, 0))
    return math.sqrt(2.0) * (top + v * (bottom - top))


def perlin_mask(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    scale_exponents: tuple[int, int] = PERLIN_SCALE_EXPONENTS,
    threshold: float = PERLIN_THRESHOLD,
    rotation: float = 90.0,
) -> np.ndarray:
    """A binary DRAEM anomaly mask (float32 in {0, 1}, ``shape``).

    Args:
        shape: (H, W) of the mask.
        rng: source of all randomness.
        scale_exponents: half-open range [lo, hi) of k; each axis gets 2^k lattice cells.
        threshold: noise level above which a pixel is anomalous.
        rotation: the noise is rotated by an angle uniform in [-rotation, rotation] degrees (0: off).
    """
    lo, hi = scale_exponents
    res = (2 ** int(rng.integers(lo, hi)), 2 ** int(rng.integers(lo, hi)))
    noise = perlin_noise(shape, res, rng)
    if rotation:
        angle = float(rng.uniform(-rotation, rotation))
        noise = ndimage.rotate(noise, angle, reshape=False, order=1, mode="constant", cval=0.0)
    return (noise > threshold).astype(np.float32)
