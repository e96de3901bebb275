"""16 annotators finish a project with k = 3 over real HTTP against a running `dspo serve` on
PostgreSQL, retrying votes, skipping and releasing on the way; then the database must hold exactly k
counted votes per task and every vote a client was told about."""

import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from bench.api import PASSWORD, Server, bulk_load, create_annotators, login
from dspo.models import Task, User, Vote
from dspo.security import hash_password

K = 3
N_TASKS = 60  # 6 sources: one image-level task and 9 instance tasks each
N_ANNOTATORS = 16
DEADLINE_S = 90  # a hang guard, not a timing assertion


@dataclass
class Log:
    """What the clients saw; shared by the annotator threads under a lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: dict[str, dict[str, Any]] = field(default_factory=dict)  # client_submission_id -> vote
    unexpected: list[str] = field(default_factory=list)
    replays: int = 0
    skips: int = 0
    releases: int = 0
    transient_204: int = 0

    def ack(self, response: httpx.Response, user: str) -> None:
        vote = response.json()
        with self.lock:
            earlier = self.acked.setdefault(vote["client_submission_id"], {**vote, "user": user})
            if earlier["id"] != vote["id"]:
                self.unexpected.append(f"{user}: one submission id, two votes {earlier['id']}, {vote['id']}")

    def fail(self, what: str, response: httpx.Response) -> None:
        with self.lock:
            self.unexpected.append(f"{what}: {response.status_code} {response.text[:300]}")


def client_for(server: Server, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def project_complete(admin: httpx.Client, project_id: int) -> bool:
    stats = admin.get(f"/api/v1/projects/{project_id}/stats")
    stats.raise_for_status()
    by_state = stats.json()["tasks_by_state"]
    return set(by_state) == {"complete"}


def post_at_once(client: httpx.Client, path: str, body: dict[str, Any], copies: int) -> list[httpx.Response]:
    """The same submission sent several times at once, as a client that retries on a timeout might."""
    barrier = threading.Barrier(copies)
    responses: list[httpx.Response] = []

    def send() -> None:
        barrier.wait()
        responses.append(client.post(path, json=body))

    threads = [threading.Thread(target=send) for _ in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return responses


def annotator(
    server: Server, project_id: int, name: str, admin_token: str, log: Log, seed: int, deadline: float
) -> None:
    rng = random.Random(seed)
    # Some annotators are retry-happy, some skip or release more than others.
    retry_p, skip_p, release_p = rng.choice([0.0, 0.3]), rng.choice([0.0, 0.1]), rng.choice([0.0, 0.1])
    token = login(server.base_url, name)
    with client_for(server, token) as client, client_for(server, admin_token) as admin:
        while time.monotonic() < deadline:
            got = client.post(f"/api/v1/projects/{project_id}/next")
            if got.status_code == 204:
                # Nothing for me now; either the project is done, or the last slots are leased by
                # others who may still release them: ask again a little later.
                if project_complete(admin, project_id):
                    return
                with log.lock:
                    log.transient_204 += 1
                time.sleep(rng.uniform(0.02, 0.1))
                continue
            if got.status_code != 200:
                log.fail(f"{name} next", got)
                return
            task = got.json()
            path = f"/api/v1/tasks/{task['id']}"
            roll = rng.random()
            if roll < release_p:
                released = client.post(f"{path}/release")
                if released.status_code != 204:
                    log.fail(f"{name} release", released)
                with log.lock:
                    log.releases += 1
                continue
            submission = uuid.uuid4().hex
            if roll < release_p + skip_p:
                skipped = client.post(f"{path}/skip", json={"client_submission_id": submission})
                if skipped.status_code != 201:
                    log.fail(f"{name} skip", skipped)
                    continue
                log.ack(skipped, name)
                with log.lock:
                    log.skips += 1
                continue
            ids = [c["id"] for c in task["candidates"]]
            outcome = rng.choices(["pick", "tie", "all_bad"], weights=[8, 1, 1])[0]
            body: dict[str, Any] = {"outcome": outcome, "client_submission_id": submission}
            if outcome == "pick":
                body["best_candidate_id"], body["worst_candidate_id"] = rng.sample(ids, 2)
            responses = [client.post(f"{path}/vote", json=body)]
            if rng.random() < retry_p:
                # A retry of the same answer, as a client that lost the response would send it.
                responses.append(client.post(f"{path}/vote", json=body))
            statuses = sorted(r.status_code for r in responses)
            # Exactly one of the copies records the vote (201); every other copy is a replay (200).
            if statuses != [200] * (len(statuses) - 1) + [201]:
                for r in responses:
                    log.fail(f"{name} vote {statuses}", r)
            for r in responses:
                if r.status_code in (200, 201):
                    log.ack(r, name)
            with log.lock:
                log.replays += len(responses) - 1
        log.unexpected.append(f"{name}: still working after {DEADLINE_S} s")


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_sixteen_annotators_finish_a_project(running_server: Server, e2e_database_url: str) -> None:
    project_id = bulk_load(e2e_database_url, N_TASKS, required_votes=K)
    names = create_annotators(e2e_database_url, N_ANNOTATORS)
    engine = sa.create_engine(e2e_database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(
            sa.insert(User).values(
                username="admin", password_hash=hash_password(PASSWORD), role="admin", is_active=True
            )
        )
    admin_token = login(running_server.base_url, "admin")

    log = Log()
    deadline = time.monotonic() + DEADLINE_S
    threads = [
        threading.Thread(
            target=annotator, args=(running_server, project_id, name, admin_token, log, i, deadline)
        )
        for i, name in enumerate(names)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert log.unexpected == []
    # The run did exercise what it is meant to (the rates above make each of these near certain).
    assert log.replays > 0 and log.skips > 0 and log.releases > 0

    with engine.connect() as conn:
        tasks = conn.execute(sa.select(Task.id, Task.state, Task.vote_count, Task.slots_taken)).all()
        votes = conn.execute(
            sa.select(Vote.id, Vote.task_id, Vote.outcome, Vote.client_submission_id, User.username).join(
                User, User.id == Vote.user_id
            )
        ).all()
        leases = conn.scalar(sa.text("SELECT count(*) FROM leases"))
    engine.dispose()

    assert len(tasks) == N_TASKS
    counted = Counter(v.task_id for v in votes if v.outcome != "skip")
    assert {t.id: counted[t.id] for t in tasks} == {t.id: K for t in tasks}
    assert all(t.state == "complete" and t.vote_count == K and t.slots_taken == K for t in tasks)
    assert leases == 0

    # Every acknowledged answer is in the database as it was acknowledged, and nothing else is.
    stored = {v.client_submission_id: v for v in votes}
    assert set(stored) == set(log.acked)
    for submission, acked in log.acked.items():
        vote = stored[submission]
        assert (vote.id, vote.task_id, vote.outcome, vote.username) == (
            acked["id"],
            acked["task_id"],
            acked["outcome"],
            acked["user"],
        )

    with client_for(running_server, admin_token) as admin:
        stats = admin.get(f"/api/v1/projects/{project_id}/stats").json()
    assert stats["tasks_by_state"] == {"complete": N_TASKS}
    assert stats["votes"] == K * N_TASKS and stats["live_leases"] == 0

    server_log = running_server.log()
    assert "Traceback" not in server_log and "500 Internal Server Error" not in server_log, server_log


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_concurrent_copies_of_one_vote_are_replays(running_server: Server, e2e_database_url: str) -> None:
    project_id = bulk_load(e2e_database_url, 40, required_votes=K)
    names = create_annotators(e2e_database_url, 4)
    problems: list[str] = []
    stored: list[int] = []

    def annotate(name: str) -> None:
        with client_for(running_server, login(running_server.base_url, name)) as client:
            for _ in range(10):
                got = client.post(f"/api/v1/projects/{project_id}/next")
                if got.status_code != 200:
                    problems.append(f"next: {got.status_code} {got.text}")
                    return
                task = got.json()
                best, worst = (c["id"] for c in task["candidates"][:2])
                body = {
                    "outcome": "pick",
                    "best_candidate_id": best,
                    "worst_candidate_id": worst,
                    "client_submission_id": uuid.uuid4().hex,
                }
                responses = post_at_once(client, f"/api/v1/tasks/{task['id']}/vote", body, copies=3)
                statuses = sorted(r.status_code for r in responses)
                if statuses != [200, 200, 201]:
                    problems.append(
                        f"{name} task {task['id']}: {statuses} {[r.text[:120] for r in responses]}"
                    )
                stored.extend({r.json()["id"] for r in responses if r.status_code in (200, 201)})

    threads = [threading.Thread(target=annotate, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(stored) == 4 * 10  # one vote per submission, whatever the statuses
    assert problems == []
