"""The same jobs on a real Celery worker over Redis, against PostgreSQL (production mode)."""

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from annotation_server.main import create_app
from dspo.cli import ensure_user
from dspo.runtime import Runtime
from dspo.settings import Settings
from tests.conftest import celery_worker, production_settings
from tests.helpers import login, png_bytes, wait_for_jobs

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def production(postgres_url: str, redis_url: str, redis_prefix: str, tmp_path: Path) -> Iterator[Settings]:
    settings, env = production_settings(postgres_url, redis_url, redis_prefix, tmp_path)
    with celery_worker(env, tmp_path / "worker.log", "--concurrency", "2", "--pool", "threads"):
        yield settings


def test_jobs_run_on_a_celery_worker(production: Settings) -> None:
    runtime = Runtime.from_settings(production)
    ensure_user(runtime, "root", "admin", "root-password")
    with TestClient(create_app(runtime)) as client:
        admin = login(client, "root", "root-password")
        project = client.post("/api/v1/projects", json={"name": "celery", "n_candidates": 3}, headers=admin)
        project_id = project.json()["id"]
        for seed in range(2):
            upload = client.post(
                f"/api/v1/projects/{project_id}/uploads",
                files={"file": (f"{seed}.png", png_bytes(48, 32, seed), "image/png")},
                headers=admin,
            )
            assert upload.status_code == 201, upload.text
        started = time.monotonic()
        jobs = wait_for_jobs(client, admin, project_id, timeout=120)
        assert [j["state"] for j in jobs] == ["succeeded"] * 8, jobs
        assert all(j["attempts"] == 1 for j in jobs)
        stats = client.get(f"/api/v1/projects/{project_id}/stats", headers=admin).json()
        assert stats["sources_by_state"] == {"ready": 2} and stats["tasks_total"] >= 4
        print(f"8 jobs on the Celery worker took {time.monotonic() - started:.1f} s")
    runtime.close()


def test_an_evaluation_round_is_made_on_a_celery_worker(production: Settings) -> None:
    runtime = Runtime.from_settings(production)
    ensure_user(runtime, "root", "admin", "root-password")
    with TestClient(create_app(runtime)) as client:
        admin = login(client, "root", "root-password")
        project = client.post(
            "/api/v1/projects", json={"name": "celery-eval", "n_candidates": 3}, headers=admin
        )
        project_id = project.json()["id"]
        upload = client.post(
            f"/api/v1/projects/{project_id}/uploads",
            files={"file": ("held.png", png_bytes(48, 32, 0), "image/png")},
            data={"held_out": "true"},
            headers=admin,
        )
        assert upload.status_code == 201, upload.text
        wait_for_jobs(client, admin, project_id, timeout=120)
        side = {"generator": "classical", "generator_settings": {"denoisers": ["tv"]}}
        response = client.post(f"/api/v1/projects/{project_id}/evaluations", json={"b": side}, headers=admin)
        assert response.status_code == 202, response.text
        jobs = wait_for_jobs(client, admin, project_id, timeout=120)
        assert [j["state"] for j in jobs] == ["succeeded"] * 2, jobs
        result = client.get(f"/api/v1/evaluations/{response.json()['id']}", headers=admin).json()
        assert result["evaluation"]["state"] == "open" and result["tasks"] == 1
    runtime.close()
