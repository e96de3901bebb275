"""Dawid-Skene through the real aggregation and a real build, on SQLite and PostgreSQL: a careful pair
outvoted by a bloc gets its answer back, the drop reasons that do not depend on the method stay, and the
project's `aggregation` setting (or a build's `method`), set over REST or in the admin pages, is what the
dataset and its manifest say."""

import json
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from annotation_server.deps import SESSION_COOKIE, csrf_token_for
from dspo.aggregate import METHODS, AggregationSettings, aggregate, drop_reasons, newest_vote_id
from dspo.datasets import NATIVE, dataset_dir
from dspo.db import session_scope
from dspo.models import Dataset, Project
from dspo.runtime import Runtime
from dspo.services import reviews
from tests.datasets.helpers import TaskInfo, make_project, tasks, users, vote, vote_all

CONTESTED = 4


@pytest.fixture
def outvoted(runtime: Runtime) -> tuple[int, list[TaskInfo]]:
    """20 tasks over 4 candidates. Truth: best 0, worst 3. Two careful annotators always say so; three
    others answer (1, 0), (2, 1), (3, 2) on the checkable tasks, so plurality follows the careful pair
    there, and all (1, 2) on the last CONTESTED tasks, where plurality follows them. Task 0 has one answer
    too few, task 1 more ties than picks."""
    project_id = make_project(runtime, n_sources=5, n_candidates=4)
    found = tasks(runtime, project_id)
    careful, bloc = users(runtime, ["c1", "c2"]), users(runtime, ["b1", "b2", "b3"])
    for i, task in enumerate(found):
        if i == 0:
            for user_id in careful:
                vote(runtime, task, user_id, best=0, worst=3)
            continue
        for user_id in careful:
            vote(runtime, task, user_id, best=0, worst=3, outcome="tie" if i == 1 else "pick")
        for n, user_id in enumerate(bloc):
            answer = (1, 2) if i >= len(found) - CONTESTED else (n + 1, n)
            vote(runtime, task, user_id, best=answer[0], worst=answer[1], outcome="tie" if i == 1 else "pick")
    return project_id, found


def test_dawid_skene_recovers_the_careful_pair_where_plurality_follows_the_bloc(
    runtime: Runtime, outvoted: tuple[int, list[TaskInfo]]
) -> None:
    project_id, found = outvoted
    contested = {t.id for t in found[-CONTESTED:]}
    with runtime.sessions() as session:
        newest = newest_vote_id(session, project_id)
        by_votes = aggregate(session, project_id, newest, AggregationSettings(min_agreement=0.0))
        weighed = aggregate(session, project_id, newest, AggregationSettings(method="dawid_skene"))
    position = {c: p for t in found for p, c in enumerate(t.candidates)}

    def answers(result) -> dict[int, tuple[int, int]]:
        return {
            p.task_id: (position[p.winner_candidate_id], position[p.loser_candidate_id]) for p in result.pairs
        }

    plural = answers(by_votes)
    assert {plural[t] for t in contested} == {(1, 2)}
    assert {plural[t] for t in plural if t not in contested} == {(0, 3)}

    assert weighed.drops == by_votes.drops == {"too_few_votes": 1, "tie": 1}
    assert answers(weighed) == {t: (0, 3) for t in plural}
    pairs = {p.task_id: p for p in weighed.pairs}
    # Shares stay vote shares: on a contested task two of five chose the winner.
    assert {(pairs[t].votes, pairs[t].best_share, pairs[t].worst_share) for t in contested} == {(5, 0.4, 0.4)}
    assert weighed.fit["best"]["converged"] and weighed.fit["worst"]["converged"]
    assert weighed.fit["best"]["tasks"] == 19 and weighed.fit["best"]["annotators"] == 5
    assert by_votes.fit == {}

    # Under Dawid-Skene, min_agreement is on the posterior: nearly 1 here, so only an impossible
    # threshold drops a task as low_agreement.
    with runtime.sessions() as session:
        strict = aggregate(session, project_id, newest, AggregationSettings(None, 1.0, True, "dawid_skene"))
    assert strict.drops == {"too_few_votes": 1, "tie": 1, "low_agreement": 18} and not strict.pairs


def wait_published(runtime: Runtime, dataset_id: int, timeout: float = 120) -> Dataset:
    deadline = time.monotonic() + timeout
    while True:
        with runtime.sessions() as session:
            dataset = session.get(Dataset, dataset_id)
            assert dataset is not None
        if dataset.state in ("published", "failed"):
            assert dataset.state == "published", dataset.error
            return dataset
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_the_project_setting_and_a_builds_method_choose_and_the_manifest_says(
    runtime: Runtime, client: TestClient, admin: dict[str, str], outvoted: tuple[int, list[TaskInfo]]
) -> None:
    project_id, _ = outvoted
    assert client.get(f"/api/v1/projects/{project_id}", headers=admin).json()["aggregation"] == "plurality"
    changed = client.patch(
        f"/api/v1/projects/{project_id}", json={"aggregation": "dawid_skene"}, headers=admin
    )
    assert changed.status_code == 200 and changed.json()["aggregation"] == "dawid_skene"
    wrong = client.patch(f"/api/v1/projects/{project_id}", json={"aggregation": "mean"}, headers=admin)
    assert wrong.status_code == 422

    body = {"val_fraction": 0.0, "exports": []}
    weighed = client.post(f"/api/v1/projects/{project_id}/datasets", json=body, headers=admin)
    assert weighed.status_code == 202, weighed.text
    assert weighed.json()["dataset"]["settings"]["method"] == "dawid_skene"  # the project's, filled in
    override = {**body, "method": "plurality"}
    plural = client.post(f"/api/v1/projects/{project_id}/datasets", json=override, headers=admin)
    assert plural.status_code == 202, plural.text

    manifests = {}
    for response in (weighed, plural):
        dataset = wait_published(runtime, response.json()["dataset"]["id"])
        manifest = json.loads((dataset_dir(runtime, dataset) / NATIVE / "manifest.json").read_text())
        manifests[manifest["aggregation"]["method"]] = manifest
    assert sorted(manifests) == ["dawid_skene", "plurality"]
    fit = manifests["dawid_skene"]["aggregation"]["dawid_skene"]
    assert fit["best"]["converged"] and fit["best"]["iterations"] >= 1 and fit["worst"]["converged"]
    assert "dawid_skene" not in manifests["plurality"]["aggregation"]
    # With the default min_agreement (0.5), plurality keeps only the bloc's 3-of-5 answers; Dawid-Skene
    # keeps every task, with the careful pair's answer.
    assert manifests["dawid_skene"]["counts"]["records"] == 18
    assert manifests["dawid_skene"]["counts"]["drops"] == {"too_few_votes": 1, "tie": 1}
    assert manifests["plurality"]["counts"]["records"] == CONTESTED
    assert manifests["plurality"]["counts"]["drops"] == {"too_few_votes": 1, "tie": 1, "low_agreement": 14}


def test_the_admin_pages_set_the_projects_method_and_override_it_per_build(
    runtime: Runtime, client: TestClient, admin: dict[str, str]
) -> None:
    project_id = make_project(runtime, n_sources=1)
    vote_all(runtime, project_id, users(runtime, ["a1", "a2", "a3"]))
    token = admin["Authorization"].removeprefix("Bearer ")
    client.cookies.set(SESSION_COOKIE, token)
    csrf = csrf_token_for(runtime, token)
    assert '<option value="plurality" selected>' in client.get(f"/admin/projects/{project_id}").text
    saved = client.post(
        f"/admin/projects/{project_id}/settings",
        data={"csrf_token": csrf, "aggregation": "dawid_skene"},
        follow_redirects=False,
    )
    assert saved.status_code == 303
    assert '<option value="dawid_skene" selected>' in client.get(f"/admin/projects/{project_id}").text
    assert "the project's setting (dawid_skene)" in client.get(f"/admin/projects/{project_id}/datasets").text

    form = {"csrf_token": csrf, "val_fraction": "0", "exports": ["trl"]}
    for method, seed in (("", "1"), ("plurality", "2")):
        built = client.post(
            f"/admin/projects/{project_id}/datasets",
            data={**form, "method": method, "seed": seed},
            follow_redirects=False,
        )
        assert built.status_code == 303, built.text
    bad = client.post(f"/admin/projects/{project_id}/datasets", data={**form, "method": "mean"})
    assert bad.status_code == 422
    listed = client.get(f"/api/v1/projects/{project_id}/datasets", headers=admin).json()
    assert {d["settings"]["seed"]: d["settings"]["method"] for d in listed} == {
        1: "dawid_skene",
        2: "plurality",
    }
    for dataset in listed:
        wait_published(runtime, dataset["id"])


def test_the_review_queue_judges_disputes_by_the_projects_method(
    runtime: Runtime, outvoted: tuple[int, list[TaskInfo]]
) -> None:
    """drop_reasons is what aggregate() drops; the queue asks it with the project's own method, so a
    Dawid-Skene project is not sent to review for the low vote shares that plurality sees."""
    project_id, _ = outvoted
    with runtime.sessions() as session:
        newest = newest_vote_id(session, project_id)
        for method in METHODS:
            settings = AggregationSettings(method=method)
            assert drop_reasons(session, project_id, newest, settings) == (
                aggregate(session, project_id, newest, settings).dropped
            )
        plurality = drop_reasons(session, project_id, newest, AggregationSettings())
        assert list(plurality.values()).count("low_agreement") == 14  # the careful pair: 2 of 5
        assert set(reviews._contested(session, project_id, 0.5).values()) == {"tie", "low_agreement"}
    with session_scope(runtime.sessions) as session:
        session.execute(update(Project).where(Project.id == project_id).values(aggregation="dawid_skene"))
    with runtime.sessions() as session:
        assert set(reviews._contested(session, project_id, 0.5).values()) == {"tie"}
