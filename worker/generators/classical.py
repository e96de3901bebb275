"""Classical SR candidates: bicubic or Lanczos upsampling with varied denoising and unsharp masking.

Always available (Pillow and scikit-image only). Candidate i of a seed is the same whatever n is: its
parameters come from a random generator seeded with (seed, i).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from itertools import count
from typing import Any

import numpy as np
from PIL import Image, ImageFilter
from skimage.restoration import denoise_tv_chambolle

from dspo.images import to_rgb, upsample
from worker.generators.base import Candidate, check_request
from worker.generators.distinct import MAX_ATTEMPTS, MIN_DIFFERENCE, check_settings, pick_distinct

METHODS = ("bicubic", "lanczos")
DENOISERS = ("none", "median", "gaussian", "tv")


def draw_settings(
    index: int, seed: int, *, methods: Sequence[str], denoisers: Sequence[str], attempt: int = 0
) -> dict[str, Any]:
    """The parameters of candidate ``index``: method and denoiser cycle with the index, strengths are
    drawn from a generator seeded with (seed, index). A later ``attempt`` (a replacement of a
    near-duplicate) moves both cycles on, draws from (seed, index, attempt) and widens the strengths'
    ranges by half their width per attempt, so that a replacement can land farther away."""
    rng = np.random.default_rng([seed, index] if attempt == 0 else [seed, index, attempt])
    wider = 1.0 + 0.5 * attempt
    kind = denoisers[(index + attempt) % len(denoisers)]
    denoise: dict[str, Any] = {"kind": kind}
    if kind == "median":
        denoise["size"] = 3 if attempt < 2 else 5
    elif kind == "gaussian":
        denoise["radius"] = round(float(rng.uniform(0.4, 0.4 + 0.6 * wider)), 4)
    elif kind == "tv":
        denoise["weight"] = round(float(rng.uniform(0.02, 0.02 + 0.06 * wider)), 4)
    unsharp = {
        "radius": round(float(rng.uniform(0.8, 0.8 + 1.7 * wider)), 4),
        "percent": int(rng.integers(60, 60 + round(161 * wider))),
        "threshold": int(rng.integers(0, 4)),
    }
    method = methods[(index + attempt) % len(methods)]
    return {"index": index, "method": method, "denoise": denoise, "unsharp": unsharp}


def denoise(img: Image.Image, spec: dict[str, Any]) -> Image.Image:
    kind = spec["kind"]
    if kind == "none":
        return img
    if kind == "median":
        return img.filter(ImageFilter.MedianFilter(spec["size"]))
    if kind == "gaussian":
        return img.filter(ImageFilter.GaussianBlur(spec["radius"]))
    if kind == "tv":
        arr = np.asarray(img, dtype=np.float64) / 255.0
        out = denoise_tv_chambolle(arr, weight=spec["weight"], channel_axis=-1)
        return Image.fromarray(np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8))
    raise ValueError(f"Unknown denoiser {kind!r}; known: {', '.join(DENOISERS)}")


def sharpen(img: Image.Image, spec: dict[str, Any]) -> Image.Image:
    return img.filter(ImageFilter.UnsharpMask(spec["radius"], spec["percent"], spec["threshold"]))


def classical_upscale(lq: Image.Image, scale: int, settings: dict[str, Any]) -> Image.Image:
    """Denoise at LQ resolution, upsample, then unsharp-mask at SR resolution."""
    clean = denoise(to_rgb(lq), settings["denoise"])
    return sharpen(upsample(clean, scale, settings["method"]), settings["unsharp"])


def refine(img: Image.Image, settings: dict[str, Any]) -> Image.Image:
    """Apply a variant's denoising and sharpening to an image that is already at SR resolution."""
    return sharpen(denoise(to_rgb(img), settings["denoise"]), settings["unsharp"])


class ClassicalGenerator:
    """n candidates from classical upsampling, varied by candidate index and seed; a near-duplicate of
    an earlier candidate is replaced by another draw (worker.generators.distinct)."""

    name = "classical"

    def __init__(
        self,
        methods: Sequence[str] = METHODS,
        denoisers: Sequence[str] = DENOISERS,
        min_difference: float = MIN_DIFFERENCE,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        unknown = [m for m in methods if m not in METHODS]
        if not methods or unknown:
            raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {list(methods)}")
        unknown = [d for d in denoisers if d not in DENOISERS]
        if not denoisers or unknown:
            raise ValueError(f"denoisers must be a non-empty subset of {DENOISERS}, got {list(denoisers)}")
        check_settings(min_difference, max_attempts)
        self.methods = tuple(methods)
        self.denoisers = tuple(denoisers)
        self.min_difference = min_difference
        self.max_attempts = max_attempts

    def generate(self, lq: Image.Image, *, scale: int, n: int, seed: int) -> list[Candidate]:
        check_request(lq, scale=scale, n=n)
        candidates: list[Candidate] = []
        for index in range(n):
            proposals = (partial(self._candidate, lq, scale, seed, index, attempt) for attempt in count())
            candidates.append(
                pick_distinct(
                    candidates, proposals, min_difference=self.min_difference, max_attempts=self.max_attempts
                )
            )
        return candidates

    def _candidate(self, lq: Image.Image, scale: int, seed: int, index: int, attempt: int) -> Candidate:
        settings = draw_settings(index, seed, methods=self.methods, denoisers=self.denoisers, attempt=attempt)
        return Candidate(
            image=classical_upscale(lq, scale, settings),
            generator=self.name,
            model=f"pillow-{settings['method']}",
            settings={**settings, "scale": scale},
            seed=seed,
            weights_digest=None,
        )
