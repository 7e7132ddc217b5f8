"""Clients that stall, trickle, flood or upload huge images cannot take the server down.

One server with tight limits: 2 s for headers and for a body, 3 API requests in flight.
Slow clients are raw sockets, since an HTTP library would send everything at once.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from conftest import ExportedModels, ServerProcess, pattern_images
from kubetrain.operator.serving import PROBE_TIMEOUT_SECONDS
from PIL import Image

PREDICT = "/v1/models/mnist:predict"
CLASSIFY = "/v1/models/mnist:classify"
HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
MAX_IN_FLIGHT = 3
GOOD = {"instances": pattern_images([3]).tolist()}


@pytest.fixture(scope="module")
def guarded(exported: ExportedModels, start_server) -> ServerProcess:
    return start_server(
        exported.model_dir,
        "--header-timeout",
        str(HEADER_TIMEOUT),
        "--body-timeout",
        str(BODY_TIMEOUT),
        "--max-concurrent-requests",
        str(MAX_IN_FLIGHT),
    ).wait_ready()


@pytest.fixture
def client(guarded: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=guarded.url, timeout=30) as client:
        yield client


def connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    return sock


def stalled_upload(server: ServerProcess, declared: int = 1000) -> socket.socket:
    """A predict request whose headers are complete but whose body never finishes."""
    sock = connect(server)
    head = (
        f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + b'{"instances": [')
    return sock


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def test_a_stalled_body_gets_408_at_the_body_timeout(guarded: ServerProcess, client):
    sock = stalled_upload(guarded)
    started = time.monotonic()
    response = read_response(sock)
    waited = time.monotonic() - started
    assert status_of(response) == 408
    assert b"not received within 2 s" in response
    assert BODY_TIMEOUT - 0.5 < waited < BODY_TIMEOUT + 5
    assert client.post(PREDICT, json=GOOD).status_code == 200


def test_a_body_trickled_a_byte_at_a_time_is_cut_at_the_same_deadline(guarded: ServerProcess):
    sock = stalled_upload(guarded)
    started = time.monotonic()
    sock.settimeout(0.3)
    response = b""
    while time.monotonic() - started < BODY_TIMEOUT + 10:
        try:
            sock.sendall(b" ")
            response += sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:  # closed after the answer
            break
        if response:
            break
    assert status_of(response) == 408
    assert time.monotonic() - started < BODY_TIMEOUT + 5


@pytest.mark.parametrize(
    "sent", [b"", b"POST /v1/models/mnist:predict HTTP/1.1\r\nHost: x\r\nContent-Le"]
)
def test_a_connection_slow_to_send_its_headers_is_closed(guarded: ServerProcess, sent: bytes):
    sock = connect(guarded)
    sock.sendall(sent)
    started = time.monotonic()
    assert read_response(sock) == b""  # closed, no request was ever handled
    assert HEADER_TIMEOUT - 0.5 < time.monotonic() - started < HEADER_TIMEOUT + 5


def test_past_the_in_flight_limit_requests_get_503_and_probes_still_answer(
    guarded: ServerProcess, client: httpx.Client
):
    holders = [stalled_upload(guarded) for _ in range(MAX_IN_FLIGHT)]
    time.sleep(0.3)  # let the server accept them
    refused = client.post(PREDICT, json=GOOD)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert "limit is 3" in refused.json()["error"]
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code == 200
    for sock in holders:  # the holders time out, and their places are free again
        assert status_of(read_response(sock)) == 408
    assert client.post(PREDICT, json=GOOD).status_code == 200


def huge_png() -> bytes:
    """A 4096x4096 RGB PNG, the most pixels the server decodes; flat, so the body is small."""
    image = Image.new("RGB", (4096, 4096), (30, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_decoding_large_images_does_not_stall_the_probes(guarded: ServerProcess):
    """Six uploads decode at once (the in-flight limit admits three, the rest get 503); the
    liveness and readiness probes keep answering inside the kubelet's timeout meanwhile."""
    body = huge_png()
    statuses: list[int] = []

    def upload() -> None:
        with httpx.Client(base_url=guarded.url, timeout=120) as client:
            statuses.append(
                client.post(
                    CLASSIFY, content=body, headers={"content-type": "image/png"}
                ).status_code
            )

    uploads = [threading.Thread(target=upload) for _ in range(6)]
    for thread in uploads:
        thread.start()
    slowest = 0.0
    with httpx.Client(base_url=guarded.url, timeout=60) as probe:
        while any(thread.is_alive() for thread in uploads):
            started = time.monotonic()
            assert probe.get("/healthz").status_code == 200
            assert probe.get("/readyz").status_code == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.05)
    for thread in uploads:
        thread.join()
    assert 200 in statuses and set(statuses) <= {200, 503}
    assert slowest < PROBE_TIMEOUT_SECONDS, f"a probe took {slowest:.1f} s"
