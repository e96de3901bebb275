"""Exports of a native dataset (SPEC §2) for other trainers: Pick-a-Pic style parquet (the diffusers
Diffusion-DPO example), TRL style parquet (prompt, chosen, rejected) and WebDataset shards.

The parquet exports are read by trainers that know nothing of masks, so an instance record's pair is its
crop: the record's box (widened to the SR factor's grid, so the LQ crop is exact), cut from winner, loser,
mask and LQ alike. Whole images would be wrong: two instances of one source may prefer opposite candidates,
and a plain DPO trainer would see the same pair labelled both ways. Image-level records are whole images.
A `kind` column says which a row is; the full images stay referenced by sha256 (the native folder's
`images/<sha256>.png`). Both split files are always written, empty or not, since readers ask for both.

Every export is a pure function of the native folder: the same dataset gives the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from dspo.dataset_format import SPLITS, Record, image_path, read_records

EXPORTS = ("pickapic", "trl", "webdataset")
# datasets.load_dataset(folder) infers split names from file names: "validation", not "val".
SPLIT_FILES = {"train": "train", "val": "validation"}
BATCH = 256  # rows per parquet row group: bounds memory, since the images are in the rows


KINDS = ("image", "instance")


def record_kind(record: Record) -> str:
    return "image" if record.instance_id is None else "instance"


def crop_box(record: Record, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The region a row shows, in SR pixels: the whole image for an image-level record, else the record's
    box widened outward to multiples of the SR factor (and clipped to the image)."""
    if record.instance_id is None:
        return (0, 0, *size)
    s = record.scale
    x0, y0, x1, y1 = record.box
    return (x0 // s * s, y0 // s * s, min(-(-x1 // s) * s, size[0]), min(-(-y1 // s) * s, size[1]))


def caption(record: Record) -> str:
    """The text condition: the prompt with the instance's content description appended (SPEC §5)."""
    return ", ".join(t for t in (record.prompt, record.content_text) if t)


def _swap(record: Record) -> bool:
    # Pick-a-Pic stores the preferred image in either column; a fixed side would teach a position bias.
    return hashlib.sha256(record.record_id.encode()).digest()[0] & 1 == 1


def _image_reader(root: Path) -> Callable[[str], bytes]:
    cache: dict[str, bytes] = {}

    def read(sha: str) -> bytes:
        # LQ and candidates repeat across the instances of a source; keep the newest few in memory.
        if sha not in cache:
            if len(cache) > 64:
                cache.clear()
            cache[sha] = image_path(root, sha).read_bytes()
        return cache[sha]

    return read


def _crop(data: bytes, box: tuple[int, int, int, int] | None) -> bytes:
    """PNG bytes of `box` cut from an image (the image as it is when box is None)."""
    if box is None:
        return data
    with Image.open(io.BytesIO(data)) as image:
        out = io.BytesIO()
        image.crop(box).save(out, format="PNG")
        return out.getvalue()


def _metadata(record: Record) -> dict[str, object]:
    return {
        "kind": record_kind(record),
        "record_id": record.record_id,
        "source_id": record.source_id,
        "instance_id": record.instance_id,
        "box": list(record.box),
        "weight": record.weight,
        "prompt": record.prompt,
        "content_text": record.content_text,
        "defect_text": record.defect_text,
        "winner_candidate_id": record.winner_candidate_id,
        "loser_candidate_id": record.loser_candidate_id,
        "scale": record.scale,
        "votes": record.votes,
        "best_share": record.best_share,
        "worst_share": record.worst_share,
    }


# Beside each pair, the parquet exports carry the row's kind, the LQ crop, the mask crop, the crop box,
# the full images' sha256 and the record's metadata, so that a DSPO-aware reader has everything and a plain
# DPO reader can ignore it.
REGION_FIELDS = [
    ("kind", pa.string()),
    ("lq", pa.binary()),
    ("mask", pa.binary()),
    ("crop_box", pa.list_(pa.int32(), 4)),
    ("lq_sha256", pa.string()),
    ("winner_sha256", pa.string()),
    ("loser_sha256", pa.string()),
    ("mask_sha256", pa.string()),
    ("record_id", pa.string()),
    ("source_id", pa.string()),
    ("instance_id", pa.string()),
    ("box", pa.list_(pa.int32(), 4)),
    ("weight", pa.float64()),
    ("content_text", pa.string()),
    ("defect_text", pa.string()),
    ("votes", pa.int32()),
    ("best_share", pa.float64()),
    ("worst_share", pa.float64()),
]

PICKAPIC_SCHEMA = pa.schema(
    [
        ("caption", pa.string()),
        ("jpg_0", pa.binary()),
        ("jpg_1", pa.binary()),
        ("label_0", pa.float64()),
        ("label_1", pa.float64()),
        ("prompt", pa.string()),
        *REGION_FIELDS,
    ]
)

TRL_SCHEMA = pa.schema(
    [("prompt", pa.string()), ("chosen", pa.binary()), ("rejected", pa.binary()), *REGION_FIELDS]
)


def _pair(record: Record, read: Callable[[str], bytes]) -> dict[str, object]:
    """The row's images (winner, loser, lq, mask: crops for an instance record) and its extra columns."""
    with Image.open(io.BytesIO(read(record.winner))) as image:
        size = image.size
    box = crop_box(record, size)
    whole = box == (0, 0, *size)
    s = record.scale
    lq_box = (box[0] // s, box[1] // s, box[2] // s, box[3] // s)
    meta = _metadata(record)
    columns: dict[str, object] = {
        "winner": _crop(read(record.winner), None if whole else box),
        "loser": _crop(read(record.loser), None if whole else box),
        "lq": _crop(read(record.lq), None if whole else lq_box),
        "mask": _crop(read(record.mask), None if whole else box),
        "crop_box": list(box),
        "lq_sha256": record.lq,
        "winner_sha256": record.winner,
        "loser_sha256": record.loser,
        "mask_sha256": record.mask,
    }
    columns.update((name, meta[name]) for name, _ in REGION_FIELDS if name in meta)
    return columns


def _pickapic_row(record: Record, read: Callable[[str], bytes]) -> dict[str, object]:
    # "jpg" is Pick-a-Pic's column name; the bytes are PNG (lossless), which PIL opens all the same.
    pair = _pair(record, read)
    winner, loser = pair.pop("winner"), pair.pop("loser")
    first, second = (loser, winner) if _swap(record) else (winner, loser)
    label_0 = 0.0 if _swap(record) else 1.0
    return {
        "caption": caption(record),
        "jpg_0": first,
        "jpg_1": second,
        "label_0": label_0,
        "label_1": 1.0 - label_0,
        "prompt": record.prompt,
        **pair,
    }


def _trl_row(record: Record, read: Callable[[str], bytes]) -> dict[str, object]:
    pair = _pair(record, read)
    return {"prompt": caption(record), "chosen": pair.pop("winner"), "rejected": pair.pop("loser"), **pair}


def _batches(records: list[Record], size: int) -> Iterator[list[Record]]:
    for start in range(0, len(records), size):
        yield records[start : start + size]


def _write_parquet(
    root: Path,
    out: Path,
    schema: pa.Schema,
    row: Callable[[Record, Callable[[str], bytes]], dict[str, object]],
    kind: str | None = None,
) -> list[Path]:
    """One parquet file per split, named as datasets.load_dataset expects, written even when the split has
    no rows (a reader asking for "validation" gets an empty split, not an error): then the file has the
    schema and no row group, since datasets' reader takes its batch size from the first row group and
    fails on an empty one. `kind` keeps the image or the instance records only."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    out.mkdir(parents=True, exist_ok=True)
    records = [r for r in read_records(root) if kind is None or record_kind(r) == kind]
    read = _image_reader(root)
    written = []
    for split in SPLITS:
        chosen = [r for r in records if r.split == split]
        path = out / f"{SPLIT_FILES[split]}.parquet"
        with pq.ParquetWriter(path, schema) as writer:
            for batch in _batches(chosen, BATCH):
                writer.write_table(pa.Table.from_pylist([row(r, read) for r in batch], schema=schema))
        written.append(path)
    return written


def export_pickapic(root: str | Path, out: str | Path, kind: str | None = None) -> list[Path]:
    """`caption, jpg_0, jpg_1, label_0, label_1` as the Diffusion-DPO example reads them (an instance
    record's crop, an image-level record's whole images), plus the kind, the LQ and mask crops, the weight,
    the texts and the full images' sha256."""
    return _write_parquet(Path(root), Path(out), PICKAPIC_SCHEMA, _pickapic_row, kind)


def export_trl(root: str | Path, out: str | Path, kind: str | None = None) -> list[Path]:
    """`prompt, chosen, rejected` (PNG bytes; crops for instance records), plus the same extra columns."""
    return _write_parquet(Path(root), Path(out), TRL_SCHEMA, _trl_row, kind)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    # Fixed metadata, so the same dataset gives byte-identical shards.
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def export_webdataset(root: str | Path, out: str | Path, shard_size: int = 1000) -> list[Path]:
    """Shards `{split}-{n:06d}.tar` of `{key}.lq.png, .chosen.png, .rejected.png, .mask.png, .json`."""
    root, out = Path(root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = read_records(root)
    read = _image_reader(root)
    written = []
    for split in SPLITS:
        chosen = [r for r in records if r.split == split]
        for number, batch in enumerate(_batches(chosen, shard_size)):
            path = out / f"{SPLIT_FILES[split]}-{number:06d}.tar"
            with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
                for record in batch:
                    # WebDataset splits the key from the extension at the first dot of the file name.
                    key = record.record_id.replace(".", "_")
                    for part, sha in (
                        ("lq", record.lq),
                        ("chosen", record.winner),
                        ("rejected", record.loser),
                        ("mask", record.mask),
                    ):
                        _add(tar, f"{key}.{part}.png", read(sha))
                    _add(tar, f"{key}.json", json.dumps(_metadata(record), sort_keys=True).encode())
            written.append(path)
    return written


EXPORTERS: dict[str, Callable[[str | Path, str | Path], list[Path]]] = {
    "pickapic": export_pickapic,
    "trl": export_trl,
    "webdataset": export_webdataset,
}


def tar_folder(folder: str | Path, out: str | Path, arcname: str) -> Path:
    """A deterministic tar of a folder (sorted names, fixed metadata): same content, same sha256."""
    folder, out = Path(folder), Path(out)
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            _add(tar, f"{arcname}/{path.relative_to(folder).as_posix()}", path.read_bytes())
    return out
