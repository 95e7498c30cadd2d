"""Fuzz the service from its own OpenAPI schema (hypothesis, bounded and derandomized): no
request, schema-valid or not, gets a 5xx."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving_helpers import ADMIN, ADMIN_TOKEN, running, save_models

from llmlab.serve import ServeConfig, create_app

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


def from_schema(schema: dict[str, Any], components: dict[str, Any]) -> st.SearchStrategy:
    """Values matching the JSON-schema subset FastAPI writes for our bodies."""
    if "$ref" in schema:
        return from_schema(components[schema["$ref"].split("/")[-1]], components)
    if "anyOf" in schema:
        return st.one_of([from_schema(option, components) for option in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "string":
        return st.text(max_size=schema.get("maxLength", 50))
    if kind == "number":
        low, high = schema.get("minimum"), schema.get("maximum")
        return st.floats(low, high, allow_nan=low is None)
    if kind == "array":
        items = from_schema(schema["items"], components)
        return st.lists(items, min_size=schema.get("minItems", 0), max_size=schema.get("maxItems"))
    if kind == "object":
        fields = {k: from_schema(v, components) for k, v in schema["properties"].items()}
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: v for k, v in fields.items() if k in required},
            optional={k: v for k, v in fields.items() if k not in required},
        )
    raise NotImplementedError(f"schema not covered by the fuzzer: {schema}")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    models = save_models(tmp_path_factory.mktemp("models"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLMLAB_ADMIN_TOKEN", ADMIN_TOKEN)
        with running(create_app(ServeConfig(model=str(models["v1"])))) as client:
            yield client


@pytest.fixture(scope="module")
def schemas(client) -> dict[str, Any]:
    return client.get("/openapi.json").json()["components"]["schemas"]


def body_schema(client, path: str, method: str) -> dict[str, Any]:
    operation = client.get("/openapi.json").json()["paths"][path][method]
    return operation["requestBody"]["content"]["application/json"]["schema"]


def test_schema_valid_predict_requests_get_200_or_422(client, schemas):
    seen = set()

    @FUZZ
    @given(body=from_schema(body_schema(client, "/predict", "post"), schemas))
    def check(body: dict[str, Any]) -> None:
        response = client.post("/predict", json=body)
        # 422 only for what the schema cannot say: exactly one field, no blank text.
        assert response.status_code in (200, 422), (body, response.text)
        seen.add(response.status_code)
        if response.status_code == 200:
            assert len(response.json()["predictions"]) == len(body.get("texts") or [1])

    check()
    assert seen == {200, 422}, f"the generator must reach both outcomes, saw {seen}"


def test_arbitrary_json_and_bytes_never_get_a_5xx(client):
    @FUZZ
    @given(body=JSON | st.binary(max_size=64))
    def check(body: Any) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"content-type": "application/json"}
        response = client.post("/predict", content=raw, headers=headers)
        assert response.status_code < 500, (raw, response.text)

    check()


def test_admin_traffic_bodies_never_get_a_5xx(client, schemas):
    valid = from_schema(body_schema(client, "/admin/traffic", "put"), schemas)

    @FUZZ
    @given(body=valid | JSON)
    def check(body: Any) -> None:
        response = client.put("/admin/traffic", json=body, headers=ADMIN)
        assert response.status_code in (409, 422), (body, response.text)  # 409: no challenger

    check()
