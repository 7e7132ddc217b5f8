"""The REST API as a TensorFlow Serving client (and a person with an image) sees it."""

from __future__ import annotations

import io

import httpx
import numpy as np
from conftest import CLASS_NAMES, ExportedModels, ServerProcess, metric_value, pattern_images
from PIL import Image


def png(pixels: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "L").save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def test_probes_answer_live_before_ready_and_ready_once_warmed(server: ServerProcess, client):
    assert server.not_ready_while_alive, "readiness must fail while the model loads"
    assert client.get("/healthz").json() == {"status": "alive"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_status_reports_the_highest_version_available(client: httpx.Client):
    assert client.get("/v1/models/mnist").json() == {
        "model_version_status": [
            {
                "version": "2",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    assert client.get("/v1/models/mnist/versions/2").status_code == 200
    assert client.get("/v1/models/mnist/versions/1").status_code == 404


def test_metadata_has_signature_class_names_and_metrics(client: httpx.Client):
    body = client.get("/v1/models/mnist/metadata").json()
    assert body["model_spec"] == {"name": "mnist", "signature_name": "", "version": "2"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    images = signature["inputs"]["images"]
    assert images["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in images["tensor_shape"]["dim"]] == ["-1", "28", "28", "1"]
    assert [d["size"] for d in signature["outputs"]["probabilities"]["tensor_shape"]["dim"]] == [
        "-1",
        "10",
    ]
    export = body["export"]
    assert export["classNames"] == CLASS_NAMES
    assert export["inputShape"] == [28, 28, 1]
    assert export["metrics"] == {"val_accuracy": 0.99}
    assert export["metric"] == "val_accuracy"
    assert export["details"]["epoch"] == 4
    assert client.get("/v1/models/mnist/versions/2/metadata").json() == body


def test_row_format_predictions_match_the_exported_model(client, exported: ExportedModels):
    images = pattern_images([3, 8], seed=5)
    response = client.post("/v1/models/mnist:predict", json={"instances": images.tolist()})
    assert response.status_code == 200
    predictions = np.array(response.json()["predictions"])
    np.testing.assert_allclose(predictions, exported.expected(images), atol=1e-5)
    assert predictions.argmax(axis=1).tolist() == [3, 8]


def test_columnar_and_named_inputs_and_channel_less_images(client, exported: ExportedModels):
    images = pattern_images([1, 6], seed=7)
    expected = exported.expected(images)
    requests = [
        ({"inputs": images.tolist()}, "outputs"),
        ({"inputs": {"images": images.tolist()}}, "outputs"),
        ({"instances": [{"images": image.tolist()} for image in images]}, "predictions"),
        ({"instances": images[..., 0].tolist()}, "predictions"),  # 28x28, as MNIST is written
        ({"signature_name": "serving_default", "instances": images.tolist()}, "predictions"),
    ]
    for body, key in requests:
        response = client.post("/v1/models/mnist:predict", json=body)
        assert response.status_code == 200, (body.keys(), response.text)
        assert list(response.json()) == [key]
        np.testing.assert_allclose(np.array(response.json()[key]), expected, atol=1e-5)


def test_version_route_serves_the_loaded_version_and_404s_others(client, exported):
    images = pattern_images([2])
    body = {"instances": images.tolist()}
    response = client.post("/v1/models/mnist/versions/2:predict", json=body)
    np.testing.assert_allclose(response.json()["predictions"], exported.expected(images), atol=1e-5)
    for version in ("1", "3", "latest"):
        missing = client.post(f"/v1/models/mnist/versions/{version}:predict", json=body)
        assert missing.status_code == 404
        assert "not loaded" in missing.json()["error"]


def test_json_sent_as_form_data_like_curl_does_is_still_read(client: httpx.Client):
    body = '{"instances": ' + str(pattern_images([4]).tolist()) + "}"
    response = client.post(
        "/v1/models/mnist:predict",
        content=body,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert np.argmax(response.json()["predictions"][0]) == 4


def test_classify_png_body_names_the_class(client: httpx.Client):
    image = pattern_images([7])[0, ..., 0]
    response = client.post(
        "/v1/models/mnist:classify", content=png(image), headers={"content-type": "image/png"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["label"] == "seven"
    assert body["class_index"] == 7
    assert body["model_spec"]["version"] == "2"
    assert list(body["probabilities"]) == CLASS_NAMES
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-4
    assert max(body["probabilities"], key=body["probabilities"].get) == "seven"


def test_classify_jpeg_multipart_upload(client: httpx.Client):
    image = pattern_images([5])[0, ..., 0]
    response = client.post(
        "/v1/models/mnist/versions/2:classify",
        files={"image": ("five.jpg", jpeg(image), "image/jpeg")},
    )
    assert response.status_code == 200, response.text
    assert response.json()["label"] == "five"


def test_classify_converts_and_resizes_to_the_model_input(client: httpx.Client):
    grey = pattern_images([2])[0, ..., 0]
    big_rgb = np.repeat(np.kron(grey, np.ones((2, 2)))[..., np.newaxis], 3, axis=2)  # 56x56 RGB
    response = client.post("/v1/models/mnist:classify", content=png(big_rgb, "RGB"))
    assert response.status_code == 200, response.text
    assert response.json()["label"] == "two"


def test_openapi_documents_the_routes(client: httpx.Client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/models/{name}:predict",
        "/v1/models/{name}/versions/{version}:predict",
        "/v1/models/{name}:classify",
        "/v1/models/{name}/metadata",
        "/v1/models/{name}",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths
    predict_body = paths["/v1/models/{name}:predict"]["post"]["requestBody"]
    assert "instances" in predict_body["content"]["application/json"]["schema"]["properties"]
    assert client.get("/docs").status_code == 200


def test_predict_by_version_is_counted_under_its_own_route(client):
    route = "/v1/models/{name}/versions/{version}:predict"
    before = client.get("/metrics").text
    body = {"instances": pattern_images([0]).tolist()}
    assert client.post("/v1/models/mnist/versions/2:predict", json=body).status_code == 200
    after = client.get("/metrics").text
    count = "kubetrain_serving_requests_total"
    delta = metric_value(after, count, route=route, code="200") - metric_value(
        before, count, route=route, code="200"
    )
    assert delta == 1


def test_metrics_count_requests_by_route_and_code_and_describe_the_model(client):
    route = "/v1/models/{name}:predict"
    before = client.get("/metrics").text
    client.post("/v1/models/mnist:predict", json={"instances": pattern_images([0]).tolist()})
    client.post("/v1/models/mnist:predict", json={"instances": []})
    after = client.get("/metrics").text
    for code in ("200", "400"):
        count = "kubetrain_serving_requests_total"
        delta = metric_value(after, count, route=route, code=code) - metric_value(
            before, count, route=route, code=code
        )
        assert delta == 1, code
    assert metric_value(after, "kubetrain_serving_request_duration_seconds_count", route=route) > 0
    assert metric_value(after, "kubetrain_serving_batch_size_count") > 0
    assert (
        metric_value(
            after,
            "kubetrain_serving_model_info",
            name="mnist",
            version="2",
            metric="val_accuracy",
            metric_value="0.99",
        )
        == 1
    )
    assert metric_value(after, "kubetrain_serving_ready") == 1
