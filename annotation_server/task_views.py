"""What the task page's viewer needs of a task, for the annotator's task and the reviewer's view of one:
image URLs, the candidates under their letters, the region."""

from typing import Any

from annotation_server.schemas import CandidateView

LABELS = "ABCDEFGHIJKLMNOP"
# An evaluation task's two outputs are named by where they are shown (letters would suggest sides A/B).
PAIR_LABELS = ("Left", "Right")


def viewer_fields(task: Any, candidate_ids: list[int]) -> dict[str, Any]:
    """The fields of TaskOut and ReviewTaskOut that the viewer shows, candidates in the given order."""
    base = f"/api/v1/images/tasks/{task.id}"
    labels = PAIR_LABELS if task.kind == "evaluation" else LABELS
    return {
        "id": task.id,
        "project_id": task.project_id,
        "source_id": task.source_id,
        "instance_id": task.instance_id,
        "kind": task.kind,
        "box": task.box,
        "image_size": task.image_size,
        "lq_url": f"{base}/lq",
        "mask_url": None if task.instance_id is None else f"/api/v1/images/instances/{task.instance_id}/mask",
        "candidates": [
            CandidateView(id=cid, label=labels[i], image_url=f"{base}/candidates/{cid}")
            for i, cid in enumerate(candidate_ids)
        ],
        "instructions": task.instructions,
    }
