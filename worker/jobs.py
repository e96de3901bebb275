"""The jobs that turn an uploaded image into tasks: ingest → candidates → instances → tasks.

Each job works on one source, is idempotent (it replaces what an earlier, interrupted run of the
same step left), and queues the next step when it succeeds. Handlers are registered in pyproject.toml
under the entry-point group ``dspo.jobs``."""

import io
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import delete, select

from dspo import assign
from dspo.db import session_scope
from dspo.images import degrade, encode_png, mask_to_png, upsample
from dspo.jobs import JobContext
from dspo.models import Candidate, Instance, Project, Source, Task
from dspo.services.gold import SANITY_JOB, sanity_count
from worker.generators import get_generator
from worker.instances import build_instances, contested
from worker.segmenters import get_segmenter
from worker.segmenters.base import wants_candidates


def _load(ctx: JobContext) -> tuple[Source, Project]:
    with ctx.runtime.sessions() as session:
        source = session.get(Source, ctx.payload["source_id"])
        if source is None:
            raise LookupError(f"source {ctx.payload['source_id']} does not exist (deleted?)")
        project = session.get(Project, source.project_id)
        assert project is not None
        return source, project


def _image(ctx: JobContext, sha256: str | None) -> Image.Image:
    if sha256 is None:
        raise RuntimeError("the image this step needs is missing: run the previous step first")
    return Image.open(io.BytesIO(ctx.runtime.blobs.get(sha256))).convert("RGB")


def _seed(source: Source) -> int:
    # Seeds come from the uploaded bytes, so the same upload gives the same LQ and candidates anywhere.
    return int(source.upload_sha256[:12], 16)


def ingest(ctx: JobContext) -> dict[str, Any]:
    """Synthesise the LQ image of an HQ upload (seeded, parameters recorded); LQ uploads pass through."""
    source, project = _load(ctx)
    result: dict[str, Any] = {"kind": source.kind}
    if source.kind == "hq":
        lq, params = degrade(
            _image(ctx, source.hq_sha256),
            scale=project.scale,
            seed=_seed(source),
            band_rows=ctx.runtime.settings.worker_band_rows,
        )
        lq_sha = ctx.runtime.blobs.put(encode_png(lq))
        with session_scope(ctx.runtime.sessions) as session:
            row = session.get(Source, source.id)
            assert row is not None
            row.lq_sha256, row.width, row.height, row.degradation = lq_sha, lq.width, lq.height, params
        result |= {"lq_size": [lq.width, lq.height]}
    if source.held_out:
        # Evaluation only: its LQ image is all an evaluation needs; candidates and tasks would only
        # let its content leak into annotation and training.
        _mark_ready(ctx, source.id)
        return result | {"held_out": True}
    ctx.then("candidates", {"source_id": source.id}, project.id)
    return result


def _mark_ready(ctx: JobContext, source_id: int) -> None:
    with session_scope(ctx.runtime.sessions) as session:
        row = session.get(Source, source_id)
        assert row is not None
        row.state = "ready"


def candidates(ctx: JobContext) -> dict[str, Any]:
    """Make the project's N super-resolved candidates of the LQ image."""
    source, project = _load(ctx)
    generator = get_generator(project.generator, **project.generator_settings)
    ctx.progress(0.05, f"generating {project.n_candidates} candidates with {generator.name}")
    made = generator.generate(
        _image(ctx, source.lq_sha256), scale=project.scale, n=project.n_candidates, seed=_seed(source)
    )
    rows = [
        Candidate(
            source_id=source.id,
            position=i,
            sha256=ctx.runtime.blobs.put(encode_png(c.image)),
            width=c.image.width,
            height=c.image.height,
            generator=c.generator,
            model=c.model,
            weights_digest=c.weights_digest,
            settings=c.settings,
            seed=c.seed,
        )
        for i, c in enumerate(made)
    ]
    with session_scope(ctx.runtime.sessions) as session:
        session.execute(delete(Candidate).where(Candidate.source_id == source.id))
        session.add_all(rows)
    ctx.then("instances", {"source_id": source.id}, project.id)
    return {"candidates": len(rows), "generator": generator.name}


def instances(ctx: JobContext) -> dict[str, Any]:
    """Segment the bicubic upsample of the LQ image once: every candidate shares these masks."""
    source, project = _load(ctx)
    reference = upsample(_image(ctx, source.lq_sha256), project.scale, method="bicubic")
    segmenter = get_segmenter(project.segmenter, **project.segmenter_settings)
    with ctx.runtime.sessions() as session:
        shas = session.scalars(
            select(Candidate.sha256).where(Candidate.source_id == source.id).order_by(Candidate.position)
        ).all()
    images = [_image(ctx, sha) for sha in shas]
    ctx.progress(0.1, f"segmenting with {segmenter.name}")
    masks = (
        segmenter.segment(reference, images) if wants_candidates(segmenter) else segmenter.segment(reference)
    )
    del reference  # a whole SR-size image less while the scores are computed
    found = build_instances(masks, min_area_fraction=project.min_area_fraction)
    del masks
    # One array per candidate, each made as its image is let go (not both at once).
    pixels = []
    while images:
        pixels.append(np.asarray(images.pop(0)))
    band_rows = ctx.runtime.settings.worker_band_rows
    scores = [contested(pixels, inst.mask, band_rows=band_rows) for inst in found]
    kept = [
        (inst, score)
        for inst, score in zip(found, scores, strict=True)
        if project.contested_threshold is None or score > project.contested_threshold
    ]
    total_area = sum(inst.area for inst, _ in kept)
    rows = [
        Instance(
            source_id=source.id,
            position=i,
            mask_sha256=ctx.runtime.blobs.put(mask_to_png(inst.mask)),
            x0=inst.box[0],
            y0=inst.box[1],
            x1=inst.box[2],
            y1=inst.box[3],
            area=inst.area,
            # w_m is renormalised over the instances that survive the contested filter (SPEC §1.3).
            weight=inst.area / total_area,
            is_rest=inst.is_rest,
            contest_score=score,
        )
        for i, (inst, score) in enumerate(kept)
    ]
    with session_scope(ctx.runtime.sessions) as session:
        session.execute(delete(Instance).where(Instance.source_id == source.id))
        session.add_all(rows)
    ctx.then("tasks", {"source_id": source.id}, project.id)
    return {"segments": len(found), "instances": len(rows), "dropped_uncontested": len(found) - len(kept)}


def tasks(ctx: JobContext) -> dict[str, Any]:
    """One task per instance, plus one image-level task when the project wants them; none for a
    held-out source (a job queued before the source was held out finds nothing to do)."""
    source, project = _load(ctx)
    if source.held_out:
        _mark_ready(ctx, source.id)
        return {"tasks_created": 0, "held_out": True}
    with session_scope(ctx.runtime.sessions) as session:
        assign.lock_new_task_ids(session, project.id)  # ids visible in order: see dspo.assign
        existing = set(session.scalars(select(Task.instance_id).where(Task.source_id == source.id)))
        instance_ids = session.scalars(
            select(Instance.id).where(Instance.source_id == source.id).order_by(Instance.position)
        ).all()
        wanted: list[int | None] = [*instance_ids, *([None] if project.image_level_tasks else [])]
        new = [
            Task(
                project_id=project.id,
                source_id=source.id,
                instance_id=instance_id,
                kind="image" if instance_id is None else "instance",
                required_votes=project.overlap,
            )
            for instance_id in wanted
            if instance_id not in existing
        ]
        session.add_all(new)
        row = session.get(Source, source.id)
        assert row is not None
        row.state = "ready"
        wants_sanity = project.sanity_tasks > sanity_count(session, project.id)
    if wants_sanity:
        # The project asks for sanity gold tasks and has fewer: make them from the tasks there are now.
        ctx.then(SANITY_JOB, {"project_id": project.id, "count": project.sanity_tasks}, project.id)
    return {"tasks_created": len(new)}
