"""Segmenters, found by name."""

from __future__ import annotations

from typing import Any

from worker.segmenters.base import Segmenter
from worker.segmenters.classical import FelzenszwalbSegmenter, SlicSegmenter
from worker.segmenters.regions import RegionSegmenter
from worker.segmenters.sam import SamSegmenter

__all__ = ["KNOWN_SEGMENTERS", "Segmenter", "get_segmenter"]

# "classical" names the default classical method, for projects that do not care which: since the
# regions segmenter came, that is "regions" (felzenszwalb and slic stay available by their names).
_SEGMENTERS: dict[str, type] = {
    "regions": RegionSegmenter,
    "classical": RegionSegmenter,
    "felzenszwalb": FelzenszwalbSegmenter,
    "slic": SlicSegmenter,
    "sam": SamSegmenter,  # needs the [train] extra (transformers, torch) when it runs
}
KNOWN_SEGMENTERS = tuple(_SEGMENTERS)


def get_segmenter(name: str, **settings: Any) -> Segmenter:
    """Build a segmenter by name; settings go to its constructor."""
    try:
        cls = _SEGMENTERS[name]
    except KeyError:
        raise ValueError(
            f"Unknown segmenter {name!r}; known segmenters: {', '.join(KNOWN_SEGMENTERS)}"
        ) from None
    try:
        return cls(**settings)
    except TypeError as exc:
        raise ValueError(f"Bad settings for segmenter {name!r}: {exc}") from exc
