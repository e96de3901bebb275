"""Answers that cannot be sent stay in the browser and arrive exactly once when the server is back."""

import json
from typing import Any

from tests.ui.conftest import Site, shown_task

VOTE_URL = "**/api/v1/tasks/*/vote"


def pending(page: Any, username_id: str) -> list[dict]:
    return json.loads(page.evaluate(f"localStorage.getItem('dspo.pending.{username_id}') || '[]'"))


def test_an_answer_sent_during_a_network_cut_arrives_exactly_once(site: Site, new_page: Any) -> None:
    project_id = site.make_project("offline")
    page = new_page("alice")
    user_id = page.evaluate("fetch('/api/v1/auth/me').then(r => r.json()).then(u => String(u.id))")
    page.goto(f"/projects/{project_id}/annotate")
    first = shown_task(page)
    page.wait_for_function("document.querySelectorAll('#grid img').length === 4")

    page.route(VOTE_URL, lambda route: route.abort("internetdisconnected"))
    for key in ("1", "w", "Enter"):
        page.keyboard.press(key)
    second = shown_task(page, first)  # the preloaded next task comes up even while offline
    page.wait_for_selector("#pending:has-text('1 answer saved in this browser')")
    [queued] = pending(page, user_id)
    assert queued["task_id"] == int(first)

    page.reload()  # a reload (or a closed tab) keeps the answer: it lives in localStorage
    page.wait_for_selector("#pending:has-text('1 answer saved in this browser')")
    assert site.votes(project_id, "alice") == []

    page.unroute(VOTE_URL)
    page.wait_for_selector("#pending", state="hidden", timeout=30_000)
    assert shown_task(page, "") == second  # the leased next task, not the answered one again
    [vote] = site.votes(project_id, "alice")
    assert (vote.task_id, vote.client_submission_id) == (int(first), queued["body"]["client_submission_id"])
    assert pending(page, user_id) == []


def test_an_answer_whose_acknowledgement_was_lost_is_not_recorded_twice(site: Site, new_page: Any) -> None:
    project_id = site.make_project("lost-ack")
    page = new_page("alice")
    page.goto(f"/projects/{project_id}/annotate")
    first = shown_task(page)
    sent = []

    def deliver_then_drop(route: Any) -> None:
        # The server records the vote, but the browser never hears back (the connection broke).
        sent.append(route.request.post_data_json["client_submission_id"])
        if len(sent) == 1:
            route.fetch()
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route(VOTE_URL, deliver_then_drop)
    for key in ("2", "q", "Enter"):
        page.keyboard.press(key)
    shown_task(page, first)
    page.wait_for_selector("#pending", state="hidden", timeout=30_000)
    assert len(sent) == 2 and sent[0] == sent[1], "retried with the same client submission id"
    [vote] = site.votes(project_id, "alice")
    assert vote.task_id == int(first) and vote.client_submission_id == sent[0]
