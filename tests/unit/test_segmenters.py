"""worker.segmenters: masks that tile the reference, deterministic, on real photographs."""

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
