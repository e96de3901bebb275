"""Dataset versions over REST: list, build (a job), download (streamed, Range, sha256), records, and
the agreement statistics of a project."""

from datetime import datetime
from typing import Annotated, Any

import pyarrow.parquet as pq
from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from annotation_server.deps import AdminUser, RuntimeDep, SessionDep, get_or_404
from annotation_server.routes.projects import get_project
from dspo.aggregate import agreement
from dspo.datasets import BuildSettings, DatasetBuildError, published_file, records_path, request_dataset
from dspo.exports import EXPORTS
from dspo.models import Dataset

router = APIRouter(tags=["datasets"])


class BuildRequest(BaseModel):
    min_votes: int | None = Field(default=None, ge=1, description="answers a task needs; default its k")
    min_agreement: float = Field(default=0.5, ge=0, le=1, description="share that chose winner and loser")
    image_level: bool = Field(default=True, description="also make records from image-level tasks")
    val_fraction: float = Field(default=0.1, ge=0, lt=1, description="share of source images in val")
    seed: int = 0
    exports: list[str] = Field(default_factory=lambda: list(EXPORTS), description=", ".join(EXPORTS))
    shard_size: int = Field(default=1000, ge=1, le=100_000, description="records per WebDataset shard")
    up_to_vote_id: int | None = Field(default=None, ge=1, description="snapshot; default the newest vote")


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    project_id: int
    version: int
    state: str
    max_vote_id: int
    settings: dict[str, Any]
    counts: dict[str, Any] | None
    files: dict[str, Any] | None = Field(description="downloadable files: name -> size, sha256")
    digest: str | None
    error: str | None
    job_id: int | None
    created_at: datetime
    published_at: datetime | None


class BuildOut(BaseModel):
    dataset: DatasetOut
    job_id: int
    created: bool = Field(description="false when the same dataset was asked for before")


class RecordsPage(BaseModel):
    total: int
    offset: int
    limit: int
    records: list[dict[str, Any]]


def _published(session: SessionDep, dataset_id: int) -> Dataset:
    dataset = get_or_404(session, Dataset, dataset_id, "dataset")
    if dataset.state != "published":
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"dataset {dataset_id} is {dataset.state}, not published"
        )
    # End the transaction before reading files: on SQLite every transaction holds the write lock
    # (BEGIN IMMEDIATE, see dspo.db), and a download must not block the writers while it streams.
    session.rollback()
    return dataset


@router.get("/projects/{project_id}/datasets", response_model=list[DatasetOut])
def list_datasets(project_id: int, _: AdminUser, session: SessionDep) -> list[Dataset]:
    stmt = select(Dataset).where(Dataset.project_id == project_id).order_by(Dataset.version)
    return list(session.scalars(stmt))


@router.post("/projects/{project_id}/datasets", response_model=BuildOut, status_code=status.HTTP_202_ACCEPTED)
def build_dataset(
    project_id: int,
    body: BuildRequest,
    _: AdminUser,
    session: SessionDep,
    runtime: RuntimeDep,
    response: Response,
) -> BuildOut:
    """Build a dataset version from the votes so far (a job: follow it at /jobs/{job_id}). Asking again
    for the same votes and settings returns the same dataset (200), and builds again one that failed."""
    session.rollback()  # request_dataset works in its own transactions; this one must not hold a lock
    fields = body.model_dump(exclude={"up_to_vote_id"})
    try:
        settings = BuildSettings(**{**fields, "exports": tuple(body.exports)})
        dataset_id, job_id, created = request_dataset(
            runtime, project_id, settings, up_to_vote_id=body.up_to_vote_id
        )
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except (ValueError, DatasetBuildError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    if not created:
        response.status_code = status.HTTP_200_OK
    with runtime.sessions() as session:
        dataset = DatasetOut.model_validate(session.get(Dataset, dataset_id))
    return BuildOut(dataset=dataset, job_id=job_id, created=created)


@router.get("/datasets/{dataset_id}", response_model=DatasetOut)
def read_dataset(dataset_id: int, _: AdminUser, session: SessionDep) -> Dataset:
    return get_or_404(session, Dataset, dataset_id, "dataset")


@router.get("/datasets/{dataset_id}/files/{name:path}", response_class=FileResponse)
def download(
    dataset_id: int, name: str, _: AdminUser, session: SessionDep, runtime: RuntimeDep
) -> FileResponse:
    """One file of a published dataset (`dataset.tar` is the native format; the exports are under
    `pickapic/`, `trl/`, `webdataset/`). Streamed, with Range requests; the sha256 is in the headers."""
    dataset = _published(session, dataset_id)
    try:
        path = published_file(runtime, dataset, name)
    except KeyError:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"dataset {dataset_id} has no file {name!r}; see its `files`"
        ) from None
    sha = dataset.files[name]["sha256"]  # type: ignore[index]
    return FileResponse(
        path,
        filename=f"dataset-{dataset_id}-{name.replace('/', '-')}",
        headers={
            "ETag": f'"{sha}"',
            "X-Checksum-Sha256": sha,
            "Cache-Control": "private, max-age=31536000, immutable",  # published datasets never change
        },
    )


@router.get("/datasets/{dataset_id}/records", response_model=RecordsPage)
def records(
    dataset_id: int,
    _: AdminUser,
    session: SessionDep,
    runtime: RuntimeDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    split: Annotated[str | None, Query(pattern="^(train|val)$")] = None,
) -> RecordsPage:
    """The records of a published dataset, a page at a time (images are named by sha256)."""
    dataset = _published(session, dataset_id)
    filters = [("split", "=", split)] if split is not None else None
    table = pq.read_table(records_path(runtime, dataset), filters=filters)
    return RecordsPage(
        total=table.num_rows, offset=offset, limit=limit, records=table.slice(offset, limit).to_pylist()
    )


@router.get("/projects/{project_id}/agreement")
def project_agreement(project_id: int, _: AdminUser, session: SessionDep) -> dict[str, Any]:
    """Krippendorff's alpha over the best and over the worst choices, and each annotator's agreement
    with the plurality consensus."""
    get_project(session, project_id)
    return agreement(session, project_id)
