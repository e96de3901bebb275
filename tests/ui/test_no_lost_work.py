"""Answers that cannot be sent stay in the browser and arrive exactly once when the server is back."""

import json
import time
from typing import Any

from tests.ui.conftest import Site, log_in, shown_task

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


# ---- what the server refuses, and what it may accept later -------------------------------------------


def answer_offline(page: Any) -> tuple[str, str]:
    """Answer the task on screen while votes cannot reach the server; the next task comes up."""
    first = shown_task(page)
    page.wait_for_function("document.querySelectorAll('#grid img').length === 4")
    page.route(VOTE_URL, lambda route: route.abort("internetdisconnected"))
    for key in ("1", "w", "Enter"):
        page.keyboard.press(key)
    second = shown_task(page, first)
    page.wait_for_selector("#pending:has-text('1 answer saved in this browser')")
    return first, second


def back_online(page: Any) -> None:
    page.unroute(VOTE_URL)
    page.evaluate("window.dispatchEvent(new Event('online'))")


def test_a_refused_answer_is_dropped_with_a_message_and_the_next_ones_go_through(
    site: Site, new_page: Any
) -> None:
    project_id = site.make_project("refused")
    page = new_page("alice")
    user_id = page.evaluate("fetch('/api/v1/auth/me').then(r => r.json()).then(u => String(u.id))")
    page.goto(f"/projects/{project_id}/annotate")
    first, second = answer_offline(page)
    # Meanwhile the project starts to require a description: the waiting answer has none, so the
    # server refuses it (422) however often it is sent.
    changed = site.http.patch(
        f"/api/v1/projects/{project_id}", json={"require_content": True}, headers=site.admin
    )
    assert changed.status_code == 200, changed.text
    back_online(page)
    page.wait_for_selector(f"#notice:has-text('Task {first}: your answer was refused')")
    assert "needs content_text" in page.inner_text("#notice")
    page.wait_for_selector("#pending", state="hidden")
    assert pending(page, user_id) == []

    for key in ("2", "q", "d", "type:a tabby cat", "Enter"):
        if key.startswith("type:"):
            page.keyboard.type(key[5:])
        else:
            page.keyboard.press(key)
    shown_task(page, second)
    page.wait_for_selector("#pending", state="hidden")
    [vote] = site.votes(project_id, "alice")
    assert (vote.task_id, vote.content_text) == (int(second), "a tabby cat")


def test_answers_are_retried_after_a_5xx_and_after_a_429_s_retry_after(site: Site, new_page: Any) -> None:
    project_id = site.make_project("answers retried")
    page = new_page("alice")
    page.goto(f"/projects/{project_id}/annotate")
    first = shown_task(page)
    calls: list[tuple[float, str]] = []

    def busy_then_fine(route: Any) -> None:
        calls.append((time.monotonic(), route.request.post_data_json["client_submission_id"]))
        if len(calls) == 1:
            route.fulfill(status=503, json={"detail": "restarting"})
        elif len(calls) == 2:
            route.fulfill(status=429, headers={"Retry-After": "2"}, json={"detail": "slow down"})
        else:
            route.continue_()

    page.route(VOTE_URL, busy_then_fine)
    for key in ("1", "w", "Enter"):
        page.keyboard.press(key)
    shown_task(page, first)
    page.wait_for_selector("#pending:has-text('the server answered 429')")
    page.wait_for_selector("#pending", state="hidden", timeout=30_000)
    assert len(calls) == 3 and len({sid for _, sid in calls}) == 1
    assert calls[2][0] - calls[1][0] >= 1.9, "waited as long as Retry-After said"
    [vote] = site.votes(project_id, "alice")
    assert (vote.task_id, vote.client_submission_id) == (int(first), calls[0][1])
    assert page.is_hidden("#notice")


def test_a_logged_out_annotator_keeps_the_answer_until_logging_in_again(site: Site, new_page: Any) -> None:
    project_id = site.make_project("logged-out")
    page = new_page("alice")
    user_id = page.evaluate("fetch('/api/v1/auth/me').then(r => r.json()).then(u => String(u.id))")
    page.goto(f"/projects/{project_id}/annotate")
    first, _ = answer_offline(page)
    [queued] = pending(page, user_id)
    other = page.context.new_page()  # the session ends in another tab
    other.goto("/")
    other.click("button:has-text('Log out')")
    back_online(page)
    page.wait_for_selector("#pending a:has-text('Log in again')")
    assert "kept here" in page.inner_text("#pending")
    assert pending(page, user_id) == [queued] and site.votes(project_id, "alice") == []

    log_in(other, "alice", "alice-password")
    page.reload()
    page.wait_for_selector("#pending", state="hidden", timeout=30_000)
    [vote] = site.votes(project_id, "alice")
    assert (vote.task_id, vote.client_submission_id) == (int(first), queued["body"]["client_submission_id"])


def test_a_conflict_over_an_answer_already_recorded_counts_as_sent(site: Site, new_page: Any) -> None:
    project_id = site.make_project("replayed")
    page = new_page("alice")
    page.goto(f"/projects/{project_id}/annotate")
    first = shown_task(page)

    def recorded_then_conflict(route: Any) -> None:
        route.fetch()  # the server records the vote; the answer that reaches the page is a 409
        route.fulfill(status=409, json={"detail": f"you already answered task {first}"})

    page.route(VOTE_URL, recorded_then_conflict)
    for key in ("3", "q", "Enter"):
        page.keyboard.press(key)
    shown_task(page, first)
    page.wait_for_selector("#pending", state="hidden", timeout=30_000)
    assert page.is_hidden("#notice")
    [vote] = site.votes(project_id, "alice")
    assert vote.task_id == int(first)
