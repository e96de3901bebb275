"""Randomized check of `next` against the plain query it replaced (issue 14), on SQLite and PostgreSQL.

Several annotators interleave next (positions 0 and 1), votes, skips, releases, undo, lease expiry
(single leases and the clock jumping past all of them) and new tasks, one step at a time. Before every
`next` the reference (the old implementation, kept below) runs in a transaction that is rolled back;
`next` must lease exactly the task it leases: the first open task by id with a free slot that the
annotator neither answered, skipped nor holds, or none when there is none. After every step the
database must be consistent and the cursor invariant (dspo.assign) must hold."""

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import bindparam, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bench.api import bulk_load, create_annotators
from dspo import assign
from dspo.db import make_engine, make_session_factory
from dspo.errors import Conflict
from dspo.models import AssignCursor, AssignRecheck, Candidate, Lease, Task, User, Vote

K = 3
N_TASKS = 12
N_ANNOTATORS = 5
LEASE_SECONDS = 60

tasks, leases, votes = assign.tasks, assign.leases, assign.votes

# The pick of dspo.assign before issue 14: every open task in id order, each probed for a vote and a
# lease of the caller. Slow when the caller is far ahead, obviously right.
REFERENCE_PICK = (
    select(tasks.c.id)
    .where(
        tasks.c.project_id == bindparam("project_id"),
        tasks.c.state == "open",
        tasks.c.slots_taken < tasks.c.required_votes,
        ~exists().where(votes.c.task_id == tasks.c.id, votes.c.user_id == bindparam("user_id")),
        ~exists().where(leases.c.task_id == tasks.c.id, leases.c.user_id == bindparam("user_id")),
    )
    .order_by(tasks.c.id)
    .limit(1)
)


def reference_next(
    session: Session, *, project_id: int, user_id: int, now: datetime, position: int
) -> int | None:
    """What `next` did before issue 14 (held leases first, then the reference pick), as a task id."""
    held = session.scalars(
        select(Lease.task_id)
        .join(Task, Task.id == Lease.task_id)
        .where(Lease.user_id == user_id, Task.project_id == project_id, Lease.expires_at >= now)
        .order_by(Lease.id)
    ).all()
    if len(held) > position:
        return held[position]
    assign.reclaim_expired_leases(session, now)
    task_id = None
    for _ in range(position + 1 - len(held)):
        task_id = session.scalar(REFERENCE_PICK, {"project_id": project_id, "user_id": user_id})
        if task_id is None:
            return None
        session.execute(update(Task).where(Task.id == task_id).values(slots_taken=Task.slots_taken + 1))
        session.add(
            Lease(task_id=task_id, user_id=user_id, expires_at=now + timedelta(seconds=LEASE_SECONDS))
        )
        session.flush()
    return task_id


def check_consistent(session: Session, project_id: int) -> int:
    """Slots, counts and states agree with the votes and leases; the cursor invariant holds. Returns
    the number of recheck rows."""
    counted = Counter(
        session.scalars(select(Vote.task_id).where(Vote.outcome.in_(assign.COUNTED_OUTCOMES))).all()
    )
    leased = Counter(session.scalars(select(Lease.task_id)).all())
    for task in session.scalars(select(Task).where(Task.project_id == project_id)):
        assert task.vote_count == counted[task.id], task.id
        assert task.slots_taken == counted[task.id] + leased[task.id] <= task.required_votes, task.id
        assert task.state == ("complete" if task.vote_count >= task.required_votes else "open"), task.id
    voted = {tuple(r) for r in session.execute(select(Vote.task_id, Vote.user_id))}
    held = {tuple(r) for r in session.execute(select(Lease.task_id, Lease.user_id))}
    assert not voted & held, "a lease on a task its holder answered"
    rechecks = {tuple(r) for r in session.execute(select(AssignRecheck.task_id, AssignRecheck.user_id))}
    open_ids = session.scalars(
        select(Task.id).where(Task.project_id == project_id, Task.state == "open")
    ).all()
    for cursor in session.scalars(select(AssignCursor).where(AssignCursor.project_id == project_id)):
        for task_id in open_ids:
            key = (task_id, cursor.user_id)
            if task_id <= cursor.last_task_id and key not in voted and key not in held:
                assert key in rechecks, f"task {task_id} below the cursor of {cursor.user_id} is lost"
    return len(rechecks)


class World:
    """The annotators, a clock, and the operations the test interleaves."""

    def __init__(self, sessions: sessionmaker[Session], project_id: int, users: list[int], seed: int) -> None:
        self.sessions, self.project_id, self.users = sessions, project_id, users
        self.rng = random.Random(seed)
        self.now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
        self.submissions = 0
        self.nexts = self.leased = self.empty = 0

    def submission(self) -> str:
        self.submissions += 1
        return f"s{self.submissions}"

    def answer(self, session: Session, task_id: int, outcome: str) -> assign.VoteInput:
        source_id = session.scalar(select(Task.source_id).where(Task.id == task_id))
        ids = session.scalars(select(Candidate.id).where(Candidate.source_id == source_id)).all()
        data = assign.VoteInput(outcome=outcome, client_submission_id=self.submission())
        if outcome == "pick":
            data.best_candidate_id, data.worst_candidate_id = self.rng.sample(list(ids), 2)
        return data

    def held(self, session: Session, user_id: int) -> list[int]:
        return list(session.scalars(select(Lease.task_id).where(Lease.user_id == user_id).order_by(Lease.id)))

    def some_task(self, session: Session, user_id: int) -> int | None:
        """A task this annotator holds, most of the time; sometimes any task (a vote without a lease)."""
        held = self.held(session, user_id)
        if held and self.rng.random() < 0.85:
            return self.rng.choice(held)
        return self.rng.randint(1, session.scalar(select(func.max(Task.id))))

    def step(self) -> None:
        user_id = self.rng.choice(self.users)
        self.now += timedelta(seconds=self.rng.uniform(0.5, 3))
        op = self.rng.choices(
            ["next", "vote", "skip", "release", "undo", "expire_one", "expire_all", "add_tasks"],
            weights=[40, 30, 6, 5, 6, 3, 0.7, 0.5],
        )[0]
        getattr(self, op)(user_id)

    def next(self, user_id: int) -> None:
        position = self.rng.choice([0, 0, 0, 1])
        with self.sessions() as session:
            expected = reference_next(
                session, project_id=self.project_id, user_id=user_id, now=self.now, position=position
            )
            session.rollback()
            task = assign.next_task(
                session,
                project_id=self.project_id,
                user_id=user_id,
                now=self.now,
                lease_seconds=LEASE_SECONDS,
                position=position,
            )
            session.commit()
        got = None if task is None else task.id
        assert got == expected, (
            f"user {user_id} position {position}: next gave {got}, the reference {expected}"
        )
        self.nexts += 1
        self.leased += got is not None
        self.empty += got is None

    def _vote(self, user_id: int, outcome: str) -> None:
        with self.sessions() as session:
            task_id = self.some_task(session, user_id)
            if task_id is None:
                return
            data = self.answer(session, task_id, outcome)
            try:
                assign.submit_vote(session, task_id=task_id, user_id=user_id, data=data, now=self.now)
                session.commit()
            except (Conflict, IntegrityError):
                session.rollback()  # answered before, or no free slot: refused, nothing written

    def vote(self, user_id: int) -> None:
        self._vote(user_id, self.rng.choices(["pick", "tie", "all_bad"], weights=[8, 1, 1])[0])

    def skip(self, user_id: int) -> None:
        self._vote(user_id, "skip")

    def release(self, user_id: int) -> None:
        with self.sessions() as session:
            held = self.held(session, user_id)
            if held:
                assert assign.release_task(session, task_id=self.rng.choice(held), user_id=user_id)
                session.commit()

    def undo(self, user_id: int) -> None:
        """Replace one of the annotator's recent answers: an answer by a skip (frees a slot, may reopen
        a complete task), a skip by an answer, or an answer by another."""
        with self.sessions() as session:
            recent = session.scalars(
                select(Vote).where(Vote.user_id == user_id, Vote.created_at > self.now - assign.REPLACE_GRACE)
            ).all()
            if not recent:
                return
            old = self.rng.choice(recent)
            outcome = "pick" if old.outcome == "skip" else self.rng.choice(["skip", "skip", "tie"])
            data = self.answer(session, old.task_id, outcome)
            try:
                assign.replace_vote(
                    session,
                    task_id=old.task_id,
                    user_id=user_id,
                    replaces_submission_id=old.client_submission_id,
                    data=data,
                    now=self.now,
                )
                session.commit()
            except Conflict:
                session.rollback()  # a skip that others filled since: it stays

    def expire_one(self, user_id: int) -> None:
        with self.sessions() as session:
            ids = session.scalars(select(Lease.id)).all()
            if ids:
                session.execute(
                    update(Lease)
                    .where(Lease.id == self.rng.choice(ids))
                    .values(expires_at=self.now - timedelta(seconds=1))
                )
                session.commit()

    def expire_all(self, user_id: int) -> None:
        self.now += timedelta(seconds=LEASE_SECONDS + 1)

    def add_tasks(self, user_id: int) -> None:
        """New image-level tasks on existing sources, the way the tasks job adds them."""
        with self.sessions() as session:
            assign.lock_new_task_ids(session, self.project_id)
            sources = session.scalars(select(Task.source_id).where(Task.project_id == self.project_id)).all()
            session.add_all(
                Task(
                    project_id=self.project_id,
                    source_id=self.rng.choice(sources),
                    instance_id=None,
                    kind="image",
                    required_votes=K,
                    created_at=self.now,
                )
                for _ in range(self.rng.randint(1, 4))
            )
            session.commit()


# A limit of 0 or 2 makes most scans write recheck rows for the tasks they pass; the default lets
# these small projects' scans hold the cursor below them instead.
@pytest.mark.parametrize(
    ("seed", "rescan_limit"), [(1, assign.RESCAN_LIMIT), (2, assign.RESCAN_LIMIT), (3, 0), (4, 2)]
)
def test_next_matches_the_plain_query_under_random_interleavings(
    database_url: str, seed: int, rescan_limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(assign, "RESCAN_LIMIT", rescan_limit)
    project_id = bulk_load(database_url, N_TASKS, required_votes=K)
    create_annotators(database_url, N_ANNOTATORS)
    engine = make_engine(database_url, pool_size=2)
    sessions = make_session_factory(engine)
    with sessions() as session:
        users = list(session.scalars(select(User.id).order_by(User.id)))
    world = World(sessions, project_id, users, seed)
    most_rechecks = 0
    try:
        for _ in range(600):
            world.step()
            with sessions() as session:
                most_rechecks = max(most_rechecks, check_consistent(session, project_id))
                session.rollback()
        # The run must have exercised what it claims to: leases given, annotators sent away empty,
        # and the cursors (with their recheck rows) in use.
        assert world.leased > 50 and world.empty > 5 and most_rechecks > 0, vars(world)
        with sessions() as session:
            assert session.scalar(select(func.count()).select_from(AssignCursor)) == N_ANNOTATORS
    finally:
        engine.dispose()


@pytest.mark.parametrize("rescan_limit", [assign.RESCAN_LIMIT, 0])
def test_no_task_is_lost_when_annotators_race(
    database_url: str, rescan_limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight annotators in threads, each its own session, doing the same operations at once (leases
    of 1 s, so that some expire mid-task). Then each asks for tasks until `next` has none: by then the
    plain query must have none for them either, and the cursor invariant must hold."""
    import threading

    from dspo.db import utcnow

    monkeypatch.setattr(assign, "RESCAN_LIMIT", rescan_limit)

    project_id = bulk_load(database_url, 60, required_votes=K)
    create_annotators(database_url, 8)
    engine = make_engine(database_url, pool_size=10)
    sessions = make_session_factory(engine)
    with sessions() as session:
        users = list(session.scalars(select(User.id).order_by(User.id)))
    failures: list[BaseException] = []

    def work(user_id: int, seed: int) -> None:
        world = World(sessions, project_id, users, seed)
        rng = world.rng
        try:
            for _ in range(60):
                with sessions() as session:
                    task = assign.next_task(
                        session, project_id=project_id, user_id=user_id, now=utcnow(), lease_seconds=1
                    )
                    session.commit()
                if task is None:
                    continue
                world.now = utcnow()
                roll = rng.random()
                if roll < 0.1:
                    world.release(user_id)
                elif roll < 0.2:
                    world.skip(user_id)
                elif roll < 0.3:
                    world.undo(user_id)
                else:
                    world.vote(user_id)
        except BaseException as error:  # reported by the main thread
            failures.append(error)

    try:
        threads = [threading.Thread(target=work, args=(u, i)) for i, u in enumerate(users)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not failures, failures
        later = utcnow() + timedelta(seconds=5)  # every lease has expired
        for user_id in users:
            while True:
                with sessions() as session:
                    expected = reference_next(
                        session, project_id=project_id, user_id=user_id, now=later, position=0
                    )
                    session.rollback()
                    task = assign.next_task(
                        session, project_id=project_id, user_id=user_id, now=later, lease_seconds=60
                    )
                    session.commit()
                assert (task and task.id) == expected
                if task is None:
                    break
                with sessions() as session:
                    data = assign.VoteInput(outcome="skip", client_submission_id=f"end-{task.id}-{user_id}")
                    assign.submit_vote(session, task_id=task.id, user_id=user_id, data=data, now=later)
                    session.commit()
        with sessions() as session:
            check_consistent(session, project_id)
    finally:
        engine.dispose()
