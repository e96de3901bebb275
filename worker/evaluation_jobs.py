"""The job of an evaluation round: one output per held-out source with each side's generator, with the
same seed and settings for both, then the round's tasks (dspo.services.evaluations.publish_outputs).

Registered in pyproject.toml under the entry-point group ``dspo.jobs``."""

from typing import Any

from dspo.db import session_scope
from dspo.images import encode_png
from dspo.jobs import JobContext
from dspo.models import Project
from dspo.services import evaluations
from dspo.services.evaluations import Output
from worker.generators import get_generator
from worker.jobs import _image, _seed


def evaluation_outputs(ctx: JobContext) -> dict[str, Any]:
    evaluation_id = ctx.payload["evaluation_id"]
    try:
        return _generate(ctx, evaluation_id)
    except Exception as exc:
        with session_scope(ctx.runtime.sessions) as session:
            evaluations.mark_failed(session, evaluation_id, f"{type(exc).__name__}: {exc}")
        raise


def _generate(ctx: JobContext, evaluation_id: int) -> dict[str, Any]:
    with ctx.runtime.sessions() as session:
        evaluation = evaluations.get_evaluation(session, evaluation_id)
        if evaluation.state != "generating":
            return {"skipped": f"evaluation {evaluation_id} is {evaluation.state}"}
        project = session.get(Project, evaluation.project_id)
        assert project is not None
        sources = [(s.id, s.lq_sha256, _seed(s)) for s in evaluations.held_out_sources(session, project.id)]
        sides = {"a": evaluation.a, "b": evaluation.b}
        scale, seed = project.scale, evaluation.seed
    generators = {side: get_generator(spec["generator"], **spec["settings"]) for side, spec in sides.items()}
    outputs = []
    for done, (source_id, lq_sha, source_seed) in enumerate(sources):
        ctx.progress(done / len(sources), f"source {source_id}: {done} of {len(sources)} done")
        lq = _image(ctx, lq_sha)
        for side, generator in generators.items():
            # n=1 and the same seed: both sides make their candidate 0 from the same noise.
            made = generator.generate(lq, scale=scale, n=1, seed=source_seed + seed)[0]
            outputs.append(
                Output(
                    source_id=source_id,
                    side=side,  # type: ignore[arg-type]
                    sha256=ctx.runtime.blobs.put(encode_png(made.image)),
                    width=made.image.width,
                    height=made.image.height,
                    generator=made.generator,
                    model=made.model,
                    weights_digest=made.weights_digest,
                    settings=made.settings,
                    seed=made.seed,
                )
            )
    with session_scope(ctx.runtime.sessions) as session:
        tasks = evaluations.publish_outputs(session, evaluation_id, outputs)
    return {"sources": len(sources), "tasks_created": tasks}
