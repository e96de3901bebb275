"""The job that makes a project's sanity gold tasks (dspo.services.gold): for each planned instance,
one candidate degraded inside the instance's mask, then the hidden copy and its gold task.

Registered in pyproject.toml under the entry-point group ``dspo.jobs``."""

import io
from typing import Any

from PIL import Image

from dspo.db import session_scope
from dspo.images import encode_png, png_to_mask
from dspo.jobs import JobContext
from dspo.sanity import degrade_inside
from dspo.services import gold


def sanity_tasks(ctx: JobContext) -> dict[str, Any]:
    """Bring the project to payload["count"] sanity tasks; each is committed on its own, so a rerun
    after a failure goes on from where this one stopped (the plan skips instances copied already)."""
    project_id, count = int(ctx.payload["project_id"]), int(ctx.payload["count"])
    with ctx.runtime.sessions() as session:
        plans = gold.plan_sanity(session, project_id, count)
    made = []
    for i, plan in enumerate(plans):
        ctx.progress(i / max(len(plans), 1), f"sanity task {i + 1} of {len(plans)}")
        image = Image.open(io.BytesIO(ctx.runtime.blobs.get(plan.candidate_shas[plan.degraded_position])))
        mask = png_to_mask(ctx.runtime.blobs.get(plan.mask_sha256))
        degraded, params = degrade_inside(image, mask, plan.seed)
        sha = ctx.runtime.blobs.put(encode_png(degraded))
        with session_scope(ctx.runtime.sessions) as session:
            task = gold.publish_sanity(session, plan, sha, params, count)
            if task is None:
                break
            made.append(task.id)
    return {"sanity_tasks_created": len(made), "task_ids": made}
