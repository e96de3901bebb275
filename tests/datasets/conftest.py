from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from annotation_server.main import create_app
from dspo.cli import ensure_user
from dspo.runtime import Runtime
from tests.helpers import login


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime)) as client:
        yield client


@pytest.fixture
def admin(runtime: Runtime, client: TestClient) -> dict[str, str]:
    ensure_user(runtime, "root", "admin", "root-password")
    return login(client, "root", "root-password")
