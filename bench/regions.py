"""Region statistics of the segmenters on the photographs that ship with scikit-image.

For every photograph and segmenter: how many regions, their share of the image, their solidity
(area / convex hull area: 1 for a convex region, low for a ragged or "image with holes" one), their box
fill (area / bounding box area) and the largest share of the image that one region's box covers (a
crop box near 1.0 shows the whole image and says nothing about where to look). Prints markdown tables
(docs/regions.md) and, with --picture, draws the regions of two photographs side by side.

    python -m bench.regions
    python -m bench.regions --picture docs/screenshots/regions.jpg
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data as photographs
from skimage.measure import regionprops
from skimage.segmentation import find_boundaries

from worker.segmenters import get_segmenter

PHOTOGRAPHS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "camera",
    "coins",
    "moon",
    "brick",
    "grass",
    "gravel",
    "text",
)
SEGMENTERS = ("felzenszwalb", "slic", "regions")


@dataclass
class RegionStats:
    count: int
    area_share: list[float]  # per region: area / image area
    solidity: list[float]  # per region: area / convex hull area
    box_fill: list[float]  # per region: area / bounding box area
    box_share: list[float]  # per region: bounding box area / image area
    pieces: list[int]  # per region: connected components (8-connected)


def region_stats(masks: list[np.ndarray]) -> RegionStats:
    image_area = masks[0].size
    area_share, solidity, box_fill, box_share, pieces = [], [], [], [], []
    for mask in masks:
        props = regionprops(mask.astype(np.uint8))[0]
        y0, x0, y1, x1 = props.bbox
        area_share.append(props.area / image_area)
        solidity.append(float(props.solidity))
        box_fill.append(float(props.extent))
        box_share.append((x1 - x0) * (y1 - y0) / image_area)
        pieces.append(int(ndimage.label(mask, structure=np.ones((3, 3)))[1]))
    return RegionStats(len(masks), area_share, solidity, box_fill, box_share, pieces)


def photograph(name: str) -> Image.Image:
    return Image.fromarray(getattr(photographs, name)()).convert("RGB")


def picture(names: list[str], path: str, width: int = 420) -> None:
    """The regions of each photograph (boundaries in magenta) for felzenszwalb and regions, one row
    per photograph."""
    rows = []
    for name in names:
        image = photograph(name)
        tiles = []
        for segmenter in ("felzenszwalb", "regions"):
            labels = np.zeros((image.height, image.width), dtype=np.int32)
            for i, mask in enumerate(get_segmenter(segmenter).segment(image)):
                labels[mask] = i + 1
            pixels = np.asarray(image).copy()
            # Two pixels wide, so that the lines survive the downscale to the picture's width.
            edge = ndimage.binary_dilation(find_boundaries(labels, mode="thick"))
            pixels[edge] = (255, 0, 255)
            tile = Image.fromarray(pixels)
            tiles.append(
                tile.resize((width, round(width * image.height / image.width)), Image.Resampling.LANCZOS)
            )
        rows.append(tiles)
    height = sum(row[0].height for row in rows) + 8 * (len(rows) - 1)
    canvas = Image.new("RGB", (2 * width + 8, height), "white")
    y = 0
    for row in rows:
        canvas.paste(row[0], (0, y))
        canvas.paste(row[1], (width + 8, y))
        y += row[0].height + 8
    canvas.save(path, quality=85)  # a photograph: JPEG (for .jpg paths) keeps the docs small


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--picture", help="write a picture of the regions of astronaut and coffee here")
    args = parser.parse_args()

    print("| photograph | size | " + " | ".join(f"{s} regions" for s in SEGMENTERS) + " |")
    print("|---|---|" + "---|" * len(SEGMENTERS))
    per_segmenter: dict[str, list[RegionStats]] = {s: [] for s in SEGMENTERS}
    seconds: dict[str, list[float]] = {s: [] for s in SEGMENTERS}
    for name in PHOTOGRAPHS:
        image = photograph(name)
        counts = []
        for segmenter in SEGMENTERS:
            started = time.perf_counter()
            masks = get_segmenter(segmenter).segment(image)
            seconds[segmenter].append(time.perf_counter() - started)
            stats = region_stats(masks)
            per_segmenter[segmenter].append(stats)
            counts.append(str(stats.count))
        print(f"| {name} | {image.width}x{image.height} | " + " | ".join(counts) + " |")

    print()
    print(
        "| segmenter | regions per image (median, max) | area share (median, min) | solidity (median, p10) "
        "| box fill (median, p10) | largest box share (max) | regions in pieces | seconds per image |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for segmenter, runs in per_segmenter.items():
        counts = [run.count for run in runs]
        area = [a for run in runs for a in run.area_share]
        solidity = [s for run in runs for s in run.solidity]
        fill = [f for run in runs for f in run.box_fill]
        box = [b for run in runs for b in run.box_share]
        pieces = sum(p > 1 for run in runs for p in run.pieces)
        print(
            f"| {segmenter} | {statistics.median(counts):.0f}, {max(counts)} "
            f"| {statistics.median(area):.3f}, {min(area):.4f} "
            f"| {statistics.median(solidity):.2f}, {np.quantile(solidity, 0.1):.2f} "
            f"| {statistics.median(fill):.2f}, {np.quantile(fill, 0.1):.2f} "
            f"| {max(box):.2f} | {pieces} of {len(area)} | {statistics.median(seconds[segmenter]):.2f} |"
        )
    if args.picture:
        picture(["astronaut", "coffee"], args.picture)
        print(f"\npicture: {args.picture}")


if __name__ == "__main__":
    main()
