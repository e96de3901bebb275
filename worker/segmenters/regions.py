"""Regions an annotator can name: superpixels merged by colour and texture into a few compact regions.

The classical segmenters cut an image into many ragged fragments (slivers along an edge, "the whole
image with holes"); nobody can say what such a fragment shows. This one works in four steps, all
deterministic:

1. SLIC superpixels (about ``superpixels`` of them) on a copy whose longer side is ``max_side``.
2. Hierarchical grouping as in Selective Search (Uijlings et al., IJCV 2013): the adjacent pair with
   the highest similarity is merged first, where similarity = colour + texture (histogram
   intersections of Lab colour and of gradient orientations) + size (small regions merge first) +
   fill (merges that fill their bounding box first). Merging stops once no adjacent pair is alike in
   appearance (colour and texture similarity under ``similarity``) and at most ``max_regions`` are
   left; it never goes under ``min_regions``. A merge whose bounding box would cover more than
   ``max_box_fraction`` of the image is never made.
3. Clean-up: a region under ``min_area_fraction`` of the image, or a sliver (thinner than
   ``min_thickness`` of the image's shorter side, thickness = 2 * area / perimeter), is merged into
   the neighbour it shares the longest border with.
4. The compactness rule: a region whose solidity (area / convex hull area) is under ``min_solidity``,
   or whose box covers more than ``max_box_fraction`` of the image, is split in two by its superpixels'
   positions (2-means on their centroids), and the pieces are cleaned up as in step 3.

With ``focus="disagreement"`` the segmenter also takes the candidates: the per-pixel spread of the
candidates (standard deviation across candidates, mean over RGB) is averaged per superpixel, the
superpixels above the ``hot_quantile`` of that spread are "hot", and the regions returned are the hot
parts of the merged regions (snapped to superpixels), largest spread first, at most ``max_regions``.
Then the masks do not tile the image: questions go where the candidates differ.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.color import rgb2lab
from skimage.measure import regionprops
from skimage.segmentation import slic

from dspo.images import bands
from worker.segmenters.classical import _check_max_side, _prepare, _restore

COLOUR_BINS = 16
TEXTURE_ORIENTATIONS = 8
FOCUS = ("none", "disagreement")


@dataclass
class _Region:
    area: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in working pixels
    colour: np.ndarray  # normalised histograms (sum 3: one per Lab channel)
    texture: np.ndarray  # normalised gradient-orientation histogram (sum 1)
    members: list[int] = field(default_factory=list)  # superpixel ids


def _union_box(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _box_area(box: tuple[int, int, int, int]) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def _histograms(labels: np.ndarray, values: np.ndarray, bins: int, count: int, weights=None) -> np.ndarray:
    """One histogram of `values` (ints in [0, bins)) per label, as rows normalised to sum 1."""
    flat = labels.ravel() * bins + values.ravel()
    hist = np.bincount(flat, weights=None if weights is None else weights.ravel(), minlength=count * bins)
    hist = hist.reshape(count, bins).astype(np.float64)
    totals = hist.sum(axis=1, keepdims=True)
    return np.divide(hist, totals, out=np.full_like(hist, 1.0 / bins), where=totals > 0)


def _features(pixels: np.ndarray, labels: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per superpixel: Lab colour histograms (L, a, b side by side) and a gradient-orientation
    histogram weighted by gradient magnitude (what makes grass differ from a smooth wall)."""
    lab = rgb2lab(pixels)
    ranges = ((0.0, 100.0), (-60.0, 60.0), (-60.0, 60.0))
    colour = []
    for channel, (low, high) in enumerate(ranges):
        binned = np.clip(
            ((lab[..., channel] - low) / (high - low) * COLOUR_BINS).astype(int), 0, COLOUR_BINS - 1
        )
        colour.append(_histograms(labels, binned, COLOUR_BINS, count))
    smooth = ndimage.gaussian_filter(lab[..., 0], 1.0)
    gy, gx = ndimage.sobel(smooth, axis=0), ndimage.sobel(smooth, axis=1)
    magnitude = np.hypot(gx, gy)
    angle = np.mod(np.arctan2(gy, gx), np.pi)  # orientation without sign
    orientation = np.minimum((angle / np.pi * TEXTURE_ORIENTATIONS).astype(int), TEXTURE_ORIENTATIONS - 1)
    # A flat superpixel gets a uniform histogram: flat regions are alike in texture.
    texture = _histograms(labels, orientation, TEXTURE_ORIENTATIONS, count, weights=magnitude + 1e-3)
    # Texture strength matters too (smooth sky vs busy foliage): a log-magnitude histogram.
    strength = np.clip((np.log1p(magnitude) / np.log1p(200.0) * 8).astype(int), 0, 7)
    texture = np.hstack([texture, _histograms(labels, strength, 8, count)])
    return np.hstack(colour), texture


def _adjacency(labels: np.ndarray) -> dict[tuple[int, int], int]:
    """Shared border length (in pixel edges) of every pair of touching labels (a < b)."""
    pairs = []
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        differ = a != b
        low = np.minimum(a[differ], b[differ]).astype(np.int64)
        high = np.maximum(a[differ], b[differ]).astype(np.int64)
        pairs.append(low * (labels.max() + 1) + high)
    keys, counts = np.unique(np.concatenate(pairs), return_counts=True)
    base = labels.max() + 1
    return {(int(k // base), int(k % base)): int(c) for k, c in zip(keys, counts, strict=True)}


class RegionSegmenter:
    """A few compact, nameable regions: superpixels merged by colour and texture (module docstring)."""

    name = "regions"

    def __init__(
        self,
        superpixels: int = 300,
        compactness: float = 10.0,
        similarity: float = 0.6,
        max_regions: int = 10,
        min_regions: int = 2,
        min_area_fraction: float = 0.02,
        min_thickness: float = 0.04,
        min_solidity: float = 0.6,
        max_box_fraction: float = 0.8,
        focus: str = "none",
        hot_quantile: float = 0.6,
        max_side: int | None = 512,
    ) -> None:
        if superpixels < 4 or compactness <= 0:
            raise ValueError(
                f"regions needs superpixels >= 4 and compactness > 0, got {superpixels}, {compactness}"
            )
        if not 1 <= min_regions <= max_regions:
            raise ValueError(f"need 1 <= min_regions <= max_regions, got {min_regions}, {max_regions}")
        for name, value in (
            ("min_area_fraction", min_area_fraction),
            ("min_thickness", min_thickness),
            ("min_solidity", min_solidity),
            ("hot_quantile", hot_quantile),
        ):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if not 0.0 < max_box_fraction <= 1.0:
            raise ValueError(f"max_box_fraction must be in (0, 1], got {max_box_fraction}")
        if not 0.0 <= similarity <= 1.0:
            raise ValueError(f"similarity must be in [0, 1], got {similarity}")
        if focus not in FOCUS:
            raise ValueError(f"focus must be one of {', '.join(FOCUS)}, got {focus!r}")
        _check_max_side(max_side)
        self.superpixels, self.compactness, self.similarity = superpixels, compactness, similarity
        self.max_regions, self.min_regions = max_regions, min_regions
        self.min_area_fraction, self.min_thickness = min_area_fraction, min_thickness
        self.min_solidity, self.max_box_fraction = min_solidity, max_box_fraction
        self.focus, self.hot_quantile, self.max_side = focus, hot_quantile, max_side

    @property
    def uses_candidates(self) -> bool:
        return self.focus == "disagreement"

    # ---- the public entry point ---------------------------------------------------------------
    def segment(
        self, reference: Image.Image, candidates: Sequence[Image.Image] | None = None
    ) -> list[np.ndarray]:
        pixels, size = _prepare(reference, self.max_side)
        superpixels = slic(
            pixels, n_segments=self.superpixels, compactness=self.compactness, start_label=0, channel_axis=-1
        )
        regions = self.merge(pixels, superpixels)
        if self.focus == "disagreement":
            if candidates is None or len(candidates) < 2:
                raise ValueError("focus='disagreement' needs the source's candidates (at least 2)")
            labels = self.hot_parts(superpixels, regions, _spread(candidates, pixels.shape[:2]))
        else:
            labels = regions
        restored = _restore(labels, size)
        return [restored == value for value in np.unique(restored) if value >= 0]

    # ---- steps 2 to 4: from superpixels to regions ----------------------------------------------
    def merge(self, pixels: np.ndarray, superpixels: np.ndarray) -> np.ndarray:
        """A label image (0..K-1) of the merged regions at working size."""
        height, width = superpixels.shape
        count = int(superpixels.max()) + 1
        colour, texture = _features(pixels, superpixels, count)
        regions: dict[int, _Region] = {}
        for props in regionprops(superpixels + 1):
            i = props.label - 1
            y0, x0, y1, x1 = props.bbox
            regions[i] = _Region(int(props.area), (x0, y0, x1, y1), colour[i], texture[i], [i])
        borders = _adjacency(superpixels)
        self._group(regions, borders, height * width)
        labels = self._paint(superpixels, regions)
        labels = self._clean(labels)
        for _ in range(3):  # a split piece can break the rule again, or need cleaning
            split = self._split(labels, superpixels)
            if split is None:
                break
            labels = self._clean(split)
        return labels

    def _appearance(self, a: _Region, b: _Region) -> float:
        colour = np.minimum(a.colour, b.colour).sum() / 3
        texture = np.minimum(a.texture, b.texture).sum() / 2
        return float((2.0 * colour + texture) / 3.0)

    def _group(
        self, regions: dict[int, _Region], borders: dict[tuple[int, int], int], image_area: int
    ) -> None:
        """Selective-Search grouping, in place, under the box and count rules."""
        max_box = self.max_box_fraction * image_area
        neighbours: dict[int, set[int]] = {i: set() for i in regions}
        for a, b in borders:
            neighbours[a].add(b)
            neighbours[b].add(a)

        def score(a: int, b: int) -> tuple[float, float] | None:
            ra, rb = regions[a], regions[b]
            box = _union_box(ra.box, rb.box)
            if _box_area(box) > max_box:
                return None
            appearance = self._appearance(ra, rb)
            size = 1.0 - (ra.area + rb.area) / image_area
            fill = 1.0 - (_box_area(box) - ra.area - rb.area) / image_area
            return appearance + size + fill, appearance

        heap: list[tuple[float, float, int, int]] = []
        for a, b in borders:
            scored = score(a, b)
            if scored is not None:
                heap.append((-scored[0], -scored[1], a, b))
        heapq.heapify(heap)
        next_id = max(regions) + 1
        while heap and len(regions) > self.min_regions:
            total, appearance, a, b = heapq.heappop(heap)
            if a not in regions or b not in regions:
                continue  # stale: one side was merged already
            if -appearance < self.similarity and len(regions) <= self.max_regions:
                # The best merge left joins unlike regions; others may still be alike: look further.
                if not any(-app >= self.similarity for _, app, x, y in heap if x in regions and y in regions):
                    break
                heapq.heappush(heap, (total + 10.0, appearance, a, b))  # try the alike ones first
                continue
            ra, rb = regions.pop(a), regions.pop(b)
            area = ra.area + rb.area
            merged = _Region(
                area,
                _union_box(ra.box, rb.box),
                (ra.colour * ra.area + rb.colour * rb.area) / area,
                (ra.texture * ra.area + rb.texture * rb.area) / area,
                ra.members + rb.members,
            )
            regions[next_id] = merged
            around = (neighbours.pop(a) | neighbours.pop(b)) - {a, b}
            neighbours[next_id] = around
            for n in around:
                neighbours[n] -= {a, b}
                neighbours[n].add(next_id)
                scored = score(next_id, n)
                if scored is not None:
                    heapq.heappush(heap, (-scored[0], -scored[1], next_id, n))
            next_id += 1

    @staticmethod
    def _paint(superpixels: np.ndarray, regions: dict[int, _Region]) -> np.ndarray:
        lookup = np.empty(int(superpixels.max()) + 1, dtype=np.int32)
        for value, region in enumerate(regions.values()):
            lookup[region.members] = value
        return lookup[superpixels]

    def _clean(self, labels: np.ndarray) -> np.ndarray:
        """Merge regions that are too small, thin or in pieces into the neighbour they share the most
        border with, smallest first, until none is left; then number the labels 0..K-1."""
        height, width = labels.shape
        min_area = self.min_area_fraction * height * width
        min_thickness = self.min_thickness * min(height, width)
        labels = _split_components(labels)
        while True:
            values, areas = np.unique(labels, return_counts=True)
            if len(values) <= 1:
                break
            borders = _adjacency(labels)
            edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
            on_edge = np.bincount(edge, minlength=int(values.max()) + 1)
            perimeter = {v: int(on_edge[v]) for v in values.tolist()}  # the image's edge counts too
            for (a, b), length in borders.items():
                perimeter[a] += length
                perimeter[b] += length
            worst = None
            for value, area in sorted(
                zip(values.tolist(), areas.tolist(), strict=True), key=lambda va: va[1]
            ):
                thickness = 2.0 * area / max(perimeter[value], 1)
                if area < min_area or thickness < min_thickness:
                    worst = value
                    break
            if worst is None:
                break
            touching = [
                (length, b if a == worst else a) for (a, b), length in borders.items() if worst in (a, b)
            ]
            if not touching:
                break
            labels[labels == worst] = max(touching)[1]
        _, dense = np.unique(labels, return_inverse=True)
        return dense.reshape(labels.shape).astype(np.int32)

    def _split(self, labels: np.ndarray, superpixels: np.ndarray) -> np.ndarray | None:
        """Split every region that breaks the compactness rule in two by its superpixels' positions;
        None when no region needed it (or none could be split)."""
        height, width = labels.shape
        out = labels.copy()
        next_value = int(labels.max()) + 1
        changed = False
        for props in regionprops(labels + 1):
            y0, x0, y1, x1 = props.bbox
            box_share = (x1 - x0) * (y1 - y0) / (height * width)
            if props.solidity >= self.min_solidity and box_share <= self.max_box_fraction:
                continue
            inside = labels == props.label - 1
            members = np.unique(superpixels[inside])
            if len(members) < 2:
                continue
            centres = np.array(ndimage.center_of_mass(np.ones_like(superpixels), superpixels, members))
            weights = np.bincount(superpixels[inside], minlength=int(superpixels.max()) + 1)[members]
            side = _two_means(centres, weights)
            if side.all() or not side.any():
                continue
            second = np.isin(superpixels, members[side]) & inside
            out[second] = next_value
            next_value += 1
            changed = True
        return out if changed else None

    # ---- focus on disagreement ----------------------------------------------------------------
    def hot_parts(self, superpixels: np.ndarray, regions: np.ndarray, spread: np.ndarray) -> np.ndarray:
        """Labels of the parts of `regions` made of hot superpixels (-1 elsewhere), the largest mean
        spread first, at most max_regions of them, each at least min_area_fraction of the image."""
        height, width = superpixels.shape
        count = int(superpixels.max()) + 1
        area = np.bincount(superpixels.ravel(), minlength=count)
        mean = np.bincount(superpixels.ravel(), weights=spread.ravel(), minlength=count) / np.maximum(area, 1)
        hot = mean >= np.quantile(mean[area > 0], self.hot_quantile)
        pieces = np.where(hot[superpixels], regions, -1)
        pieces = _split_components(pieces, background=-1)
        min_area = self.min_area_fraction * height * width
        ranked = []
        for props in regionprops(pieces + 1):
            if props.area >= min_area:
                inside = pieces == props.label - 1
                ranked.append((float(spread[inside].mean()), props.label - 1))
        ranked.sort(reverse=True)
        out = np.full_like(pieces, -1)
        for value, (_, piece) in enumerate(ranked[: self.max_regions]):
            out[pieces == piece] = value
        return out


def _spread(candidates: Sequence[Image.Image], shape: tuple[int, int]) -> np.ndarray:
    """Per-pixel standard deviation across the candidates (mean over RGB, 0..255), computed at full
    size and averaged down to the working size (so fine-detail differences count). Row band by row
    band (SPREAD_BAND_ROWS), so that no float copy of every whole candidate is made."""
    rgb = [c if c.mode == "RGB" else c.convert("RGB") for c in candidates]
    width, full_height = rgb[0].size
    spread = np.empty((full_height, width), dtype=np.float32)
    for y0, y1 in bands(full_height, SPREAD_BAND_ROWS):
        stack = np.stack([np.asarray(c.crop((0, y0, width, y1))) for c in rgb]).astype(np.float32)
        spread[y0:y1] = stack.std(axis=0).mean(axis=2)
    height, width = shape
    if spread.shape != (height, width):
        spread = np.asarray(Image.fromarray(spread, mode="F").resize((width, height), Image.Resampling.BOX))
    return spread


SPREAD_BAND_ROWS = 256  # per-pixel arithmetic: the result is the same for any band height


def _split_components(labels: np.ndarray, background: int | None = None) -> np.ndarray:
    """Give every connected piece of a label its own label (pieces of one region are separate
    questions); `background` stays as it is."""
    out = np.full_like(labels, -1 if background is None else background)
    next_value = 0
    for value in np.unique(labels):
        if value == background:
            continue
        pieces, count = ndimage.label(labels == value)
        for piece in range(1, count + 1):
            out[pieces == piece] = next_value
            next_value += 1
    return out


def _two_means(points: np.ndarray, weights: np.ndarray, iterations: int = 20) -> np.ndarray:
    """A deterministic weighted 2-means: True for the points of the second cluster. Starts from the
    two points farthest apart along the principal axis."""
    centred = points - np.average(points, axis=0, weights=weights)
    _, _, axes = np.linalg.svd(centred * np.sqrt(weights)[:, None], full_matrices=False)
    projection = centred @ axes[0]
    centres = np.stack([points[projection.argmin()], points[projection.argmax()]])
    side = np.zeros(len(points), dtype=bool)
    for _ in range(iterations):
        distances = ((points[:, None, :] - centres[None]) ** 2).sum(axis=2)
        new = distances[:, 1] < distances[:, 0]
        if new.all() or not new.any():
            return new
        centres = np.stack(
            [
                np.average(points[~new], axis=0, weights=weights[~new]),
                np.average(points[new], axis=0, weights=weights[new]),
            ]
        )
        if np.array_equal(new, side):
            break
        side = new
    return side
