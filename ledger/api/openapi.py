"""The OpenAPI 3.1 document at /schema/openapi.json: Litestar's, from the routes, finished here.

Litestar writes the paths, parameters, success responses and their schemas from the handlers'
signatures and return types. Three things it cannot see are added once, on the first request
for the document, from what each handler declares in `opt` and `security`:
- request bodies: the JSON endpoints read the raw body themselves (a repeated key is 400,
  bytes that are not JSON 400, JSON the ledger cannot take 422, where Litestar's own decoding
  would answer 400 for all and keep the last of two keys). `opt={"body": Model}` names the
  msgspec Struct they decode, and its schema is msgspec's own, so it is exactly what is accepted;
- the required scope, from the operation's bearer security requirement, as `x-required-scope`
  and a sentence of the description;
- the problem+json answers: 400 everywhere (a repeated or malformed query parameter), 401 and
  403 where a token is required, 413 and 415 with a body, 503 wherever the database is asked,
  and those a handler lists in `opt={"problems": (...)}`.

`python -m ledger.api.openapi > docs/openapi.json` writes the same document, indented, without a
database or a server: the copy kept in the repository (a test compares it with the served one).
"""

import sys
from typing import Any

import msgspec
from litestar import Litestar, Request
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityRequirement, SecurityScheme
from litestar.routes import HTTPRoute

from ledger import __version__
from ledger.api.problems import PROBLEM_JSON, Problem
from ledger.api.strict import MAX_INTEGER

BEARER = "bearerToken"
REF = "#/components/schemas/{name}"
CONSISTENCY_TOKEN = {
    "description": "Opaque; pass it as `consistency=` to read what this replica had applied when it answered.",
    "required": True,
    "schema": {"type": "string"},
}
WHY = {
    400: "The request is malformed: a query parameter repeated or not of its type, a body that is not JSON "
    "or names a key twice.",
    401: "No valid bearer token.",
    403: "The token lacks the required scope.",
    404: "Not found.",
    409: "The Idempotency-Key was used with another body.",
    413: "The body is larger than this endpoint takes.",
    415: "The body is not sent as Content-Type: application/json (UTF-8); PUT /v1/purposes also takes "
    "application/toml.",
    422: "Well-formed, but not something the ledger can take: a malformed device_id or time, an unknown "
    "purpose, a value out of range.",
    503: "The database is unavailable, or this replica cannot answer fresh enough; retry after Retry-After.",
}


def scope(name: str) -> list[SecurityRequirement]:
    """The security requirement of an endpoint that needs a token with this scope."""
    return [{BEARER: [name]}]


def config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Consent Ledger",
        version=__version__,
        description="Records consent in a signed, append-only log and answers whether processing is allowed now.",
        path="/schema",
        render_plugins=[FinishedJson()],
        components=Components(
            security_schemes={
                BEARER: SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="A token from `ledger token create`; scopes consent:check, consent:write, "
                    "audit:read, admin (admin implies all).",
                )
            }
        ),
    )


class FinishedJson(JsonRenderPlugin):
    """Serves the finished document, built once."""

    def __init__(self) -> None:
        super().__init__(path="/openapi.json")
        self._rendered: bytes | None = None

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        if self._rendered is None:
            self._rendered = msgspec.json.encode(finish(openapi_schema, request.app))
        return self._rendered


def document(app: Litestar) -> dict[str, Any]:
    """The finished document of `app`, as GET /schema/openapi.json serves it."""
    return finish(app.openapi_schema.to_schema(), app)


def main() -> None:
    # Imported here: the app imports this module for its configuration.
    from ledger.app import create_app
    from ledger.settings import Settings

    encoded = msgspec.json.encode(document(create_app(Settings())))
    sys.stdout.buffer.write(msgspec.json.format(encoded, indent=2) + b"\n")


def finish(document: dict[str, Any], app: Litestar) -> dict[str, Any]:
    document = msgspec.json.decode(msgspec.json.encode(document))  # a copy: Litestar caches its own
    components: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    _add_schemas(components, [Problem])
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if not handler.resolve_include_in_schema():
                continue
            for method in handler.http_methods:
                operation = document["paths"][route.path_format][method.lower()]
                _finish_operation(operation, route.path_format, handler.opt, components)
    return document


def _finish_operation(operation: dict[str, Any], path: str, opt: dict[str, Any], components: dict[str, Any]) -> None:
    for parameter in operation.get("parameters", []):
        parameter["schema"] = _parameter_schema(parameter["schema"])
    problems = {400, *opt.get("problems", ())}
    body = opt.get("body")
    if body is not None:
        _add_schemas(components, [body])
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": REF.format(name=body.__name__)}},
                **{media_type: {"schema": schema} for media_type, schema in opt.get("also_body", {}).items()},
            },
        }
        problems |= {413, 415, 422}
    scopes = [s for requirement in operation.get("security", []) for s in requirement.get(BEARER, [])]
    if scopes:
        [required] = scopes
        operation["x-required-scope"] = required
        sentence = f"Requires a bearer token with the `{required}` scope (`admin` implies every scope)."
        operation["description"] = (
            f"{operation['description']}\n\n{sentence}" if "description" in operation else sentence
        )
        problems |= {401, 403}
    if path.startswith("/v1/"):
        problems.add(503)
    responses = operation.setdefault("responses", {})
    for status in sorted(problems):
        responses[str(status)] = {
            "description": WHY[status],
            "content": {PROBLEM_JSON: {"schema": {"$ref": REF.format(name="Problem")}}},
        }
    for answer in responses.values():
        headers = answer.setdefault("headers", {})
        headers["Consistency-Token"] = CONSISTENCY_TOKEN
        # Litestar collects a route's response headers in a set: their order follows the string
        # hash seed of the process, and the document must be the same bytes in every process.
        answer["headers"] = dict(sorted(headers.items()))
    for media_type, schema in opt.get("also", {}).items():
        success = min(code for code in responses if code.startswith("2"))
        responses[success].setdefault("content", {})[media_type] = {"schema": schema}


def _parameter_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter is given or absent, never null (`start=null` is 400), and an integer one is what
    StrictRequests takes: decimal digits from 0 to 2^63 - 1 (Litestar writes that bound as a float,
    which rounds it up to 2^63)."""
    members = schema.get("oneOf", [])
    given = [m for m in members if m != {"type": "null"}]
    if len(members) == 2 and len(given) == 1:
        schema = {**{k: v for k, v in schema.items() if k != "oneOf"}, **given[0]}
    if schema.get("type") == "integer":
        schema.update(minimum=0, maximum=MAX_INTEGER)
    return schema


def _add_schemas(components: dict[str, Any], models: list[Any]) -> None:
    """Add msgspec's schemas of `models` (exactly what is accepted). A Struct that is both a body
    and part of a response (the purpose registry: PUT /v1/purposes takes what GET answers) has a
    component from Litestar already: msgspec's replaces it if it names the same properties (the
    same Struct, described more precisely); two different Structs of one name are refused."""
    _, schemas = msgspec.json.schema_components(models, ref_template=REF)
    for name, schema in schemas.items():
        existing = components.get(name, schema)
        if existing != schema and set(existing.get("properties", ())) != set(schema.get("properties", ())):
            raise ValueError(f"two different schemas are named {name} in the OpenAPI document")
        components[name] = schema


if __name__ == "__main__":
    main()
