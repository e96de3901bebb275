"""worker.segmenters: masks that tile the reference, deterministic, on real photographs."""

import statistics

import numpy as np
import pytest
from PIL import Image
from skimage import data

from worker.segmenters import Segmenter, get_segmenter


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    return Image.fromarray(data.coffee()).resize((300, 200), Image.Resampling.BOX)


def assert_partition(masks: list[np.ndarray], size: tuple[int, int]) -> None:
    assert masks, "no masks"
    for mask in masks:
        assert mask.dtype == bool and mask.shape == (size[1], size[0]) and mask.any()
    coverage = np.sum(masks, axis=0)
    assert (coverage == 1).all(), "masks must cover every pixel exactly once"


@pytest.mark.parametrize("name", ["felzenszwalb", "slic"])
def test_segmenters_partition_the_reference_deterministically(coffee: Image.Image, name: str) -> None:
    segmenter = get_segmenter(name)
    assert isinstance(segmenter, Segmenter) and segmenter.name == name
    masks = segmenter.segment(coffee)
    assert_partition(masks, coffee.size)
    assert 5 <= len(masks) <= 500
    again = get_segmenter(name).segment(coffee)
    assert len(again) == len(masks) and all(np.array_equal(a, b) for a, b in zip(masks, again, strict=True))


def test_settings_change_the_segmentation(coffee: Image.Image) -> None:
    coarse = get_segmenter("felzenszwalb", scale=2000).segment(coffee)
    fine = get_segmenter("felzenszwalb", scale=50, min_size=20).segment(coffee)
    assert len(fine) > len(coarse)
    few = get_segmenter("slic", n_segments=10).segment(coffee)
    many = get_segmenter("slic", n_segments=200, compactness=20).segment(coffee)
    assert len(many) > len(few)


def test_max_side_segments_a_smaller_copy_at_full_size(coffee: Image.Image) -> None:
    big = coffee.resize((600, 400))
    masks = get_segmenter("felzenszwalb", max_side=150).segment(big)
    assert_partition(masks, big.size)


def test_grey_reference_and_coins_find_the_coins() -> None:
    coins = Image.fromarray(data.coins())  # grey, 384 x 303: 24 coins on a plain background
    masks = get_segmenter("felzenszwalb", scale=500, sigma=1.0, min_size=200).segment(coins)
    assert_partition(masks, coins.size)
    coin_sized = [m for m in masks if 500 < m.sum() < 6000]
    assert len(coin_sized) >= 10


def test_unknown_segmenter_and_bad_settings() -> None:
    with pytest.raises(ValueError, match="Unknown segmenter 'watershed'.*felzenszwalb, slic, sam"):
        get_segmenter("watershed")
    with pytest.raises(ValueError, match="Bad settings for segmenter 'slic'"):
        get_segmenter("slic", scale=3)
    with pytest.raises(ValueError, match="scale > 0"):
        get_segmenter("felzenszwalb", scale=0)
    with pytest.raises(ValueError, match="max_side"):
        get_segmenter("slic", max_side=4)


def test_sam_regions_keep_confident_stable_masks_without_overlap() -> None:
    from worker.segmenters.sam import paint_regions

    masks = np.zeros((5, 4, 6), dtype=bool)
    masks[0, :, :3] = True  # left half, best score
    masks[1, :, 2:] = True  # right part, overlaps the left half by one column
    masks[2, :, :3] = True  # the left half again: a duplicate
    masks[3, :2, 4:] = True  # confident but unstable
    masks[4, 2:, 4:] = True  # stable but below the IoU threshold
    scores = np.array([0.99, 0.95, 0.94, 0.97, 0.5])
    stability = np.array([0.99, 0.96, 0.99, 0.5, 0.99])
    labels = paint_regions(masks, scores, stability, pred_iou_thresh=0.88, stability_score_thresh=0.95)
    expected = np.zeros((4, 6), dtype=np.int32)
    expected[:, :3] = 1
    expected[:, 3:] = 2  # the right mask keeps only what the better one left free
    assert np.array_equal(labels, expected)

    without_filters = paint_regions(masks, scores, stability, None, None)
    # The unstable mask is kept now; the low-IoU one finds nothing free; nothing is left uncovered.
    assert sorted(np.unique(without_filters)) == [1, 2, 3] and (without_filters[:2, 4:] == 2).all()


# ---- regions: a few compact regions an annotator can name ----------------------------------------
# Thresholds sit a little outside what bench/regions.py measured on these photographs (docs/regions.md):
# every region 3-55% of the image, solidity >= 0.61, no box over 0.78 of the image.
PHOTOGRAPHS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins")


@pytest.fixture(scope="module")
def photo_regions() -> dict[str, tuple[Image.Image, list[np.ndarray]]]:
    from bench.regions import photograph

    segmenter = get_segmenter("regions")
    return {name: (image, segmenter.segment(image)) for name in PHOTOGRAPHS for image in [photograph(name)]}


@pytest.mark.parametrize("name", PHOTOGRAPHS)
def test_regions_are_few_compact_and_tile_the_photograph(photo_regions: dict, name: str) -> None:
    from bench.regions import region_stats

    image, masks = photo_regions[name]
    assert_partition(masks, image.size)
    stats = region_stats(masks)
    assert 2 <= stats.count <= 10
    assert min(stats.area_share) >= 0.02, "no region under the minimum area"
    assert min(stats.solidity) >= 0.6, "no ragged region (the compactness rule)"
    assert max(stats.box_share) <= 0.8, "no crop box covering almost the whole image"
    assert statistics.median(stats.box_fill) >= 0.45
    assert stats.pieces == [1] * stats.count, "every region is one connected piece"


def test_regions_are_fewer_and_more_compact_than_felzenszwalb(photo_regions: dict) -> None:
    from bench.regions import region_stats

    for name in ("astronaut", "coffee"):
        image, masks = photo_regions[name]
        ours, theirs = region_stats(masks), region_stats(get_segmenter("felzenszwalb").segment(image))
        assert theirs.count >= 8 * ours.count
        assert np.quantile(ours.solidity, 0.1) > np.quantile(theirs.solidity, 0.1) + 0.2
        assert np.quantile(ours.box_fill, 0.1) > np.quantile(theirs.box_fill, 0.1)


def test_regions_are_deterministic_and_keep_the_reference_size(coffee: Image.Image) -> None:
    big = coffee.resize((900, 600))
    first = get_segmenter("regions").segment(big)
    assert_partition(first, big.size)
    again = get_segmenter("regions").segment(big)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert get_segmenter("classical").name == "regions", "the default classical method"


def test_disagreement_regions_go_where_the_candidates_differ() -> None:
    from dspo.images import degrade, upsample
    from worker.generators import get_generator
    from worker.instances import contested

    hq = Image.fromarray(data.coffee()).resize((300, 200), Image.Resampling.BOX)
    lq, _ = degrade(hq, scale=4, seed=3)
    reference = upsample(lq, 4, "bicubic")
    candidates = [c.image for c in get_generator("classical").generate(lq, scale=4, n=4, seed=3)]
    pixels = [np.asarray(c) for c in candidates]
    everywhere = get_segmenter("regions").segment(reference)
    segmenter = get_segmenter("regions", focus="disagreement")
    assert segmenter.uses_candidates
    hot = segmenter.segment(reference, candidates)
    assert 1 <= len(hot) <= 10
    assert (np.sum(hot, axis=0) <= 1).all(), "hot regions do not overlap"
    assert all(m.sum() >= 0.02 * m.size for m in hot)
    assert np.sum(hot) < 0.6 * hot[0].size, "only part of the image is asked about"
    hot_scores = [contested(pixels, m) for m in hot]
    all_scores = [contested(pixels, m) for m in everywhere]
    assert min(hot_scores) > statistics.median(all_scores)
    with pytest.raises(ValueError, match="needs the source's candidates"):
        segmenter.segment(reference)


def test_regions_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="min_regions <= max_regions"):
        get_segmenter("regions", min_regions=5, max_regions=3)
    with pytest.raises(ValueError, match="focus must be one of none, disagreement"):
        get_segmenter("regions", focus="entropy")
    with pytest.raises(ValueError, match="max_box_fraction"):
        get_segmenter("regions", max_box_fraction=0)
