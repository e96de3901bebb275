"""Votes → dataset over REST, in-process jobs, on SQLite and PostgreSQL: build, duplicate requests,
download with Range and sha256, the records view, and a read-back of the native folder by the
trainer's reader and of each export by the library that consumes it."""

import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dspo.dataset_format import read_records, verify_dataset
from dspo.datasets import build, split_of
from dspo.db import session_scope
from dspo.models import Dataset
from dspo.runtime import Runtime
from tests.datasets.helpers import make_project, users, vote_all


def crop(png: bytes, box: tuple[int, int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).crop(box).save(out, format="PNG")
    return out.getvalue()


def wait_job(client: TestClient, admin: dict[str, str], job_id: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/v1/jobs/{job_id}", headers=admin).json()
        if job["state"] in ("succeeded", "failed"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def download(client: TestClient, admin: dict[str, str], dataset_id: int, name: str) -> bytes:
    response = client.get(f"/api/v1/datasets/{dataset_id}/files/{name}", headers=admin)
    assert response.status_code == 200, response.text
    assert hashlib.sha256(response.content).hexdigest() == response.headers["x-checksum-sha256"]
    return response.content


@pytest.fixture
def built(runtime: Runtime, client: TestClient, admin: dict[str, str], tmp_path: Path) -> dict:
    project_id = make_project(runtime, n_sources=4)
    vote_all(runtime, project_id, users(runtime, ["a1", "a2", "a3"]))
    body = {"val_fraction": 0.5, "seed": 3, "shard_size": 4}
    first = client.post(f"/api/v1/projects/{project_id}/datasets", json=body, headers=admin)
    assert first.status_code == 202, first.text
    # The same request again, before and after the build, names the same dataset and the same job.
    again = client.post(f"/api/v1/projects/{project_id}/datasets", json=body, headers=admin)
    assert again.status_code == 200 and again.json()["dataset"]["id"] == first.json()["dataset"]["id"]
    assert again.json()["job_id"] == first.json()["job_id"]
    job = wait_job(client, admin, first.json()["job_id"])
    assert job["state"] == "succeeded", job
    after = client.post(f"/api/v1/projects/{project_id}/datasets", json=body, headers=admin)
    assert after.status_code == 200 and after.json()["dataset"]["id"] == first.json()["dataset"]["id"]
    listed = client.get(f"/api/v1/projects/{project_id}/datasets", headers=admin).json()
    assert len(listed) == 1 and listed[0]["state"] == "published" and listed[0]["version"] == 1
    return listed[0]


def test_build_download_read_back_and_rebuild(
    runtime: Runtime, client: TestClient, admin: dict[str, str], built: dict, tmp_path: Path
) -> None:
    dataset_id, files = built["id"], built["files"]
    assert set(files) >= {"dataset.tar", "pickapic/train.parquet", "trl/train.parquet"}
    assert any(name.startswith("webdataset/train-") for name in files)
    counts = built["counts"]
    assert counts["records"] == counts["tasks_with_answers"] == 16 and counts["drops"] == {}
    assert counts["votes"] == 48 and counts["sources"] == 4

    # Native: the tar unpacks to a folder that verifies and that the trainer reads.
    data = download(client, admin, dataset_id, "dataset.tar")
    assert hashlib.sha256(data).hexdigest() == files["dataset.tar"]["sha256"]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(tmp_path / "native", filter="data")
    root = tmp_path / "native" / f"dataset-{dataset_id}"
    manifest = verify_dataset(root)
    assert manifest["digest"] == built["digest"]
    assert manifest["vote_snapshot"]["votes"] == 48 and manifest["counts"]["records"] == 16
    votes = pq.read_table(root / manifest["vote_snapshot"]["file"])
    assert votes.num_rows == 48 and set(votes["outcome"].to_pylist()) == {"pick"}
    records = read_records(root)
    for record in records:
        assert record.split == split_of(int(record.source_id), 3, 0.5)  # by source, seeded
        assert record.votes == 3 and record.best_share == 1.0
    assert {r.split for r in records} == {"train", "val"}
    by_source: dict[str, float] = {}
    for record in records:
        if record.instance_id is not None:
            by_source[record.source_id] = by_source.get(record.source_id, 0) + record.weight
    assert all(abs(total - 1) < 1e-9 for total in by_source.values())

    from trainer.data import PreferenceDataset

    train = PreferenceDataset(root, "train", sizes=(64,))
    item = train[(0, 0, 0)]
    assert item["winner"].shape == (3, 64, 64) and item["lq"].shape == (3, 16, 16)
    assert item["text"].startswith("photo ")

    # Range requests: a slice of the same bytes, with 206 and Content-Range.
    part = client.get(
        f"/api/v1/datasets/{dataset_id}/files/dataset.tar", headers={**admin, "Range": "bytes=100-199"}
    )
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"

    winners = {r.record_id: (root / "images" / f"{r.winner}.png").read_bytes() for r in records}
    losers = {r.record_id: (root / "images" / f"{r.loser}.png").read_bytes() for r in records}
    by_id = {r.record_id: r for r in records}
    cropped: set[bool] = set()

    def expected_pair(row: dict) -> tuple[bytes, bytes]:
        """The winner and loser as rows carry them: an instance record's crop, whole images otherwise."""
        record = by_id[row["record_id"]]
        assert row["kind"] == ("image" if record.instance_id is None else "instance")
        box = tuple(row["crop_box"])
        if record.instance_id is None:
            assert box == (0, 0, 96, 64)
            return winners[record.record_id], losers[record.record_id]
        # The record's box, widened to the SR factor's grid.
        assert box[0] <= record.box[0] and box[1] <= record.box[1]
        assert record.box[2] <= box[2] and record.box[3] <= box[3] and all(v % 4 == 0 for v in box)
        if box == (0, 0, 96, 64):  # a region may span the image (then the row has the images as they are)
            cropped.add(False)
            return winners[record.record_id], losers[record.record_id]
        cropped.add(True)
        return crop(winners[record.record_id], box), crop(losers[record.record_id], box)

    # Pick-a-Pic: the preferred image is in jpg_0 when label_0 is 1, in jpg_1 otherwise.
    pickapic = pa.concat_tables(
        pq.read_table(io.BytesIO(download(client, admin, dataset_id, f"pickapic/{split}.parquet")))
        for split in ("train", "validation")
    )
    assert {"caption", "jpg_0", "jpg_1", "label_0", "label_1", "lq", "mask", "weight", "kind"} <= set(
        pickapic.column_names
    )
    labels = set()
    for row in pickapic.to_pylist():
        pair = (row["jpg_0"], row["jpg_1"])
        preferred, other = pair if row["label_0"] == 1 else pair[::-1]
        assert (preferred, other) == expected_pair(row)
        assert row["winner_sha256"] == by_id[row["record_id"]].winner
        assert row["label_0"] + row["label_1"] == 1 and row["caption"].startswith("photo ")
        mask = Image.open(io.BytesIO(row["mask"]))
        assert mask.mode == "1" and mask.size == Image.open(io.BytesIO(preferred)).size
        box = row["crop_box"]
        assert Image.open(io.BytesIO(row["lq"])).size == ((box[2] - box[0]) // 4, (box[3] - box[1]) // 4)
        labels.add(row["label_0"])
    assert labels == {0.0, 1.0}  # the preferred side varies (by a hash of the record id)
    assert pickapic.num_rows == len(records)
    assert set(pickapic["kind"].to_pylist()) == {"image", "instance"}
    assert True in cropped, "instance rows must be crops, not the whole images"

    # ... and read as the diffusers Diffusion-DPO example reads it: `datasets.load_dataset` on the
    # folder, split "train", both images decoded from their bytes, the pair swapped when label_0 is 0;
    # checked row by row.
    from datasets import load_dataset

    folder = tmp_path / "pickapic"
    folder.mkdir()
    for split in ("train", "validation"):
        data = download(client, admin, dataset_id, f"pickapic/{split}.parquet")
        (folder / f"{split}.parquet").write_bytes(data)
    hf_train = load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert hf_train.num_rows == sum(r.split == "train" for r in records) > 0
    for example in hf_train:
        pair = [Image.open(io.BytesIO(example[column])).convert("RGB") for column in ("jpg_0", "jpg_1")]
        preferred = pair[0] if example["label_0"] == 1 else pair[1]
        winner = Image.open(io.BytesIO(expected_pair(example)[0])).convert("RGB")
        assert preferred.tobytes() == winner.tobytes() and example["caption"].startswith("photo ")

    trl = pq.read_table(io.BytesIO(download(client, admin, dataset_id, "trl/validation.parquet")))
    assert trl.num_rows == sum(r.split == "val" for r in records)
    for row in trl.to_pylist():
        assert (row["chosen"], row["rejected"]) == expected_pair(row)

    # ?kind= narrows a parquet export (and the records view) to one kind of record.
    for kind in ("image", "instance"):
        name = f"pickapic/train.parquet?kind={kind}"
        narrowed = pq.read_table(io.BytesIO(download(client, admin, dataset_id, name)))
        expected = [
            r.record_id
            for r in records
            if r.split == "train" and (r.instance_id is None) == (kind == "image")
        ]
        assert sorted(narrowed["record_id"].to_pylist()) == sorted(expected) and expected
        assert set(narrowed["kind"].to_pylist()) == {kind}
        listed = client.get(f"/api/v1/datasets/{dataset_id}/records?kind={kind}", headers=admin).json()
        assert listed["total"] == sum((r.instance_id is None) == (kind == "image") for r in records)
    refused = client.get(f"/api/v1/datasets/{dataset_id}/files/dataset.tar?kind=image", headers=admin)
    assert refused.status_code == 422 and "pickapic and trl parquet" in refused.json()["detail"]

    import webdataset as wds

    shards = sorted(name for name in files if name.startswith("webdataset/"))
    for name in shards:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(download(client, admin, dataset_id, name))
    samples = list(wds.WebDataset([str(tmp_path / n) for n in shards], shardshuffle=False))
    assert len(samples) == len(records)
    for sample in samples:
        meta = json.loads(sample["json"])
        assert sample["chosen.png"] == winners[meta["record_id"]]
        assert sample["rejected.png"] == losers[meta["record_id"]]
        assert Image.open(io.BytesIO(sample["lq.png"])).size == (24, 16)

    page = client.get(f"/api/v1/datasets/{dataset_id}/records?offset=2&limit=5", headers=admin).json()
    assert page["total"] == 16 and [r["record_id"] for r in page["records"]] == [
        r.record_id for r in records[2:7]
    ]
    val = client.get(f"/api/v1/datasets/{dataset_id}/records?split=val", headers=admin).json()
    assert val["total"] == sum(r.split == "val" for r in records)
    missing = client.get(f"/api/v1/datasets/{dataset_id}/files/../../etc/passwd", headers=admin)
    assert missing.status_code == 404

    # Everyone chose the same positions: no expected disagreement (alpha undefined), full agreement.
    stats = client.get(f"/api/v1/projects/{built['project_id']}/agreement", headers=admin).json()
    assert stats["alpha_best"] is None and stats["alpha_worst"] is None
    assert [(a["picks"], a["best_agreement"], a["worst_agreement"]) for a in stats["annotators"]] == [
        (16, 1.0, 1.0)
    ] * 3

    # A redelivered job after publication finds the dataset published and changes nothing.
    again = build(runtime, built["id"], built["job_id"], lambda fraction, message: None)
    assert again == {"dataset_id": built["id"], "state": "published", "built_by_this_job": False}

    # The same dataset built again from the votes it names gives the same bytes, file for file.
    with session_scope(runtime.sessions) as session:
        row = session.get(Dataset, built["id"])
        assert row is not None
        row.state, row.files = "failed", None
    retry = client.post(
        f"/api/v1/projects/{built['project_id']}/datasets", json=built["settings"], headers=admin
    )
    assert retry.status_code == 200 and retry.json()["job_id"] != built["job_id"]
    assert wait_job(client, admin, retry.json()["job_id"])["state"] == "succeeded"
    rebuilt = client.get(f"/api/v1/datasets/{built['id']}", headers=admin).json()
    assert rebuilt["files"] == built["files"] and rebuilt["digest"] == built["digest"]


def test_an_empty_val_split_is_written_and_said(
    runtime: Runtime, client: TestClient, admin: dict[str, str], tmp_path: Path
) -> None:
    project_id = make_project(runtime, n_sources=1)
    vote_all(runtime, project_id, users(runtime, ["a1", "a2", "a3"]))
    body = {"val_fraction": 0.0, "exports": ["pickapic", "trl"]}
    first = client.post(f"/api/v1/projects/{project_id}/datasets", json=body, headers=admin)
    job = wait_job(client, admin, first.json()["job_id"])
    assert job["state"] == "succeeded", job
    assert (
        job["result"]["empty_splits"] == ["val"] and "the val split is empty" in job["result"]["warnings"][0]
    )
    dataset = client.get(f"/api/v1/datasets/{first.json()['dataset']['id']}", headers=admin).json()
    assert {"pickapic/validation.parquet", "trl/validation.parquet"} <= set(dataset["files"])
    data = download(client, admin, dataset["id"], "dataset.tar")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(tmp_path / "native", filter="data")
    assert verify_dataset(tmp_path / "native" / f"dataset-{dataset['id']}")["empty_splits"] == ["val"]
    # Both split files exist: the train split reads, and the empty validation split is reported as empty
    # (datasets cannot hold a split of no rows), not as an unknown split.
    from datasets import load_dataset

    folder = tmp_path / "pickapic"
    folder.mkdir()
    for split in ("train", "validation"):
        (folder / f"{split}.parquet").write_bytes(
            download(client, admin, dataset["id"], f"pickapic/{split}.parquet")
        )
    cache = str(tmp_path / "hf-cache")
    assert load_dataset(str(folder), split="train", cache_dir=cache).num_rows == dataset["counts"]["records"]
    with pytest.raises(ValueError, match='"validation" corresponds to no data'):
        load_dataset(str(folder), split="validation", cache_dir=cache)
