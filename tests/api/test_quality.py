"""GET /projects/{id}/quality and the agreement endpoint on a small project with known answers, written
straight into the votes table so that which annotator answered which task, in which shown order and
how fast, is fixed."""

import math
from typing import Any

import pytest
from sqlalchemy import select

from annotation_server.deps import SESSION_COOKIE, csrf_token_for
from dspo.cli import ensure_user
from dspo.models import Candidate, Task, User, Vote
from tests.api.conftest import Api
from tests.helpers import add_members, login

API = "/api/v1"


def _answer(user_id: int, task: list[int], best: int, worst: int, shown: list[int], ms: int) -> Vote:
    """A pick of candidates by position (`task` lists the candidate ids by their own position)."""
    return Vote(
        task_id=task[0],
        user_id=user_id,
        outcome="pick",
        best_candidate_id=task[1 + best],
        worst_candidate_id=task[1 + worst],
        shown_order=[task[1 + p] for p in shown],
        lead_time_ms=ms,
        client_submission_id=f"{user_id}-{task[0]}",
    )


@pytest.fixture
def project(api: Api) -> int:
    """Alice and Bob share task 1 and disagree there on both best and worst; each answered one more task
    alone. Alice sees the candidates in their own order, Bob in reverse. The floor is 1000 ms."""
    project_id = api.make_project(n_images=2, overlap=3)
    with api.runtime.sessions() as session:
        found = session.execute(
            select(Task.id, Task.source_id).where(Task.project_id == project_id).order_by(Task.id)
        ).all()
        tasks = []
        for task_id, source_id in found[:3]:
            ids = session.scalars(
                select(Candidate.id)
                .where(Candidate.source_id == source_id, Candidate.position >= 0)
                .order_by(Candidate.position)
            ).all()
            assert len(ids) == 3
            tasks.append([task_id, *ids])
        users = {name: user_id for name, user_id in session.execute(select(User.username, User.id))}
        alice, bob = users["alice"], users["bob"]
        session.add_all(
            [
                _answer(alice, tasks[0], best=0, worst=2, shown=[0, 1, 2], ms=500),
                _answer(bob, tasks[0], best=1, worst=0, shown=[2, 1, 0], ms=3000),
                _answer(alice, tasks[1], best=0, worst=2, shown=[0, 1, 2], ms=5000),
                _answer(bob, tasks[2], best=1, worst=0, shown=[2, 1, 0], ms=800),
                Vote(
                    task_id=tasks[1][0],
                    user_id=bob,
                    outcome="skip",
                    shown_order=[],
                    client_submission_id="skip",
                ),
            ]
        )
        session.commit()
    changed = api.client.patch(
        f"{API}/projects/{project_id}", json={"min_lead_time_ms": 1000}, headers=api.admin
    )
    assert changed.status_code == 200 and changed.json()["min_lead_time_ms"] == 1000, changed.text
    return project_id


def _by_name(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["username"]: row for row in rows}


def test_agreement_counts_only_shared_tasks(api: Api, project: int) -> None:
    """The regression of issue 13: before, both got 1.0 from the tasks they answered alone."""
    response = api.client.get(f"{API}/projects/{project}/agreement", headers=api.admin)
    assert response.status_code == 200, response.text
    rows = _by_name(response.json()["annotators"])
    for name in ("alice", "bob"):
        assert rows[name]["shared_tasks"] == 1
        assert (rows[name]["best_agreement"], rows[name]["best_tasks"]) == (0.0, 1)
        assert (rows[name]["worst_agreement"], rows[name]["worst_tasks"]) == (0.0, 1)
    # One pairable task, positions 0 and 1 (best), 2 and 0 (worst): alpha = 1 - (2 - 1) * 2 / 2 = 0.
    assert response.json()["alpha_best"] == pytest.approx(0.0)
    assert response.json()["alpha_worst"] == pytest.approx(0.0)


def test_quality_report(api: Api, project: int) -> None:
    response = api.client.get(f"{API}/projects/{project}/quality", headers=api.admin)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["min_lead_time_ms"] == 1000 and body["n_candidates"] == 3
    rows = _by_name(body["annotators"])
    alice, bob = rows["alice"], rows["bob"]
    assert (alice["answers"], bob["answers"]) == (2, 2)  # Bob's skip is left out
    assert alice["best_agreement"] == 0.0 and alice["best_tasks"] == 1
    # Shown positions: Alice's best is always shown first and her worst last; Bob's best in the middle.
    assert alice["best_positions"]["counts"] == [2, 0, 0]
    assert bob["best_positions"]["counts"] == [0, 2, 0]
    assert alice["worst_positions"]["counts"] == bob["worst_positions"]["counts"] == [0, 0, 2]
    # [2, 0, 0]: expected 2/3 each, chi2 = (16/9 + 4/9 + 4/9) / (2/3) = 4, dof 2: p = e^-2.
    assert alice["best_positions"]["chi2"] == pytest.approx(4.0)
    assert alice["best_positions"]["p_value"] == pytest.approx(math.exp(-2))
    # The project: best [2, 2, 0] → chi2 2, p e^-1; worst [0, 0, 4] → chi2 8, p e^-4.
    assert body["best_positions"]["counts"] == [2, 2, 0]
    assert body["best_positions"]["p_value"] == pytest.approx(math.exp(-1))
    assert body["worst_positions"]["chi2"] == pytest.approx(8.0)
    assert body["worst_positions"]["p_value"] == pytest.approx(math.exp(-4))
    # Lead times 500 and 5000 (Alice), 3000 and 800 (Bob) against the floor of 1000 ms.
    assert (alice["fast_answers"], alice["timed_answers"], alice["fast_share"]) == (1, 2, 0.5)
    assert (bob["fast_answers"], bob["fast_share"]) == (1, 0.5)
    assert body["lead_time_edges_ms"] == [0, 1000, 2000, 5000, 10000, 20000, 60000]
    assert body["lead_time_counts"] == [2, 0, 1, 1, 0, 0, 0]
    # Only the shared task has two picks: one window of one task.
    assert [(w["tasks"], w["best"], w["worst"]) for w in body["alpha_windows"]] == [(1, 0.0, 0.0)]
    assert body["alpha_windows"][0]["first_task_id"] == body["alpha_windows"][0]["last_task_id"]


def test_reviewers_of_the_project_see_it_annotators_do_not(api: Api, project: int) -> None:
    ensure_user(api.runtime, "rita", "reviewer", "rita-password")
    rita = login(api.client, "rita", "rita-password")
    assert api.client.get(f"{API}/projects/{project}/quality", headers=rita).status_code == 404
    add_members(api.client, api.admin, project, "rita")
    assert api.client.get(f"{API}/projects/{project}/quality", headers=rita).status_code == 200
    assert api.client.get(f"{API}/projects/{project}/quality", headers=api.alice).status_code == 403


def test_min_lead_time_is_validated(api: Api, project: int) -> None:
    response = api.client.patch(f"{API}/projects/{project}", json={"min_lead_time_ms": -1}, headers=api.admin)
    assert response.status_code == 422


def test_quality_page_shows_the_numbers_and_charts(api: Api, project: int) -> None:
    """The admin page, server-rendered: the same numbers, one SVG chart per annotator and three more;
    the browser test (tests/ui/test_quality.py) looks at it too and takes the screenshot."""
    token = api.admin["Authorization"].removeprefix("Bearer ")
    api.client.cookies.set(SESSION_COOKIE, token)
    try:
        page = api.client.get(f"/admin/projects/{project}/quality")
        settings_page = api.client.get(f"/admin/projects/{project}")
        form = {"csrf_token": csrf_token_for(api.runtime, token), "min_lead_time_ms": "1500"}
        saved = api.client.post(f"/admin/projects/{project}/settings", data=form, follow_redirects=False)
    finally:
        api.client.cookies.clear()
    assert page.status_code == 200, page.text
    html = page.text
    assert html.count('<svg class="chart"') == 2 + 3
    assert "Faster than 1000 ms" in html and "p = 0.135" in html  # Alice's best positions: p = e^-2
    assert '<td class="num">0% <span class="hint">of 1</span></td>' in html
    assert f'href="/admin/projects/{project}/quality"' in settings_page.text
    assert 'name="min_lead_time_ms"' in settings_page.text
    assert saved.status_code == 303, saved.text
    project_json = api.client.get(f"{API}/projects/{project}", headers=api.admin).json()
    assert project_json["min_lead_time_ms"] == 1500
