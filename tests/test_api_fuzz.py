"""Schemathesis fuzzes every operation of the API from its own /openapi.json against
a real ``docqueue serve`` (real Redis and SQL, SQLite and PostgreSQL): whatever it
sends, the answer is never a server error.  Derandomized, with a bounded number of
examples per operation, so a run is repeatable and short."""

from __future__ import annotations

import schemathesis
import test_api
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from test_api import TOKEN, register_gone_model

from docqueue.config import Settings

serve = test_api.serve  # the fixture: a real `docqueue serve`
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = 40


def test_no_request_gets_a_server_error(serve, settings: Settings) -> None:
    # A model a worker once served: requests naming it get past the model check.
    register_gone_model(settings)
    server = serve(DOCQUEUE_API_SYNC_TIMEOUT="1", DOCQUEUE_API_MAX_WAIT="1")
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=AUTH)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) > 20
    for operation in operations:
        fuzz(operation)


def fuzz(operation: schemathesis.APIOperation) -> None:
    """EXAMPLES requests to one operation, each checked for a server error."""

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=AUTH, checks=[not_a_server_error], timeout=30)

    run()
