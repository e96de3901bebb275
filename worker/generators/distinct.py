"""Candidate sets worth judging: a candidate that is a near-copy of an earlier one is replaced.

The measure is the mean absolute difference of two candidates over all pixels and the three RGB
channels, on the 0-255 scale. A candidate whose difference to some earlier candidate of the same source
is under ``min_difference`` (default 4.0) is a near-duplicate: the generator proposes another one
(another seed, setting or model) until one is far enough from every earlier candidate or
``max_attempts`` proposals were tried; then the most distinct proposal is kept, and its settings say so.

Why 4.0: on the demo photographs, Real-ESRGAN's old fourth candidate (a denoise + unsharp refinement
of the first) differed from the first by 1.3-3.9, and two classical candidates that differed by 1.5-2.7
were hard to tell apart at 1:1 (docs/regions.md, "Candidates"). Pairs of different models can land
under it too (2.6 on a dark photograph); a model's output has no other setting to fall back on, so it
is kept, with its measure.

Every kept candidate records, under ``settings["distinct"]``, the threshold, its difference to the
nearest earlier candidate and which proposal it was (0 = the generator's first choice).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from dspo.images import bands
from worker.generators.base import Candidate

MIN_DIFFERENCE = 4.0
MAX_ATTEMPTS = 6


DIFFERENCE_BAND_ROWS = 256  # integer sums: the result is the same for any band height


def difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference over pixels and RGB channels, 0-255; row band by row band, so that no
    wide copy of a whole (40-megapixel) candidate is made."""
    if a.size != b.size:
        raise ValueError(f"candidates of one source must share a size, got {a.size} and {b.size}")
    a, b = (c if c.mode == "RGB" else c.convert("RGB") for c in (a, b))
    width, height = a.size
    total = 0
    for y0, y1 in bands(height, DIFFERENCE_BAND_ROWS):
        box = (0, y0, width, y1)
        left = np.asarray(a.crop(box), dtype=np.int16)
        total += int(np.abs(left - np.asarray(b.crop(box), dtype=np.int16)).sum(dtype=np.int64))
    return total / (width * height * 3)


def check_settings(min_difference: float, max_attempts: int) -> None:
    if not 0.0 <= min_difference <= 255.0:
        raise ValueError(f"min_difference is on the 0-255 scale, got {min_difference}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")


def pick_distinct(
    earlier: Sequence[Candidate],
    proposals: Iterable[Callable[[], Candidate]],
    *,
    min_difference: float = MIN_DIFFERENCE,
    max_attempts: int = MAX_ATTEMPTS,
) -> Candidate:
    """The first proposal at least min_difference from every earlier candidate, else the most distinct
    of the first max_attempts proposals. Proposals are made lazily: a distinct first one costs nothing
    more."""
    best: tuple[float, int, Candidate] | None = None
    for attempt, propose in enumerate(proposals):
        if attempt >= max_attempts:
            break
        candidate = propose()
        nearest = min((difference(candidate.image, e.image) for e in earlier), default=float("inf"))
        if best is None or nearest > best[0]:
            best = (nearest, attempt, candidate)
        if nearest >= min_difference:
            break
    if best is None:
        raise ValueError("no candidate was proposed")
    nearest, attempt, candidate = best
    candidate.settings = {
        **candidate.settings,
        "distinct": {
            "measure": "mean absolute RGB difference, 0-255",
            "min_difference": min_difference,
            "nearest": None if nearest == float("inf") else round(nearest, 3),
            "attempt": attempt,
        },
    }
    return candidate
