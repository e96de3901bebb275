"""Fixtures of the bridge's tests: a real Label Studio server (see server.py) for the test session,
three annotators in it, and settings with a webhook secret."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from dspo.settings import Settings
from tests.conftest import cannot_run
from tests.labelstudio.server import LabelStudioServer, running_labelstudio


@pytest.fixture(scope="session")
def labelstudio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    try:
        import label_studio_sdk  # noqa: F401  (the bridge's client, from the `labelstudio` extra)
    except ImportError:
        cannot_run("label-studio-sdk is not installed: pip install -e '.[labelstudio]'")
    with running_labelstudio(tmp_path_factory.mktemp("labelstudio")) as server:
        yield server


ANNOTATORS = ("ann.one@example.com", "ann.two@example.com", "ann.three@example.com")


@pytest.fixture(scope="session")
def annotators(labelstudio: LabelStudioServer) -> dict[str, tuple[int, str]]:
    """Three annotators of the Label Studio server: e-mail -> (Label Studio user id, API token)."""
    return labelstudio.make_users(list(ANNOTATORS))


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        storage_root=tmp_path / "blobs",
        broker_url="",
        secret_key="a-test-secret-key",
        labelstudio_webhook_secret="the-webhook-secret",
        _env_file=None,  # type: ignore[call-arg]
    )
