"""The built-in oracle `fidelity`: PSNR to the HQ image inside the task's region.

Score = 10 log10(255² / MSE) in dB over the region's pixels (all three channels), capped at 100 dB
for an exact match. Without an HQ image (an LQ upload) the candidate is judged by its consistency with
the LQ image instead: it is downscaled by the project's scale (box filter, PIL's `reduce`) and
compared with the LQ image inside the downscaled region. Sharp, faithful detail in the region wins;
a plausible but invented texture loses, as it would to a careful annotator with the original at hand."""

from collections.abc import Sequence

import numpy as np
from PIL import Image

from dspo.oracles import OracleQuery

MAX_PSNR = 100.0


def psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    """PSNR of a against b over the pixels where region is true (uint8 range)."""
    diff = a[region].astype(np.float64) - b[region].astype(np.float64)
    mse = float(np.mean(diff * diff)) if diff.size else 0.0
    return MAX_PSNR if mse <= 255.0**2 * 10 ** (-MAX_PSNR / 10) else 10 * np.log10(255.0**2 / mse)


def _reduce(pixels: np.ndarray, scale: int) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).reduce(scale))


def fidelity(query: OracleQuery) -> Sequence[float]:
    region = query.region
    if query.hq is not None:
        return [psnr(c, query.hq, region) for c in query.candidates]
    # A pixel of the LQ image counts when at least half of the SR pixels it covers are in the region.
    small = _reduce(region.astype(np.uint8) * 255, query.scale) >= 128
    height, width = query.lq.shape[:2]
    small = small[:height, :width]
    if not small.any():
        small = np.ones((height, width), dtype=bool)
    return [psnr(_reduce(c, query.scale)[:height, :width], query.lq, small) for c in query.candidates]
