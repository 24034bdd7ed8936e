"""Every route of the app needs a token unless the contract makes it public: a new route without
a guard fails this test, because the routes are read from the app itself."""

import re
import uuid

import httpx
from litestar.routes import HTTPRoute

from ledger.app import create_app
from ledger.settings import Settings

# CONTRACT section 3, and the OpenAPI document (section 6) with Litestar's schema pages.
PUBLIC = {"/health/live", "/health/ready", "/metrics", "/v1/keys", "/v1/log/checkpoint", "/schema",
          "/schema/openapi.json", "/schema/{path:str}"}  # fmt: skip
SAMPLES = {"device_id": "auth-device", "webhook_id": str(uuid.uuid4()), "delivery_id": "msg_x", "path": "openapi.yaml"}


def routes() -> list[tuple[str, str, str]]:
    """(method, template, concrete path) for every route and method of the app."""
    found = []
    for route in create_app(Settings(database_url="postgresql://unused")).routes:
        assert isinstance(route, HTTPRoute), route
        concrete = re.sub(r"{(\w+):\w+}", lambda m: SAMPLES[m.group(1)], route.path)
        found += [(method, route.path, concrete) for method in sorted(route.methods) if method != "OPTIONS"]
    return found


def test_every_route_but_the_public_ones_refuses_a_request_without_a_token(base_url: str) -> None:
    checked = set()
    with httpx.Client(base_url=base_url, timeout=10) as http:
        for method, template, path in routes():
            if template in PUBLIC:
                continue
            for headers in ({}, {"Authorization": "Bearer cl_not-a-token"}):
                response = http.request(method, path, headers=headers)
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.headers["www-authenticate"].startswith("Bearer")
            checked.add(template)
    assert checked == {template for _, template, _ in routes()} - PUBLIC
    assert len(checked) == 19  # the contract's guarded routes (PUT /v1/purposes shares GET's template)


def test_the_public_routes_are_exactly_the_contracts() -> None:
    assert {template for _, template, _ in routes()} >= PUBLIC
