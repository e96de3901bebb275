# ruff: noqa: F811
"""The API additions the page relies on, on SQLite and PostgreSQL: the preloaded next task, undo
(replacing an answer, with its history and slot accounting), required texts, progress."""

from datetime import timedelta

from sqlalchemy import select, update

from dspo.db import session_scope, utcnow
from dspo.models import Task, Vote, VoteRevision

# The `api` fixture of tests/api, imported to be used here: its parameters shadow the import (F811).
from tests.api.conftest import Api, api  # noqa: F401


def lease(api: Api, headers: dict[str, str], project_id: int, position: int = 0) -> dict | None:
    response = api.client.post(f"/api/v1/projects/{project_id}/next?position={position}", headers=headers)
    assert response.status_code in (200, 204), response.text
    return response.json() if response.status_code == 200 else None


def answer(api: Api, headers: dict[str, str], task: dict, sid: str, outcome: str = "pick", **extra: object):  # type: ignore[no-untyped-def]
    ids = [c["id"] for c in task["candidates"]]
    body: dict = {"outcome": outcome, "client_submission_id": sid, **extra}
    if outcome == "pick":
        body |= {"best_candidate_id": ids[0], "worst_candidate_id": ids[1]}
    return api.client.post(f"/api/v1/tasks/{task['id']}/vote", json=body, headers=headers)


def task_row(api: Api, task_id: int) -> Task:
    with api.runtime.sessions() as session:
        task = session.get(Task, task_id)
        assert task is not None
        return task


def test_positions_lease_the_tasks_after_the_current_one(api: Api) -> None:
    project_id = api.make_project(n_images=1, overlap=1)
    current = lease(api, api.alice, project_id)
    after = lease(api, api.alice, project_id, position=1)
    assert current and after and after["id"] != current["id"]
    assert lease(api, api.alice, project_id)["id"] == current["id"]
    assert lease(api, api.alice, project_id, position=1)["id"] == after["id"], "no third lease"
    third = lease(api, api.alice, project_id, position=2)
    assert third["id"] not in (current["id"], after["id"])
    assert (
        api.client.post(f"/api/v1/projects/{project_id}/next?position=3", headers=api.alice).status_code
        == 422
    )
    assert answer(api, api.alice, current, "a1").status_code == 201
    assert lease(api, api.alice, project_id)["id"] == after["id"]
    assert lease(api, api.bob, project_id)["id"] not in (current["id"], after["id"], third["id"])


def test_replacing_an_answer_keeps_its_history_and_the_slot_counts(api: Api) -> None:
    project_id = api.make_project(n_images=1, overlap=1)
    task = lease(api, api.alice, project_id)
    first = answer(api, api.alice, task, "s1", content_text="a cat")
    assert first.status_code == 201 and task_row(api, task["id"]).state == "complete"

    tie = answer(api, api.alice, task, "s2", "tie", replaces_submission_id="s1")
    assert tie.status_code == 201 and tie.json()["id"] == first.json()["id"]
    assert tie.json()["outcome"] == "tie" and tie.json()["best_candidate_id"] is None
    row = task_row(api, task["id"])
    assert (row.vote_count, row.slots_taken, row.state) == (1, 1, "complete")

    skip = answer(api, api.alice, task, "s3", "skip", replaces_submission_id="s2")
    assert skip.status_code == 201
    assert answer(api, api.alice, task, "s3", "skip", replaces_submission_id="s2").status_code == 200
    row = task_row(api, task["id"])
    assert (row.vote_count, row.slots_taken, row.state) == (0, 0, "open")
    with api.runtime.sessions() as session:
        history = session.scalars(select(VoteRevision).order_by(VoteRevision.id)).all()
        assert [(h.outcome, h.client_submission_id, h.content_text) for h in history] == [
            ("pick", "s1", "a cat"),
            ("tie", "s2", ""),
        ]
        assert session.scalars(select(Vote.outcome)).all() == ["skip"]

    bobs = lease(api, api.bob, project_id)
    assert bobs["id"] == task["id"], "the freed slot goes to bob"
    assert answer(api, api.bob, bobs, "b1").status_code == 201
    late = answer(api, api.alice, task, "s4", replaces_submission_id="s3")
    assert late.status_code == 409 and "filled by others" in late.json()["detail"]


def test_an_answer_can_be_replaced_only_within_the_grace_period(api: Api) -> None:
    project_id = api.make_project(n_images=1, overlap=1)
    task = lease(api, api.alice, project_id)
    assert answer(api, api.alice, task, "s1").status_code == 201
    with session_scope(api.runtime.sessions) as session:
        session.execute(update(Vote).values(created_at=utcnow() - timedelta(minutes=11)))
    late = answer(api, api.alice, task, "s2", "tie", replaces_submission_id="s1")
    assert late.status_code == 409 and "too late" in late.json()["detail"]
    other = lease(api, api.alice, project_id)
    wrong = answer(api, api.alice, other, "s3", "tie", replaces_submission_id="s1")
    assert wrong.status_code == 409 and "not your current answer" in wrong.json()["detail"]
    # A replacement of an answer that never arrived is recorded as a plain answer.
    assert answer(api, api.alice, other, "s4", "tie", replaces_submission_id="lost").status_code == 201
    # A stale undo (of an answer that was replaced since) does not become a second answer.
    assert answer(api, api.alice, other, "s5", "pick", replaces_submission_id="s4").status_code == 201
    stale = answer(api, api.alice, other, "s6", "all_bad", replaces_submission_id="s4")
    assert stale.status_code == 409 and "already answered" in stale.json()["detail"]


def test_required_texts(api: Api) -> None:
    project_id = api.make_project(n_images=1, overlap=1, require_content=True, require_defect=True)
    task = lease(api, api.alice, project_id)
    for texts, outcome, status in [
        ({}, "pick", 422),
        ({"content_text": "a wall"}, "pick", 422),
        ({"content_text": " "}, "tie", 422),
        ({"content_text": "a wall", "defect_text": "letters"}, "pick", 201),
        ({}, "skip", 201),
        ({"content_text": "a wall"}, "all_bad", 201),
    ]:
        response = answer(api, api.alice, task, f"{outcome}{len(texts)}", outcome, **texts)
        assert response.status_code == status, (texts, outcome, response.text)
        if status == 201:
            task = lease(api, api.alice, project_id)


def test_progress_of_an_annotator(api: Api) -> None:
    project_id = api.make_project(n_images=1, overlap=2)
    tasks_total = api.client.get(f"/api/v1/projects/{project_id}/stats", headers=api.admin).json()[
        "tasks_total"
    ]
    for sid, lead in (("s1", 1000), ("s2", 3000)):
        task = lease(api, api.alice, project_id)
        assert answer(api, api.alice, task, sid, lead_time_ms=lead).status_code == 201
    progress = api.client.get(f"/api/v1/projects/{project_id}/progress", headers=api.alice).json()
    assert progress == {
        "done_today": 2,
        "done_total": 2,
        "left_for_you": tasks_total - 2,
        "votes_left": 2 * tasks_total - 2,
        "ms_per_task": 2000.0,
    }
    tomorrow = (utcnow() + timedelta(days=1)).isoformat()
    later = api.client.get(
        f"/api/v1/projects/{project_id}/progress", params={"since": tomorrow}, headers=api.alice
    )
    assert later.json()["done_today"] == 0 and later.json()["ms_per_task"] is None
