"""A reviewer resolves a disputed task: an annotator flags a task from the task page (its key and
dialog), the reviewer opens the queue from the projects page, decides a task whose answers disagree
on its review page (the task page's viewer, with every answer beside it) with the keyboard, and the
decision is stored."""

import uuid
from typing import Any

from sqlalchemy import select

from dspo.cli import ensure_user
from dspo.models import Candidate, Review, TaskFlag, User
from tests.helpers import login
from tests.ui.conftest import Site, photo_png, screenshot, shown_task


def candidates_by_position(site: Site, source_id: int) -> list[int]:
    with site.runtime.sessions() as session:
        stmt = select(Candidate.id).where(Candidate.source_id == source_id, Candidate.evaluation_id.is_(None))
        return list(session.scalars(stmt.order_by(Candidate.position)))


def vote(site: Site, headers: dict[str, str], task_id: int, best: int, worst: int) -> None:
    body = {"best_candidate_id": best, "worst_candidate_id": worst, "client_submission_id": uuid.uuid4().hex}
    response = site.http.post(f"/api/v1/tasks/{task_id}/vote", json=body, headers=headers)
    assert response.status_code == 201, response.text


def test_a_reviewer_resolves_a_disputed_task(site: Site, new_page: Any) -> None:
    ensure_user(site.runtime, "rina", "reviewer", "rina-password")
    project_id = site.make_project(
        "review cats", images=[photo_png(96, 64)], overlap=2, members=("alice", "bob", "rina")
    )
    disputed = site.tasks(project_id)[0]
    a, b, c = candidates_by_position(site, disputed.source_id)
    # Alice and Bob disagree: each one's best is the other's worst.
    vote(site, login(site.http, "alice", "alice-password"), disputed.id, a, b)
    vote(site, login(site.http, "bob", "bob-password"), disputed.id, b, a)

    # Alice flags the next task from the task page: N, a reason, Enter.
    alice = new_page("alice")
    alice.goto(f"/projects/{project_id}/annotate")
    flagged = int(shown_task(alice))
    assert alice.locator("#help-keys tr[data-key=flag]").count() == 1
    alice.keyboard.press("n")
    alice.fill("#flag-reason", "the outline cuts the cat's ear")
    alice.keyboard.press("Enter")
    alice.wait_for_selector("#notice:has-text('flagged for a reviewer')")
    with site.runtime.sessions() as session:
        reasons = session.scalars(select(TaskFlag.reason).where(TaskFlag.task_id == flagged)).all()
    assert reasons == ["the outline cuts the cat's ear"]

    rina = new_page("rina")
    rina.click(f"a[href='/projects/{project_id}/reviews']")
    rina.wait_for_selector("#review-queue")
    rows = rina.locator("#review-queue tbody tr")
    assert [rows.nth(i).get_attribute("data-task") for i in range(rows.count())] == [
        str(disputed.id),
        str(flagged),
    ]
    assert "no plurality" in rows.nth(0).inner_text()
    assert "the outline cuts the cat's ear" in rows.nth(1).inner_text()
    screenshot(rina, "review-queue.png")

    rows.nth(0).locator("a:text-is('Review')").click()
    assert shown_task(rina) == str(disputed.id)
    answers = rina.locator("#answers")
    assert "alice" in answers.inner_text() and "bob" in answers.inner_text()
    assert "best A, worst B" in answers.locator("tr[data-user=alice]").inner_text()
    assert "best B, worst A" in answers.locator("tr[data-user=bob]").inner_text()
    # The review page's keys: a decision instead of an answer, the viewer's keys as on the task page.
    assert rina.locator("#help-keys tr[data-key=no-pair]").count() == 1
    assert rina.locator("#help-keys tr[data-key=skip]").count() == 0
    assert rina.locator("#help-keys tr[data-key=flicker]").count() == 1
    rina.keyboard.press("3")  # C is the winner
    rina.keyboard.press("q")  # A the loser
    rina.keyboard.press("d")
    rina.keyboard.type("C keeps the fur, A smears it")
    rina.keyboard.press("Enter")
    rina.wait_for_selector("#workspace[data-decided=pair]")
    rina.wait_for_selector("#review-history li:has-text('rina')")
    screenshot(rina, "review-task.png")

    with site.runtime.sessions() as session:
        stored = session.execute(
            select(
                Review.decision,
                Review.best_candidate_id,
                Review.worst_candidate_id,
                Review.note,
                User.username,
            )
            .join(User, User.id == Review.reviewer_id)
            .where(Review.task_id == disputed.id)
        ).all()
    assert [tuple(row) for row in stored] == [("pair", c, a, "C keeps the fur, A smears it", "rina")]

    # The reviewed task now comes after the one still waiting.
    rina.goto(f"/projects/{project_id}/reviews")
    rows = rina.locator("#review-queue tbody tr")
    assert [rows.nth(i).get_attribute("data-task") for i in range(rows.count())] == [
        str(flagged),
        str(disputed.id),
    ]
    assert "rina" in rows.nth(1).inner_text()
