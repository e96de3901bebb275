"""Upload → ingest → candidates → instances → tasks, in-process, through the API."""

from tests.api.conftest import Api
from tests.helpers import add_members, png_bytes, wait_for_jobs


def test_upload_runs_the_whole_pipeline(api: Api) -> None:
    project_id = api.make_project(n_images=2)
    sources = api.client.get(f"/api/v1/projects/{project_id}/sources", headers=api.admin).json()
    assert [s["state"] for s in sources] == ["ready", "ready"]
    stats = api.client.get(f"/api/v1/projects/{project_id}/stats", headers=api.admin).json()
    assert stats["tasks_by_state"]["open"] == stats["tasks_total"] >= 4
    assert stats["sources_by_state"] == {"ready": 2}
    assert stats["jobs_by_state"] == {"succeeded": 8}


def test_hq_upload_is_degraded_with_recorded_parameters(api: Api) -> None:
    project = api.client.post("/api/v1/projects", json={"name": "hq", "scale": 2}, headers=api.admin).json()
    add_members(api.client, api.admin, project["id"], "alice")
    upload = api.client.post(
        f"/api/v1/projects/{project['id']}/uploads",
        files={"file": ("hq.png", png_bytes(96, 64), "image/png")},
        data={"kind": "hq", "prompt": "a test pattern"},
        headers=api.admin,
    )
    assert upload.status_code == 201, upload.text
    wait_for_jobs(api.client, api.admin, project["id"])
    source = api.client.get(f"/api/v1/projects/{project['id']}/sources", headers=api.admin).json()[0]
    assert (source["width"], source["height"]) == (48, 32)
    assert source["degradation"] and source["prompt"] == "a test pattern"
    lq = api.client.get(f"/api/v1/images/sources/{source['id']}/lq", headers=api.alice)
    hq = api.client.get(f"/api/v1/images/sources/{source['id']}/hq", headers=api.admin)
    assert lq.status_code == 200 and hq.status_code == 200
    assert api.client.get(f"/api/v1/images/sources/{source['id']}/hq", headers=api.alice).status_code == 403


def test_failed_job_is_visible_with_its_error(api: Api) -> None:
    project = api.client.post(
        "/api/v1/projects", json={"name": "broken", "generator": "no-such-generator"}, headers=api.admin
    ).json()
    api.client.post(
        f"/api/v1/projects/{project['id']}/uploads",
        files={"file": ("a.png", png_bytes(), "image/png")},
        headers=api.admin,
    )
    jobs = wait_for_jobs(api.client, api.admin, project["id"])
    failed = [j for j in jobs if j["state"] == "failed"]
    assert [j["kind"] for j in failed] == ["candidates"]
    assert "no-such-generator" in failed[0]["error"]
    one = api.client.get(f"/api/v1/jobs/{failed[0]['id']}", headers=api.admin).json()
    assert one["error"] == failed[0]["error"] and one["finished_at"]
