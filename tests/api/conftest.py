from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from annotation_server.main import create_app
from dspo.cli import ensure_user
from dspo.runtime import Runtime
from tests.helpers import add_members, login, png_bytes, wait_for_jobs


@dataclass
class Api:
    client: TestClient
    runtime: Runtime
    admin: dict[str, str]
    alice: dict[str, str]
    bob: dict[str, str]

    def make_project(
        self,
        *,
        n_images: int = 1,
        overlap: int = 2,
        members: tuple[str, ...] = ("alice", "bob"),
        **fields: object,
    ) -> int:
        """A project with `n_images` small LQ uploads whose jobs have all run, and these members."""
        body = {
            "name": f"p{id(fields)}-{n_images}-{overlap}",
            "n_candidates": 3,
            "overlap": overlap,
            "min_area_fraction": 0.02,
            **fields,
        }
        response = self.client.post("/api/v1/projects", json=body, headers=self.admin)
        assert response.status_code == 201, response.text
        project_id = response.json()["id"]
        add_members(self.client, self.admin, project_id, *members)
        for seed in range(n_images):
            upload = self.client.post(
                f"/api/v1/projects/{project_id}/uploads",
                files={"file": (f"img{seed}.png", png_bytes(48, 32, seed), "image/png")},
                headers=self.admin,
            )
            assert upload.status_code == 201, upload.text
        jobs = wait_for_jobs(self.client, self.admin, project_id)
        assert all(job["state"] == "succeeded" for job in jobs), jobs
        return project_id


@pytest.fixture
def api(runtime: Runtime) -> Iterator[Api]:
    ensure_user(runtime, "root", "admin", "root-password")
    ensure_user(runtime, "alice", "annotator", "alice-password")
    ensure_user(runtime, "bob", "annotator", "bob-password")
    with TestClient(create_app(runtime)) as client:
        yield Api(
            client,
            runtime,
            login(client, "root", "root-password"),
            login(client, "alice", "alice-password"),
            login(client, "bob", "bob-password"),
        )
