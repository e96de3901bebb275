"""What every segmenter provides: bool masks over a shared reference image."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image


@runtime_checkable
class Segmenter(Protocol):
    """Splits a reference image into regions; every mask is a bool array of the reference's size (HxW)."""

    name: str

    def segment(self, reference: Image.Image) -> list[np.ndarray]: ...


def wants_candidates(segmenter: Segmenter) -> bool:
    """Whether the segmenter takes the source's candidates too (``segment(reference, candidates)``),
    to put its regions where the candidates differ."""
    return bool(getattr(segmenter, "uses_candidates", False))


def labels_to_masks(labels: np.ndarray) -> list[np.ndarray]:
    """One bool mask per label present in an integer label image, in increasing label order."""
    present = np.unique(labels)
    return [labels == value for value in present]
