from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from synthetic import make_dataset, png

from dspo.dataset_format import (
    FORMAT_VERSION,
    SCHEMA,
    DatasetError,
    DatasetWriter,
    Record,
    dataset_digest,
    read_manifest,
    read_records,
    verify_dataset,
)


def test_roundtrip_manifest_and_records(dataset: Path) -> None:
    manifest = verify_dataset(dataset)
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["counts"]["records"] == 10
    assert manifest["counts"]["train"] == 8 and manifest["counts"]["val"] == 2
    assert manifest["counts"]["sources"] == 5
    assert manifest["counts"]["drops"] == {"tie": 1}
    records = read_records(dataset)
    assert isinstance(records[0], Record) and records[0].box == (2, 2, 16, 30)
    assert {r.split for r in records} == {"train", "val"}
    by_source: dict[str, float] = {}
    for r in records:
        by_source[r.source_id] = by_source.get(r.source_id, 0) + r.weight
    assert all(abs(total - 1) < 1e-9 for total in by_source.values())
    names = {p.relative_to(dataset).as_posix() for p in dataset.rglob("*") if p.is_file()} - {"manifest.json"}
    assert names == set(manifest["files"])


def test_add_image_dedups_by_hash(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path)
    data = png(np.zeros((4, 4, 3), np.uint8))
    assert writer.add_image(data) == writer.add_image(data)
    assert len(list((tmp_path / "images").iterdir())) == 1


def test_writer_rejects_records_with_unknown_images(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path)
    sha = writer.add_image(png(np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(DatasetError, match="winner image was not added"):
        writer.add_record(
            Record("r", "s", None, "train", sha, "0" * 64, sha, (0, 0, 4, 4), sha, 1.0, scale=1)
        )


def corrupt(dataset: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "corrupt"
    shutil.copytree(dataset, copy)
    return copy


def test_bad_checksum(dataset: Path, tmp_path: Path) -> None:
    root = corrupt(dataset, tmp_path)
    image = next((root / "images").iterdir())
    image.write_bytes(image.read_bytes() + b"\0")
    with pytest.raises(DatasetError, match=f"checksum mismatch for images/{image.name}"):
        verify_dataset(root)


def test_missing_image(dataset: Path, tmp_path: Path) -> None:
    root = corrupt(dataset, tmp_path)
    image = next((root / "images").iterdir())
    image.unlink()
    with pytest.raises(DatasetError, match=f"missing file images/{image.name}"):
        verify_dataset(root)


def test_unknown_format_version(dataset: Path, tmp_path: Path) -> None:
    root = corrupt(dataset, tmp_path)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["format_version"] = 2
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="unknown format version 2"):
        read_manifest(root)


def test_mask_of_the_wrong_size(tmp_path: Path) -> None:
    # A writer would refuse this record, so write a valid dataset and swap in a smaller mask behind its back,
    # with matching checksums: only the size check can catch it.
    root = make_dataset(tmp_path / "ds", sources=1, val_sources=0)
    manifest = json.loads((root / "manifest.json").read_text())
    record = read_records(root)[0]
    small = png(np.zeros((16, 16), np.uint8), mode="1")
    new_sha = hashlib.sha256(small).hexdigest()
    (root / "images" / f"{new_sha}.png").write_bytes(small)
    manifest["files"][f"images/{new_sha}.png"] = new_sha
    table = pq.read_table(root / "records.parquet").to_pylist()
    for row in table:
        if row["record_id"] == record.record_id:
            row["mask"] = new_sha
    pq.write_table(pa.Table.from_pylist(table, schema=SCHEMA), root / "records.parquet")
    manifest["files"]["records.parquet"] = hashlib.sha256((root / "records.parquet").read_bytes()).hexdigest()
    manifest["digest"] = dataset_digest(manifest["files"])
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=r"mask is \(16, 16\), candidates are \(32, 32\)"):
        verify_dataset(root)


def test_training_stops_before_loading_a_model(dataset: Path, tmp_path: Path) -> None:
    from trainer.config import TrainConfig
    from trainer.train import train

    root = corrupt(dataset, tmp_path)
    next((root / "images").iterdir()).unlink()
    cfg = TrainConfig(
        dataset=str(root), model=str(tmp_path / "no-such-model"), output_dir=str(tmp_path / "out")
    )
    # The model folder does not exist: reaching the model would raise something else than a DatasetError.
    with pytest.raises(DatasetError, match="missing file"):
        train(cfg)
