"""PostgreSQL restarted under load (issue 15): annotators keep voting through a running `dspo serve`
(two server processes) while the database restarts, and then once more while they pause (the servers'
pools then hold dead connections that no request has found out yet). No acknowledged vote may be lost,
and once the database accepts connections again no request may get a 5xx. While it is down, requests
get 503 with Retry-After (the database cannot be reached), and clients send the same vote again.

A private PostgreSQL (tests/faults/conftest.py): the shared one serves other tests."""

import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from bench.api import PASSWORD, bulk_load, create_annotators, login, serve
from dspo.migrate import upgrade
from dspo.models import Vote
from tests.faults.conftest import PrivatePostgres, wait_for

pytestmark = [pytest.mark.faults]

N_ANNOTATORS = 6
N_TASKS = 400  # more than the run answers: the load never runs out of work


@dataclass
class Seen:
    """What the clients saw: (when sent, status or exception name) of every request, and the votes
    acknowledged to them."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: list[tuple[float, int | str]] = field(default_factory=list)
    acked: dict[str, int] = field(default_factory=dict)  # client_submission_id -> vote id

    def send(self, client: httpx.Client, path: str, body: dict | None = None) -> httpx.Response | None:
        sent = time.monotonic()
        try:
            response = client.post(path, json=body)
        except httpx.TransportError as exc:
            with self.lock:
                self.answers.append((sent, type(exc).__name__))
            return None
        with self.lock:
            self.answers.append((sent, response.status_code))
        return response


def annotate(
    base_url: str, name: str, project_id: int, seen: Seen, stop: threading.Event, go: threading.Event
) -> None:
    token = login(base_url, name, PASSWORD)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        while not stop.is_set():
            go.wait()
            got = seen.send(client, f"/api/v1/projects/{project_id}/next")
            if got is None or got.status_code != 200:
                time.sleep(0.05)  # 503 while the database is down, 204 when nothing is free: ask again
                continue
            task = got.json()
            ids = [c["id"] for c in task["candidates"]]
            body = {
                "best_candidate_id": ids[0],
                "worst_candidate_id": ids[1],
                "client_submission_id": uuid.uuid4().hex,
            }
            # The same answer until it is acknowledged, as a client that got an error sends it again.
            while not stop.is_set():
                voted = seen.send(client, f"/api/v1/tasks/{task['id']}/vote", body)
                if voted is not None and voted.status_code in (200, 201):
                    with seen.lock:
                        seen.acked[body["client_submission_id"]] = voted.json()["id"]
                    break
                if voted is not None and voted.status_code < 500:
                    break  # the lease ran out meanwhile (409 and the like): take the next task
                time.sleep(0.05)


def test_a_postgres_restart_loses_no_vote_and_costs_no_5xx_once_it_is_back(
    private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    url = private_postgres.url
    upgrade(url)
    project_id = bulk_load(url, N_TASKS, required_votes=3)
    names = create_annotators(url, N_ANNOTATORS)
    seen, stop, go = Seen(), threading.Event(), threading.Event()
    go.set()
    with serve(url, workers=2, workdir=tmp_path) as server:
        threads = [
            threading.Thread(target=annotate, args=(server.base_url, name, project_id, seen, stop, go))
            for name in names
        ]
        for thread in threads:
            thread.start()
        try:
            # Under load: requests fail as the connections die, and the pool learns of it.
            wait_for(lambda: len(seen.acked) >= 30, "votes before the restart", timeout=120)
            private_postgres.stop("fast")  # ends every connection, as a restart or failover does
            time.sleep(1)
            down_until = time.monotonic()
            private_postgres.start()  # returns once the database accepts connections
            back_at = time.monotonic()
            acked = len(seen.acked)
            wait_for(lambda: len(seen.acked) >= acked + 30, "votes after the restart", timeout=120)

            # While idle: the pools hold dead connections that no request has tried yet.
            go.clear()
            time.sleep(1)
            private_postgres.stop("fast")
            private_postgres.start()
            go.set()
            acked = len(seen.acked)
            wait_for(lambda: len(seen.acked) >= acked + 30, "votes after the idle restart", timeout=120)
        finally:
            stop.set()
            go.set()
            for thread in threads:
                thread.join(timeout=60)

    after = [status for sent, status in seen.answers if sent >= back_at]
    during = [status for sent, status in seen.answers if down_until - 1 <= sent < back_at]
    counts = {str(status): during.count(status) for status in set(during)}
    print(f"{len(seen.answers)} requests, {len(seen.acked)} votes acknowledged; around the restart: {counts}")
    assert after and all(isinstance(s, int) and s < 500 for s in after), sorted(set(after), key=str)
    assert set(during) <= {200, 201, 204, 409, 503}, sorted(set(during), key=str)  # 503, never 500

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        stored = dict(conn.execute(sa.select(Vote.client_submission_id, Vote.id)).all())
    engine.dispose()
    assert {s: stored.get(s) for s in seen.acked} == seen.acked  # every acknowledged vote, as acknowledged
