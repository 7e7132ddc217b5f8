"""The Open Inference Protocol (KServe v2) REST API as Triton's HTTP client sees it.

`tritonclient[http]` is used unchanged, with tensors as JSON and, its default, as binary data.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from conftest import ExportedModels, ServerProcess, pattern_images
from tritonclient.utils import InferenceServerException

INFER = "/v2/models/mnist/infer"


@pytest.fixture(scope="module")
def v2(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=30)
    yield client
    client.close()


def infer_input(images: np.ndarray, name: str = "images") -> triton.InferInput:
    tensor = triton.InferInput(name, list(images.shape), "FP32")
    tensor.set_data_from_numpy(images.astype(np.float32), binary_data=False)
    return tensor


def test_health_and_metadata(v2: triton.InferenceServerClient):
    assert v2.is_server_live()
    assert v2.is_server_ready()
    assert v2.is_model_ready("mnist")
    assert v2.is_model_ready("mnist", "2")
    assert not v2.is_model_ready("mnist", "1")
    assert not v2.is_model_ready("fashion")
    assert v2.get_server_metadata()["name"] == "kubetrain"
    assert v2.get_model_metadata("mnist") == {
        "name": "mnist",
        "versions": ["2"],
        "platform": "tensorflow_savedmodel",
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 28, 28, 1]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    }


def test_infer_matches_the_exported_model(v2, exported: ExportedModels):
    images = pattern_images([3, 8], seed=5)
    result = v2.infer(
        "mnist",
        [infer_input(images)],
        outputs=[triton.InferRequestedOutput("probabilities", binary_data=False)],
        request_id="req-1",
    )
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), exported.expected(images), atol=1e-5
    )
    response = result.get_response()
    assert response["id"] == "req-1"
    assert response["model_name"] == "mnist" and response["model_version"] == "2"


def test_infer_without_requested_outputs_and_by_version(v2, exported: ExportedModels):
    images = pattern_images([1], seed=7)
    for version in ("", "2"):
        result = v2.infer("mnist", [infer_input(images)], model_version=version)
        np.testing.assert_allclose(
            result.as_numpy("probabilities"), exported.expected(images), atol=1e-5
        )


def test_channel_less_uint8_images(v2, exported: ExportedModels):
    images = pattern_images([4], seed=2).round()
    tensor = triton.InferInput("images", [1, 28, 28], "UINT8")
    tensor.set_data_from_numpy(images[..., 0].astype(np.uint8), binary_data=False)
    result = v2.infer("mnist", [tensor])
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), exported.expected(images), atol=1e-5
    )


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda v2: v2.infer("fashion", [infer_input(pattern_images([1]))]), "not served"),
        (lambda v2: v2.infer("mnist", [infer_input(pattern_images([1]))], "1"), "not loaded"),
        (lambda v2: v2.infer("mnist", [infer_input(pattern_images([1]), "pixels")]), "images"),
        (lambda v2: v2.infer("mnist", [infer_input(np.zeros((1, 27, 28, 1)))]), "shape"),
        (lambda v2: v2.infer("mnist", [infer_input(np.full((1, 28, 28), 300.0))]), "[0, 255]"),
    ],
    ids=["unknown model", "unknown version", "unknown input", "wrong shape", "out of range"],
)
def test_errors_reach_the_client(v2, call, words):
    with pytest.raises(InferenceServerException) as raised:
        call(v2)
    assert words in raised.value.message()


def test_binary_tensors_as_the_client_sends_them_by_default(v2, exported: ExportedModels):
    images = pattern_images([5, 9], seed=4)
    tensor = triton.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)  # binary_data=True
    outputs = [triton.InferRequestedOutput("probabilities")]  # binary_data=True
    result = v2.infer("mnist", [tensor], outputs=outputs)
    assert result.get_output("probabilities")["parameters"]["binary_data_size"] == 2 * 10 * 4
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), exported.expected(images), atol=1e-5
    )


def test_binary_tensor_of_the_wrong_size_is_a_400(client: httpx.Client):
    header = b'{"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "FP32", '
    header += b'"parameters": {"binary_data_size": 3136}}]}'
    for data, length in ((b"\0" * 3135, len(header)), (b"\0" * 3136, len(header) + 9000)):
        response = client.post(
            INFER,
            content=header + data,
            headers={"inference-header-content-length": str(length)},
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]


V2_TENSOR = {"name": "images", "shape": [1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}
BAD_INFER_BODIES = {
    "not json": b"{inputs",
    "not an object": [1, 2],
    "no inputs": {"id": "x"},
    "two inputs": {"inputs": [V2_TENSOR, V2_TENSOR]},
    "BYTES": {"inputs": [{**V2_TENSOR, "datatype": "BYTES"}]},
    "unknown datatype": {"inputs": [{**V2_TENSOR, "datatype": "FP128"}]},
    "shape and data disagree": {"inputs": [{**V2_TENSOR, "shape": [2, 28, 28]}]},
    "negative shape": {"inputs": [{**V2_TENSOR, "shape": [-1, 28, 28]}]},
    "no batch axis": {"inputs": [{**V2_TENSOR, "shape": [], "data": [1.0]}]},
    "strings in data": {"inputs": [{**V2_TENSOR, "data": ["a"] * 784}]},
    "ragged data": {"inputs": [{**V2_TENSOR, "data": [[0.0] * 28] * 27 + [[0.0]]}]},
    "NaN": {"inputs": [{**V2_TENSOR, "data": [float("nan")] * 784}]},
    "unknown output": {"inputs": [V2_TENSOR], "outputs": [{"name": "logits"}]},
}


@pytest.mark.parametrize("body", BAD_INFER_BODIES.values(), ids=BAD_INFER_BODIES.keys())
def test_bad_infer_body_is_a_400_with_a_message(client: httpx.Client, body):
    response = client.post(INFER, content=body if isinstance(body, bytes) else json.dumps(body))
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"} and response.json()["error"]
    assert client.post(INFER, json={"inputs": [V2_TENSOR]}).status_code == 200
