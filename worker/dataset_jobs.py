"""Jobs that turn votes into datasets (and, from scheduled retraining, into model versions).

Registered in pyproject.toml under the entry-point group ``dspo.jobs``."""

from typing import Any

from dspo.datasets import build
from dspo.jobs import JobContext
from dspo.services.evaluations import evaluate_trained
from dspo.training import train


def dataset_build(ctx: JobContext) -> dict[str, Any]:
    """Aggregate the votes a dataset names, write and verify it in staging, publish it atomically."""
    return build(ctx.runtime, ctx.payload["dataset_id"], ctx.job_id, ctx.progress)


def train_model(ctx: JobContext) -> dict[str, Any]:
    """Run `dspo train` on a published dataset (on a GPU worker) and register the LoRA it writes. A
    training that scheduled retraining queued then, if the project evaluates what retraining trains,
    starts a round of it against the project's generator; one asked for over REST
    (dspo.services.model_versions.start_training) carries its own settings and name, and no round."""
    payload = ctx.payload
    result = train(
        ctx.runtime,
        payload["dataset_id"],
        ctx.job_id,
        ctx.progress,
        payload.get("settings"),
        payload.get("name"),
    )
    if "settings" in payload:
        return result
    evaluation_id, evaluation = evaluate_trained(ctx.runtime, result["model_version_id"])
    return result | {"evaluation_id": evaluation_id, "evaluation": evaluation}
