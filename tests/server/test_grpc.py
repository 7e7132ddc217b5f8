"""TensorFlow Serving's gRPC API as TF Serving's own Python client (its generated stubs) sees it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from conftest import ExportedModels, ServerProcess, pattern_images
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)


def tensor(array: np.ndarray) -> tensor_pb2.TensorProto:
    """What `tf.make_tensor_proto` sends for a float32 array, without importing TensorFlow."""
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in array.shape]
        ),
        tensor_content=array.astype(np.float32).tobytes(),
    )


def predict_request(images: np.ndarray, **spec) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = spec.pop("name", "mnist")
    request.model_spec.signature_name = spec.pop("signature_name", "serving_default")
    if "version" in spec:
        request.model_spec.version.value = spec.pop("version")
    request.inputs["images"].CopyFrom(tensor(images))
    return request


def as_array(proto: tensor_pb2.TensorProto) -> np.ndarray:
    shape = [d.size for d in proto.tensor_shape.dim]
    return np.frombuffer(proto.tensor_content, dtype=np.float32).reshape(shape)


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield channel


@pytest.fixture(scope="module")
def predictions(channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def test_predict_matches_the_exported_model(predictions, exported: ExportedModels):
    images = pattern_images([3, 8], seed=5)
    response = predictions.Predict(predict_request(images), timeout=30)
    assert response.model_spec.name == "mnist"
    assert response.model_spec.version.value == 2
    assert list(response.outputs) == ["probabilities"]
    np.testing.assert_allclose(
        as_array(response.outputs["probabilities"]), exported.expected(images), atol=1e-5
    )


def test_predict_takes_values_in_typed_fields_and_channel_less_images(predictions, exported):
    images = pattern_images([1], seed=7)
    request = predict_request(images)
    proto = request.inputs["images"]
    proto.ClearField("tensor_content")
    proto.float_val.extend(images[..., 0].ravel().tolist())
    del proto.tensor_shape.dim[-1]  # 1x28x28, as MNIST is written
    response = predictions.Predict(request, timeout=30)
    np.testing.assert_allclose(
        as_array(response.outputs["probabilities"]), exported.expected(images), atol=1e-5
    )


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({"name": "fashion"}, grpc.StatusCode.NOT_FOUND, "not served"),
        ({"version": 7}, grpc.StatusCode.NOT_FOUND, "not loaded"),
        ({"signature_name": "classify"}, grpc.StatusCode.INVALID_ARGUMENT, "signature"),
    ],
)
def test_unknown_model_version_or_signature(predictions, change, code, words):
    with pytest.raises(grpc.RpcError) as raised:
        predictions.Predict(predict_request(pattern_images([1]), **change), timeout=30)
    assert raised.value.code() == code
    assert words in raised.value.details()


@pytest.mark.parametrize(
    "images",
    [
        np.full((1, 28, 28, 1), np.nan, np.float32),
        np.full((1, 28, 28, 1), 300, np.float32),
        np.zeros((1, 27, 28, 1), np.float32),
        np.zeros((33, 28, 28, 1), np.float32),
    ],
    ids=["NaN", "out of range", "wrong shape", "more than a batch"],
)
def test_bad_tensors_are_invalid_argument(predictions, images):
    with pytest.raises(grpc.RpcError) as raised:
        predictions.Predict(predict_request(images), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details()


def test_strings_and_wrong_input_names_are_invalid_argument(predictions):
    request = predict_request(pattern_images([1]))
    request.inputs["images"].CopyFrom(
        tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"seven"])
    )
    with pytest.raises(grpc.RpcError) as raised:
        predictions.Predict(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    request = predict_request(pattern_images([1]))
    request.inputs["pixels"].CopyFrom(request.inputs["images"])
    with pytest.raises(grpc.RpcError) as raised:
        predictions.Predict(request, timeout=30)
    assert "only input is 'images'" in raised.value.details()


def test_metadata_describes_the_signature(predictions):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "mnist"
    response = predictions.GetModelMetadata(request, timeout=30)
    assert response.model_spec.version.value == 2
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    image = signature.inputs["images"]
    assert image.dtype == types_pb2.DT_FLOAT
    assert [d.size for d in image.tensor_shape.dim] == [-1, 28, 28, 1]
    assert [d.size for d in signature.outputs["probabilities"].tensor_shape.dim] == [-1, 10]


def test_model_status_is_available(channel):
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "mnist"
    (status,) = stub.GetModelStatus(request, timeout=30).model_version_status
    assert status.version == 2
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    request.model_spec.name = "fashion"
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetModelStatus(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_concurrent_grpc_clients_share_batches_and_get_their_own_rows(
    server: ServerProcess, exported: ExportedModels
):
    clients = 24
    inputs = [pattern_images([i % 10], seed=i) for i in range(clients)]
    start = threading.Barrier(clients)

    def call(images: np.ndarray) -> np.ndarray:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as own:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(own)
            grpc.channel_ready_future(own).result(timeout=30)
            start.wait()
            return as_array(
                stub.Predict(predict_request(images), timeout=60).outputs["probabilities"]
            )

    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(call, inputs))
    for images, answer in zip(inputs, answers, strict=True):
        np.testing.assert_allclose(answer, exported.expected(images), atol=1e-5)
