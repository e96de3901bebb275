"""Classical SR candidates: bicubic or Lanczos upsampling with varied denoising and unsharp masking.

Always available (Pillow and scikit-image only). Candidate i of a seed is the same whatever n is: its
parameters come from a random generator seeded with (seed, i).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageFilter
from skimage.restoration import denoise_tv_chambolle

from dspo.images import to_rgb, upsample
from worker.generators.base import Candidate, check_request

METHODS = ("bicubic", "lanczos")
DENOISERS = ("none", "median", "gaussian", "tv")


def draw_settings(
    index: int, seed: int, *, methods: Sequence[str], denoisers: Sequence[str]
) -> dict[str, Any]:
    """The parameters of candidate ``index``: method and denoiser cycle with the index, strengths are
    drawn from a generator seeded with (seed, index)."""
    rng = np.random.default_rng([seed, index])
    kind = denoisers[index % len(denoisers)]
    denoise: dict[str, Any] = {"kind": kind}
    if kind == "median":
        denoise["size"] = 3
    elif kind == "gaussian":
        denoise["radius"] = round(float(rng.uniform(0.4, 1.0)), 4)
    elif kind == "tv":
        denoise["weight"] = round(float(rng.uniform(0.02, 0.08)), 4)
    unsharp = {
        "radius": round(float(rng.uniform(0.8, 2.5)), 4),
        "percent": int(rng.integers(60, 221)),
        "threshold": int(rng.integers(0, 4)),
    }
    return {"index": index, "method": methods[index % len(methods)], "denoise": denoise, "unsharp": unsharp}


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
    """n candidates from classical upsampling, varied by candidate index and seed."""

    name = "classical"

    def __init__(self, methods: Sequence[str] = METHODS, denoisers: Sequence[str] = DENOISERS) -> None:
        unknown = [m for m in methods if m not in METHODS]
        if not methods or unknown:
            raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {list(methods)}")
        unknown = [d for d in denoisers if d not in DENOISERS]
        if not denoisers or unknown:
            raise ValueError(f"denoisers must be a non-empty subset of {DENOISERS}, got {list(denoisers)}")
        self.methods = tuple(methods)
        self.denoisers = tuple(denoisers)

    def generate(self, lq: Image.Image, *, scale: int, n: int, seed: int) -> list[Candidate]:
        check_request(lq, scale=scale, n=n)
        candidates = []
        for index in range(n):
            settings = draw_settings(index, seed, methods=self.methods, denoisers=self.denoisers)
            candidates.append(
                Candidate(
                    image=classical_upscale(lq, scale, settings),
                    generator=self.name,
                    model=f"pillow-{settings['method']}",
                    settings={**settings, "scale": scale},
                    seed=seed,
                    weights_digest=None,
                )
            )
        return candidates
