"""From segmenter masks to the instances that annotators compare.

All candidates of a source share the masks of one reference image, so an instance is the same region
in every candidate. Small masks are merged into one "rest" region (or dropped); each kept instance
gets its crop box (mask bounding box plus a margin) and its DSPO weight w_m = area_m / sum of areas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dspo.images import bands


@dataclass
class Instance:
    mask: np.ndarray  # bool, HxW, the size of the candidates
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive), margin included, clipped
    area: int  # pixels in mask
    weight: float  # area / sum of the areas of the kept instances of the source
    is_rest: bool  # the union of the masks that were too small to stand alone


def build_instances(
    masks: Sequence[np.ndarray],
    *,
    min_area_fraction: float = 0.005,
    margin: int = 16,
    merge_small_into_rest: bool = True,
) -> list[Instance]:
    """Turn masks into weighted instances.

    Masks smaller than ``min_area_fraction`` of the image are merged into one rest region (the union of
    the small masks, less any pixel a kept mask covers), or dropped when ``merge_small_into_rest`` is
    False; a rest region that is itself under the minimum is dropped. Empty masks are ignored. Kept
    instances come in input order, the rest region last; their weights sum to 1. An empty list means
    nothing was large enough.
    """
    if not 0.0 <= min_area_fraction < 1.0:
        raise ValueError(f"min_area_fraction must be in [0, 1), got {min_area_fraction}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    checked = _check_masks(masks)
    if not checked:
        return []
    height, width = checked[0].shape
    min_area = min_area_fraction * height * width

    kept: list[tuple[np.ndarray, bool]] = []
    small: list[np.ndarray] = []
    for mask in checked:
        area = int(mask.sum())
        if area == 0:
            continue
        if area >= min_area:
            kept.append((mask, False))
        else:
            small.append(mask)

    if merge_small_into_rest and small:
        rest = np.logical_or.reduce(small)
        if kept:
            rest &= ~np.logical_or.reduce([mask for mask, _ in kept])
        if rest.any() and rest.sum() >= min_area:
            kept.append((rest, True))

    total = sum(int(mask.sum()) for mask, _ in kept)
    instances = []
    for mask, is_rest in kept:
        area = int(mask.sum())
        instances.append(
            Instance(
                mask=mask,
                box=mask_box(mask, margin=margin),
                area=area,
                weight=area / total,
                is_rest=is_rest,
            )
        )
    return instances


def _check_masks(masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    checked = []
    shape = None
    for index, mask in enumerate(masks):
        arr = np.asarray(mask)
        if arr.ndim != 2:
            raise ValueError(f"mask {index} must be 2-D (HxW), got shape {arr.shape}")
        if shape is None:
            shape = arr.shape
        elif arr.shape != shape:
            raise ValueError(f"mask {index} is {arr.shape}, mask 0 is {shape}: masks must share one size")
        checked.append(arr if arr.dtype == bool else arr != 0)
    return checked


def mask_box(mask: np.ndarray, *, margin: int = 0) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1; x1, y1 exclusive) of a non-empty mask, grown by margin and
    clipped to the image."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("an empty mask has no bounding box")
    height, width = mask.shape
    return (
        max(0, int(cols[0]) - margin),
        max(0, int(rows[0]) - margin),
        min(width, int(cols[-1]) + 1 + margin),
        min(height, int(rows[-1]) + 1 + margin),
    )


def contested(
    candidates: Sequence[np.ndarray], mask: np.ndarray, threshold: float = 0.0, *, band_rows: int = 0
) -> float:
    """How much the candidates differ inside ``mask``, in 0..255 units.

    Per pixel: the standard deviation across candidates, averaged over RGB. Values at or below
    ``threshold`` count as 0 (a noise floor, so that tiny differences everywhere do not add up). The
    score is the mean over the mask's pixels; 0.0 means the candidates agree inside the mask.
    band_rows > 0 works on that many rows at a time (bounded memory for large images; the score
    differs from the whole-mask one by float rounding only).
    """
    if len(candidates) < 2:
        raise ValueError(f"need at least 2 candidates to compare, got {len(candidates)}")
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    mask = np.asarray(mask).astype(bool, copy=False)
    arrays = [np.asarray(c) for c in candidates]
    for index, arr in enumerate(arrays):
        if arr.shape[:2] != mask.shape or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(
                f"candidate {index} has shape {arr.shape}; expected {mask.shape + (3,)} to match the mask"
            )
    if not mask.any():
        return 0.0
    if band_rows <= 0:
        pixels = np.stack([arr[mask] for arr in arrays]).astype(np.float32)  # N x P x 3
        spread = pixels.std(axis=0).mean(axis=1)  # P
        spread[spread <= threshold] = 0.0
        return float(spread.mean())
    total, count = 0.0, 0
    for y0, y1 in bands(mask.shape[0], band_rows):
        inside = mask[y0:y1]
        if not inside.any():
            continue
        pixels = np.stack([arr[y0:y1][inside] for arr in arrays]).astype(np.float32)
        spread = pixels.std(axis=0).mean(axis=1)
        spread[spread <= threshold] = 0.0
        total += float(spread.sum(dtype=np.float64))
        count += spread.size
    return total / count
