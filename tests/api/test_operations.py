"""What an operator watches: /readyz, Prometheus /metrics, JSON logs, and .env.example."""

import json
import logging
import re
from pathlib import Path

from fastapi.testclient import TestClient

from annotation_server.main import create_app
from dspo.logs import JsonFormatter
from dspo.runtime import Runtime
from dspo.settings import Settings
from tests.api.conftest import Api
from tests.helpers import pick

ROOT = Path(__file__).resolve().parents[2]


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample of a Prometheus exposition with this name and these labels."""
    for line in text.splitlines():
        found = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if found is None or found.group(1) != name:
            continue
        present = dict(re.findall(r'(\w+)="([^"]*)"', found.group(2) or ""))
        if all(present.get(k) == v for k, v in labels.items()):
            return float(found.group(3))
    return None


def test_readyz_says_ready_when_the_database_is_migrated(api: Api) -> None:
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "migrations": "ok"}}


def test_readyz_names_what_is_not_ready(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'never-migrated.db'}",
        storage_root=tmp_path / "blobs",
        broker_url="redis://127.0.0.1:1/0",  # nobody listens there
        _env_file=None,  # type: ignore[call-arg]
    )
    runtime = Runtime.from_settings(settings)
    try:
        with TestClient(create_app(runtime)) as client:
            answer = client.get("/readyz")
        assert answer.status_code == 503
        checks = answer.json()["checks"]
        assert answer.json()["status"] == "not ready"
        assert checks["database"].startswith("unreachable or not migrated: no such table: alembic_version")
        assert checks["broker"].startswith("unreachable: ")
    finally:
        runtime.close()


def test_metrics_count_requests_by_route_votes_leases_and_jobs(api: Api) -> None:
    project_id = api.make_project()
    before = api.client.get("/metrics").text
    task = api.client.post(f"/api/v1/projects/{project_id}/next", headers=api.alice).json()
    voted = api.client.post(f"/api/v1/tasks/{task['id']}/vote", json=pick(task), headers=api.alice)
    assert voted.status_code == 201
    text = api.client.get("/metrics").text

    def grew(name: str, **labels: str) -> float:
        return (sample(text, name, **labels) or 0) - (sample(before, name, **labels) or 0)

    assert grew("dspo_votes_accepted_total", outcome="pick") == 1
    assert grew("dspo_tasks_leased_total") == 1
    # By route template, so that label values stay few.
    route = {"route": "/api/v1/tasks/{task_id}/vote", "method": "POST", "status": "201"}
    assert grew("dspo_http_request_duration_seconds_count", **route) == 1
    assert sample(text, "dspo_jobs", kind="ingest", state="succeeded") == 1
    assert sample(text, "dspo_job_duration_seconds_count", kind="candidates", state="succeeded") == 1
    assert sample(text, "dspo_job_duration_seconds_bucket", kind="candidates", le="+Inf") == 1


def test_json_logs_are_one_object_a_line() -> None:
    record = logging.LogRecord("dspo.jobs", logging.WARNING, __file__, 1, "job %s: %s", (7, "late"), None)
    record.job_id = 7  # an `extra=` field
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert "\n" not in line
    assert (entry["level"], entry["logger"], entry["message"], entry["job_id"]) == (
        "WARNING",
        "dspo.jobs",
        "job 7: late",
        7,
    )


def test_env_example_lists_every_setting() -> None:
    example = (ROOT / ".env.example").read_text()
    named = set(re.findall(r"^#? ?(DSPO_[A-Z0-9_]+)=", example, flags=re.MULTILINE))
    assert named == {f"DSPO_{name.upper()}" for name in Settings.model_fields}
