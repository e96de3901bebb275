"""Reading a DSPO dataset for training: joint crops, buckets, a seeded order and a resumable position.

Crops (decided here, documented in docs/trainer.md): a square window of side max(box side, training size),
placed so that it contains the record's box (randomly in training, centred for validation), aligned to the
SR factor so the LQ crop is exact, cut from LQ, winner, loser and mask alike, then resized to the training
size when it is larger. Small instances therefore keep their native resolution and get context around
them; large ones are downscaled. One horizontal flip decision covers all four images.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dspo.dataset_format import Record, image_path, read_records, verify_dataset
from trainer.backbones.base import Batch


def joined_text(record: Record, text_feedback: bool) -> str:
    """The text condition of SPEC §5: "{prompt}, {content_text}", or the prompt alone without feedback."""
    parts = [record.prompt.strip()]
    if text_feedback:
        parts.append(record.content_text.strip())
    return ", ".join(p for p in parts if p)


def crop_window(
    size: tuple[int, int],
    box: tuple[int, int, int, int],
    side: int,
    align: int,
    rng: np.random.Generator | None,
) -> tuple[int, int, int]:
    """(x0, y0, side) of a square window in an image of `size` holding `box`, aligned to `align` pixels."""
    w, h = size
    side = min(-(-side // align) * align, (min(w, h) // align) * align)
    if side <= 0:
        raise ValueError(f"image {size} is smaller than the SR factor {align}")
    start = []
    for lo, hi, extent in ((box[0], box[2], w), (box[1], box[3], h)):
        # Windows that contain [lo, hi) start in [hi - side, lo]; clipped to the image. When the box is wider
        # than the window (a very elongated box), the window is centred on it instead.
        first, last = max(0, hi - side), min(lo, extent - side)
        first, last = -(-first // align), last // align  # in units of `align`
        if first > last:
            first = last = max(0, min((lo + hi - side) // 2, extent - side)) // align
        pos = int(rng.integers(first, last + 1)) if rng is not None else (first + last) // 2
        start.append(pos * align)
    return start[0], start[1], side


def to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


KINDS = ("instance", "image")


def record_kind(record: Record) -> str:
    return "image" if record.instance_id is None else "instance"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One training item: a record, how it is cut (its box and mask, or the whole image with a full mask),
    its raw weight and its text."""

    record: Record
    kind: str  # instance | image: the record's kind, whatever the view
    whole: bool
    raw_weight: float
    text: str


def select_entries(
    records: list[Record], loss: str, text_feedback: bool = True, image_level_weight: float = 0.0
) -> tuple[list[Entry], str]:
    """The records a loss trains on, and a sentence saying which (docs/trainer.md, "What a run trains on").

    - dspo: the instance records, with their mask, weight w_m and "{prompt}, {content_text}"; with
      `image_level_weight` > 0 also the image-level records, whole, with that raw weight (1 gives a source's
      image-level record the weight of all its instances together, since these sum to 1 per source).
    - dpo and sft: the image-level records (the paper's baseline: Diffusion-DPO on image-level votes), whole,
      weight 1, the prompt alone. A dataset built without image-level tasks has none: then every record is
      used as a whole-image pair, and the sentence says so.
    """
    instances = [r for r in records if r.instance_id is not None]
    images = [r for r in records if r.instance_id is None]
    if loss == "dspo":
        entries = [Entry(r, "instance", False, r.weight, joined_text(r, text_feedback)) for r in instances]
        view = f"{len(instances)} instance records"
        if image_level_weight > 0:
            entries += [
                Entry(r, "image", True, image_level_weight, joined_text(r, text_feedback)) for r in images
            ]
            view += f" and {len(images)} image-level records (weight {image_level_weight:g} each)"
        return entries, view
    if images:
        return [Entry(r, "image", True, 1.0, joined_text(r, False)) for r in images], (
            f"{len(images)} image-level records"
        )
    return [Entry(r, record_kind(r), True, 1.0, joined_text(r, False)) for r in records], (
        f"{len(records)} records as whole-image pairs (the dataset has no image-level records)"
    )


class PreferenceDataset(torch.utils.data.Dataset):
    """The entries of one split; items are addressed by (index, epoch, batch) so that crops are reproducible.

    Which records, and how each is cut, is `select_entries`'s business. Weights are normalised by the mean
    raw weight of these entries (SPEC §3): a constant of the dataset, so a record counts the same whatever
    batch, micro-batch or process it lands in.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        sizes: tuple[int, ...],
        loss: str = "dspo",
        text_feedback: bool = True,
        image_level_weight: float = 0.0,
        flip: bool = True,
        seed: int = 0,
        random_crops: bool = True,
        manifest: dict | None = None,
    ) -> None:
        self.root = Path(root)
        self.manifest = manifest if manifest is not None else verify_dataset(root)
        records = [r for r in read_records(root) if r.split == split]
        self.entries, self.view = select_entries(records, loss, text_feedback, image_level_weight)
        self.records = [e.record for e in self.entries]
        self.weight_mean = float(np.mean([e.raw_weight for e in self.entries])) if self.entries else 1.0
        self.sizes = tuple(sorted(sizes))
        self.flip, self.seed, self.random_crops = flip, seed, random_crops

    def __len__(self) -> int:
        return len(self.entries)

    def counts(self) -> dict[str, int]:
        """Entries per record kind."""
        return {kind: sum(e.kind == kind for e in self.entries) for kind in KINDS}

    def bucket(self, index: int) -> int:
        """The training size of a record: the smallest size holding its box, else the largest."""
        entry = self.entries[index]
        if entry.whole and entry.kind == "instance":
            return self.sizes[-1]  # an instance record cut whole: its box does not say the image's size
        x0, y0, x1, y1 = entry.record.box
        extent = max(x1 - x0, y1 - y0)
        return next((s for s in self.sizes if s >= extent), self.sizes[-1])

    def _load(self, sha: str) -> Image.Image:
        with Image.open(image_path(self.root, sha)) as image:
            image.load()
            return image

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        index, epoch, _ = key
        entry = self.entries[index]
        record = entry.record
        size = self.bucket(index)
        rng = np.random.default_rng([self.seed, epoch, index]) if self.random_crops else None
        winner, loser, lq = self._load(record.winner), self._load(record.loser), self._load(record.lq)
        box = (0, 0, *winner.size) if entry.whole else record.box
        x0, y0, side = crop_window(
            winner.size, box, max(size, box[2] - box[0], box[3] - box[1]), record.scale, rng
        )
        window, s = (x0, y0, x0 + side, y0 + side), record.scale
        lq_window = (x0 // s, y0 // s, (x0 + side) // s, (y0 + side) // s)

        def sr(image: Image.Image) -> Image.Image:
            image = image.crop(window)
            return image if side == size else image.resize((size, size), Image.BICUBIC)

        lq = lq.crop(lq_window)
        if side != size:
            lq = lq.resize((size // s, size // s), Image.BICUBIC)
        tensors = {"lq": to_tensor(lq), "winner": to_tensor(sr(winner)), "loser": to_tensor(sr(loser))}
        if entry.whole:
            tensors["mask"] = torch.ones(1, size, size)
        else:
            # Area resampling keeps the mask's share of each pixel; it stays soft, as it will in latent space.
            mask = self._load(record.mask).convert("L").crop(window)
            if side != size:
                mask = mask.resize((size, size), Image.BOX)
            tensors["mask"] = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None]
        if self.flip and rng is not None and rng.random() < 0.5:
            tensors = {k: v.flip(-1) for k, v in tensors.items()}
        tensors["weight"] = entry.raw_weight / self.weight_mean
        tensors["text"] = entry.text
        return tensors


class BatchOrder(torch.utils.data.Sampler):
    """Batches of one bucket each, in an order fixed by (seed, epoch), resumable at any batch.

    Each global batch holds `batch_size * num_replicas` records of one bucket; process `rank` takes its
    share. Items are (index, epoch, batch) so the dataset can seed its crops and the collated batch can say
    where it was.
    """

    def __init__(
        self,
        dataset: PreferenceDataset,
        batch_size: int,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        start: tuple[int, int] = (0, 0),
    ) -> None:
        self.buckets: dict[int, list[int]] = {}
        for i in range(len(dataset)):
            self.buckets.setdefault(dataset.bucket(i), []).append(i)
        self.batch_size, self.seed = batch_size, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.start = start

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Every record of every bucket, in full batches: a bucket's last, short batch is filled up with the
        first records of the same bucket's order again (as torch's DistributedSampler pads), so every
        record trains every epoch and every batch has the same size, which keeps the loss's normalisation
        exact (docs/trainer.md, "Buckets")."""
        rng = np.random.default_rng([self.seed, epoch])
        size = self.batch_size * self.num_replicas
        batches = []
        for bucket in sorted(self.buckets):
            order = rng.permutation(self.buckets[bucket]).tolist()
            short = -len(order) % size
            order += (order * (short // len(order) + 1))[:short]
            batches += [order[i : i + size] for i in range(0, len(order), size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        epoch, position = self.start
        while True:
            batches = self.epoch_batches(epoch)
            for b in range(position, len(batches)):
                mine = batches[b][self.rank :: self.num_replicas]
                yield [(i, epoch, b + 1) for i in mine]
            epoch, position = epoch + 1, 0


def collate(items: list[dict], keys: list[tuple[int, int, int]]) -> Batch:
    return Batch(
        lq=torch.stack([it["lq"] for it in items]),
        winner=torch.stack([it["winner"] for it in items]),
        loser=torch.stack([it["loser"] for it in items]),
        mask=torch.stack([it["mask"] for it in items]),
        weight=torch.tensor([it["weight"] for it in items], dtype=torch.float32),
        text=[it["text"] for it in items],
        cursor=(keys[0][1], keys[0][2]),
    )


class _KeyedDataset(torch.utils.data.Dataset):
    """Passes the batch's keys through to collate, which needs them for the cursor."""

    def __init__(self, dataset: PreferenceDataset) -> None:
        self.dataset = dataset

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[dict, tuple[int, int, int]]:
        return self.dataset[key], key


def _collate_keyed(pairs: list[tuple[dict, tuple[int, int, int]]]) -> Batch:
    return collate([p[0] for p in pairs], [p[1] for p in pairs])


def training_batches(dataset: PreferenceDataset, order: BatchOrder, num_workers: int = 0) -> Iterator[Batch]:
    loader = torch.utils.data.DataLoader(
        _KeyedDataset(dataset),
        batch_sampler=order,
        collate_fn=_collate_keyed,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
    return iter(loader)


def fixed_batches(dataset: PreferenceDataset, batch_size: int) -> Iterator[Batch]:
    """Every record once, in file order, with deterministic (centred) crops: for validation."""
    for start in range(0, len(dataset), batch_size):
        keys = [(i, 0, 0) for i in range(start, min(start + batch_size, len(dataset)))]
        # Records of different buckets cannot share a batch.
        by_size: dict[int, list[tuple[int, int, int]]] = {}
        for key in keys:
            by_size.setdefault(dataset.bucket(key[0]), []).append(key)
        for group in by_size.values():
            yield collate([dataset[k] for k in group], group)
