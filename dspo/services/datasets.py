"""Dataset versions for the API: list, build (a job, see dspo.datasets), the files and records of a
published version, and the agreement statistics of a project."""

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import select
from sqlalchemy.orm import Session

from dspo.dataset_format import sha256_file
from dspo.datasets import BuildSettings, DatasetBuildError, published_file, records_path, request_dataset
from dspo.errors import Conflict, InvalidInput, NotFound
from dspo.exports import BATCH, KINDS
from dspo.models import Dataset, Job, Task
from dspo.runtime import Runtime
from dspo.services import quality
from dspo.services.projects import get_project


@dataclass
class RecordsPage:
    total: int
    offset: int
    limit: int
    records: list[dict[str, Any]]


def list_datasets(session: Session, project_id: int) -> list[Dataset]:
    get_project(session, project_id)
    return list(
        session.scalars(select(Dataset).where(Dataset.project_id == project_id).order_by(Dataset.version))
    )


@dataclass
class DatasetView:
    """A dataset version with the job that builds it, for the admin pages."""

    dataset: Dataset
    job: Job | None


def list_with_jobs(session: Session, project_id: int) -> list[DatasetView]:
    """The project's dataset versions, newest first, each with its build job (progress, message)."""
    found = list_datasets(session, project_id)
    job_ids = [d.job_id for d in found if d.job_id is not None]
    jobs = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(job_ids)))} if job_ids else {}
    return [DatasetView(d, jobs.get(d.job_id) if d.job_id else None) for d in reversed(found)]


def get_dataset(session: Session, dataset_id: int) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} does not exist")
    return dataset


def build(
    runtime: Runtime, project_id: int, settings: dict[str, Any], up_to_vote_id: int | None
) -> tuple[Dataset, int, bool]:
    """Ask for a dataset version built from the votes so far (up to `up_to_vote_id`): returns (dataset,
    job id, created). The same votes and settings asked for again give the same dataset (created
    False), and a failed one is built again. Runs its own transactions."""
    try:
        dataset_id, job_id, created = request_dataset(
            runtime, project_id, BuildSettings(**settings), up_to_vote_id=up_to_vote_id
        )
    except LookupError as exc:
        raise NotFound(str(exc)) from None
    except (ValueError, DatasetBuildError) as exc:
        raise InvalidInput(str(exc)) from None
    with runtime.read_sessions() as session:
        return get_dataset(session, dataset_id), job_id, created


def published(session: Session, dataset_id: int) -> Dataset:
    """A published dataset; Conflict while it is queued, building or failed."""
    dataset = get_dataset(session, dataset_id)
    if dataset.state != "published":
        raise Conflict(f"dataset {dataset_id} is {dataset.state}, not published")
    return dataset


def published_path(
    runtime: Runtime, dataset: Dataset, name: str, kind: str | None = None
) -> tuple[Path, str]:
    """The path and sha256 of one file of a published dataset; with `kind` ("image" or "instance"), of
    a Pick-a-Pic or TRL parquet file narrowed to the rows of that kind (made once, then kept)."""
    try:
        path = published_file(runtime, dataset, name)
    except KeyError:
        raise NotFound(f"dataset {dataset.id} has no file {name!r}; see its `files`") from None
    if kind is None:
        return path, dataset.files[name]["sha256"]  # type: ignore[index]
    if kind not in KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if name.split("/", 1)[0] not in KIND_EXPORTS or not name.endswith(".parquet"):
        raise InvalidInput(f"kind applies to the pickapic and trl parquet files, not to {name!r}")
    return _rows_of_kind(path, kind)


KIND_EXPORTS = ("pickapic", "trl")


def _rows_of_kind(path: Path, kind: str) -> tuple[Path, str]:
    """The export file narrowed to one kind, next to it under .by-kind/, with its sha256 beside it. A
    published dataset never changes, so the file is made once; it is written to a temporary name and
    renamed, so concurrent requests never see half a file."""
    folder = path.parent / ".by-kind"
    narrowed, checksum = folder / f"{kind}-{path.name}", folder / f"{kind}-{path.name}.sha256"
    if not checksum.is_file():
        if "kind" not in pq.read_schema(path).names:
            raise Conflict(f"{path.name} was exported before rows had a kind; rebuild the dataset for ?kind=")
        table = pq.read_table(path, filters=[("kind", "=", kind)])
        folder.mkdir(exist_ok=True)
        tmp = folder / f".{narrowed.name}.{uuid.uuid4().hex}"
        pq.write_table(table, tmp, row_group_size=BATCH)
        os.replace(tmp, narrowed)
        tmp = folder / f".{checksum.name}.{uuid.uuid4().hex}"
        tmp.write_text(sha256_file(narrowed))
        os.replace(tmp, checksum)
    return narrowed, checksum.read_text()


def records(
    runtime: Runtime,
    dataset: Dataset,
    *,
    offset: int,
    limit: int,
    split: str | None,
    kind: str | None = None,
) -> RecordsPage:
    """The records of a published dataset, a page at a time (images are named by sha256); `kind` keeps
    the image-level ("image") or the instance records."""
    table = pq.read_table(records_path(runtime, dataset))
    if split is not None:
        table = table.filter(pc.field("split") == split)
    if kind is not None:
        is_image = pc.field("instance_id").is_null()
        table = table.filter(is_image if kind == "image" else ~is_image)
    return RecordsPage(table.num_rows, offset, limit, table.slice(offset, limit).to_pylist())


def record_tasks(session: Session, records: list[dict[str, Any]]) -> dict[str, int]:
    """Record id -> the id of the task it came from (by source and instance; a whole-image record
    has no instance), for records whose task still exists: the pages show its crops. Records name
    sources and instances by their database ids, as text."""

    def as_id(value: Any) -> int | None:
        return int(value) if isinstance(value, str) and value.isdigit() else None

    keys = {r["record_id"]: (as_id(r["source_id"]), as_id(r["instance_id"])) for r in records}
    sources = {source for source, _ in keys.values() if source is not None}
    if not sources:
        return {}
    rows = session.execute(
        select(Task.id, Task.source_id, Task.instance_id).where(Task.source_id.in_(sources))
    )
    by_key = {(source_id, instance_id): task_id for task_id, source_id, instance_id in rows}
    return {record_id: by_key[key] for record_id, key in keys.items() if key in by_key}


def project_agreement(session: Session, project_id: int) -> dict[str, Any]:
    return quality.agreement(session, project_id)
