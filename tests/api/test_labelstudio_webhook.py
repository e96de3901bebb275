"""The Label Studio webhook route and the bridge's status, with deliveries written by hand (the real
server's are in tests/labelstudio): idempotent by annotation id, rejected answers kept with the
reason, a delete withdraws the vote, the secret is checked."""

from typing import Any

import pytest
from sqlalchemy import select

from dspo.labelstudio.bridge import WEBHOOK_PATH, WEBHOOK_SECRET_HEADER
from dspo.models import Candidate, LabelStudioLink, Task, Vote
from dspo.settings import Settings
from tests.api.conftest import Api

SECRET = {WEBHOOK_SECRET_HEADER: "hook-secret"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"labelstudio_webhook_secret": "hook-secret"})


def delivery(
    annotation_id: int, user: int, task_id: int, order: list[int], result: list, **extra: Any
) -> dict:
    return {
        "action": "ANNOTATION_CREATED",
        "project": {"id": 70},
        "annotation": {"id": annotation_id, "completed_by": user, "result": result, **extra},
        "task": {"id": 900 + task_id, "data": {"dspo_task_id": task_id, "dspo_candidates": order}},
    }


def choices(best: str, worst: str) -> list[dict]:
    return [
        {"from_name": name, "to_name": "lq", "type": "choices", "value": {"choices": [value]}}
        for name, value in (("best", best), ("worst", worst))
    ]


def test_webhook_applies_each_annotation_once_and_keeps_rejections(api: Api) -> None:
    project_id = api.make_project(overlap=1)
    with api.runtime.sessions() as session:
        task_id = session.scalars(select(Task.id).where(Task.project_id == project_id)).first()
        task = session.get(Task, task_id)
        order = list(session.scalars(select(Candidate.id).where(Candidate.source_id == task.source_id)))
        session.add(
            LabelStudioLink(
                project_id=project_id,
                url="http://ls.test",
                ls_project_id=70,
                user_emails={"5": "eve@example.com", "6": "bob"},  # bob: an annotator here already
            )
        )
        session.commit()
    url = f"{WEBHOOK_PATH}?project={project_id}"
    post = api.client.post

    assert post(url, json=delivery(1, 5, task_id, order, choices("A", "B"))).status_code == 403
    wrong = {WEBHOOK_SECRET_HEADER: "hook-secreT"}
    assert post(url, json=delivery(1, 5, task_id, order, choices("A", "B")), headers=wrong).status_code == 403
    other_project = {**delivery(1, 5, task_id, order, choices("A", "B")), "project": {"id": 71}}
    assert post(url, json=other_project, headers=SECRET).status_code == 422

    # bob answers on this server first, which completes the task (k = 1).
    leased = api.client.post(f"/api/v1/projects/{project_id}/next", headers=api.bob).json()
    assert leased["id"] == task_id
    body = {"best_candidate_id": order[2], "worst_candidate_id": order[0], "client_submission_id": "b1"}
    assert api.client.post(f"/api/v1/tasks/{task_id}/vote", json=body, headers=api.bob).status_code == 201

    for _ in range(2):  # a retried delivery changes nothing
        done = post(url, json=delivery(1, 5, task_id, order, choices("A", "B")), headers=SECRET)
        assert done.status_code == 200 and done.json()["accepted"] == 1, done.text
    rejected = [
        delivery(2, 6, task_id, order, choices("A", "B")),  # bob, answered here already
        delivery(3, 8, task_id, order, choices("A", "B")),  # a user the bridge does not know yet
        delivery(4, 5, 999_999, order, choices("A", "B")),  # a task that is not here
    ]
    for payload in rejected:
        assert post(url, json=payload, headers=SECRET).json()["rejected"] == 1
    with api.runtime.sessions() as session:
        votes = session.scalars(select(Vote).where(Vote.task_id == task_id).order_by(Vote.id)).all()
        assert [(v.outcome, v.best_candidate_id, v.worst_candidate_id) for v in votes] == [
            ("pick", order[2], order[0]),  # bob's
            ("pick", order[0], order[1]),  # eve's, taken although the task had its one answer
        ]

    deleted = {"action": "ANNOTATIONS_DELETED", "project": {"id": 70}, "annotations": [{"id": 1}]}
    assert post(url, json=deleted, headers=SECRET).json()["deleted"] == 1
    assert post(url, json=deleted, headers=SECRET).json()["deleted"] == 1  # again: still deleted
    late = delivery(1, 5, task_id, order, choices("B", "A"))  # a late update cannot bring it back
    assert post(url, json=late, headers=SECRET).json()["deleted"] == 1
    with api.runtime.sessions() as session:
        assert session.get(Vote, votes[1].id).outcome == "skip"

    status = api.client.get(f"/api/v1/labelstudio/projects/{project_id}", headers=api.admin)
    assert status.status_code == 200, status.text
    found = status.json()
    assert (found["accepted"], found["rejected"], found["deleted"], found["ls_project_id"]) == (0, 3, 1, 70)
    reasons = " | ".join(a["reason"] for a in found["rejected_answers"])
    assert "already on this server" in reasons and "not known here yet" in reasons and "not a task" in reasons
    assert api.client.get(f"/api/v1/labelstudio/projects/{project_id}", headers=api.bob).status_code == 403

    token = api.admin["Authorization"].removeprefix("Bearer ")
    api.client.cookies.set("dspo_session", token)  # the admin page, as the admin's browser sees it
    page = api.client.get(f"/admin/projects/{project_id}")
    assert page.status_code == 200 and 'id="labelstudio"' in page.text and "not known here yet" in page.text


def test_webhook_is_off_without_a_secret(api: Api, settings: Settings) -> None:
    api.runtime.settings = settings.model_copy(update={"labelstudio_webhook_secret": ""})
    answer = api.client.post(f"{WEBHOOK_PATH}?project=1", json={"action": "X"}, headers=SECRET)
    assert answer.status_code == 404 and "DSPO_LABELSTUDIO_WEBHOOK_SECRET" in answer.text
