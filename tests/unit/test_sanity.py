"""The degradation of a sanity gold task: inside the mask only, strong, and seeded."""

import io

import numpy as np
from PIL import Image

from dspo.sanity import degrade_inside
from tests.helpers import png_bytes


def _image() -> Image.Image:
    return Image.open(io.BytesIO(png_bytes(64, 48, seed=3))).convert("RGB")


def _mask() -> np.ndarray:
    mask = np.zeros((48, 64), dtype=bool)
    mask[10:30, 20:50] = True
    return mask


def test_only_the_pixels_inside_the_mask_change_and_clearly() -> None:
    image, mask = _image(), _mask()
    degraded, params = degrade_inside(image, mask, seed=7)
    before, after = np.asarray(image, dtype=np.int16), np.asarray(degraded, dtype=np.int16)
    assert degraded.size == image.size and params["seed"] == 7
    assert np.array_equal(after[~mask], before[~mask])
    # Clearly worse: a mean absolute change of many levels (blur plus noise of sigma 30), not a trace.
    assert np.abs(after[mask] - before[mask]).mean() > 15


def test_the_same_seed_gives_the_same_image_and_another_seed_another() -> None:
    image, mask = _image(), _mask()
    first, _ = degrade_inside(image, mask, seed=7)
    again, _ = degrade_inside(image, mask, seed=7)
    other, _ = degrade_inside(image, mask, seed=8)
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()
