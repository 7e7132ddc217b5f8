"""Startup and shutdown as a rolling update needs them: pinned versions and a clean drain."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from conftest import ExportedModels, metric_value, pattern_images
from kubetrain.trainer.server import add_serve_arguments
from kubetrain.trainer.server.config import ServerSettings

PREDICT = "/v1/models/mnist:predict"


def parse(*argv: str) -> ServerSettings:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return ServerSettings.from_args(parser.parse_args(list(argv)))


def test_flags_default_to_the_directory_name_and_the_version_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path
):
    monkeypatch.setenv("MODEL_VERSION", "3")
    settings = parse("--model-dir", str(tmp_path / "planesnet"))
    assert (settings.model_name, settings.model_version, settings.port) == ("planesnet", 3, 8501)
    assert parse("--model-dir", "x", "--model-version", "5").model_version == 5
    monkeypatch.delenv("MODEL_VERSION")
    assert parse("--model-dir", "x").model_version is None
    with pytest.raises(SystemExit) as exit_info:
        parse("--model-dir", "x", "--model-version", "latest")
    assert exit_info.value.code == 2
    monkeypatch.setenv("MODEL_VERSION", "latest")
    with pytest.raises(SystemExit) as exit_info:
        parse("--model-dir", "x")
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--model-version" in error and "MODEL_VERSION" in error and "'latest'" in error


def test_model_version_env_pins_an_older_version(start_server, exported: ExportedModels):
    server = start_server(exported.model_dir, env={"MODEL_VERSION": "1"}).wait_ready()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        status = client.get("/v1/models/mnist").json()["model_version_status"]
        assert [s["version"] for s in status] == ["1"]
        images = pattern_images([4])
        response = client.post(
            "/v1/models/mnist/versions/1:predict", json={"instances": images.tolist()}
        )
        np.testing.assert_allclose(
            response.json()["predictions"], exported.expected(images, version=1), atol=1e-5
        )
        assert (
            client.post(
                "/v1/models/mnist/versions/2:predict", json={"instances": images.tolist()}
            ).status_code
            == 404
        )


@pytest.mark.parametrize(
    "argv",
    [["--model-version", "9"], []],
    ids=["pinned version missing", "no version at all"],
)
def test_nothing_to_serve_exits_with_a_message(exported: ExportedModels, tmp_path, argv):
    model_dir = exported.model_dir if argv else tmp_path / "empty"
    result = subprocess.run(
        [sys.executable, "-m", "kubetrain.trainer.server", "--model-dir", str(model_dir), *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "not found" in result.stderr or "no model version" in result.stderr


def test_sigterm_under_load_fails_no_request(start_server, exported: ExportedModels):
    """Clients stop sending once readiness fails, as the endpoints controller makes them."""
    delay, drain = 2.5, 10.0
    server = start_server(
        exported.model_dir, "--shutdown-delay", str(delay), "--drain-timeout", str(drain)
    ).wait_ready()
    body = {"instances": pattern_images([6, 9]).tolist()}
    stop = threading.Event()
    outcomes: list[tuple[float, object]] = []
    lock = threading.Lock()

    def client_loop() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                try:
                    outcome: object = client.post(PREDICT, json=body).status_code
                except httpx.HTTPError as error:
                    outcome = repr(error)
                with lock:
                    outcomes.append((time.monotonic(), outcome))

    def readiness_watch() -> float:
        with httpx.Client(base_url=server.url, timeout=5) as probe:
            while probe.get("/readyz").status_code == 200:
                time.sleep(0.05)
        stop.set()
        return time.monotonic()

    with ThreadPoolExecutor(9) as pool:
        loops = [pool.submit(client_loop) for _ in range(8)]
        while len(outcomes) < 50:
            time.sleep(0.05)
        terminated_at = time.monotonic()
        server.terminate()
        not_ready_at = pool.submit(readiness_watch).result(timeout=30)
        for loop in loops:
            loop.result(timeout=60)
    exit_code = server.process.wait(timeout=delay + drain + 10)
    exited_after = time.monotonic() - terminated_at

    failures = [outcome for _, outcome in outcomes if outcome != 200]
    assert failures == []
    assert any(at > terminated_at for at, _ in outcomes), "no request was served while draining"
    assert not_ready_at - terminated_at < delay
    assert exit_code == 0
    assert exited_after < delay + drain


def test_sigterm_finishes_in_flight_requests_before_exiting(start_server, exported):
    """With no delay the listener closes at once, yet requests already inside still complete."""
    server = start_server(
        exported.model_dir,
        "--max-batch-size",
        "64",
        "--batch-timeout-micros",
        "3000000",  # the first batch waits 3 s for company
        "--drain-timeout",
        "15",
    ).wait_ready()
    images = pattern_images([0, 3, 5, 8], seed=11)

    def predict(i: int) -> tuple[int, list]:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            response = client.post(PREDICT, json={"instances": images[i : i + 1].tolist()})
            return response.status_code, response.json()["predictions"]

    with ThreadPoolExecutor(4) as pool, httpx.Client(base_url=server.url) as scraper:
        pending = [pool.submit(predict, i) for i in range(4)]
        while (
            metric_value(scraper.get("/metrics").text, "kubetrain_serving_requests_in_flight")
            < 4 + 1  # the scrape counts itself
        ):
            assert not any(p.done() for p in pending)
            time.sleep(0.05)
        server.terminate()
        answers = [p.result(timeout=30) for p in pending]
    assert [status for status, _ in answers] == [200] * 4
    predictions = np.array([p[0] for _, p in answers])
    np.testing.assert_allclose(predictions, exported.expected(images), atol=1e-5)
    assert server.process.wait(timeout=20) == 0


def test_a_version_that_cannot_be_loaded_exits_non_zero(tmp_path):
    """The pod restarts (and its log says why) rather than staying up unready forever."""
    broken = tmp_path / "mnist" / "1"
    broken.mkdir(parents=True)
    (broken / "metadata.json").write_text('{"classNames": []}')
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubetrain.trainer.server",
            "--model-dir",
            str(broken.parent),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "cannot load mnist version 1" in result.stderr


CHECK = """
import sys
from kubetrain.trainer.cli import main
code = main(sys.argv[1:])
print("tensorflow imported:", "tensorflow" in sys.modules)
sys.exit(code)
"""


def check_only(model_dir, version: str) -> subprocess.CompletedProcess[str]:
    """`kubetrain serve --check-only`, as the operator's model-check pod runs it."""
    return subprocess.run(
        [sys.executable, "-c", CHECK, "serve", "--model-dir", str(model_dir), "--check-only"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MODEL_VERSION": version},
    )


def test_check_only_passes_a_complete_version_without_loading_tensorflow(exported):
    result = check_only(exported.model_dir, "2")
    assert result.returncode == 0, result.stderr
    assert f"version 2 in {exported.model_dir} is complete" in result.stdout
    assert "tensorflow imported: False" in result.stdout


def test_check_only_names_a_version_missing_from_storage(exported):
    result = check_only(exported.model_dir, "7")
    assert result.returncode == 2
    assert f"version 7 not found in {exported.model_dir} (available: [1, 2])" in result.stderr


def test_an_incomplete_version_is_refused_by_name_before_tensorflow_sees_it(tmp_path):
    """Files removed from an export: the check and the server both name what is missing."""
    incomplete = tmp_path / "mnist" / "3"
    (incomplete / "variables").mkdir(parents=True)
    (incomplete / "metadata.json").write_text("{}")
    result = check_only(incomplete.parent, "3")
    assert result.returncode == 2
    assert "version 3 in" in result.stderr and "is incomplete: no saved_model.pb" in result.stderr
    served = subprocess.run(
        [sys.executable, "-m", "kubetrain.trainer.server", "--model-dir", str(incomplete.parent)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert served.returncode == 2
    assert "is incomplete: no saved_model.pb" in served.stderr
