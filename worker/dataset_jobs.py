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
    """Run `dspo train` on a published dataset (on a GPU worker), register the LoRA it writes and, if
    the project evaluates what retraining trains, start a round of it against the project's generator."""
    result = train(ctx.runtime, ctx.payload["dataset_id"], ctx.job_id, ctx.progress)
    return result | {"evaluation_id": evaluate_trained(ctx.runtime, result["model_version_id"])}
