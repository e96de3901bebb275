"""Small native-format datasets made of random images, written with the shared DatasetWriter."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from dspo.dataset_format import DatasetWriter, Record


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, format="PNG")
    return buffer.getvalue()


def smooth_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random colour field: upsampled noise, so SR images have structure rather than pure noise."""
    coarse = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))


def make_dataset(
    root: Path,
    sources: int = 4,
    val_sources: int = 1,
    size: int = 32,
    scale: int = 4,
    seed: int = 0,
    defect: str = "stripes",
    image_level: bool = False,
) -> Path:
    """Each source has two instances (left and right rectangles); in each, the loser carries a defect inside
    the mask only (the winner is the clean image), so the preference is known and local. With `image_level`
    each source also gets an image-level record: the clean image over the image with both defects."""
    rng = np.random.default_rng(seed)
    writer = DatasetWriter(root)
    yy, xx = np.mgrid[0:size, 0:size]
    for s in range(sources + val_sources):
        split = "train" if s < sources else "val"
        clean = smooth_image(rng, size)
        lq = np.asarray(Image.fromarray(clean).resize((size // scale, size // scale), Image.BICUBIC))
        lq_sha = writer.add_image(png(lq))
        half = size // 2
        boxes = [(2, 2, half, size - 2), (half, 4, size - 2, size - 4)]
        areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
        both = clean.astype(np.int16)
        for m, box in enumerate(boxes):
            inside = (xx >= box[0]) & (xx < box[2]) & (yy >= box[1]) & (yy < box[3])
            mask_sha = writer.add_image(png((inside * 255).astype(np.uint8), mode="1"))
            loser = clean.astype(np.int16)
            if defect == "stripes":
                pattern = np.where((xx // 2) % 2 == 0, 90, -90)[..., None]
            else:
                pattern = rng.integers(-90, 91, (size, size, 1))
            loser = np.where(inside[..., None], loser + pattern, loser).clip(0, 255).astype(np.uint8)
            both = np.where(inside[..., None], both + pattern, both)
            writer.add_record(
                Record(
                    record_id=f"r{s}-{m}",
                    source_id=f"s{s}",
                    instance_id=f"s{s}-i{m}",
                    split=split,
                    lq=lq_sha,
                    winner=writer.add_image(png(clean)),
                    loser=writer.add_image(png(loser)),
                    box=box,
                    mask=mask_sha,
                    weight=areas[m] / sum(areas),
                    prompt="a photo",
                    content_text=["smooth wall", "soft sky"][m],
                    defect_text="stripes",
                    winner_candidate_id=f"c{s}-0",
                    loser_candidate_id=f"c{s}-1",
                    scale=scale,
                    votes=3,
                    best_share=1.0,
                    worst_share=2 / 3,
                )
            )
        if image_level:
            full = writer.add_image(png(np.full((size, size), 255, np.uint8), mode="1"))
            writer.add_record(
                Record(
                    record_id=f"r{s}-image",
                    source_id=f"s{s}",
                    instance_id=None,
                    split=split,
                    lq=lq_sha,
                    winner=writer.add_image(png(clean)),
                    loser=writer.add_image(png(both.clip(0, 255).astype(np.uint8))),
                    box=(0, 0, size, size),
                    mask=full,
                    weight=1.0,
                    prompt="a photo",
                    scale=scale,
                    votes=3,
                )
            )
    return writer.finish(
        {
            "dataset_id": "synthetic",
            "version": 1,
            "project": "tests",
            "vote_snapshot": {"votes": 3 * 2 * (sources + val_sources)},
            "aggregation": {"min_votes": 3},
            "drops": {"tie": 1},
        }
    )


def make_conflict_dataset(
    root: Path, sources: int = 16, val_sources: int = 8, size: int = 32, seed: int = 0
) -> Path:
    """The case DSPO exists for: two candidates per source, A with stripes in the right region and B with
    stripes in the left, so A is better on the left and worse on the right. The instance records say so
    (left: A over B, right: B over A); the image-level votes split, so the image-level record's winner
    alternates between A and B from one source to the next. Region m's instance ids end in "-i{m}"."""
    rng = np.random.default_rng(seed)
    writer = DatasetWriter(root)
    yy, xx = np.mgrid[0:size, 0:size]
    half, scale = size // 2, 4
    boxes = [(0, 0, half, size), (half, 0, size, size)]
    stripes = np.where((xx // 2) % 2 == 0, 90, -90)[..., None]
    full = writer.add_image(png(np.full((size, size), 255, np.uint8), mode="1"))
    for s in range(sources + val_sources):
        split = "train" if s < sources else "val"
        clean = smooth_image(rng, size)
        lq = writer.add_image(
            png(np.asarray(Image.fromarray(clean).resize((size // scale,) * 2, Image.BICUBIC)))
        )
        insides = [(xx >= b[0]) & (xx < b[2]) & (yy >= b[1]) & (yy < b[3]) for b in boxes]
        # A is striped where B is clean and the other way round.
        a, b = (
            writer.add_image(
                png(np.where(inside[..., None], clean + stripes, clean).clip(0, 255).astype(np.uint8))
            )
            for inside in (insides[1], insides[0])
        )
        common = dict(source_id=f"s{s}", split=split, lq=lq, prompt="a photo", scale=scale, votes=4)
        for m, (box, inside) in enumerate(zip(boxes, insides, strict=True)):
            winner, loser = (a, b) if m == 0 else (b, a)
            writer.add_record(
                Record(
                    record_id=f"r{s}-{m}",
                    instance_id=f"s{s}-i{m}",
                    winner=winner,
                    loser=loser,
                    box=box,
                    mask=writer.add_image(png((inside * 255).astype(np.uint8), mode="1")),
                    weight=0.5,
                    best_share=1.0,
                    worst_share=1.0,
                    **common,
                )
            )
        winner, loser = (a, b) if s % 2 == 0 else (b, a)
        writer.add_record(
            Record(
                record_id=f"r{s}-image",
                instance_id=None,
                winner=winner,
                loser=loser,
                box=(0, 0, size, size),
                mask=full,
                weight=1.0,
                best_share=0.5,
                worst_share=0.5,
                **common,
            )
        )
    return writer.finish({"dataset_id": "conflict", "version": 1, "project": "tests"})
