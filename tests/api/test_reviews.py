"""Review of disputed tasks over REST, on SQLite and PostgreSQL: flags, the queue (what is in it, why,
and in which order), who may see and decide what, and a decision overriding aggregation in the
dataset built after it."""

import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from annotation_server.deps import SESSION_COOKIE
from dspo.cli import ensure_user
from dspo.datasets import dataset_dir
from dspo.models import Dataset, Task
from tests.api.conftest import Api
from tests.datasets.helpers import TaskInfo, tasks
from tests.helpers import add_members, login

API = "/api/v1"


@dataclass
class Disputes:
    project_id: int
    tasks: list[TaskInfo]  # by id; candidates by position
    rita: dict[str, str]  # a reviewer of the project
    rex: dict[str, str]  # a reviewer of another project only


def answer(
    api: Api, headers: dict[str, str], task: TaskInfo, outcome: str = "pick", best: int = 0, worst: int = 1
) -> None:
    pick = outcome == "pick"
    body = {
        "outcome": outcome,
        "best_candidate_id": task.candidates[best] if pick else None,
        "worst_candidate_id": task.candidates[worst] if pick else None,
        "client_submission_id": uuid.uuid4().hex,
    }
    response = api.client.post(f"{API}/tasks/{task.id}/vote", json=body, headers=headers)
    assert response.status_code == 201, response.text


@pytest.fixture
def disputes(api: Api) -> Disputes:
    """Alice and Bob (k = 2) disagree on task 0 (no plurality), agree on task 1, and Bob finds no
    difference on task 2 (a tie); only Alice answers task 3. Rita reviews this project, Rex another."""
    ensure_user(api.runtime, "rita", "reviewer", "rita-password")
    ensure_user(api.runtime, "rex", "reviewer", "rex-password")
    project_id = api.make_project(n_images=1, overlap=2, members=("alice", "bob", "rita"))
    other = api.make_project(n_images=1, overlap=2, members=("rex",), name="elsewhere")
    assert other != project_id
    found = tasks(api.runtime, project_id)
    assert len(found) >= 4
    t0, t1, t2, t3 = found[:4]
    answer(api, api.alice, t0, best=0, worst=1)
    answer(api, api.bob, t0, best=1, worst=0)
    answer(api, api.alice, t1, best=0, worst=2)
    answer(api, api.bob, t1, best=0, worst=2)
    answer(api, api.alice, t2)
    answer(api, api.bob, t2, outcome="tie")
    answer(api, api.alice, t3)
    rita = login(api.client, "rita", "rita-password")
    rex = login(api.client, "rex", "rex-password")
    return Disputes(project_id, found, rita, rex)


def queue(api: Api, d: Disputes, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    response = api.client.get(f"{API}/projects/{d.project_id}/reviews/queue", headers=headers or d.rita)
    assert response.status_code == 200, response.text
    return response.json()


def flag(api: Api, headers: dict[str, str], task_id: int, reason: str) -> Any:
    return api.client.post(f"{API}/tasks/{task_id}/flag", json={"reason": reason}, headers=headers)


def review(api: Api, headers: dict[str, str], task_id: int, **body: Any) -> Any:
    return api.client.post(f"{API}/tasks/{task_id}/review", json=body, headers=headers)


def test_the_queue_lists_disputed_and_flagged_tasks_unreviewed_first(api: Api, disputes: Disputes) -> None:
    t0, t1, t2, t3 = disputes.tasks[:4]
    # Task 3 has too few answers to be contested: only a flag brings it to the queue.
    assert [item["task_id"] for item in queue(api, disputes)] == [t0.id, t2.id]
    assert flag(api, api.alice, t3.id, "the outline cuts the wheel").status_code == 201
    again = flag(api, api.alice, t3.id, "the outline cuts the front wheel")
    assert again.status_code == 200 and again.json()["reason"] == "the outline cuts the front wheel"
    assert flag(api, api.bob, t0.id, "A and B look the same").status_code == 201

    items = queue(api, disputes)
    assert [(item["task_id"], item["disputed"]) for item in items] == [
        (t0.id, ["no_plurality", "flagged"]),
        (t2.id, ["tie"]),
        (t3.id, ["flagged"]),
    ]
    assert [(f["username"], f["reason"]) for f in items[2]["flags"]] == [
        ("alice", "the outline cuts the front wheel")
    ]
    assert [item["answers"] for item in items] == [2, 2, 1]
    assert all(item["review"] is None for item in items)

    # A reviewed task goes after the unreviewed ones, with its newest review.
    decided = review(
        api,
        disputes.rita,
        t0.id,
        decision="pair",
        best_candidate_id=t0.candidates[2],
        worst_candidate_id=t0.candidates[0],
    )
    assert decided.status_code == 201, decided.text
    items = queue(api, disputes)
    assert [item["task_id"] for item in items] == [t2.id, t3.id, t0.id]
    assert items[2]["review"]["reviewer"] == "rita" and items[2]["review"]["decision"] == "pair"
    # An admin sees the same queue; a stricter min_agreement adds nothing here (the agreed task is unanimous).
    assert queue(api, disputes, api.admin) == items
    strict = api.client.get(
        f"{API}/projects/{disputes.project_id}/reviews/queue?min_agreement=1", headers=api.admin
    )
    assert [item["task_id"] for item in strict.json()] == [t2.id, t3.id, t0.id]
    assert t1.id not in [item["task_id"] for item in items]


def test_the_review_shows_every_answer_with_who_gave_it(api: Api, disputes: Disputes) -> None:
    t0 = disputes.tasks[0]
    flag(api, api.bob, t0.id, "A and B look the same")
    response = api.client.get(f"{API}/tasks/{t0.id}/review", headers=disputes.rita)
    assert response.status_code == 200, response.text
    task = response.json()
    assert [c["id"] for c in task["candidates"]] == t0.candidates
    assert [c["label"] for c in task["candidates"]] == ["A", "B", "C"]
    answers = [(a["username"], a["best_candidate_id"], a["worst_candidate_id"]) for a in task["answers"]]
    assert answers == [
        ("alice", t0.candidates[0], t0.candidates[1]),
        ("bob", t0.candidates[1], t0.candidates[0]),
    ]
    assert task["contested"] == "no_plurality"
    assert [(f["username"], f["reason"]) for f in task["flags"]] == [("bob", "A and B look the same")]
    assert task["reviews"] == []


def test_who_may_flag_see_and_decide(api: Api, disputes: Disputes) -> None:
    t0 = disputes.tasks[0]
    # An annotator of the project flags, but neither reviews nor sees the answers of others.
    assert flag(api, api.alice, t0.id, "unsure").status_code == 201
    assert (
        api.client.get(f"{API}/projects/{disputes.project_id}/reviews/queue", headers=api.alice).status_code
        == 403
    )
    assert api.client.get(f"{API}/tasks/{t0.id}/review", headers=api.alice).status_code == 403
    assert review(api, api.alice, t0.id, decision="no_pair").status_code == 403
    own = api.client.get(f"{API}/tasks/{t0.id}/votes", headers=api.alice).json()
    assert len(own) == 1
    # A reviewer of another project finds nothing here, as if it did not exist.
    assert (
        api.client.get(
            f"{API}/projects/{disputes.project_id}/reviews/queue", headers=disputes.rex
        ).status_code
        == 404
    )
    assert api.client.get(f"{API}/tasks/{t0.id}/review", headers=disputes.rex).status_code == 404
    assert review(api, disputes.rex, t0.id, decision="no_pair").status_code == 404
    assert flag(api, disputes.rex, t0.id, "not mine").status_code == 404
    # Once a member, the same reviewer may.
    add_members(api.client, api.admin, disputes.project_id, "rex")
    assert review(api, disputes.rex, t0.id, decision="no_pair").status_code == 201


def test_a_decision_names_two_different_candidates_of_the_task_or_none(api: Api, disputes: Disputes) -> None:
    t0 = disputes.tasks[0]
    same = review(
        api,
        disputes.rita,
        t0.id,
        decision="pair",
        best_candidate_id=t0.candidates[0],
        worst_candidate_id=t0.candidates[0],
    )
    assert same.status_code == 422
    missing = review(api, disputes.rita, t0.id, decision="pair", best_candidate_id=t0.candidates[0])
    assert missing.status_code == 422
    no_pair_with_ids = review(
        api, disputes.rita, t0.id, decision="no_pair", best_candidate_id=t0.candidates[0]
    )
    assert no_pair_with_ids.status_code == 422
    # The project has one source: every other candidate id belongs to another project or to none.
    elsewhere = review(
        api,
        disputes.rita,
        t0.id,
        decision="pair",
        best_candidate_id=max(t0.candidates) + 1000,
        worst_candidate_id=t0.candidates[0],
    )
    assert elsewhere.status_code == 422
    history = api.client.get(f"{API}/tasks/{t0.id}/review", headers=disputes.rita).json()["reviews"]
    assert history == []


def build(api: Api, project_id: int) -> dict[str, Any]:
    response = api.client.post(
        f"{API}/projects/{project_id}/datasets", json={"val_fraction": 0}, headers=api.admin
    )
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + 120
    while (job := api.client.get(f"{API}/jobs/{response.json()['job_id']}", headers=api.admin).json())[
        "state"
    ] not in (
        "succeeded",
        "failed",
    ):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    assert job["state"] == "succeeded", job
    dataset = api.client.get(f"{API}/datasets/{response.json()['dataset']['id']}", headers=api.admin).json()
    return dataset


def records(api: Api, dataset_id: int) -> dict[str, dict[str, Any]]:
    page = api.client.get(f"{API}/datasets/{dataset_id}/records?limit=1000", headers=api.admin).json()
    return {r["record_id"]: r for r in page["records"]}


def record_id(task: TaskInfo) -> str:
    return f"{task.source_id}-{task.instance_id if task.instance_id is not None else 'image'}"


def manifest(api: Api, dataset_id: int) -> dict[str, Any]:
    with api.runtime.sessions() as session:
        row = session.get(Dataset, dataset_id)
        assert row is not None
        return json.loads((dataset_dir(api.runtime, row) / "native" / "manifest.json").read_text())


def test_a_review_overrides_aggregation_in_the_built_dataset(api: Api, disputes: Disputes) -> None:
    t0, t1, t2 = disputes.tasks[:3]
    before = build(api, disputes.project_id)
    assert set(records(api, before["id"])) == {record_id(t1)}  # the votes agree on task 1 only
    assert before["counts"]["records_from_reviews"] == 0 and before["max_review_id"] == 0

    # The reviewer makes a pair of the disputed task 0 and drops the agreed task 1.
    winner, loser = t0.candidates[2], t0.candidates[0]
    assert (
        review(
            api,
            disputes.rita,
            t0.id,
            decision="pair",
            best_candidate_id=winner,
            worst_candidate_id=loser,
            note="C is sharpest",
        ).status_code
        == 201
    )
    assert (
        review(api, disputes.rita, t1.id, decision="no_pair", note="both answers missed the halo").status_code
        == 201
    )
    after = build(api, disputes.project_id)
    assert after["id"] != before["id"] and after["max_review_id"] > 0
    found = records(api, after["id"])
    assert set(found) == {record_id(t0)}
    assert (found[record_id(t0)]["winner_candidate_id"], found[record_id(t0)]["loser_candidate_id"]) == (
        str(winner),
        str(loser),
    )
    assert after["counts"]["records_from_reviews"] == 1
    written = manifest(api, after["id"])
    assert written["records_from_reviews"] == 1
    assert written["counts"]["drops"] == {"review_no_pair": 1, "tie": 1, "too_few_votes": 1}

    # A later review replaces the earlier one; both stay in the task's history.
    assert review(api, api.admin, t0.id, decision="no_pair").status_code == 201
    assert (
        review(
            api,
            api.admin,
            t1.id,
            decision="pair",
            best_candidate_id=t1.candidates[0],
            worst_candidate_id=t1.candidates[2],
        ).status_code
        == 201
    )
    latest = build(api, disputes.project_id)
    assert set(records(api, latest["id"])) == {record_id(t1)}
    assert latest["counts"]["records_from_reviews"] == 1
    history = api.client.get(f"{API}/tasks/{t0.id}/review", headers=disputes.rita).json()
    assert [(r["reviewer"], r["decision"], r["note"]) for r in history["reviews"]] == [
        ("root", "no_pair", ""),
        ("rita", "pair", "C is sharpest"),
    ]
    # Reviews delete no vote and change no task's state.
    assert len(history["answers"]) == 2
    with api.runtime.sessions() as session:
        assert [session.get(Task, t.id).state for t in (t0, t1, t2)] == ["complete", "complete", "complete"]  # type: ignore[union-attr]


def test_the_queue_page_links_each_task_to_its_review_page(api: Api, disputes: Disputes) -> None:
    t0, _, t2 = disputes.tasks[:3]
    api.client.cookies.set(SESSION_COOKIE, disputes.rita["Authorization"].removeprefix("Bearer "))
    try:
        home = api.client.get("/")
        assert f'href="/projects/{disputes.project_id}/reviews"' in home.text
        page = api.client.get(f"/projects/{disputes.project_id}/reviews")
        assert page.status_code == 200
        assert re.findall(r'<tr data-task="(\d+)">', page.text) == [str(t0.id), str(t2.id)]
        assert f'href="/tasks/{t0.id}/review"' in page.text and "no plurality" in page.text
        review_page = api.client.get(f"/tasks/{t0.id}/review")
        assert review_page.status_code == 200
        assert f'data-review-task="{t0.id}"' in review_page.text and "No pair (N)" in review_page.text
        assert 'id="flag-dialog"' not in review_page.text
        task_page = api.client.get(f"/projects/{disputes.project_id}/annotate")
        assert "data-review-task" not in task_page.text and "Flag for review (N)" in task_page.text
    finally:
        api.client.cookies.clear()
