"""Every kind of bad request is a JSON 4xx answer, and the server keeps serving after it."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from conftest import pattern_images
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PREDICT = "/v1/models/mnist:predict"
GOOD = pattern_images([1]).tolist()
ROW = [[0.0] * 28] * 28


def assert_still_serving(client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    response = client.post(PREDICT, json={"instances": GOOD})
    assert response.status_code == 200
    assert np.argmax(response.json()["predictions"][0]) == 1


BAD_PREDICT_BODIES = {
    "not json": b"{instances: [1,",
    "not utf-8": b'{"instances": "\xff\xfe"}',
    "json but not an object": b"[1, 2, 3]",
    "neither instances nor inputs": b'{"signature_name": "serving_default"}',
    "both instances and inputs": json.dumps({"instances": GOOD, "inputs": GOOD}).encode(),
    "empty instances": b'{"instances": []}',
    "instances not a list": b'{"instances": 3}',
    "wrong shape": json.dumps({"instances": [[1.0, 2.0, 3.0]]}).encode(),
    "wrong image size": json.dumps({"instances": [[[0.0] * 27] * 28]}).encode(),
    "ragged": json.dumps({"instances": [ROW, ROW[:5]]}).encode(),
    "strings": json.dumps({"instances": [[["a"] * 28] * 28]}).encode(),
    "booleans": json.dumps({"instances": [[[True] * 28] * 28]}).encode(),
    "nulls": json.dumps({"instances": [[[None] * 28] * 28]}).encode(),
    "NaN": json.dumps({"instances": [[[float("nan")] * 28] * 28]}).encode(),
    "Infinity": json.dumps({"instances": [[[float("inf")] * 28] * 28]}).encode(),
    "overflows float32": json.dumps({"instances": [[[1e300] * 28] * 28]}).encode(),
    "huge integer": json.dumps({"instances": [[[10**400] * 28] * 28]}).encode(),
    "negative pixels": json.dumps({"instances": [[[-5.0] * 28] * 28]}).encode(),
    "unknown input name": json.dumps({"instances": [{"pixels": ROW}]}).encode(),
    "mixed named and bare": json.dumps({"instances": [{"images": ROW}, ROW]}).encode(),
    "unknown signature": json.dumps({"signature_name": "classify", "instances": GOOD}).encode(),
    "deep nesting": b'{"instances": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
}


@pytest.mark.parametrize("body", BAD_PREDICT_BODIES.values(), ids=BAD_PREDICT_BODIES.keys())
def test_bad_predict_body_is_a_400_with_a_message(client: httpx.Client, body: bytes):
    response = client.post(PREDICT, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"error"} and response.json()["error"]


def test_more_instances_than_a_batch_is_a_400_that_names_the_limit(client: httpx.Client):
    """The shared server runs with --max-batch-size 32."""
    rows = pattern_images([1] * 33).tolist()
    response = client.post(PREDICT, json={"instances": rows})
    assert response.status_code == 400
    assert "at most 32" in response.json()["error"]
    assert client.post(PREDICT, json={"instances": rows[:32]}).status_code == 200
    columnar = client.post(PREDICT, json={"inputs": rows})
    assert columnar.status_code == 400


def test_body_over_the_limit_is_413_and_the_server_carries_on(client: httpx.Client):
    too_big = b'{"instances": [' + b"0," * 5_000_000 + b"0]}"
    response = client.post(PREDICT, content=too_big)
    assert response.status_code == 413
    assert "limit" in response.json()["error"]

    def chunks():  # no Content-Length: counted as it streams in
        for _ in range(100):
            yield b" " * 100_000

    with httpx.Client(base_url=str(client.base_url), timeout=30) as fresh:
        assert fresh.post(PREDICT, content=chunks()).status_code == 413
    assert_still_serving(client)


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/v1/models/fashion:predict", "post"),
        ("/v1/models/fashion", "get"),
        ("/v1/models/fashion/metadata", "get"),
        ("/v1/models/fashion:classify", "post"),
        ("/v1/models/mnist/versions/7:predict", "post"),
        ("/v1/models/mnist/versions/7", "get"),
        ("/v1/models/mnist/versions/7/metadata", "get"),
        ("/v1/models/mnist/versions/1:classify", "post"),
        ("/v2/elsewhere", "get"),
    ],
)
def test_unknown_model_version_or_route_is_a_json_404(client: httpx.Client, path, method):
    kwargs = {"json": {"instances": GOOD}} if method == "post" else {}
    response = client.request(method.upper(), path, **kwargs)
    assert response.status_code == 404
    assert response.json()["error"]


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"definitely not an image", "image/png", 400),
        (b"", "image/png", 400),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image/png", 400),  # truncated PNG
        (b"GIF89a" + b"\x00" * 40, "application/octet-stream", 400),
        (b'{"instances": []}', "application/json", 415),
    ],
    ids=["garbage", "empty", "truncated png", "gif", "json body"],
)
def test_undecodable_image_is_a_json_4xx(client: httpx.Client, body, content_type, status):
    response = client.post(
        "/v1/models/mnist:classify", content=body, headers={"content-type": content_type}
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]


def test_multipart_without_a_file_is_a_400(client: httpx.Client):
    response = client.post("/v1/models/mnist:classify", files={"caption": (None, "no image here")})
    assert response.status_code == 400
    assert "no file" in response.json()["error"]


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=40,
)
# Bodies that get past the JSON and schema checks often enough to reach the tensor checks.
shaped = st.builds(
    lambda rows, value, key: {key: [[[value] * 28] * 28] * rows},
    st.integers(0, 3),
    st.floats() | st.integers(-(2**70), 2**70) | st.booleans() | st.none(),
    st.sampled_from(["instances", "inputs"]),
)
predict_bodies = (
    json_values
    | st.dictionaries(
        st.sampled_from(["instances", "inputs", "signature_name", "extra"]), json_values
    )
    | shaped
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=predict_bodies)
def test_random_json_never_breaks_the_predict_route(client: httpx.Client, body):
    response = client.post(PREDICT, content=json.dumps(body).encode())
    assert 200 <= response.status_code < 500, response.text
    if response.status_code >= 400:
        assert isinstance(response.json()["error"], str)


def test_server_is_alive_after_the_random_json(client: httpx.Client):
    assert_still_serving(client)
