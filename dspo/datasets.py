"""Dataset versions: request one (idempotently), build it in a staging folder, verify it, publish it.

A dataset is named by its project, the newest vote id it includes and its settings: asking again for
the same thing returns the same row. The build writes under `<storage>/datasets/.staging/`, verifies
the native folder, then renames the folder into place and marks the row published in the database.
Only the database state counts as published: a folder that a killed build renamed into place before
it could commit is replaced by the retry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dspo import jobs
from dspo.aggregate import METHODS, AggregationSettings, Pair, aggregate, newest_review_id, newest_vote_id
from dspo.blobs import BlobNotFound, BlobStore
from dspo.dataset_format import SPLITS, DatasetWriter, Record, sha256_file, verify_dataset
from dspo.db import session_scope, utcnow
from dspo.exports import EXPORTERS, export_webdataset, tar_folder
from dspo.images import mask_to_png
from dspo.models import Dataset, Job, Project, Source, Task, Vote
from dspo.runtime import Runtime

BUILD_JOB = "dataset_build"
NATIVE = "native"
NATIVE_TAR = "dataset.tar"
VOTES_FILE = "votes.parquet"


class DatasetBuildError(RuntimeError):
    """The build cannot go on (missing or corrupt blob, no records...); the message says why."""


@dataclasses.dataclass(frozen=True)
class BuildSettings:
    min_votes: int | None = None
    min_agreement: float = 0.5
    image_level: bool = True
    val_fraction: float = 0.1
    seed: int = 0
    exports: tuple[str, ...] = ("pickapic", "trl", "webdataset")
    shard_size: int = 1000
    # None: the project's `aggregation`, filled in when the dataset is requested (so the dataset's
    # settings and request key name the method); a dataset stored without it was built by plurality.
    method: str | None = None

    def __post_init__(self) -> None:
        if self.method is not None and self.method not in METHODS:
            raise ValueError(f"unknown aggregation method {self.method!r}; known: {', '.join(METHODS)}")
        unknown = set(self.exports) - set(EXPORTERS)
        if unknown:
            raise ValueError(f"unknown exports {sorted(unknown)}; known: {', '.join(EXPORTERS)}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        object.__setattr__(self, "exports", tuple(sorted(set(self.exports))))

    @property
    def aggregation(self) -> AggregationSettings:
        return AggregationSettings(
            self.min_votes, self.min_agreement, self.image_level, self.method or "plurality"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "exports": list(self.exports)}


def datasets_root(runtime: Runtime) -> Path:
    return Path(runtime.settings.storage_root) / "datasets"


def dataset_dir(runtime: Runtime, dataset: Dataset) -> Path:
    return datasets_root(runtime) / str(dataset.project_id) / str(dataset.id)


def request_dataset(
    runtime: Runtime,
    project_id: int,
    settings: BuildSettings,
    *,
    up_to_vote_id: int | None = None,
    dispatch: bool = True,
    retrain: bool = False,
    request_key: str | None = None,
) -> tuple[int, int, bool]:
    """Find or create the dataset for (project, newest vote, settings) and make sure a job builds it
    (dispatch=False leaves the job queued, for a caller that runs `build` itself); retrain=True asks
    scheduled retraining to train a model on it once it is published.

    Returns (dataset id, job id, created). The dataset row and its job are written in one transaction,
    and the unique request key makes a concurrent duplicate fail and find the first one instead. The
    key is (newest vote, settings) unless the caller names one: scheduled retraining names the round,
    so that two ticks that race each other get one dataset even if a vote arrived between them."""
    with runtime.sessions() as session:
        project = session.get(Project, project_id)
        if project is None:
            raise LookupError(f"project {project_id} does not exist")
        settings = dataclasses.replace(settings, method=settings.method or project.aggregation)
        cutoff = up_to_vote_id if up_to_vote_id is not None else newest_vote_id(session, project_id)
        reviews = newest_review_id(session, project_id)
    if cutoff == 0:
        raise DatasetBuildError(f"project {project_id} has no votes yet")
    # A review is news like a vote: asking again after one builds a new dataset. Without reviews the key
    # is what it was before reviews existed.
    snapshot = {"max_vote_id": cutoff, **({"max_review_id": reviews} if reviews else {})}
    key = (
        request_key
        or hashlib.sha256(
            json.dumps({**snapshot, "settings": settings.to_dict()}, sort_keys=True).encode()
        ).hexdigest()
    )
    for _ in range(5):
        try:
            with session_scope(runtime.sessions) as session:
                found = session.scalars(
                    select(Dataset).where(Dataset.project_id == project_id, Dataset.request_key == key)
                ).first()
                created = found is None
                if found is None:
                    found = _create(session, project_id, key, (cutoff, reviews), settings, retrain)
                    job_id = found.job_id
                else:
                    job_id = _retry_if_failed(session, found)
                dataset_id = found.id
        except IntegrityError:
            continue  # a concurrent request took this key or version number: look again
        if job_id is not None and dispatch:
            jobs.dispatch(runtime, job_id)
        with runtime.sessions() as session:
            row = session.get(Dataset, dataset_id)
            assert row is not None and row.job_id is not None
            return row.id, row.job_id, created
    raise RuntimeError("could not create the dataset: too many concurrent requests")


def _new_job(session: Session, project_id: int, dataset_id: int) -> Job:
    job = Job(kind=BUILD_JOB, payload={"dataset_id": dataset_id}, project_id=project_id)
    session.add(job)
    session.flush()
    return job


def _create(
    session: Session,
    project_id: int,
    key: str,
    cutoff: tuple[int, int],  # the newest vote and review it includes
    settings: BuildSettings,
    retrain: bool,
) -> Dataset:
    latest = session.scalar(
        select(Dataset.version).where(Dataset.project_id == project_id).order_by(Dataset.version.desc())
    )
    dataset = Dataset(
        project_id=project_id,
        version=(latest or 0) + 1,
        request_key=key,
        max_vote_id=cutoff[0],
        max_review_id=cutoff[1],
        settings=settings.to_dict(),
        retrain=retrain,
    )
    session.add(dataset)
    session.flush()
    dataset.job_id = _new_job(session, project_id, dataset.id).id
    return dataset


def _retry_if_failed(session: Session, dataset: Dataset) -> int | None:
    """A failed dataset is built again by a new job when asked for again; returns that job's id."""
    if dataset.state != "failed":
        return None
    job = _new_job(session, dataset.project_id, dataset.id)
    claimed = session.execute(
        update(Dataset)
        .where(Dataset.id == dataset.id, Dataset.state == "failed")
        .values(state="queued", job_id=job.id, error=None)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        return None
    session.refresh(dataset)
    return job.id


def reopen_failed(session: Session, dataset_id: int, job_id: int) -> None:
    """A failed build job retried as it is (dspo.services.jobs.retry_job): its dataset, failed with it,
    is queued again for it, so that the job's claim on the dataset (`build`) succeeds."""
    session.execute(
        update(Dataset)
        .where(Dataset.id == dataset_id, Dataset.job_id == job_id, Dataset.state == "failed")
        .values(state="queued", error=None)
    )


def _blob(blobs: BlobStore, sha: str, what: str) -> bytes:
    try:
        data = blobs.get(sha)
    except BlobNotFound:
        raise DatasetBuildError(f"{what}: blob {sha} is missing from the blob store") from None
    if hashlib.sha256(data).hexdigest() != sha:
        raise DatasetBuildError(f"{what}: blob {sha} is corrupt (its bytes have another sha256)")
    return data


def split_of(source_id: int, seed: int, val_fraction: float) -> str:
    """train or val, by source image (every record of a source lands in the same split), seeded."""
    digest = hashlib.sha256(f"{seed}:{source_id}".encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


def _write_votes(session: Session, dataset: Dataset, path: Path) -> tuple[str, int]:
    """The exact votes this dataset was built from, as a parquet file kept with the dataset."""
    rows = session.execute(
        select(
            Vote.id,
            Vote.task_id,
            Vote.user_id,
            Vote.outcome,
            Vote.best_candidate_id,
            Vote.worst_candidate_id,
            Vote.content_text,
            Vote.defect_text,
        )
        .join(Task, Task.id == Vote.task_id)
        .join(Source, Source.id == Task.source_id)
        .where(
            Task.project_id == dataset.project_id,
            Vote.id <= dataset.max_vote_id,
            Source.held_out.is_(False),  # as in dspo.aggregate: nothing of a held-out source
            Task.evaluation_id.is_(None),  # nor any answer of an evaluation round
            Task.state != "gold",  # nor of a gold task
        )
        .order_by(Vote.id)
    ).all()
    names = ["vote_id", "task_id", "user_id", "outcome", "best_candidate_id", "worst_candidate_id"]
    names += ["content_text", "defect_text"]
    pq.write_table(pa.table(dict(zip(names, zip(*rows, strict=True), strict=True)) if rows else {}), path)
    return sha256_file(path), len(rows)


def _record(pair: Pair, settings: BuildSettings, scale: int, mask: str) -> Record:
    return Record(
        record_id=f"{pair.source_id}-{pair.instance_id if pair.instance_id is not None else 'image'}",
        source_id=str(pair.source_id),
        instance_id=None if pair.instance_id is None else str(pair.instance_id),
        split=split_of(pair.source_id, settings.seed, settings.val_fraction),
        lq=pair.lq,
        winner=pair.winner,
        loser=pair.loser,
        box=pair.box,
        mask=mask,
        weight=pair.weight,
        prompt=pair.prompt,
        content_text=pair.content_text,
        defect_text=pair.defect_text,
        winner_candidate_id=str(pair.winner_candidate_id),
        loser_candidate_id=str(pair.loser_candidate_id),
        scale=scale,
        votes=pair.votes,
        best_share=pair.best_share,
        worst_share=pair.worst_share,
    )


def write_native(
    blobs: BlobStore,
    pairs: list[Pair],
    settings: BuildSettings,
    scale: int,
    folder: Path,
    progress: Callable[[int], None] = lambda done: None,
) -> DatasetWriter:
    """Write the records and their images (checked against their sha256) into a native folder."""
    writer = DatasetWriter(folder)
    added: set[str] = set()
    full_masks: dict[tuple[int, int], str] = {}
    for done, pair in enumerate(pairs):
        where = f"source {pair.source_id}, task {pair.task_id}"
        for sha, what in ((pair.lq, "LQ image"), (pair.winner, "winner"), (pair.loser, "loser")):
            if sha not in added:
                writer.add_image(_blob(blobs, sha, f"{where}: {what}"))
                added.add(sha)
        if pair.mask is None:
            if pair.size not in full_masks:
                width, height = pair.size
                full_masks[pair.size] = writer.add_image(mask_to_png(np.ones((height, width), bool)))
            mask = full_masks[pair.size]
        else:
            if pair.mask not in added:
                writer.add_image(_blob(blobs, pair.mask, f"{where}: mask"))
                added.add(pair.mask)
            mask = pair.mask
        writer.add_record(_record(pair, settings, scale, mask))
        progress(done + 1)
    return writer


def build(runtime: Runtime, dataset_id: int, job_id: int, progress: Callable[[float, str], None]) -> dict:
    """Build, verify and publish one dataset; the body of the `dataset_build` job."""
    with session_scope(runtime.sessions) as session:
        claimed = session.execute(
            update(Dataset)
            .where(
                Dataset.id == dataset_id,
                Dataset.job_id == job_id,
                Dataset.state.in_(("queued", "building")),
            )
            .values(state="building")
        ).rowcount  # type: ignore[attr-defined]
        dataset = session.get(Dataset, dataset_id)
        if dataset is None:
            raise LookupError(f"dataset {dataset_id} does not exist")
        if not claimed:
            # Published already (a duplicate delivery), or handed to a newer job: nothing to do here.
            return {"dataset_id": dataset_id, "state": dataset.state, "built_by_this_job": False}
    try:
        return _build(runtime, dataset, progress)
    except Exception as exc:
        with session_scope(runtime.sessions) as session:
            session.execute(
                update(Dataset)
                .where(Dataset.id == dataset_id, Dataset.job_id == job_id, Dataset.state == "building")
                .values(state="failed", error=f"{type(exc).__name__}: {exc}")
            )
        raise


def _build(runtime: Runtime, dataset: Dataset, progress: Callable[[float, str], None]) -> dict:
    settings = BuildSettings(**{**dataset.settings, "exports": tuple(dataset.settings["exports"])})
    staging_root = datasets_root(runtime) / ".staging"
    # Leftovers of earlier, killed attempts at this dataset go first.
    if staging_root.is_dir():
        for old in staging_root.glob(f"{dataset.id}-*"):
            shutil.rmtree(old, ignore_errors=True)
    staging = staging_root / f"{dataset.id}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        progress(0.02, "aggregating votes")
        with runtime.sessions() as session:
            project = session.get(Project, dataset.project_id)
            assert project is not None
            result = aggregate(
                session, dataset.project_id, dataset.max_vote_id, settings.aggregation, dataset.max_review_id
            )
        if not result.pairs:
            drops = ", ".join(f"{k}: {v}" for k, v in sorted(result.drops.items())) or "no answered tasks"
            raise DatasetBuildError(f"no task gave a preference pair ({drops})")

        total = len(result.pairs)
        step = max(1, total // 50)

        def on_record(done: int) -> None:
            if done % step == 0:
                progress(0.05 + 0.6 * done / total, f"writing records {done}/{total}")

        # A split without records is said in the manifest and in the job's result: the exports still write
        # its (empty) files, and a trainer run on it has no held-out metrics.
        used = {split_of(pair.source_id, settings.seed, settings.val_fraction) for pair in result.pairs}
        empty_splits = [split for split in SPLITS if split not in used]
        native = staging / NATIVE
        writer = write_native(runtime.blobs, result.pairs, settings, project.scale, native, on_record)
        with runtime.sessions() as session:
            votes_sha, votes_count = _write_votes(session, dataset, native / VOTES_FILE)
        writer.finish(
            {
                "dataset_id": f"{project.name}/v{dataset.version}",
                "version": dataset.version,
                "project": project.name,
                # The request's time, not the build's: a rebuild gives byte-identical files.
                "created_at": dataset.created_at.isoformat(timespec="seconds"),
                "vote_snapshot": {
                    "max_vote_id": dataset.max_vote_id,
                    "votes": votes_count,
                    "file": VOTES_FILE,
                    "sha256": votes_sha,
                },
                "aggregation": {
                    **settings.to_dict(),
                    "method": settings.aggregation.method,
                    **({"dawid_skene": result.fit} if result.fit else {}),
                },
                "drops": dict(sorted(result.drops.items())),
                "tasks_with_answers": result.tasks,
                # Records whose winner and loser a reviewer chose (their votes disagreed, or were flagged).
                "records_from_reviews": result.reviewed,
                "max_review_id": dataset.max_review_id,
                "empty_splits": empty_splits,
            }
        )
        progress(0.7, "verifying")
        manifest = verify_dataset(native)
        tar_folder(native, staging / NATIVE_TAR, arcname=f"dataset-{dataset.id}")
        for number, name in enumerate(settings.exports):
            progress(0.75 + 0.2 * number / len(settings.exports), f"exporting {name}")
            if name == "webdataset":
                export_webdataset(native, staging / name, settings.shard_size)
            else:
                EXPORTERS[name](native, staging / name)
        files = {
            path.relative_to(staging).as_posix(): {"size": path.stat().st_size, "sha256": sha256_file(path)}
            for path in sorted(staging.rglob("*"))
            if path.is_file() and not path.relative_to(staging).as_posix().startswith(f"{NATIVE}/")
        }
        counts = {
            **manifest["counts"],
            "votes": votes_count,
            "tasks_with_answers": result.tasks,
            "records_from_reviews": result.reviewed,
        }
        published = _publish(runtime, dataset, staging, files, counts, manifest["digest"])
        sources = len({pair.source_id for pair in result.pairs})
        published["empty_splits"] = empty_splits
        published["warnings"] = [
            f"the {split} split is empty (val_fraction {settings.val_fraction} put none of the {sources} "
            f"sources there): its export files have no rows (`datasets` reports an empty split as "
            f'"corresponds to no data": train the diffusers example with --dataset_split_name train), and a '
            + (
                "training run reports no held-out metrics"
                if split == "val"
                else "run has nothing to train on"
            )
            for split in empty_splits
        ]
        return published
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _publish(
    runtime: Runtime, dataset: Dataset, staging: Path, files: dict, counts: dict, digest: str
) -> dict:
    """Rename the staging folder into place and mark the row published, under the row's lock: a
    duplicate delivery of the same job that gets here second finds it published and touches nothing."""
    final = dataset_dir(runtime, dataset)
    with session_scope(runtime.sessions) as session:
        row = session.scalars(select(Dataset).where(Dataset.id == dataset.id).with_for_update()).one()
        if row.state != "building" or row.job_id != dataset.job_id:
            raise DatasetBuildError(f"dataset {dataset.id} is {row.state} (job {row.job_id}): not publishing")
        if final.exists():
            # Renamed into place by a build killed before it committed: never published, so replace it.
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, final)
        row.state, row.counts, row.files, row.digest = "published", counts, files, digest
        row.published_at = utcnow()
    return {"dataset_id": dataset.id, "version": dataset.version, "digest": digest, "counts": counts}


def published_file(runtime: Runtime, dataset: Dataset, name: str) -> Path:
    """The path of one downloadable file of a published dataset (names come from `dataset.files`)."""
    if dataset.state != "published" or not dataset.files or name not in dataset.files:
        raise KeyError(name)
    return dataset_dir(runtime, dataset) / name


def records_path(runtime: Runtime, dataset: Dataset) -> Path:
    return dataset_dir(runtime, dataset) / NATIVE / "records.parquet"
