"""The native DSPO dataset format, version 1 (SPEC §2): write it, read it, verify it.

A dataset is a folder with `manifest.json`, `records.parquet` and `images/<sha256>.png`. This module is the
single definition of that contract, shared by the dataset builder (writer) and the trainer (reader), so it
depends on nothing but pyarrow, numpy, pillow and the standard library.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
RECORDS = "records.parquet"
IMAGES = "images"
SPLITS = ("train", "val")


class DatasetError(ValueError):
    """The folder is not a valid dataset of this format; the message says what is wrong and where."""


@dataclasses.dataclass(frozen=True)
class Record:
    """One training record: a (winner, loser) pair of SR candidates for one instance of one source."""

    record_id: str
    source_id: str
    instance_id: str | None  # None for an image-level record
    split: str  # "train" or "val"
    lq: str  # sha256 of images/<sha>.png
    winner: str
    loser: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in SR pixels, x1/y1 exclusive
    mask: str  # sha256 of a 1-bit PNG, same size as the candidates
    weight: float  # w_m, sums to 1 over the kept instances of a source
    prompt: str = ""
    content_text: str = ""
    defect_text: str = ""
    winner_candidate_id: str = ""
    loser_candidate_id: str = ""
    scale: int = 4
    votes: int = 0
    best_share: float = 0.0
    worst_share: float = 0.0


SCHEMA = pa.schema(
    [
        ("record_id", pa.string()),
        ("source_id", pa.string()),
        ("instance_id", pa.string()),
        ("split", pa.string()),
        ("lq", pa.string()),
        ("winner", pa.string()),
        ("loser", pa.string()),
        ("box", pa.list_(pa.int32(), 4)),
        ("mask", pa.string()),
        ("weight", pa.float64()),
        ("prompt", pa.string()),
        ("content_text", pa.string()),
        ("defect_text", pa.string()),
        ("winner_candidate_id", pa.string()),
        ("loser_candidate_id", pa.string()),
        ("scale", pa.int32()),
        ("votes", pa.int32()),
        ("best_share", pa.float64()),
        ("worst_share", pa.float64()),
    ]
)
assert SCHEMA.names == [f.name for f in dataclasses.fields(Record)]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    # A crash mid-write must never leave a truncated file under a final name (images are content-addressed).
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def image_path(root: str | Path, sha: str) -> Path:
    return Path(root) / IMAGES / f"{sha}.png"


class DatasetWriter:
    """Builds a dataset in `staging_dir`; publishing it (rename, tar) is the caller's business."""

    def __init__(self, staging_dir: str | Path) -> None:
        self.root = Path(staging_dir)
        (self.root / IMAGES).mkdir(parents=True, exist_ok=True)
        self._records: list[Record] = []
        self._sizes: dict[str, tuple[int, int]] = {}
        self._modes: dict[str, str] = {}

    def add_image(self, png_bytes: bytes) -> str:
        """Store a PNG under its sha256 and return the hash; adding the same bytes twice stores them once."""
        sha = sha256_bytes(png_bytes)
        if sha in self._sizes:
            return sha
        with Image.open(io.BytesIO(png_bytes)) as image:
            if image.format != "PNG":
                raise DatasetError(f"images must be PNG, got {image.format}")
            self._sizes[sha] = image.size
            self._modes[sha] = image.mode
        path = image_path(self.root, sha)
        if not path.exists():
            _atomic_write(path, png_bytes)
        return sha

    def add_record(self, record: Record) -> None:
        for column in ("lq", "winner", "loser", "mask"):
            if getattr(record, column) not in self._sizes:
                raise DatasetError(f"record {record.record_id}: {column} image was not added with add_image")
        _check_record(record, self._sizes, self._modes)
        self._records.append(record)

    def finish(self, manifest_fields: dict[str, Any]) -> Path:
        """Write records.parquet and manifest.json; `manifest_fields` gives dataset_id, version, project,
        vote_snapshot, aggregation and drops (counts of dropped instances by reason)."""
        missing = {"dataset_id", "version"} - manifest_fields.keys()
        if missing:
            raise DatasetError(f"manifest_fields lacks {sorted(missing)}")
        ids = [r.record_id for r in self._records]
        if len(set(ids)) != len(ids):
            raise DatasetError("record_id values are not unique")
        columns = {name: [] for name in SCHEMA.names}
        for record in self._records:
            for name, value in dataclasses.asdict(record).items():
                columns[name].append(list(value) if name == "box" else value)
        buffer = io.BytesIO()
        pq.write_table(pa.table(columns, schema=SCHEMA), buffer)
        _atomic_write(self.root / RECORDS, buffer.getvalue())

        fields = dict(manifest_fields)
        drops = fields.pop("drops", {})
        files = {RECORDS: sha256_file(self.root / RECORDS)}
        files.update({f"{IMAGES}/{sha}.png": sha for sha in sorted(self._sizes)})
        manifest = {
            "format_version": FORMAT_VERSION,
            "dataset_id": fields.pop("dataset_id"),
            "version": fields.pop("version"),
            "project": fields.pop("project", ""),
            "created_at": fields.pop("created_at", datetime.now(UTC).isoformat(timespec="seconds")),
            "vote_snapshot": fields.pop("vote_snapshot", {}),
            "aggregation": fields.pop("aggregation", {}),
            "counts": {
                "records": len(self._records),
                "sources": len({r.source_id for r in self._records}),
                **{split: sum(r.split == split for r in self._records) for split in SPLITS},
                "drops": dict(drops),
            },
            **fields,
            "files": files,
        }
        manifest["digest"] = dataset_digest(files)
        _atomic_write(self.root / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
        return self.root


def dataset_digest(files: dict[str, str]) -> str:
    """One hash naming the dataset's content: the sha256 of its sorted file list with hashes."""
    return sha256_bytes("".join(f"{name}\t{sha}\n" for name, sha in sorted(files.items())).encode())


def _check_record(record: Record, sizes: dict[str, tuple[int, int]], modes: dict[str, str]) -> None:
    where = f"record {record.record_id}"
    if record.split not in SPLITS:
        raise DatasetError(f"{where}: split must be one of {SPLITS}, got {record.split!r}")
    if record.winner == record.loser:
        raise DatasetError(f"{where}: winner and loser are the same image")
    size = sizes[record.winner]
    if sizes[record.loser] != size:
        raise DatasetError(f"{where}: loser is {sizes[record.loser]}, winner is {size}")
    if sizes[record.mask] != size:
        raise DatasetError(f"{where}: mask is {sizes[record.mask]}, candidates are {size}")
    if modes[record.mask] != "1":
        raise DatasetError(f"{where}: mask must be a 1-bit PNG, got mode {modes[record.mask]}")
    if record.scale < 1:
        raise DatasetError(f"{where}: scale must be >= 1, got {record.scale}")
    lq_size = sizes[record.lq]
    if (lq_size[0] * record.scale, lq_size[1] * record.scale) != size:
        raise DatasetError(f"{where}: lq {lq_size} x scale {record.scale} does not give the SR size {size}")
    x0, y0, x1, y1 = record.box
    if not (0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1]):
        raise DatasetError(f"{where}: box {list(record.box)} is not inside the {size} image")
    if not (math.isfinite(record.weight) and record.weight > 0):
        raise DatasetError(f"{where}: weight must be positive, got {record.weight}")


def read_manifest(root: str | Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DatasetError(f"{root}: no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from e
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DatasetError(f"{root}: unknown format version {version!r} (this reader knows {FORMAT_VERSION})")
    return manifest


def read_records(root: str | Path) -> list[Record]:
    path = Path(root) / RECORDS
    if not path.is_file():
        raise DatasetError(f"{root}: no {RECORDS}")
    table = pq.read_table(path)
    missing = set(SCHEMA.names) - set(table.column_names)
    if missing:
        raise DatasetError(f"{path}: missing columns {sorted(missing)}")
    return [Record(**{**row, "box": tuple(row["box"])}) for row in table.select(SCHEMA.names).to_pylist()]


def verify_dataset(root: str | Path) -> dict[str, Any]:
    """Check the format version, every checksum, that every referenced image exists and that sizes agree.

    Returns the manifest; raises DatasetError with the first problem found.
    """
    root = Path(root)
    manifest = read_manifest(root)
    files: dict[str, str] = manifest.get("files", {})
    if RECORDS not in files:
        raise DatasetError(f"{root}: manifest does not list {RECORDS}")
    for name, expected in sorted(files.items()):
        path = root / name
        if not path.is_file():
            raise DatasetError(f"{root}: missing file {name}")
        actual = sha256_file(path)
        if actual != expected:
            raise DatasetError(
                f"{root}: checksum mismatch for {name} (manifest {expected[:12]}, file {actual[:12]})"
            )
    if dataset_digest(files) != manifest.get("digest"):
        raise DatasetError(f"{root}: manifest digest does not match its file list")

    sizes: dict[str, tuple[int, int]] = {}
    modes: dict[str, str] = {}
    for record in read_records(root):
        for column in ("lq", "winner", "loser", "mask"):
            sha = getattr(record, column)
            if sha in sizes:
                continue
            if f"{IMAGES}/{sha}.png" not in files:
                raise DatasetError(f"record {record.record_id}: {column} image {sha[:12]} is missing")
            with Image.open(image_path(root, sha)) as image:
                sizes[sha], modes[sha] = image.size, image.mode
        _check_record(record, sizes, modes)
    return manifest


def locate_dataset(path: str | Path, unpack_to: str | Path) -> Path:
    """The dataset folder that `path` names: the folder itself, the folder a downloaded `dataset.tar` was
    unpacked into (the tar holds one `dataset-N/` folder), or the tar itself, unpacked into `unpack_to`.

    Raises DatasetError when none of these holds a manifest.
    """
    path = Path(path)
    if path.is_file() and tarfile.is_tarfile(path):
        target = Path(unpack_to)
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        with tarfile.open(path) as tar:
            tar.extractall(target, filter="data")  # no absolute paths, links out or device files
        path = target
    if (path / MANIFEST).is_file():
        return path
    inner = [p for p in sorted(path.iterdir()) if (p / MANIFEST).is_file()] if path.is_dir() else []
    if len(inner) == 1:
        return inner[0]
    raise DatasetError(
        f"{path}: no {MANIFEST} here or in one folder below it; pass the dataset folder, the folder the "
        "downloaded dataset.tar was unpacked into, or the tar itself"
    )
