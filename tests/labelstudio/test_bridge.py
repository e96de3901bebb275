"""The bridge against a real Label Studio server: push, answers from three Label Studio users through
its API, the webhook to a running server here, update and delete, answers given while this server was
stopped arriving by `sync`, and a dataset built from them."""

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from annotation_server.main import create_app
from dspo.dataset_format import read_records
from dspo.datasets import BuildSettings, dataset_dir, request_dataset
from dspo.labelstudio import bridge
from dspo.labelstudio.bridge import WEBHOOK_PATH, WEBHOOK_SECRET_HEADER
from dspo.models import Dataset, LabelStudioAnswer, Task, User, Vote, VoteRevision
from dspo.runtime import Runtime
from tests.datasets.helpers import make_project, wait_jobs
from tests.helpers import serving
from tests.labelstudio.conftest import ANNOTATORS
from tests.labelstudio.server import LabelStudioServer

pytestmark = pytest.mark.labelstudio


def choice(name: str, value: str) -> dict[str, Any]:
    return {"from_name": name, "to_name": "lq", "type": "choices", "value": {"choices": [value]}}


def text(name: str, value: str) -> dict[str, Any]:
    return {"from_name": name, "to_name": "lq", "type": "textarea", "value": {"text": [value]}}


def pick(best: str, worst: str, content: str = "", defect: str = "") -> list[dict[str, Any]]:
    result = [choice("best", best), choice("worst", worst)]
    return result + [text("content", content)] * bool(content) + [text("defect", defect)] * bool(defect)


def wait_until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Poll until `check` gives something true (the webhook is delivered from Label Studio's thread)."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.05)
    return found


def answers(runtime: Runtime, project_id: int) -> dict[int, LabelStudioAnswer]:
    with runtime.sessions() as session:
        rows = session.scalars(select(LabelStudioAnswer).where(LabelStudioAnswer.project_id == project_id))
        return {row.annotation_id: row for row in rows}


def votes_of(runtime: Runtime, task_id: int) -> dict[str, Vote]:
    """The task's votes by the voter's user name."""
    with runtime.sessions() as session:
        rows = session.execute(
            select(User.username, Vote).join(Vote, Vote.user_id == User.id).where(Vote.task_id == task_id)
        ).all()
        return {name: vote for name, vote in rows}


def test_push_answers_webhook_update_delete_sync_and_dataset(
    runtime: Runtime, labelstudio: LabelStudioServer, annotators: dict[str, tuple[int, str]]
) -> None:
    from label_studio_sdk import LabelStudio  # here: the fixture says what to install when it is missing

    started = time.monotonic()
    project_id = make_project(runtime, n_sources=2, overlap=3, instructions="Pick the sharpest.")
    with runtime.sessions() as session:
        task_ids = sorted(session.scalars(select(Task.id).where(Task.project_id == project_id)))
    one, two, three = (LabelStudio(base_url=labelstudio.url, api_key=annotators[e][1]) for e in ANNOTATORS)

    with serving(create_app(runtime)) as port:
        public_url = f"http://127.0.0.1:{port}"
        first = bridge.push(runtime, project_id, labelstudio.url, labelstudio.token, public_url=public_url)
        assert first.created_project and first.tasks_created == len(task_ids) and first.webhook_id
        # Pushing twice creates nothing twice.
        again = bridge.push(runtime, project_id, labelstudio.url, labelstudio.token, public_url=public_url)
        assert (again.ls_project_id, again.webhook_id) == (first.ls_project_id, first.webhook_id)
        assert not again.created_project and again.tasks_created == again.tasks_refreshed == 0
        admin = LabelStudio(base_url=labelstudio.url, api_key=labelstudio.token)
        project = admin.projects.get(first.ls_project_id)
        assert project.maximum_annotations == 3 and "Pick the sharpest." in (project.expert_instruction or "")
        pushed = list(admin.tasks.list(project=first.ls_project_id, fields="task_only"))
        assert sorted(t.data["dspo_task_id"] for t in pushed) == task_ids
        assert len(admin.webhooks.list(project=str(first.ls_project_id))) == 1
        ls_task = {t.data["dspo_task_id"]: t for t in pushed}

        # The images behind the signed URLs; a URL with another signature is refused.
        data = ls_task[task_ids[0]].data
        for key in ("lq", "c1", "c2", "c3"):
            image = httpx.get(data[key])
            assert image.status_code == 200 and image.content.startswith(b"\x89PNG"), (key, image.text)
        assert httpx.get(data["c1"][:-4] + "0000").status_code == 403
        assert httpx.get(data["c1"].split("?")[0]).status_code == 422

        # Three annotators answer the first task through Label Studio's API; the webhook brings them.
        t1, order = task_ids[0], data["dspo_candidates"]
        a1 = one.annotations.create(id=ls_task[t1].id, result=pick("A", "C", "a roof", "smeared tiles"))
        a2 = two.annotations.create(id=ls_task[t1].id, result=[choice("verdict", "No difference")])
        a3 = three.annotations.create(id=ls_task[t1].id, result=pick("B", "B"))
        wait_until(lambda: len(answers(runtime, project_id)) == 3, "three answers")
        rows = answers(runtime, project_id)
        assert rows[a3.id].state == "rejected" and "the same" in rows[a3.id].reason
        assert rows[a1.id].state == rows[a2.id].state == "accepted"
        votes = votes_of(runtime, t1)
        assert set(votes) == {ANNOTATORS[0], ANNOTATORS[1]}  # the rejected answer holds no vote
        v1, v2 = votes[ANNOTATORS[0]], votes[ANNOTATORS[1]]
        assert (v1.outcome, v1.best_candidate_id, v1.worst_candidate_id) == ("pick", order[0], order[2])
        assert (v1.content_text, v1.defect_text, v1.shown_order) == ("a roof", "smeared tiles", order)
        assert (v2.outcome, v2.best_candidate_id, v2.worst_candidate_id) == ("tie", None, None)
        with runtime.sessions() as session:
            created = session.scalars(select(User).where(User.username.in_(ANNOTATORS))).all()
            assert {u.role for u in created} == {"annotator"} and len(created) == 3

        # The same delivery again (a retry) changes nothing.
        payload = {
            "action": "ANNOTATION_CREATED",
            "annotation": admin.annotations.get(a1.id).model_dump(mode="json"),
            "task": {"id": ls_task[t1].id, "data": data},
        }
        url = f"{public_url}{WEBHOOK_PATH}?project={project_id}"
        replay = httpx.post(url, json=payload, headers={WEBHOOK_SECRET_HEADER: "the-webhook-secret"})
        assert replay.status_code == 200 and replay.json()["accepted"] == 1, replay.text
        assert httpx.post(url, json=payload, headers={WEBHOOK_SECRET_HEADER: "wrong"}).status_code == 403
        assert votes_of(runtime, t1)[ANNOTATORS[0]].id == v1.id
        assert answers(runtime, project_id)[a1.id].revision == 0

        # An update becomes a revision of the vote; a delete withdraws it (a skip, which never counts).
        one.annotations.update(id=a1.id, result=pick("C", "A", "a roof", "blurred"))
        wait_until(lambda: answers(runtime, project_id)[a1.id].revision == 1, "the update")
        v1 = votes_of(runtime, t1)[ANNOTATORS[0]]
        assert (v1.best_candidate_id, v1.worst_candidate_id) == (order[2], order[0])
        assert v1.defect_text == "blurred"
        with runtime.sessions() as session:
            old = session.scalars(select(VoteRevision).where(VoteRevision.vote_id == v1.id)).one()
            assert (old.best_candidate_id, old.defect_text) == (order[0], "smeared tiles")
        two.annotations.delete(id=a2.id)
        wait_until(lambda: answers(runtime, project_id)[a2.id].state == "deleted", "the delete")
        assert votes_of(runtime, t1)[ANNOTATORS[1]].outcome == "skip"

    # This server is stopped: answers given now reach it by `sync` only.
    t2 = task_ids[1]
    order2 = ls_task[t2].data["dspo_candidates"]
    late = [user.annotations.create(id=ls_task[t2].id, result=pick("B", "A")) for user in (one, two, three)]
    three.annotations.update(id=a3.id, result=pick("B", "A", "a roof"))  # the rejected one, mended
    one.annotations.delete(id=a1.id)
    env = {
        **os.environ,
        "DSPO_DATABASE_URL": runtime.settings.database_url,
        "DSPO_STORAGE_ROOT": str(runtime.settings.storage_root),
        "LABEL_STUDIO_API_KEY": labelstudio.token,
    }
    synced = subprocess.run(
        [sys.executable, "-m", "dspo.cli", "labelstudio", "sync", "--project", str(project_id)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert synced.returncode == 0, synced.stderr
    assert "applied: 4 accepted, 0 rejected, 1 deleted" in synced.stdout, synced.stdout
    rows = answers(runtime, project_id)
    assert all(rows[a.id].state == "accepted" for a in late) and rows[a1.id].state == "deleted"
    votes2 = votes_of(runtime, t2)
    assert len(votes2) == 3
    assert {(v.outcome, v.best_candidate_id, v.worst_candidate_id) for v in votes2.values()} == {
        ("pick", order2[1], order2[0])
    }
    votes1 = votes_of(runtime, t1)
    assert [votes1[e].outcome for e in ANNOTATORS] == ["skip", "skip", "pick"]
    # A second sync finds nothing to do.
    again_synced = bridge.sync(runtime, project_id, labelstudio.token)
    assert again_synced.unchanged == again_synced.annotations == 4 and again_synced.applied.accepted == 0

    # A dataset built from them: the two tasks' answers, exactly.
    dataset_id, _job, _created = request_dataset(
        runtime, project_id, BuildSettings(min_votes=1, val_fraction=0.0), up_to_vote_id=None
    )
    wait_jobs(runtime, project_id)
    with runtime.sessions() as session:
        dataset = session.get(Dataset, dataset_id)
        assert dataset is not None and dataset.state == "published", dataset and dataset.error
        counted = session.scalar(select(func.count()).select_from(Vote).where(Vote.outcome != "skip"))
    root = dataset_dir(runtime, dataset)
    snapshot = pq.read_table(next(root.glob("**/votes.parquet"))).to_pylist()
    assert len([v for v in snapshot if v["outcome"] != "skip"]) == counted == 4
    records = {r.record_id: r for r in read_records(next(p.parent for p in root.glob("**/manifest.json")))}
    by_task = {}
    with runtime.sessions() as session:
        for task_id in (t1, t2):
            task = session.get(Task, task_id)
            assert task is not None
            by_task[task_id] = f"{task.source_id}-{task.instance_id if task.instance_id else 'image'}"
    r1, r2 = records[by_task[t1]], records[by_task[t2]]
    assert (r1.winner_candidate_id, r1.loser_candidate_id, r1.votes) == (str(order[1]), str(order[0]), 1)
    assert r1.content_text == "a roof"
    assert (r2.winner_candidate_id, r2.loser_candidate_id, r2.votes) == (str(order2[1]), str(order2[0]), 3)
    print(f"the bridge test took {time.monotonic() - started:.1f} s")
