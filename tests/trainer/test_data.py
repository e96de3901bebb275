from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from synthetic import make_dataset, png

from dspo.dataset_format import DatasetWriter, Record
from trainer.data import BatchOrder, PreferenceDataset, crop_window, joined_text, select_entries

SR, SCALE = 64, 4


def coordinate_dataset(root: Path, boxes: list[tuple[int, int, int, int]]) -> Path:
    """Images whose red and green channels encode each pixel's x and y (LQ pixels their SR block's)."""
    writer = DatasetWriter(root)
    yy, xx = np.mgrid[0:SR, 0:SR]
    sr = np.stack([xx * 4, yy * 4, np.zeros_like(xx)], -1).astype(np.uint8)
    ly, lx = np.mgrid[0 : SR // SCALE, 0 : SR // SCALE]
    lq = np.stack([lx * 16, ly * 16, np.zeros_like(lx)], -1).astype(np.uint8)
    loser = sr.copy()
    loser[..., 2] = 255
    lq_sha, w_sha, l_sha = writer.add_image(png(lq)), writer.add_image(png(sr)), writer.add_image(png(loser))
    for i, box in enumerate(boxes):
        inside = (xx >= box[0]) & (xx < box[2]) & (yy >= box[1]) & (yy < box[3])
        mask = writer.add_image(png((inside * 255).astype(np.uint8), mode="1"))
        writer.add_record(
            Record(f"r{i}", "s", f"i{i}", "train", lq_sha, w_sha, l_sha, box, mask, 1.0, scale=SCALE)
        )
    return writer.finish({"dataset_id": "coords", "version": 1})


def decode(t) -> np.ndarray:
    return np.rint((t.numpy() + 1) * 127.5).astype(int)


def test_joint_crops_share_box_scale_and_flip(tmp_path: Path) -> None:
    box = (37, 20, 45, 30)
    root = coordinate_dataset(tmp_path / "ds", [box])
    data = PreferenceDataset(root, "train", (32,), seed=3)
    flips = set()
    for epoch in range(8):
        item = data[(0, epoch, 0)]
        w, lq, mask = decode(item["winner"]), decode(item["lq"]), item["mask"][0].numpy()
        assert w.shape == (3, 32, 32) and lq.shape == (3, 8, 8) and mask.shape == (32, 32)
        x, y = w[0] // 4, w[1] // 4
        flipped = x[0, 0] > x[0, -1]
        flips.add(bool(flipped))
        # The mask is the box, at the same pixels as the winner's coordinates say.
        inside = (x >= box[0]) & (x < box[2]) & (y >= box[1]) & (y < box[3])
        assert np.array_equal(mask > 0.5, inside)
        assert inside.sum() == (box[2] - box[0]) * (box[3] - box[1])
        # Each LQ pixel is the SR block under it: the window is aligned to the scale.
        for i, j in itertools.product(range(8), range(8)):
            block_x = x[4 * i : 4 * i + 4, 4 * j : 4 * j + 4] // 4
            assert (block_x == lq[0, i, j] // 16).all()
        assert (decode(item["loser"])[2] == 255).all() and (w[2] == 0).all()
    assert flips == {True, False}


def test_large_boxes_are_downscaled_and_val_crops_are_centred(tmp_path: Path) -> None:
    box = (4, 8, 60, 56)
    root = coordinate_dataset(tmp_path / "ds", [box])
    data = PreferenceDataset(root, "train", (32,), random_crops=False)
    item = data[(0, 0, 0)]
    assert item["winner"].shape == (3, 32, 32) and item["lq"].shape == (3, 8, 8)
    box_share = (box[2] - box[0]) * (box[3] - box[1]) / 56**2  # the window is the box's 56-pixel side
    assert float(item["mask"].mean()) == pytest.approx(box_share, abs=0.02)
    assert np.array_equal(item["winner"], data[(0, 5, 0)]["winner"])


def test_crop_window_keeps_the_box_inside() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        x0, y0 = rng.integers(0, 50, 2)
        box = (int(x0), int(y0), int(x0 + rng.integers(1, 14)), int(y0 + rng.integers(1, 14)))
        wx, wy, side = crop_window((64, 64), box, 32, 4, rng)
        assert side == 32 and wx % 4 == 0 and wy % 4 == 0
        assert wx <= box[0] and box[2] <= wx + side and wy <= box[1] and box[3] <= wy + side


def test_order_is_seeded_resumable_and_bucketed(tmp_path: Path) -> None:
    boxes = [(0, 0, 8, 8)] * 6 + [(0, 0, 60, 60)] * 4
    data = PreferenceDataset(coordinate_dataset(tmp_path / "ds", boxes), "train", (16, 64))
    order = BatchOrder(data, batch_size=2, seed=7)
    first = list(itertools.islice(iter(order), 12))
    assert first == list(itertools.islice(iter(BatchOrder(data, batch_size=2, seed=7)), 12))
    assert first != list(itertools.islice(iter(BatchOrder(data, batch_size=2, seed=8)), 12))
    for batch in first:
        assert len({data.bucket(i) for i, _, _ in batch}) == 1
    epoch0 = [i for batch in first[:5] for i, _, _ in batch]
    assert sorted(epoch0) == list(range(10))
    # Resuming after the 7th batch continues exactly where the first run was.
    epoch, position = first[6][0][1], first[6][0][2]
    resumed = list(itertools.islice(iter(BatchOrder(data, batch_size=2, seed=7, start=(epoch, position))), 5))
    assert resumed == first[7:12]
    # Two processes of one record each split the same global batches between them.
    parts = [list(itertools.islice(iter(BatchOrder(data, 1, 7, num_replicas=2, rank=r)), 5)) for r in (0, 1)]
    assert [a + b for a, b in zip(*parts, strict=True)] == first[:5]


def test_short_buckets_are_filled_up_and_trained_every_epoch(tmp_path: Path) -> None:
    # 3 small boxes and 5 large ones, global batches of 4: neither bucket divides, the small one makes no
    # full batch at all. Every record still trains in every epoch, in batches of 4 of one bucket each.
    boxes = [(0, 0, 8, 8)] * 3 + [(0, 0, 60, 60)] * 5
    data = PreferenceDataset(coordinate_dataset(tmp_path / "ds", boxes), "train", (16, 64))
    order = BatchOrder(data, batch_size=2, seed=1, num_replicas=2)
    for epoch in range(3):
        batches = order.epoch_batches(epoch)
        assert all(len(b) == 4 and len({data.bucket(i) for i in b}) == 1 for b in batches)
        assert {i for b in batches for i in b} == set(range(8))
        assert len(batches) == 1 + 2  # ceil(3 / 4) + ceil(5 / 4)


def test_each_loss_reads_its_records(tmp_path: Path) -> None:
    from dspo.dataset_format import read_records

    records = read_records(make_dataset(tmp_path / "ds", sources=3, val_sources=0, image_level=True))
    dspo, view = select_entries(records, "dspo")
    assert {e.kind for e in dspo} == {"instance"} and len(dspo) == 6 and view == "6 instance records"
    assert not any(e.whole for e in dspo) and dspo[0].text == "a photo, smooth wall"
    for loss in ("dpo", "sft"):
        image, view = select_entries(records, loss)
        assert {e.kind for e in image} == {"image"} and len(image) == 3 and view == "3 image-level records"
        assert all(e.whole and e.raw_weight == 1.0 and e.text == "a photo" for e in image)
    mixed, view = select_entries(records, "dspo", image_level_weight=0.5)
    assert len(mixed) == 9 and view == "6 instance records and 3 image-level records (weight 0.5 each)"
    assert [e.raw_weight for e in mixed if e.kind == "image"] == [0.5] * 3
    # Without image-level records, the baselines fall back to every record as a whole image, and say so.
    plain = read_records(make_dataset(tmp_path / "plain", sources=3, val_sources=0))
    whole, view = select_entries(plain, "dpo")
    assert len(whole) == 6 and all(e.whole for e in whole) and "no image-level records" in view


def test_text_condition() -> None:
    record = Record(
        "r",
        "s",
        "i",
        "train",
        "a",
        "b",
        "c",
        (0, 0, 1, 1),
        "d",
        1.0,
        prompt="a street",
        content_text="red brick wall",
    )
    assert joined_text(record, True) == "a street, red brick wall"
    assert joined_text(record, False) == "a street"
    assert joined_text(Record(**{**record.__dict__, "prompt": ""}), True) == "red brick wall"
