"""Schema-driven fuzz of the served OpenAPI spec (schemathesis): valid and invalid requests for
every operation, a bounded number of each, and never a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

pytestmark = [pytest.mark.ray, pytest.mark.serve]

EXAMPLES_PER_MODE = 60


def test_openapi_fuzz_never_gives_a_5xx(serve_app):
    schema = schemathesis.openapi.from_url(f"{serve_app.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    names = sorted(f"{op.method.upper()} {op.path}" for op in operations)
    assert names == ["GET /v1/healthz", "GET /v1/next", "GET /v1/recommend", "POST /v1/next"]
    statuses: dict[int, int] = {}
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.NEGATIVE and op.path == "/v1/healthz":
                continue  # no parameters: nothing invalid to generate

            @settings(
                max_examples=EXAMPLES_PER_MODE,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=op.as_strategy(generation_mode=mode))
            def call(case):
                response = case.call(base_url=serve_app.url, timeout=30)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                assert response.status_code < 500, (case.as_curl_command(), response.text)

            call()
    assert sum(statuses.values()) > 100
    assert {200, 400, 422} <= set(statuses)
    print("status counts:", dict(sorted(statuses.items())))
