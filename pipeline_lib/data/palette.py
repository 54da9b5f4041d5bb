"""Colourise LoveDA masks, read colour label images back, snap generated colours.

The label generator works on colourised masks (Stable Diffusion sees RGB); these
functions are the bridge in both directions.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipeline_lib.data.classes import MAX_VALUE, PALETTE
from pipeline_lib.errors import DataError


def colourise(mask: np.ndarray, colours: np.ndarray = PALETTE) -> np.ndarray:
    """Map a raw (H, W) mask with values 0..7 to an (H, W, 3) uint8 RGB image."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise DataError(f"a mask must be 2-D (H, W); got shape {mask.shape}")
    if mask.size and int(mask.max()) > MAX_VALUE:
        raise DataError(f"mask holds value {int(mask.max())}; LoveDA masks use 0..{MAX_VALUE}")
    return colours[mask]


def _rgb_code(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


_CODE_TO_VALUE = {int(code): value for value, code in enumerate(_rgb_code(PALETTE))}


def decolourise(rgb: np.ndarray) -> np.ndarray:
    """Exact inverse of :func:`colourise`; an off-palette colour is an error."""
    rgb = _check_rgb(rgb)
    codes = _rgb_code(rgb)
    unique, inverse = np.unique(codes, return_inverse=True)
    lookup = np.empty(len(unique), dtype=np.uint8)
    for i, code in enumerate(unique):
        if int(code) not in _CODE_TO_VALUE:
            colour = ((code >> 16) & 255, (code >> 8) & 255, code & 255)
            raise DataError(
                f"colour {tuple(int(c) for c in colour)} is not in the LoveDA palette; "
                "use snap_to_palette for generated labels"
            )
        lookup[i] = _CODE_TO_VALUE[int(code)]
    return lookup[inverse].reshape(codes.shape)


def snap_to_palette(
    rgb: np.ndarray, tolerance: int = 0, colours: np.ndarray = PALETTE, fill_off: bool = False
) -> tuple[np.ndarray, float]:
    """Snap each pixel to the nearest of ``colours`` (Euclidean in RGB; the palette).

    Returns the raw mask and the share of pixels that were off-palette, that is whose
    largest channel difference from the chosen colour exceeds ``tolerance``. With
    ``fill_off`` an off-palette pixel takes the value of the nearest pixel that was not
    (Euclidean in the image plane), so a blurred border is split between its two sides.
    """
    rgb = _check_rgb(rgb)
    pixels = rgb.reshape(-1, 3).astype(np.int32)
    # (N, 8) squared distances; fine for tiles up to 1024^2 in chunks of rows.
    values = np.empty(len(pixels), dtype=np.uint8)
    off = np.empty(len(pixels), dtype=bool)
    palette = colours.astype(np.int32)
    for start in range(0, len(pixels), 1 << 18):
        chunk = pixels[start : start + (1 << 18)]
        dist = ((chunk[:, None, :] - palette[None, :, :]) ** 2).sum(-1)
        nearest = dist.argmin(1)
        values[start : start + len(chunk)] = nearest
        off[start : start + len(chunk)] = np.abs(chunk - palette[nearest]).max(1) > tolerance
    share = float(off.mean()) if len(pixels) else 0.0
    mask, off = values.reshape(rgb.shape[:2]), off.reshape(rgb.shape[:2])
    if fill_off and off.any() and not off.all():
        on = ndimage.distance_transform_edt(off, return_distances=False, return_indices=True)
        mask = mask[tuple(on)]
    return mask, share


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise DataError(f"a colour label must be (H, W, 3); got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise DataError(f"a colour label must be uint8; got {rgb.dtype}")
    return rgb
