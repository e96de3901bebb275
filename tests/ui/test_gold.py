"""An annotator below the gold threshold sees why their work is paused instead of a task, their own
page shows their gold accuracy, the admin project page lists them, and resuming them brings tasks back."""

from typing import Any

from tests.helpers import login
from tests.ui.conftest import Site, screenshot, shown_task


def test_an_annotator_under_the_gold_threshold_sees_the_pause_message(site: Site, new_page: Any) -> None:
    project_id = site.make_project("gold cats", overlap=2, members=("alice", "bob"))
    # The lead answers a task and marks it as gold; then gold is served to everyone who has not seen it.
    task = site.http.post(f"/api/v1/projects/{project_id}/next", headers=site.admin).json()
    ids = sorted(c["id"] for c in task["candidates"])
    body = {"best_candidate_id": ids[0], "worst_candidate_id": ids[-1], "client_submission_id": "lead-gold"}
    assert (
        site.http.post(f"/api/v1/tasks/{task['id']}/vote", json=body, headers=site.admin).status_code == 201
    )
    assert site.http.post(f"/api/v1/tasks/{task['id']}/gold", headers=site.admin).status_code == 200
    settings = {"gold_rate": 1.0, "gold_threshold": 0.5, "gold_min_answers": 1}
    assert site.http.patch(f"/api/v1/projects/{project_id}", json=settings, headers=site.admin).is_success

    bob = login(site.http, "bob", "bob-password")
    served = site.http.post(f"/api/v1/projects/{project_id}/next", headers=bob).json()
    assert served["id"] == task["id"]
    wrong = {"best_candidate_id": ids[-1], "worst_candidate_id": ids[0], "client_submission_id": "bob-gold"}
    assert site.http.post(f"/api/v1/tasks/{task['id']}/vote", json=wrong, headers=bob).status_code == 201

    page = new_page("bob")
    page.goto(f"/projects/{project_id}/annotate")
    message = page.inner_text("#gold-pause")
    assert "paused" in message and "0%" in message and "50%" in message and "project lead" in message
    assert page.locator("#workspace").count() == 0
    screenshot(page, "gold-paused-annotator.png")
    page.goto("/me")
    assert "0% (0 of 1)" in page.inner_text("#my-progress")

    lead = new_page("root")
    lead.goto(f"/admin/projects/{project_id}")
    assert "bob is paused" in lead.inner_text("#gold-paused")
    lead.locator("#gold").scroll_into_view_if_needed()
    screenshot(lead, "admin-gold.png")
    lead.click("text=Resume bob")
    lead.wait_for_selector("#gold-paused li:text-is('No annotator is paused.')")

    page.goto(f"/projects/{project_id}/annotate")
    assert shown_task(page)  # a regular task again: bob answered the only gold task
