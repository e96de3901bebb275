"""The admin pages of datasets, on SQLite and PostgreSQL: build from the form, follow the build, see
counts, drops and downloads with size and sha256, and browse the records with their thumbnails."""

import hashlib
import re
import time

from fastapi.testclient import TestClient

from annotation_server.deps import SESSION_COOKIE, csrf_token_for
from dspo.runtime import Runtime
from tests.datasets.helpers import make_project, users, vote_all


def test_build_follow_download_and_browse_from_the_pages(
    runtime: Runtime, client: TestClient, admin: dict[str, str]
) -> None:
    project_id = make_project(runtime, n_sources=3)
    vote_all(runtime, project_id, users(runtime, ["a1", "a2", "a3"]))
    token = admin["Authorization"].removeprefix("Bearer ")
    client.cookies.set(SESSION_COOKIE, token)
    page = client.get(f"/admin/projects/{project_id}/datasets")
    assert page.status_code == 200 and "No dataset yet" in page.text

    form = {
        "csrf_token": csrf_token_for(runtime, token),
        "min_agreement": "0.5",
        "val_fraction": "0.3",
        "seed": "2",
        "shard_size": "10",
        "image_level": "true",
        "exports": ["trl", "webdataset"],
    }
    built = client.post(f"/admin/projects/{project_id}/datasets", data=form, follow_redirects=False)
    assert built.status_code == 303 and built.headers["location"] == f"/admin/projects/{project_id}/datasets"
    deadline = time.monotonic() + 120
    while "<td>published" not in (page := client.get(f"/admin/projects/{project_id}/datasets")).text:
        assert "<td>failed" not in page.text and time.monotonic() < deadline, page.text
        # While it builds, the page shows the job's progress and refreshes itself.
        assert 'http-equiv="refresh"' in page.text and "<progress" in page.text
        time.sleep(0.1)
    assert 'http-equiv="refresh"' not in page.text

    [dataset] = client.get(f"/api/v1/projects/{project_id}/datasets", headers=admin).json()
    assert dataset["settings"]["exports"] == ["trl", "webdataset"] and dataset["settings"]["seed"] == 2
    counts = dataset["counts"]
    assert f'<td class="num">{counts["records"]}</td>' in page.text
    for reason, n in counts["drops"].items():
        assert f"{reason}: {n}" in page.text
    links = re.findall(r'href="(/api/v1/datasets/\d+/files/[^"]+)"', page.text)
    assert sorted(link.split("/files/")[1] for link in links) == sorted(dataset["files"])
    for name, info in dataset["files"].items():
        assert info["sha256"] in page.text
        if name.startswith("trl/"):
            body = client.get(f"/api/v1/datasets/{dataset['id']}/files/{name}").content  # the cookie suffices
            assert hashlib.sha256(body).hexdigest() == info["sha256"] and len(body) == info["size"]

    records = client.get(f"/admin/datasets/{dataset['id']}/records")
    assert records.status_code == 200 and f"{counts['records']} records" in records.text
    thumbs = re.findall(r'<img class="thumb[^"]*" src="([^"]+)"', records.text)
    assert thumbs and any("/mask" in t for t in thumbs)
    for url in set(thumbs):
        assert client.get(url).headers["content-type"] == "image/png", url
    val = client.get(f"/admin/datasets/{dataset['id']}/records?split=val")
    assert f"{counts['val']} records in val" in val.text
    client.cookies.clear()
