"""Training augmentation of ROI stacks: geometry, and the scanner the image came from.

Every draw comes from the numpy generator handed in, so a training run is
reproducible for its seed (and resumes exactly from a checkpoint).

- geometry (always): a quarter turn and a mirror in the image plane, and
  optionally a shift of a few pixels (a detector's centre is not the
  readers'); nodule masks move with the image;
- scanner (``scanner=True``), per ROI: a reconstruction kernel (Gaussian
  blur, or edge enhancement by unsharp masking), slice thickness (each plane
  mixed with its neighbours), noise (white or correlated, up to about 45 HU)
  and a calibration offset and gain (about ±20 HU, ±4 %).

ROIs are windowed to ``ai.roi.HU_WINDOW`` (1800 HU wide), so 0.01 is 18 HU.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

__all__ = ["augment_batch"]


def _shifted(x: npt.NDArray[np.float32], dy: int, dx: int) -> npt.NDArray[np.float32]:
    """``x`` ``(C, H, W)`` moved by ``(dy, dx)`` pixels, edges repeated."""
    pad = max(abs(dy), abs(dx))
    if pad == 0:
        return x
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    h, w = x.shape[1:]
    result: npt.NDArray[np.float32] = padded[:, pad - dy : pad - dy + h, pad - dx : pad - dx + w]
    return result


def _scanner(x: npt.NDArray[np.float32], rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """One ROI ``(C, H, W)`` as another scanner would have shown it."""
    out = x
    if x.shape[0] > 1:  # slice thickness: mix each plane with its neighbours
        w = rng.uniform(0.0, 0.3)
        up = np.concatenate([out[:1], out[:-1]])
        down = np.concatenate([out[1:], out[-1:]])
        out = (1.0 - w) * out + 0.5 * w * (up + down)
    sigma = rng.uniform(0.4, 1.0)
    blurred = ndimage.gaussian_filter(out, sigma=(0, sigma, sigma), mode="nearest")
    amount = rng.uniform(-0.6, 0.8)  # > 0 smooths, < 0 sharpens (overshoot at edges)
    out = out + amount * (blurred - out)
    noise = rng.standard_normal(out.shape).astype(np.float32)
    if rng.random() < 0.5:
        noise = ndimage.gaussian_filter(noise, sigma=(0, 0.8, 0.8))
        noise /= max(float(noise.std()), 1e-6)
    out = out + rng.uniform(0.0, 0.025) * noise
    out = out * rng.uniform(0.96, 1.04) + rng.uniform(-0.012, 0.012)
    result: npt.NDArray[np.float32] = np.clip(out, 0.0, 1.0).astype(np.float32)
    return result


def augment_batch(
    rois: npt.NDArray[np.float32],
    masks: npt.NDArray[np.float32] | None,
    rng: np.random.Generator,
    *,
    scanner: bool = False,
    shift_px: int = 0,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
    """Augmented copies of a batch.

    Parameters
    ----------
    rois : numpy.ndarray
        ``(n, C, H, W)`` float32 in ``[0, 1]``.
    masks : numpy.ndarray or None
        ``(n, C, H, W)`` nodule masks on the same pixels, moved with the image.
    rng : numpy.random.Generator
        Source of every draw.
    scanner : bool
        Also change kernel, slice thickness, noise and calibration per ROI.
    shift_px : int
        Largest shift in pixels along each image axis.

    Returns
    -------
    tuple
        ``(rois, masks)``, new C-contiguous float32 arrays.
    """
    k = int(rng.integers(0, 4))
    flip = bool(rng.random() < 0.5)

    def turn(a: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        out = np.rot90(a, k, axes=(2, 3))
        return out[:, :, :, ::-1] if flip else out

    x = np.ascontiguousarray(turn(rois), dtype=np.float32)
    m = None if masks is None else np.ascontiguousarray(turn(masks), dtype=np.float32)
    for i in range(x.shape[0]):
        if shift_px:
            dy, dx = (int(v) for v in rng.integers(-shift_px, shift_px + 1, 2))
            x[i] = _shifted(x[i], dy, dx)
            if m is not None:
                m[i] = _shifted(m[i], dy, dx)
        if scanner:
            x[i] = _scanner(x[i], rng)
    return x, m
