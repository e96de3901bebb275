"""The API fuzzed from its own OpenAPI document (schemathesis), on SQLite and PostgreSQL: every
generated request, valid or not, sent once with an annotator's token and once with an admin's, must
get no 5xx and only statuses (and bodies, and content types) that the document lists for it.

The database holds a project with tasks, votes and users, so that small ids (which the generator
favours) name real rows. A fixed seed makes a run repeatable; the figures of a run are printed at the
end (`pytest -s`)."""

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import select

from dspo.db import session_scope, utcnow
from dspo.models import ApiToken, User
from dspo.security import new_token
from tests.api.conftest import Api
from tests.helpers import pick

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
ROLES = {"annotator": "alice", "admin": "root"}
EXAMPLES_PER_OPERATION = 8
SEED = 20261129


@dataclass
class Fuzz:
    """The accounts the fuzzer acts as, and what it has sent."""

    api: Api
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    operations: set[str] = field(default_factory=set)

    def mint_tokens(self) -> None:
        """Fresh tokens for both accounts, made active with their roles again: a fuzzed request may
        have logged one out, deactivated it or changed its password (which revokes its tokens)."""
        expires_at = utcnow() + timedelta(hours=1)
        with session_scope(self.api.runtime.sessions) as session:
            for role, username in ROLES.items():
                user = session.scalars(select(User).where(User.username == username)).one()
                user.role, user.is_active = role, True
                token, token_hash = new_token()
                session.add(ApiToken(user_id=user.id, token_hash=token_hash, expires_at=expires_at))
                self.headers[role] = {"Authorization": f"Bearer {token}"}

    def send(self, case: schemathesis.Case) -> None:
        self.operations.add(case.operation.label)
        for role in ROLES:
            response = case.call(headers=self.headers[role])
            self.statuses[response.status_code] += 1
            case.validate_response(response, checks=CHECKS)
            changed_an_account = (
                case.method == "PATCH" and "/users/" in case.path or case.path.endswith("/logout")
            )
            if response.status_code < 300 and changed_an_account:
                self.mint_tokens()


@pytest.fixture
def fuzz(api: Api) -> Iterator[Fuzz]:
    project_id = api.make_project(n_images=1, overlap=2)
    task = api.client.post(f"/api/v1/projects/{project_id}/next", headers=api.bob).json()
    vote = pick(task)
    assert api.client.post(f"/api/v1/tasks/{task['id']}/vote", json=vote, headers=api.bob).status_code == 201
    state = Fuzz(api)
    state.mint_tokens()
    yield state
    requests = sum(state.statuses.values())
    server_errors = sum(n for status, n in state.statuses.items() if status >= 500)
    print(
        f"\nfuzz ({api.runtime.engine.dialect.name}): {requests} requests over {len(state.operations)} "
        f"operations, 5xx: {server_errors}, statuses: {dict(sorted(state.statuses.items()))}"
    )


def test_no_server_errors_and_only_documented_answers(fuzz: Fuzz) -> None:
    """Each operation gets EXAMPLES_PER_OPERATION valid and as many invalid requests (by the document's
    own schemas), each sent once per role."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz.api.client.app)
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @seed(SEED)
            @settings(
                max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck)
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def send(case: schemathesis.Case) -> None:
                fuzz.send(case)

            try:
                send()
            except Unsatisfiable:
                # An operation without parameters or body has no invalid request to make.
                assert mode == GenerationMode.NEGATIVE, operation.label
