"""Dataset versions over REST: list, build (a job), download (streamed, Range, sha256), records, and
the agreement statistics of a project."""

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response, status
from fastapi.responses import FileResponse

from annotation_server.deps import AdminUser, ReadSession, RuntimeDep
from annotation_server.schemas import (
    BuildOut,
    BuildRequest,
    DatasetOut,
    IdPath,
    Limit,
    Offset,
    RecordsPage,
    Text,
    errors,
)
from dspo.models import Dataset
from dspo.services import datasets
from dspo.services.datasets import RecordsPage as Records

router = APIRouter(tags=["datasets"], responses=errors(401, 403, 422))


@router.get("/projects/{project_id}/datasets", response_model=list[DatasetOut], responses=errors(404))
def list_datasets(project_id: IdPath, _: AdminUser, session: ReadSession) -> list[Dataset]:
    return datasets.list_datasets(session, project_id)


@router.post(
    "/projects/{project_id}/datasets",
    response_model=BuildOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={200: {"model": BuildOut, "description": "asked for before: the same dataset"}}
    | errors(404, 400, 413),
)
def build_dataset(
    project_id: IdPath, body: BuildRequest, _: AdminUser, runtime: RuntimeDep, response: Response
) -> BuildOut:
    """Build a dataset version from the votes so far (a job: follow it at /jobs/{job_id}). Asking again
    for the same votes and settings returns the same dataset (200), and builds again one that failed."""
    dataset, job_id, created = datasets.build(
        runtime, project_id, body.model_dump(exclude={"up_to_vote_id"}), body.up_to_vote_id
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return BuildOut(dataset=DatasetOut.model_validate(dataset), job_id=job_id, created=created)


@router.get("/datasets/{dataset_id}", response_model=DatasetOut, responses=errors(404))
def read_dataset(dataset_id: IdPath, _: AdminUser, session: ReadSession) -> Dataset:
    return datasets.get_dataset(session, dataset_id)


Kind = Annotated[
    str | None,
    Query(pattern="^(image|instance)$", description="only the image-level or only the instance records"),
]


@router.get(
    "/datasets/{dataset_id}/files/{name:path}",
    response_class=FileResponse,
    responses=errors(404, 409),
)
def download(
    dataset_id: IdPath,
    name: Annotated[Text, Path()],
    _: AdminUser,
    session: ReadSession,
    runtime: RuntimeDep,
    kind: Kind = None,
) -> FileResponse:
    """One file of a published dataset (`dataset.tar` is the native format; the exports are under
    `pickapic/`, `trl/`, `webdataset/`). Streamed, with Range requests; the sha256 is in the headers.
    `?kind=image|instance` narrows a Pick-a-Pic or TRL parquet file to the rows of that kind."""
    dataset = datasets.published(session, dataset_id)
    path, sha = datasets.published_path(runtime, dataset, name, kind)
    return FileResponse(
        path,
        filename=f"dataset-{dataset_id}-{f'{kind}-' if kind else ''}{name.replace('/', '-')}",
        headers={
            "ETag": f'"{sha}"',
            "X-Checksum-Sha256": sha,
            "Cache-Control": "private, max-age=31536000, immutable",  # published datasets never change
        },
    )


@router.get("/datasets/{dataset_id}/records", response_model=RecordsPage, responses=errors(404, 409))
def records(
    dataset_id: IdPath,
    _: AdminUser,
    session: ReadSession,
    runtime: RuntimeDep,
    offset: Offset = 0,
    limit: Limit = 100,
    split: Annotated[str | None, Query(pattern="^(train|val)$")] = None,
    kind: Kind = None,
) -> Records:
    """The records of a published dataset, a page at a time (images are named by sha256)."""
    dataset = datasets.published(session, dataset_id)
    return datasets.records(runtime, dataset, offset=offset, limit=limit, split=split, kind=kind)


@router.get("/projects/{project_id}/agreement", responses=errors(404))
def project_agreement(project_id: IdPath, _: AdminUser, session: ReadSession) -> dict[str, Any]:
    """Krippendorff's alpha over the best and over the worst choices, and each annotator's agreement
    with the plurality consensus."""
    return datasets.project_agreement(session, project_id)
