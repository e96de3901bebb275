"""Gold tasks through the API, on SQLite and PostgreSQL: marked by an admin or a reviewer, served at
the project's gold_rate and never twice to one annotator, scored, kept out of datasets, and pausing an
annotator under the threshold until an admin resumes them; sanity tasks made by their job."""

import math
import time
from typing import Any

import pytest
from sqlalchemy import select

from dspo.cli import ensure_user
from dspo.models import Candidate, Task
from tests.api.conftest import Api
from tests.helpers import login, submission_id, wait_for_jobs

API = "/api/v1"


def lease(api: Api, headers: dict[str, str], project_id: int) -> dict[str, Any] | None:
    response = api.client.post(f"{API}/projects/{project_id}/next", headers=headers)
    assert response.status_code in (200, 204), response.text
    return response.json() if response.status_code == 200 else None


def answer(api: Api, headers: dict[str, str], task: dict[str, Any], best: int, worst: int) -> dict[str, Any]:
    body = {"best_candidate_id": best, "worst_candidate_id": worst, "client_submission_id": submission_id()}
    response = api.client.post(f"{API}/tasks/{task['id']}/vote", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def ids(task: dict[str, Any]) -> list[int]:
    return sorted(c["id"] for c in task["candidates"])


def make_gold(api: Api, headers: dict[str, str], project_id: int, n: int) -> dict[int, dict[str, Any]]:
    """The caller answers the next n tasks (lowest candidate id best, highest worst) and marks them."""
    made = {}
    for _ in range(n):
        task = lease(api, headers, project_id)
        assert task is not None
        answer(api, headers, task, ids(task)[0], ids(task)[-1])
        marked = api.client.post(f"{API}/tasks/{task['id']}/gold", headers=headers)
        assert marked.status_code == 200, marked.text
        assert marked.json()["state"] == "gold" and marked.json()["gold_worst_candidate_id"] == ids(task)[-1]
        made[task["id"]] = marked.json()
    return made


def set_project(api: Api, project_id: int, **changes: Any) -> None:
    response = api.client.patch(f"{API}/projects/{project_id}", json=changes, headers=api.admin)
    assert response.status_code == 200, response.text


def scores(api: Api, project_id: int) -> dict[str, dict[str, Any]]:
    response = api.client.get(f"{API}/projects/{project_id}/gold", headers=api.admin)
    assert response.status_code == 200, response.text
    return {s["username"]: s for s in response.json()["scores"]}


def wait_job(api: Api, job_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        job = api.client.get(f"{API}/jobs/{job_id}", headers=api.admin).json()
        if job["state"] in ("succeeded", "failed"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


@pytest.fixture
def reviewer(api: Api) -> dict[str, str]:
    ensure_user(api.runtime, "rita", "reviewer", "rita-password")
    return login(api.client, "rita", "rita-password")


def test_marked_gold_is_served_once_scored_and_kept_out_of_datasets(
    api: Api, reviewer: dict[str, str]
) -> None:
    project_id = api.make_project(n_images=1, overlap=2, members=("alice", "bob", "rita"))
    ((gold_id, gold),) = make_gold(api, reviewer, project_id, 1).items()
    # An annotator cannot mark, and marking needs the marker's own pick on the task.
    other = lease(api, api.alice, project_id)
    assert other is not None
    assert api.client.post(f"{API}/tasks/{other['id']}/gold", headers=api.alice).status_code == 403
    assert api.client.post(f"{API}/tasks/{other['id']}/gold", headers=api.admin).status_code == 422
    assert api.client.post(f"{API}/tasks/{gold_id}/release", headers=api.alice).status_code == 409
    api.client.post(f"{API}/tasks/{other['id']}/release", headers=api.alice)

    set_project(api, project_id, gold_rate=1.0)
    served = lease(api, api.alice, project_id)
    assert served is not None and served["id"] == gold_id and len(served["candidates"]) == 3
    # Release and lease again: a gold lease ends like any other and the task comes back.
    assert api.client.post(f"{API}/tasks/{gold_id}/release", headers=api.alice).status_code == 204
    served = lease(api, api.alice, project_id)
    assert served is not None and served["id"] == gold_id
    first = answer(api, api.alice, served, gold["gold_best_candidate_id"], ids(served)[1])  # wrong
    # Undo within the grace period: alice corrects her answer to the known one.
    fixed = {
        "best_candidate_id": gold["gold_best_candidate_id"],
        "worst_candidate_id": gold["gold_worst_candidate_id"],
        "client_submission_id": submission_id(),
        "replaces_submission_id": first["client_submission_id"],
    }
    replaced = api.client.post(f"{API}/tasks/{gold_id}/vote", json=fixed, headers=api.alice)
    assert replaced.status_code == 201, replaced.text
    again = api.client.post(f"{API}/tasks/{gold_id}/vote", json=fixed, headers=api.alice)
    assert again.status_code == 200 and again.json()["id"] == replaced.json()["id"]  # a replay
    # Never twice: with gold_rate 1 and no other gold task, alice now gets regular tasks.
    following = lease(api, api.alice, project_id)
    assert following is not None and following["id"] != gold_id

    bob_task = lease(api, api.bob, project_id)
    assert bob_task is not None and bob_task["id"] == gold_id
    answer(api, api.bob, bob_task, gold["gold_worst_candidate_id"], gold["gold_best_candidate_id"])  # wrong
    regular = lease(api, api.bob, project_id)
    assert regular is not None and regular["id"] != gold_id
    answer(api, api.bob, regular, ids(regular)[0], ids(regular)[1])
    skip = {"client_submission_id": submission_id()}
    assert api.client.post(f"{API}/tasks/{following['id']}/skip", json=skip, headers=api.alice).is_success

    found = scores(api, project_id)
    assert (found["alice"]["answered"], found["alice"]["correct"], found["alice"]["accuracy"]) == (1, 1, 1.0)
    assert (found["bob"]["answered"], found["bob"]["correct"], found["bob"]["accuracy"]) == (1, 0, 0.0)
    assert "rita" not in found  # the marker's own answer is the key, not a score
    quality = api.client.get(f"{API}/projects/{project_id}/quality", headers=api.admin).json()
    in_quality = {a["username"]: a for a in quality["annotators"]}
    assert (in_quality["alice"]["gold_answers"], in_quality["alice"]["gold_accuracy"]) == (1, 1.0)
    assert (in_quality["bob"]["gold_answers"], in_quality["bob"]["gold_accuracy"]) == (1, 0.0)
    with api.runtime.sessions() as session:
        task = session.get(Task, gold_id)
        assert task is not None and task.state == "gold" and task.vote_count == 3  # never complete

    # The gold task has 3 answers, two of them agreeing: without the exclusion it would be a record.
    built = api.client.post(f"{API}/projects/{project_id}/datasets", json={"min_votes": 1}, headers=api.admin)
    assert built.status_code == 202, built.text
    assert wait_job(api, built.json()["job_id"])["state"] == "succeeded"
    dataset = api.client.get(f"{API}/datasets/{built.json()['dataset']['id']}", headers=api.admin).json()
    records = api.client.get(
        f"{API}/datasets/{dataset['id']}/records", params={"limit": 1000}, headers=api.admin
    ).json()["records"]
    # Bob's regular answer is the only one left (a skip makes no record).
    assert dataset["counts"]["tasks_with_answers"] == 1 and len(records) == 1
    assert str(served["instance_id"]) not in {str(r["instance_id"]) for r in records}


def test_gold_is_served_at_the_set_rate(api: Api) -> None:
    """Each new lease is gold with probability r, drawn by a hash of (user, answer count): over M
    leases the number of gold ones is Binomial(M, r) (the draws are independent for a good hash).
    |G - Mr| <= 4 sd fails with probability under 1e-4; and the draws are seeded, so the outcome is
    the same on every run. The pool of gold tasks is larger than Mr + 4 sd, so it never runs out."""
    project_id = api.make_project(n_images=10, overlap=1)
    rate, draws = 0.3, 36
    sd = math.sqrt(draws * rate * (1 - rate))
    pool = math.ceil(draws * rate + 4 * sd)
    gold = make_gold(api, api.admin, project_id, pool)
    set_project(api, project_id, gold_rate=rate)
    seen = []
    for _ in range(draws):
        task = lease(api, api.alice, project_id)
        assert task is not None, "the project ran out of regular tasks"
        seen.append(task["id"])
        answer(api, api.alice, task, ids(task)[0], ids(task)[1])
    served = [t for t in seen if t in gold]
    assert len(set(seen)) == len(seen)  # never the same task twice
    assert abs(len(served) - draws * rate) <= 4 * sd, (len(served), draws * rate, sd)
    assert 0 < len(served) < draws
    assert scores(api, project_id)["alice"]["answered"] == len(served)

    # Rate 0: no gold at all.
    set_project(api, project_id, gold_rate=0.0)
    for _ in range(5):
        task = lease(api, api.bob, project_id)
        assert task is not None and task["id"] not in gold
        answer(api, api.bob, task, ids(task)[0], ids(task)[1])


def test_an_annotator_under_the_threshold_is_paused_until_resumed(api: Api) -> None:
    project_id = api.make_project(n_images=1, overlap=2)
    gold = make_gold(api, api.admin, project_id, 3)
    set_project(api, project_id, gold_rate=1.0, gold_threshold=0.6, gold_min_answers=2)
    for _ in range(2):
        task = lease(api, api.bob, project_id)
        assert task is not None and task["id"] in gold
        known = gold[task["id"]]
        answer(api, api.bob, task, known["gold_worst_candidate_id"], known["gold_best_candidate_id"])
    refused = api.client.post(f"{API}/projects/{project_id}/next", headers=api.bob)
    assert refused.status_code == 403
    message = refused.json()["detail"]
    assert "0%" in message and "60%" in message and "project lead" in message
    assert scores(api, project_id)["bob"]["paused"] is True
    # Alice, who has no gold answers yet, is not paused.
    assert lease(api, api.alice, project_id) is not None

    users = {u["username"]: u["id"] for u in api.client.get(f"{API}/users", headers=api.admin).json()}
    resumed = api.client.post(f"{API}/projects/{project_id}/gold/resume/{users['bob']}", headers=api.admin)
    assert resumed.status_code == 204, resumed.text
    assert scores(api, project_id)["bob"]["paused"] is False
    task = lease(api, api.bob, project_id)
    assert task is not None and task["id"] in gold  # the third gold task, never served to him before
    answer(api, api.bob, task, ids(task)[0], ids(task)[1])
    # One wrong answer since the resume is under gold_min_answers: still not paused.
    assert api.client.post(f"{API}/projects/{project_id}/next", headers=api.bob).status_code in (200, 204)
    assert scores(api, project_id)["bob"]["answered"] == 3  # the quality view counts every answer


def test_sanity_tasks_are_made_by_their_job_and_score_the_worst(api: Api) -> None:
    project_id = api.make_project(n_images=1, overlap=2, sanity_tasks=1)  # made after the tasks
    made = api.client.post(f"{API}/projects/{project_id}/sanity-tasks", json={"count": 2}, headers=api.admin)
    assert made.status_code == 202, made.text
    job = wait_job(api, made.json()["id"])
    assert job["state"] == "succeeded" and job["result"]["sanity_tasks_created"] == 1, job
    assert all(j["state"] == "succeeded" for j in wait_for_jobs(api.client, api.admin, project_id))
    with api.runtime.sessions() as session:
        sanity = list(
            session.scalars(select(Task).where(Task.project_id == project_id, Task.state == "gold"))
        )
        degraded = {t.gold_worst_candidate_id for t in sanity}
        degraded_shas = set(session.scalars(select(Candidate.sha256).where(Candidate.id.in_(degraded))))
        regular_shas = set(
            session.scalars(
                select(Candidate.sha256)
                .join(Task, Task.source_id == Candidate.source_id)
                .where(Task.project_id == project_id, Task.state != "gold")
            )
        )
    assert len(sanity) == 2 and all(t.gold_best_candidate_id is None and t.gold_by is None for t in sanity)

    # The regular tasks never show a degraded candidate (nor its image).
    regular_seen = set()
    while (task := lease(api, api.bob, project_id)) is not None:
        regular_seen.add(task["id"])
        assert not set(ids(task)) & degraded
        for candidate in task["candidates"]:
            image = api.client.get(candidate["image_url"], headers=api.bob)
            assert image.status_code == 200
        answer(api, api.bob, task, ids(task)[0], ids(task)[1])
    assert regular_seen and not regular_seen & {t.id for t in sanity}
    assert len(degraded_shas) == 2 and not degraded_shas & regular_shas  # new images, made for this

    set_project(api, project_id, gold_rate=1.0)
    for _ in range(2):
        task = lease(api, api.alice, project_id)
        assert task is not None and set(ids(task)) & degraded and len(task["candidates"]) == 3
        image = api.client.get(task["candidates"][0]["image_url"], headers=api.alice)
        assert image.status_code == 200
        worst = next(iter(set(ids(task)) & degraded))
        best = next(c for c in ids(task) if c != worst)
        answer(api, api.alice, task, best, worst)  # right: the sanity task knows the worst only
    assert scores(api, project_id)["alice"]["correct"] == 2
