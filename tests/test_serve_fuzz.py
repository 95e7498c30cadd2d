"""Fuzz the service from its own OpenAPI schema (hypothesis, bounded and derandomized): a body
gets 200 exactly when the published schema accepts it, 422 otherwise, and nothing a client sends
gets a 5xx. `make contract` checks the running service against the same schema with
schemathesis (every route, status, content type and header); these run in-process, in seconds."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from serving_helpers import ADMIN, ADMIN_TOKEN, running, save_models

from llmlab.serving.app import create_app
from llmlab.serving.schemas import MAX_BODY_BYTES, MAX_ITEMS, MAX_TEXT_CHARS, WHITESPACE
from llmlab.serving.state import ServeConfig

FUZZ = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,  # the same examples in every CI run
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
# Values a lax validator would take for another type (`true` as 1.0, "0.5" as 0.5) or as a text.
TRICKY = st.sampled_from([None, True, False, 0, 1, "0.5", "", " \n", "\x1c", [], {}])


def from_schema(
    schema: dict[str, Any], components: dict[str, Any], loose: bool = False
) -> st.SearchStrategy:
    """Values near the JSON-schema subset FastAPI writes for our bodies, and some just outside it:
    `pattern` and `oneOf` are ignored (both fields or neither come out) and, `loose`, any field
    may hold any JSON value (`null`, `true`, a blank text)."""
    if "$ref" in schema:
        return from_schema(components[schema["$ref"].split("/")[-1]], components, loose)
    if "anyOf" in schema:
        return st.one_of([from_schema(option, components, loose) for option in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "string":
        return st.text(max_size=schema.get("maxLength", 50))
    if kind == "number":
        low, high = schema.get("minimum"), schema.get("maximum")
        return st.floats(low, high, allow_nan=low is None)
    if kind == "array":
        items = from_schema(schema["items"], components, loose)
        items = items | TRICKY if loose else items
        return st.lists(items, min_size=schema.get("minItems", 0), max_size=schema.get("maxItems"))
    if kind == "object":
        fields = {k: from_schema(v, components, loose) for k, v in schema["properties"].items()}
        if loose:
            fields = {k: value | TRICKY | JSON for k, value in fields.items()}
        return st.fixed_dictionaries({}, optional=fields)
    raise NotImplementedError(f"schema not covered by the fuzzer: {schema}")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    models = save_models(tmp_path_factory.mktemp("models"))
    config = ServeConfig(model=str(models["v1"]), challenger=str(models["v2"]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLMLAB_ADMIN_TOKEN", ADMIN_TOKEN)
        with running(create_app(config)) as client:
            yield client


@pytest.fixture(scope="module")
def openapi(client) -> dict[str, Any]:
    return client.get("/openapi.json").json()


def body_schema(openapi: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    """The request body's schema, its references resolvable from the document it came from."""
    content = openapi["paths"][path][method]["requestBody"]["content"]
    return content["application/json"]["schema"] | {"components": openapi["components"]}


@pytest.mark.parametrize(
    ("path", "method", "headers"), [("/predict", "post", {}), ("/admin/traffic", "put", ADMIN)]
)
def test_a_body_gets_200_exactly_when_the_published_schema_accepts_it(
    client, openapi, path, method, headers
):
    """Were the service to check what its schema does not say (blank text, one field of two,
    `true` as a fraction), or the schema to promise what the service refuses, this fails."""
    schema = body_schema(openapi, path, method)
    validator = Draft202012Validator(schema)
    seen = set()

    components = openapi["components"]["schemas"]
    bodies = from_schema(schema, components) | from_schema(schema, components, loose=True) | JSON

    @FUZZ
    @given(body=bodies)
    def check(body: Any) -> None:
        response = client.request(method, path, json=body, headers=headers)
        valid = validator.is_valid(body)
        assert response.status_code == (200 if valid else 422), (body, response.text)
        seen.add(valid)

    check()
    assert seen == {True, False}, f"the generator must reach both outcomes, saw {seen}"


def test_arbitrary_json_and_bytes_never_get_a_5xx(client):
    @FUZZ
    @given(body=JSON | st.binary(max_size=64))
    def check(body: Any) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"content-type": "application/json"}
        response = client.post("/predict", content=raw, headers=headers)
        assert response.status_code < 500, (raw, response.text)

    check()


def test_every_schema_valid_body_fits_under_the_size_limit():
    """The largest schema-valid body, each character a 12-byte surrogate-pair escape, is not 413."""
    text = json.dumps("\U0001f600" * MAX_TEXT_CHARS)  # ensure_ascii: 12 bytes a character
    body = json.dumps({"texts": [json.loads(text)] * MAX_ITEMS}, separators=(",", ":"))
    assert len(text) == 12 * MAX_TEXT_CHARS + 2
    assert len(body.encode()) <= MAX_BODY_BYTES


def test_blank_is_what_python_calls_whitespace():
    """The schema's pattern spells out the whitespace; it must be str.isspace()'s, all of it."""
    assert WHITESPACE == "".join(chr(c) for c in range(0x110000) if chr(c).isspace())
