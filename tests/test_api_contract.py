"""The API contract, fuzzed: schemathesis (its pytest integration) over every operation in the
live app's ``/openapi.json``, with every check it has (``--checks all``: no server errors, no
undocumented status or content type, responses match their schemas, schema-valid requests
accepted and schema-invalid ones rejected, ``Allow`` on 405, auth not ignored...).

Real credentials per route: the platform admin token for ``/v1/tenants``, an agent's key for the
agent and outbox routes, the owner's key for the rest, and a real widget session (token, id and
allowed ``Origin``) for the widget routes. Hypothesis is derandomised (a fixed seed) with a few
examples per operation, so the run is repeatable and takes about two minutes here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS, load_all_checks

from runtime.api.app import create_app
from tests.conftest import ADMIN_TOKEN

load_all_checks()
ALL_CHECKS = CHECKS.get_all()
ORIGIN = "https://contract.test"
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

# The schema the app serves, built from the same code (the stack's settings are the defaults this
# reads); the requests go to the live stack.
# The two event streams are left out: the session stream never ends, so every case would wait
# out its read timeout (13 minutes for a handful of cases); their auth and 4xx answers are
# covered by tests/test_hardening.py and tests/test_caps.py.
schema = (schemathesis.openapi.from_dict(create_app().openapi())
          .exclude(path_regex=r"^/v1/widget/sessions/\{session_id\}/events$")
          .exclude(path_regex=r"^/v1/inbox/events$")  # the agents' live stream: tests/test_inbox.py
          .exclude(method="POST", path_regex=r"^/v1/widget/sessions/\{session_id\}/messages$"))


@dataclass(frozen=True)
class Credentials:
    """One tenant's real credentials for every kind of route."""

    owner: str
    agent: str
    widget_token: str
    session_id: str
    session_token: str

    def headers_for(self, case: Any) -> dict[str, str]:
        """The Authorization (and Origin) a real client of ``case``'s route would send."""
        path: str = case.path
        if path.startswith("/v1/tenants"):
            return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        if path.startswith("/v1/widget/sessions/{session_id}"):
            # Only a well-formed generated id is replaced: a malformed one is the case's point.
            if UUID_RE.match(str((case.path_parameters or {}).get("session_id", ""))):
                case.path_parameters["session_id"] = self.session_id
            return {"Authorization": f"Bearer {self.session_token}"}
        if path.startswith("/v1/widget/sessions"):
            return {"Origin": ORIGIN}
        if path.startswith(("/v1/sessions", "/v1/escalations", "/v1/outbox")):
            return {"Authorization": f"Bearer {self.agent}"}
        if path.startswith("/v1/analytics"):
            fit_analytics_range(case)
        return {"Authorization": f"Bearer {self.owner}"}


def fit_analytics_range(case: Any) -> None:
    """A well-formed analytics range that the schema cannot order (``from`` after ``to``, or over
    366 days: 422s tested in tests/test_analytics.py) gets a ``to`` 6 days after ``from``; a
    malformed day is left alone (it is the case's point)."""
    query = case.query if isinstance(case.query, dict) else None
    if not query or not isinstance(query.get("from"), str):
        return
    try:
        start = date.fromisoformat(query["from"])
        end = (date.fromisoformat(query["to"]) if isinstance(query.get("to"), str)
               else datetime.now(UTC).date())
    except ValueError:
        return
    if not 0 <= (end - start).days < 366:
        last = date.max if start > date.max - timedelta(days=6) else start + timedelta(days=6)
        query["to"] = last.isoformat()


@pytest.fixture(scope="module")
def credentials(app_url: str) -> Credentials:
    """A tenant with an agent, a widget channel and an open widget session."""
    with httpx.Client(base_url=app_url, timeout=60) as c:
        r = c.post("/v1/tenants", json={"name": "contract"},
                   headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 201, r.text
        owner = r.json()["owner_api_key"]
        auth = {"Authorization": f"Bearer {owner}"}
        r = c.post("/v1/users", json={"name": "Agent", "role": "agent"}, headers=auth)
        assert r.status_code == 201, r.text
        agent = r.json()["api_key"]
        r = c.post("/v1/channels", json={"type": "widget", "allowed_origins": [ORIGIN]}, headers=auth)
        assert r.status_code == 201, r.text
        widget_token = r.json()["widget_token"]
        r = c.post("/v1/widget/sessions", json={"widget_token": widget_token},
                   headers={"Origin": ORIGIN})
        assert r.status_code == 200, r.text
        return Credentials(owner, agent, widget_token, r.json()["session_id"],
                           r.json()["session_token"])


def test_schema_documents_every_route(app_url: str) -> None:
    """The live app serves the schema the fuzzer uses; every operation names its error responses
    with the envelope schema, and there are operations to run (an empty schema would make the
    fuzzer pass vacuously)."""
    doc = httpx.get(f"{app_url}/openapi.json", timeout=30).json()
    assert doc == json.loads(json.dumps(create_app().openapi()))
    operations = [(p, m, op) for p, ops in doc["paths"].items() for m, op in ops.items()]
    assert len(operations) >= 35, len(operations)
    for path, method, op in operations:
        if path in ("/livez", "/healthz"):
            continue
        codes = set(op["responses"])
        assert {"422", "429", "503"} <= codes, (method, path, sorted(codes))
        ref = op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorEnvelope"), (method, path, ref)


@schema.parametrize()
@settings(max_examples=6, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_contract(case: Any, credentials: Credentials, app_url: str) -> None:
    """Every generated request (valid and invalid) gets a documented, schema-true answer."""
    case.call_and_validate(base_url=app_url, headers=credentials.headers_for(case), checks=ALL_CHECKS,
                           timeout=60)
