"""The degradation that makes a sanity gold task: one candidate made clearly worse inside a region's
mask (a strong blur plus noise), pixels outside the mask untouched, seeded and exactly repeatable."""

from typing import Any

import numpy as np
from PIL import Image

from dspo.images import convolve, gaussian_kernel

BLUR_SIGMA = 3.0  # in SR pixels: far past the softness any candidate generator leaves
NOISE_SIGMA = 30.0  # in 8-bit levels


def degrade_inside(image: Image.Image, mask: np.ndarray, seed: int) -> tuple[Image.Image, dict[str, Any]]:
    """`image` with a blurred and noised copy of itself pasted inside `mask` (HxW bool, the image's
    size); the parameters used, for the record."""
    if mask.shape != (image.height, image.width):
        raise ValueError(f"mask {mask.shape} does not match the image {image.width}x{image.height}")
    rng = np.random.default_rng(seed)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    size = 2 * int(3 * BLUR_SIGMA) + 1
    blurred = convolve(pixels, gaussian_kernel(size, BLUR_SIGMA, BLUR_SIGMA, 0.0))
    noisy = blurred + rng.normal(0.0, NOISE_SIGMA, size=pixels.shape).astype(np.float32)
    out = np.where(mask[..., None], noisy, pixels)
    result = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
    return result, {"blur_sigma": BLUR_SIGMA, "noise_sigma": NOISE_SIGMA, "seed": seed}
