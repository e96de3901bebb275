"""next / vote / skip / release, leases and idempotency, through HTTP."""

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from dspo.db import session_scope, utcnow
from dspo.models import Lease, Vote
from tests.api.conftest import Api
from tests.helpers import submission_id


@pytest.fixture
def project_id(api: Api) -> int:
    return api.make_project(n_images=1, overlap=2)


def next_task(api: Api, headers: dict[str, str], project_id: int) -> dict | None:
    response = api.client.post(f"/api/v1/projects/{project_id}/next", headers=headers)
    assert response.status_code in (200, 204), response.text
    return response.json() if response.status_code == 200 else None


def pick(task: dict, **extra: object) -> dict:
    ids = [c["id"] for c in task["candidates"]]
    return {
        "outcome": "pick",
        "best_candidate_id": ids[0],
        "worst_candidate_id": ids[-1],
        "client_submission_id": submission_id(),
        **extra,
    }


def vote(api: Api, headers: dict[str, str], task_id: int, body: dict):  # type: ignore[no-untyped-def]
    return api.client.post(f"/api/v1/tasks/{task_id}/vote", json=body, headers=headers)


def test_next_gives_a_leased_task_with_images(api: Api, project_id: int) -> None:
    task = next_task(api, api.alice, project_id)
    assert task is not None and task["kind"] in ("instance", "image")
    assert len(task["candidates"]) == 3 and [c["label"] for c in task["candidates"]] == ["A", "B", "C"]
    assert next_task(api, api.alice, project_id)["id"] == task["id"], "a held lease gives the same task"
    for url in [task["lq_url"], *(c["image_url"] for c in task["candidates"])]:
        image = api.client.get(url, headers=api.alice)
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert "immutable" in image.headers["cache-control"]
        cached = api.client.get(url, headers={**api.alice, "If-None-Match": image.headers["etag"]})
        assert cached.status_code == 304
    assert api.client.get(task["lq_url"]).status_code == 401


def test_instance_crops_have_the_instance_box_size(api: Api, project_id: int) -> None:
    import io

    from PIL import Image

    while (task := next_task(api, api.alice, project_id)) and task["kind"] != "instance":
        api.client.post(
            f"/api/v1/tasks/{task['id']}/skip",
            json={"client_submission_id": submission_id()},
            headers=api.alice,
        )
    assert task is not None
    x0, y0, x1, y1 = task["box"]
    crop = Image.open(
        io.BytesIO(api.client.get(task["candidates"][0]["image_url"], headers=api.alice).content)
    )
    assert crop.size == (x1 - x0, y1 - y0)
    mask = api.client.get(task["mask_url"], headers=api.alice)
    assert Image.open(io.BytesIO(mask.content)).size == tuple(task["image_size"])
    bare = api.client.get(task["candidates"][0]["image_url"] + "?outline=false", headers=api.alice)
    assert (
        bare.status_code == 200
        and bare.content != api.client.get(task["candidates"][0]["image_url"], headers=api.alice).content
    )


def test_vote_is_stored_with_the_shown_order(api: Api, project_id: int) -> None:
    task = next_task(api, api.alice, project_id)
    body = pick(task, content_text="red brick wall", defect_text="invented letters", lead_time_ms=1234)
    response = vote(api, api.alice, task["id"], body)
    assert response.status_code == 201, response.text
    stored = response.json()
    assert stored["shown_order"] == [c["id"] for c in task["candidates"]]
    assert stored["content_text"] == "red brick wall" and stored["lead_time_ms"] == 1234
    with api.runtime.sessions() as session:
        assert session.scalar(select(Lease).where(Lease.task_id == task["id"])) is None
    assert next_task(api, api.alice, project_id)["id"] != task["id"]


def test_shuffled_order_differs_between_annotators(api: Api) -> None:
    project_id = api.make_project(n_images=2, overlap=2, n_candidates=6)
    differs = False
    for _ in range(6):
        a, b = next_task(api, api.alice, project_id), next_task(api, api.bob, project_id)
        if a is None or b is None:
            break
        if a["id"] == b["id"]:
            differs |= [c["id"] for c in a["candidates"]] != [c["id"] for c in b["candidates"]]
        assert sorted(c["id"] for c in a["candidates"]) == sorted({c["id"] for c in a["candidates"]})
        vote(api, api.alice, a["id"], pick(a))
        vote(api, api.bob, b["id"], pick(b))
    assert differs


def test_replayed_vote_returns_the_first_result(api: Api, project_id: int) -> None:
    task = next_task(api, api.alice, project_id)
    body = pick(task)
    first = vote(api, api.alice, task["id"], body)
    replay = vote(api, api.alice, task["id"], body)
    assert first.status_code == 201 and replay.status_code == 200
    assert replay.json() == first.json()
    with api.runtime.sessions() as session:
        assert len(session.scalars(select(Vote).where(Vote.task_id == task["id"])).all()) == 1


def test_conflicting_second_vote_is_409(api: Api, project_id: int) -> None:
    task = next_task(api, api.alice, project_id)
    first = pick(task)
    assert vote(api, api.alice, task["id"], first).status_code == 201
    tie = {"outcome": "tie", "client_submission_id": submission_id()}
    other = vote(api, api.alice, task["id"], tie)
    assert other.status_code == 409 and "already answered" in other.json()["detail"]
    following = next_task(api, api.alice, project_id)
    reused = vote(
        api, api.alice, following["id"], {**tie, "client_submission_id": first["client_submission_id"]}
    )
    assert reused.status_code == 409 and "already used" in reused.json()["detail"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"worst_candidate_id": "best"}, "must differ"),
        ({"best_candidate_id": 987654}, "not candidates of this task"),
        ({"worst_candidate_id": None}, "needs both"),
        ({"outcome": "all_bad"}, "names no best or worst"),
        ({"outcome": "maybe"}, "outcome"),
        ({"content_text": "x" * 501}, "500"),
        ({"client_submission_id": ""}, "client_submission_id"),
    ],
)
def test_invalid_votes_are_422(api: Api, project_id: int, change: dict, message: str) -> None:
    task = next_task(api, api.alice, project_id)
    body = pick(task)
    body |= {k: body["best_candidate_id"] if v == "best" else v for k, v in change.items()}
    response = vote(api, api.alice, task["id"], body)
    assert response.status_code == 422, response.text
    assert message in str(response.json()["detail"])


def test_tie_and_all_bad_count_as_votes(api: Api, project_id: int) -> None:
    task = next_task(api, api.alice, project_id)
    tie = vote(api, api.alice, task["id"], {"outcome": "tie", "client_submission_id": submission_id()})
    assert tie.status_code == 201
    task_b = next_task(api, api.bob, project_id)
    assert task_b["id"] == task["id"], "bob gets the first task with a free slot"
    all_bad = vote(api, api.bob, task["id"], {"outcome": "all_bad", "client_submission_id": submission_id()})
    assert all_bad.status_code == 201
    stats = api.client.get(f"/api/v1/projects/{project_id}/stats", headers=api.admin).json()
    assert stats["tasks_by_state"]["complete"] == 1
    assert stats["votes_by_outcome"] == {"tie": 1, "all_bad": 1}


def test_unknown_task_is_404(api: Api, project_id: int) -> None:
    response = vote(api, api.alice, 999999, {"outcome": "tie", "client_submission_id": "a"})
    assert response.status_code == 404 and "999999" in response.json()["detail"]
    assert api.client.post("/api/v1/tasks/999999/release", headers=api.alice).status_code == 404
    assert api.client.post("/api/v1/projects/999/next", headers=api.alice).status_code == 404
    assert api.client.get("/api/v1/images/tasks/999999/lq", headers=api.alice).status_code == 404


def test_a_leased_last_slot_is_not_given_to_another_annotator(api: Api) -> None:
    project_id = api.make_project(n_images=1, overlap=1)
    alices = next_task(api, api.alice, project_id)
    bobs = next_task(api, api.bob, project_id)
    assert bobs is not None and bobs["id"] != alices["id"]


def test_expired_lease_frees_the_slot(api: Api) -> None:
    project_id = api.make_project(n_images=1, overlap=1)
    task = next_task(api, api.alice, project_id)
    with session_scope(api.runtime.sessions) as session:
        session.execute(update(Lease).values(expires_at=utcnow() - timedelta(seconds=1)))
    bobs = next_task(api, api.bob, project_id)
    assert bobs["id"] == task["id"], "the expired slot goes to the next annotator"
    assert vote(api, api.bob, task["id"], pick(bobs)).status_code == 201
    late = vote(api, api.alice, task["id"], pick(task))
    assert late.status_code == 409 and "lease expired" in late.json()["detail"]


def test_vote_without_a_lease_fills_a_free_slot(api: Api, project_id: int) -> None:
    task = next_task(api, api.alice, project_id)
    response = vote(api, api.bob, task["id"], pick(task))
    assert response.status_code == 201


def test_skip_and_release(api: Api, project_id: int) -> None:
    task = next_task(api, api.alice, project_id)
    skipped = api.client.post(
        f"/api/v1/tasks/{task['id']}/skip", json={"client_submission_id": "s1"}, headers=api.alice
    )
    assert skipped.status_code == 201 and skipped.json()["outcome"] == "skip"
    following = next_task(api, api.alice, project_id)
    assert following["id"] != task["id"], "a skipped task is never offered again"
    assert api.client.post(f"/api/v1/tasks/{following['id']}/release", headers=api.alice).status_code == 204
    assert api.client.post(f"/api/v1/tasks/{following['id']}/release", headers=api.alice).status_code == 409
    assert next_task(api, api.alice, project_id)["id"] == following["id"], "a released task comes back"
    stats = api.client.get(f"/api/v1/projects/{project_id}/stats", headers=api.admin).json()
    assert stats["skips"] == 1 and stats["votes"] == 0
    assert stats["annotators"] == [{"user_id": 2, "username": "alice", "votes": 0, "skips": 1}]


def test_annotators_see_only_their_own_votes(api: Api, project_id: int) -> None:
    task = next_task(api, api.alice, project_id)
    vote(api, api.alice, task["id"], pick(task))
    next_task(api, api.bob, project_id)
    vote(api, api.bob, task["id"], pick(task))
    mine = api.client.get(f"/api/v1/tasks/{task['id']}/votes", headers=api.bob).json()
    assert len(mine) == 1
    assert len(api.client.get(f"/api/v1/tasks/{task['id']}/votes", headers=api.admin).json()) == 2


def test_project_runs_out_of_tasks(api: Api, project_id: int) -> None:
    answered = 0
    while (task := next_task(api, api.alice, project_id)) is not None:
        assert vote(api, api.alice, task["id"], pick(task)).status_code == 201
        answered += 1
    stats = api.client.get(f"/api/v1/projects/{project_id}/stats", headers=api.admin).json()
    assert answered == stats["tasks_total"] and stats["votes"] == answered


def test_full_candidate_and_reference_variants(api: Api, project_id: int) -> None:
    import io

    from PIL import Image

    task = next_task(api, api.alice, project_id)
    candidate_id = task["candidates"][0]["id"]
    full = api.client.get(f"/api/v1/images/candidates/{candidate_id}", headers=api.alice)
    assert full.status_code == 200
    assert Image.open(io.BytesIO(full.content)).size == tuple(task["image_size"])
    nearest = api.client.get(task["lq_url"] + "?method=nearest", headers=api.alice)
    bicubic = api.client.get(task["lq_url"], headers=api.alice)
    assert nearest.status_code == 200 and nearest.content != bicubic.content
    assert api.client.get(task["lq_url"] + "?method=magic", headers=api.alice).status_code == 422
    other = api.client.get(f"/api/v1/images/tasks/{task['id']}/candidates/999999", headers=api.alice)
    assert other.status_code == 404
