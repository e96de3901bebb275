"""Evaluation rounds over REST, on SQLite and PostgreSQL, with the real jobs: a round makes one output per
held-out source with each side and blind tasks that `next` serves; each annotator sees the two outputs
in an order of their own, stored with the vote; the results are those of dspo.evaluation_stats on the
known answers; closing decides on promotion exactly by the rule; evaluation answers never reach a
dataset."""

import csv
import io
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from annotation_server.main import create_app
from dspo.cli import ensure_user
from dspo.evaluation_stats import EvalAnswer, summarise, wilson_interval
from dspo.models import Candidate, Vote
from dspo.runtime import Runtime
from dspo.services.evaluations import output_position
from tests.helpers import add_members, login, png_bytes, submission_id

ANNOTATORS = ("alice", "bob", "carol")
# Side B: another classical generator than the project's (whose candidate 0 is bicubic, no denoising).
B_SIDE = {"generator": "classical", "generator_settings": {"methods": ["lanczos"], "denoisers": ["tv"]}}


@dataclass
class Service:
    client: TestClient
    runtime: Runtime
    admin: dict[str, str]
    annotators: dict[str, dict[str, str]]

    def post(self, path: str, body: dict, headers: dict[str, str] | None = None, status: int = 200) -> dict:
        response = self.client.post(f"/api/v1{path}", json=body, headers=headers or self.admin)
        assert response.status_code == status, response.text
        return response.json()

    def get(self, path: str, headers: dict[str, str] | None = None, **params: object) -> dict:
        response = self.client.get(f"/api/v1{path}", params=params, headers=headers or self.admin)
        assert response.status_code == 200, response.text
        return response.json()

    def project(self, held_out: int, kept: int = 0, **fields: object) -> int:
        body = {"name": uuid.uuid4().hex[:8], "n_candidates": 3, "overlap": 2, "segmenter": "felzenszwalb"}
        project_id = self.post("/projects", body | {"min_area_fraction": 0.05} | fields, status=201)["id"]
        add_members(self.client, self.admin, project_id, *ANNOTATORS)  # type: ignore[arg-type]
        for seed in range(held_out + kept):
            response = self.client.post(
                f"/api/v1/projects/{project_id}/uploads",
                files={"file": (f"{seed}.png", png_bytes(24, 16, seed), "image/png")},
                data={"kind": "lq", "held_out": str(seed < held_out).lower()},
                headers=self.admin,
            )
            assert response.status_code == 201, response.text
        self.wait_jobs(project_id)
        return project_id

    def wait_jobs(self, project_id: int) -> None:
        deadline = time.monotonic() + 120
        while True:
            jobs = self.get("/jobs", project_id=project_id, limit=1000)
            if jobs and all(j["state"] in ("succeeded", "failed") for j in jobs):
                assert all(j["state"] == "succeeded" for j in jobs), jobs
                return
            assert time.monotonic() < deadline, jobs
            time.sleep(0.05)

    def start_round(self, project_id: int, **body: object) -> dict:
        evaluation = self.post(f"/projects/{project_id}/evaluations", {"b": B_SIDE} | body, status=202)
        assert evaluation["state"] == "generating" and evaluation["job_id"]
        self.wait_jobs(project_id)
        return self.get(f"/evaluations/{evaluation['id']}")


@pytest.fixture
def service(runtime: Runtime) -> Iterator[Service]:
    ensure_user(runtime, "root", "admin", "root-password")
    for name in ANNOTATORS:
        ensure_user(runtime, name, "annotator", f"{name}-password")
    with TestClient(create_app(runtime)) as client:
        yield Service(
            client,
            runtime,
            login(client, "root", "root-password"),
            {name: login(client, name, f"{name}-password") for name in ANNOTATORS},
        )


def sides(runtime: Runtime, evaluation_id: int) -> dict[int, str]:
    """candidate id -> "a" | "b" of a round's outputs, from the database (the annotator never knows)."""
    with runtime.sessions() as session:
        rows = session.execute(
            select(Candidate.id, Candidate.position).where(Candidate.evaluation_id == evaluation_id)
        ).all()
    return {cid: "a" if pos == output_position(evaluation_id, "a") else "b" for cid, pos in rows}


def answer_all(service: Service, project_id: int, choose) -> list[tuple[str, dict, dict]]:  # noqa: ANN001
    """Each annotator takes tasks from `next` until none is left and answers each with the body
    `choose(name, task)` gives; returns (name, task, body) of every answer."""
    answered = []
    for name, headers in service.annotators.items():
        while True:
            response = service.client.post(f"/api/v1/projects/{project_id}/next", headers=headers)
            if response.status_code == 204:
                break
            assert response.status_code == 200, response.text
            task = response.json()
            body = choose(name, task) | {"client_submission_id": submission_id()}
            path = "skip" if body.get("outcome") == "skip" else "vote"
            service.post(f"/tasks/{task['id']}/{path}", body, headers=headers, status=201)
            answered.append((name, task, body))
    return answered


def test_a_round_is_blind_randomised_and_its_results_are_the_known_answers(service: Service) -> None:
    project_id = service.project(held_out=3)
    result = service.start_round(project_id, name="lanczos+tv against base", required_votes=3)
    evaluation = result["evaluation"]
    assert evaluation["state"] == "open" and (result["tasks"], result["tasks_complete"]) == (3, 0)
    assert evaluation["a"]["label"] == "base (classical)" and evaluation["b"]["settings"]["methods"] == [
        "lanczos"
    ]
    side_of = sides(service.runtime, evaluation["id"])
    assert sorted(side_of.values()) == ["a"] * 3 + ["b"] * 3
    # Both outputs of a source come from the same seed, and the three sources' seeds differ.
    with service.runtime.sessions() as session:
        rows = session.execute(
            select(Candidate.source_id, Candidate.seed).where(Candidate.evaluation_id == evaluation["id"])
        ).all()
    seeds: dict[int, set[int]] = {}
    for source_id, seed in rows:
        seeds.setdefault(source_id, set()).add(seed)
    assert len(seeds) == 3 and all(len(s) == 1 for s in seeds.values())
    assert len(set().union(*seeds.values())) == 3

    def choose(name: str, task: dict) -> dict:
        left, right = (c["id"] for c in task["candidates"])
        b, a = (left, right) if side_of[left] == "b" else (right, left)
        if name == "alice":  # always B
            return {"best_candidate_id": b, "worst_candidate_id": a}
        if name == "bob":  # always the left one
            return {"best_candidate_id": left, "worst_candidate_id": right}
        # carol: no difference, a skip, and A, one on each source
        return [{"outcome": "tie"}, {"outcome": "skip"}, {"best_candidate_id": a, "worst_candidate_id": b}][
            task["source_id"] % 3
        ]

    answered = answer_all(service, project_id, choose)
    assert len(answered) == 9 and {t["kind"] for _, t, _ in answered} == {"evaluation"}

    # Blind: the task names neither side nor generator, and its two candidates are the round's outputs.
    for _, task, _ in answered:
        text = str(task)
        assert {c["id"] for c in task["candidates"]} <= set(side_of) and len(task["candidates"]) == 2
        assert not any(word in text for word in ("lanczos", "classical", "generator", "base"))
    # Randomised per annotator, and the order shown is the order stored with the vote.
    with service.runtime.sessions() as session:
        stored = {v.client_submission_id: v.shown_order for v in session.scalars(select(Vote))}
    for _, task, body in answered:
        assert stored[body["client_submission_id"]] == [c["id"] for c in task["candidates"]]
    b_left = {side_of[task["candidates"][0]["id"]] == "b" for _, task, _ in answered}
    assert b_left == {True, False}, "B was always on the same side"

    # The results are dspo.evaluation_stats over the answers as given.
    expected = []
    for name, task, body in answered:
        if body.get("outcome") == "skip":
            continue
        left = task["candidates"][0]["id"]
        b_side = "left" if side_of[left] == "b" else "right"
        answer = (
            "tie"
            if body.get("outcome") == "tie"
            else "left"
            if body["best_candidate_id"] == left
            else "right"
        )
        expected.append(EvalAnswer(name, task["source_id"], b_side, answer))
    want = summarise(expected, skips=1).to_dict()
    got = service.get(f"/evaluations/{evaluation['id']}")["summary"]
    assert got == _jsonish(want)
    overall = got["overall"]
    wins_b = sum(1 for e in expected if e.outcome == "b")
    ties = sum(1 for e in expected if e.outcome == "tie")
    assert (overall["answers"], overall["wins_b"], overall["ties"]) == (8, wins_b, ties)
    assert overall["wins_b"] >= 3 and overall["ties"] == 1  # alice's three, carol's tie
    assert got["per_annotator"]["alice"]["win_rate"] == 1.0
    assert got["position"]["left_share"] == pytest.approx(
        sum(e.answer == "left" for e in expected) / sum(e.answer != "tie" for e in expected)
    )
    lower, upper = wilson_interval(wins_b + ties / 2, 8)
    assert overall["ties_as_halves_interval"] == pytest.approx([lower, upper])

    # The answers as JSON and as CSV.
    rows = service.get(f"/evaluations/{evaluation['id']}/answers")
    assert len(rows) == 9 and sum(r["answer"] == "skip" for r in rows) == 1
    response = service.client.get(
        f"/api/v1/evaluations/{evaluation['id']}/answers", params={"format": "csv"}, headers=service.admin
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["vote_id"] for r in table] == [str(r["vote_id"]) for r in rows]
    assert [r["b_side"] for r in table] == [r["b_side"] for r in rows]

    # Annotators cannot read a round; closing fixes its numbers (auto_promote is off: nothing changes).
    response = service.client.get(
        f"/api/v1/evaluations/{evaluation['id']}", headers=service.annotators["alice"]
    )
    assert response.status_code == 403
    decision = service.post(f"/evaluations/{evaluation['id']}/close", {})
    assert decision["decision"] == "off" and decision["answers"] == 8
    assert service.post(f"/evaluations/{evaluation['id']}/close", {}) == decision
    assert service.get(f"/evaluations/{evaluation['id']}")["evaluation"]["state"] == "closed"
    assert service.get(f"/projects/{project_id}/promotion-decisions") == [decision]


def _jsonish(value: object) -> object:
    """Tuples as lists, as they come back from JSON."""
    if isinstance(value, dict):
        return {k: _jsonish(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonish(v) for v in value]
    return value


@pytest.mark.parametrize("b_wins", [9, 8, 7, 6])
def test_promotion_happens_exactly_when_the_lower_bound_is_above_one_half(
    service: Service, b_wins: int
) -> None:
    """Of 9 answers for B: 9 (lower bound 0.70) and 8 (0.57) promote, 7 (0.45) and 6 (0.35) keep, the two
    in the middle on either side of the line. The decision keeps its numbers."""
    project_id = service.project(held_out=3, auto_promote=True)
    evaluation = service.start_round(project_id, required_votes=3)["evaluation"]
    side_of = sides(service.runtime, evaluation["id"])
    order = iter(range(9))

    def choose(name: str, task: dict) -> dict:
        ids = [c["id"] for c in task["candidates"]]
        b = next(cid for cid in ids if side_of[cid] == "b")
        a = next(cid for cid in ids if side_of[cid] == "a")
        best, worst = (b, a) if next(order) < b_wins else (a, b)
        return {"best_candidate_id": best, "worst_candidate_id": worst}

    assert len(answer_all(service, project_id, choose)) == 9
    decision = service.post(f"/evaluations/{evaluation['id']}/close", {})
    lower, upper = wilson_interval(b_wins, 9)
    assert (decision["lower_bound"], decision["upper_bound"]) == pytest.approx((lower, upper))
    assert (decision["wins_b"], decision["wins_a"], decision["ties"]) == (b_wins, 9 - b_wins, 0)
    assert decision["decision"] == ("promoted" if lower > 0.5 else "kept")
    project = service.get(f"/projects/{project_id}")
    assert decision["before"] == {"generator": "classical", "settings": {}, "model_version_id": None}
    if decision["decision"] == "promoted":
        assert project["generator_settings"] == B_SIDE["generator_settings"]
        assert decision["after"]["settings"] == B_SIDE["generator_settings"]
    else:
        assert project["generator_settings"] == {} and decision["after"] is None


def test_evaluation_answers_never_reach_a_dataset(service: Service) -> None:
    project_id = service.project(held_out=2, kept=1)
    evaluation = service.start_round(project_id, required_votes=3)["evaluation"]

    def choose(name: str, task: dict) -> dict:
        ids = sorted(c["id"] for c in task["candidates"])  # everyone agrees: a pair from every task
        return {"best_candidate_id": ids[0], "worst_candidate_id": ids[-1]}

    answered = answer_all(service, project_id, choose)
    kinds = {t["kind"] for _, t, _ in answered}
    assert "evaluation" in kinds and kinds - {"evaluation"}
    kept = {t["source_id"] for _, t, _ in answered if t["kind"] != "evaluation"}
    build = service.post(
        f"/projects/{project_id}/datasets",
        {"min_votes": 1, "min_agreement": 0.0, "val_fraction": 0.0, "exports": []},
        status=202,
    )
    service.wait_jobs(project_id)
    dataset = service.get(f"/datasets/{build['dataset']['id']}")
    assert dataset["state"] == "published", dataset
    records = service.get(f"/datasets/{dataset['id']}/records", limit=1000)["records"]
    assert records and {int(r["source_id"]) for r in records} == kept
    assert service.get(f"/evaluations/{evaluation['id']}")["summary"]["overall"]["answers"] == 6


def test_the_project_text_requirements_hold_for_regions_not_for_evaluation_answers(
    service: Service,
) -> None:
    """A project that needs content and defect texts takes a blind evaluation answer without them (it
    only says which output is better) and still refuses a region's vote without them."""
    project_id = service.project(held_out=1, kept=1, require_content=True, require_defect=True)
    service.start_round(project_id, required_votes=3)
    headers = service.annotators["alice"]
    seen = set()
    while (
        response := service.client.post(f"/api/v1/projects/{project_id}/next", headers=headers)
    ).status_code == 200:
        task = response.json()
        ids = [c["id"] for c in task["candidates"]]
        body = {
            "best_candidate_id": ids[0],
            "worst_candidate_id": ids[-1],
            "client_submission_id": submission_id(),
        }
        answer = service.client.post(f"/api/v1/tasks/{task['id']}/vote", json=body, headers=headers)
        if task["kind"] == "evaluation":
            assert answer.status_code == 201, answer.text
        else:
            assert answer.status_code == 422 and "content_text" in answer.json()["detail"], answer.text
            texts = {"content_text": "a cat's ear", "defect_text": "blurred fur"}
            body |= texts | {"client_submission_id": submission_id()}
            service.post(f"/tasks/{task['id']}/vote", body, headers=headers, status=201)
        seen.add(task["kind"])
    assert response.status_code == 204 and "evaluation" in seen and seen - {"evaluation"}


def test_a_round_needs_held_out_sources_and_known_generators(service: Service) -> None:
    project_id = service.project(held_out=0, kept=1)
    response = service.client.post(
        f"/api/v1/projects/{project_id}/evaluations", json={"b": B_SIDE}, headers=service.admin
    )
    assert response.status_code == 422 and "held-out" in response.json()["detail"]
    project_id = service.project(held_out=1)
    for side, message in [
        ({"generator": "no-such"}, "unknown generator 'no-such'"),
        ({"model_version_id": 99}, "model version 99 is not in project"),
        ({"generator_settings": {"x": 1}}, "generator_settings need a generator"),
    ]:
        response = service.client.post(
            f"/api/v1/projects/{project_id}/evaluations", json={"b": side}, headers=service.admin
        )
        assert response.status_code == 422 and message in response.json()["detail"], response.text
    # Settings the generator refuses fail the job, and the round says why.
    evaluation = service.post(
        f"/projects/{project_id}/evaluations",
        {"b": {"generator": "classical", "generator_settings": {"methods": ["nearest"]}}},
        status=202,
    )
    deadline = time.monotonic() + 60
    while (found := service.get(f"/evaluations/{evaluation['id']}"))["evaluation"]["state"] == "generating":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert found["evaluation"]["state"] == "failed" and "methods" in found["evaluation"]["error"]
    response = service.client.post(f"/api/v1/evaluations/{evaluation['id']}/close", headers=service.admin)
    assert response.status_code == 409


def cookie_session(service: Service) -> tuple[TestClient, str]:
    """The admin in a browser-like client logged in through the login page, and its CSRF token."""
    client = TestClient(service.client.app)
    token = client.get("/login").cookies["dspo_login_csrf"]
    form = {"username": "root", "password": "root-password", "csrf_token": token}
    assert client.post("/login", data=form, follow_redirects=False).status_code == 303
    csrf = re.search(r'name="csrf-token" content="([0-9a-f]+)"', client.get("/").text)
    assert csrf is not None
    return client, csrf.group(1)


def test_the_admin_pages_start_show_and_close_a_round(service: Service) -> None:
    project_id = service.project(held_out=2, auto_promote=True)
    browser, csrf = cookie_session(service)
    page = browser.get(f"/admin/projects/{project_id}").text
    assert "2 held-out images" in page and "No rounds yet." in page
    made = browser.post(
        f"/admin/projects/{project_id}/evaluations",
        data={"a": "base", "b": "base", "name": "same", "required_votes": "1", "csrf_token": csrf},
        follow_redirects=False,
    )
    assert made.status_code == 303
    url = made.headers["location"]
    service.wait_jobs(project_id)
    answer_all(service, project_id, lambda name, task: {"outcome": "tie"})
    page = browser.get(url).text
    assert 'id="state">open<' in page and "tasks complete 2 / 2" in page and "alice" in page
    closed = browser.post(f"{url}/close", data={"csrf_token": csrf}, follow_redirects=False)
    assert closed.status_code == 303
    page = browser.get(url).text
    assert 'id="state">closed<' in page and "<strong>kept</strong>" in page
    page = browser.get(f"/admin/projects/{project_id}").text
    assert f'href="/admin/evaluations/{url.rsplit("/", 1)[1]}"' in page and "kept" in page
    response = browser.post(f"/admin/projects/{project_id}/evaluations", data={"b": "v1", "csrf_token": csrf})
    assert response.status_code == 422 and "model version id" in response.text
