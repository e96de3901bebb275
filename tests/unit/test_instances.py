"""worker.instances: min-area merge into a rest region, boxes, weights, and the contested score."""

import numpy as np
import pytest
from PIL import Image
from skimage import data, filters, measure

from dspo.images import degrade, upsample
from worker.generators import get_generator
from worker.instances import Instance, build_instances, contested, mask_box
from worker.segmenters import get_segmenter


def rect(shape: tuple[int, int], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_small_masks_merge_into_one_rest_region() -> None:
    shape = (100, 100)  # min area at 0.5%: 50 pixels
    big = rect(shape, 0, 50, 0, 100)  # 5000
    medium = rect(shape, 50, 100, 0, 60)  # 3000
    small_a = rect(shape, 50, 55, 60, 70)  # 50: exactly the minimum, kept
    small_b = rect(shape, 60, 64, 60, 70)  # 40
    small_c = rect(shape, 70, 74, 60, 70)  # 40
    instances = build_instances([big, medium, small_a, small_b, small_c], margin=0)
    assert [i.is_rest for i in instances] == [False, False, False, True]
    assert [i.area for i in instances] == [5000, 3000, 50, 80]
    rest = instances[-1]
    assert np.array_equal(rest.mask, small_b | small_c)
    assert rest.box == (60, 60, 70, 74)
    assert sum(i.weight for i in instances) == pytest.approx(1.0)
    assert instances[0].weight == pytest.approx(5000 / 8130)


def test_without_merging_small_masks_are_dropped_and_weights_renormalised() -> None:
    shape = (100, 100)
    masks = [rect(shape, 0, 50, 0, 100), rect(shape, 50, 100, 0, 100), rect(shape, 0, 3, 0, 3)]
    instances = build_instances(masks, merge_small_into_rest=False)
    assert [i.area for i in instances] == [5000, 5000]
    assert [i.weight for i in instances] == [0.5, 0.5]
    assert not any(i.is_rest for i in instances)


def test_a_rest_region_under_the_minimum_is_dropped() -> None:
    shape = (100, 100)
    masks = [
        rect(shape, 0, 100, 0, 90),
        rect(shape, 0, 2, 90, 100),
        rect(shape, 2, 4, 90, 100),
    ]  # 20 + 20 < 50
    instances = build_instances(masks)
    assert len(instances) == 1 and instances[0].weight == 1.0


def test_rest_excludes_pixels_of_kept_masks_and_empty_masks_are_ignored() -> None:
    shape = (50, 50)
    big = rect(shape, 0, 50, 0, 40)
    small_a = rect(shape, 0, 5, 38, 48)  # 50 px, 10 of them inside big
    small_b = rect(shape, 10, 15, 38, 48)  # the same
    instances = build_instances([big, np.zeros(shape, bool), small_a, small_b], min_area_fraction=0.024)
    assert len(instances) == 2  # minimum 60 px: both small, their union outside big is 80
    assert instances[-1].is_rest and instances[-1].area == 80
    assert not (instances[-1].mask & big).any()


def test_boxes_grow_by_the_margin_and_stay_inside() -> None:
    shape = (60, 80)
    instances = build_instances([rect(shape, 10, 20, 30, 40), rect(shape, 50, 60, 0, 5)], margin=16)
    assert instances[0].box == (14, 0, 56, 36)
    assert instances[1].box == (0, 34, 21, 60)
    assert mask_box(rect(shape, 10, 20, 30, 40)) == (30, 10, 40, 20)
    with pytest.raises(ValueError, match="empty mask"):
        mask_box(np.zeros(shape, bool))


def test_input_checks() -> None:
    assert build_instances([]) == []
    with pytest.raises(ValueError, match="share one size"):
        build_instances([np.ones((4, 4), bool), np.ones((4, 5), bool)])
    with pytest.raises(ValueError, match="2-D"):
        build_instances([np.ones((4, 4, 3), bool)])
    with pytest.raises(ValueError, match="min_area_fraction"):
        build_instances([np.ones((4, 4), bool)], min_area_fraction=1.5)
    as_ints = build_instances([np.eye(4, dtype=np.uint8)], min_area_fraction=0)
    assert as_ints[0].mask.dtype == bool and as_ints[0].area == 4


def test_coins_instances_from_true_labels() -> None:
    coins = data.coins()
    labels = measure.label(coins > filters.threshold_otsu(coins))
    masks = [labels == value for value in range(1, labels.max() + 1)]
    instances = build_instances(masks)
    large = [i for i in instances if not i.is_rest]
    assert 15 <= len(large) <= 30
    assert sum(i.weight for i in instances) == pytest.approx(1.0)
    for instance in instances:
        assert isinstance(instance, Instance)
        x0, y0, x1, y1 = instance.box
        assert 0 <= x0 < x1 <= coins.shape[1] and 0 <= y0 < y1 <= coins.shape[0]


def test_contested_score() -> None:
    shape = (20, 30)
    base = np.full(shape + (3,), 100, np.uint8)
    changed = base.copy()
    changed[:10] = 140  # top half differs by 40 between the two candidates
    top, bottom = rect(shape, 0, 10, 0, 30), rect(shape, 10, 20, 0, 30)
    assert contested([base, changed], top, 0.0) == pytest.approx(20.0)  # std of (100, 140)
    assert contested([base, changed], bottom, 0.0) == 0.0
    assert contested([base, changed], top | bottom, 0.0) == pytest.approx(10.0)
    assert contested([base, changed], top, threshold=25.0) == 0.0  # under the noise floor
    assert contested([base, changed], np.zeros(shape, bool), 0.0) == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        contested([base], top, 0.0)
    with pytest.raises(ValueError, match="candidate 1 has shape"):
        contested([base, base[:5]], top, 0.0)


def test_the_loop_on_a_real_photo() -> None:
    """Degrade, make candidates, segment the shared bicubic reference, keep weighted instances."""
    lq, _ = degrade(Image.fromarray(data.chelsea()), scale=4, seed=2)
    candidates = get_generator("classical").generate(lq, scale=4, n=4, seed=2)
    reference = upsample(lq, 4)
    masks = get_segmenter("felzenszwalb").segment(reference)
    instances = build_instances(masks)
    assert instances and sum(i.weight for i in instances) == pytest.approx(1.0)
    arrays = [np.asarray(c.image) for c in candidates]
    for instance in instances:
        assert instance.mask.shape == arrays[0].shape[:2]
    scores = [contested(arrays, i.mask, 0.0) for i in instances]
    assert all(0.0 < s < 255.0 for s in scores)


def test_contested_in_bands_matches_the_whole_mask() -> None:
    rng = np.random.default_rng(3)
    candidates = [rng.integers(0, 256, (90, 70, 3), dtype=np.uint8) for _ in range(4)]
    mask = np.zeros((90, 70), dtype=bool)
    mask[10:80, 5:50] = True
    for threshold in (0.0, 40.0):
        whole = contested(candidates, mask, threshold)
        assert contested(candidates, mask, threshold, band_rows=8) == pytest.approx(whole, rel=1e-6)
