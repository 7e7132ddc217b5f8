"""Running the app under uvicorn with Kubernetes-friendly startup and shutdown.

SIGTERM (what the kubelet sends) makes `/readyz` fail at once, keeps serving for
`shutdown_delay` seconds so endpoints can drop the pod, then closes the listener and waits up
to `drain_timeout` for in-flight requests before exiting 0. A second signal stops waiting.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Generator
from types import FrameType

import uvicorn

from .config import ServerSettings
from .connections import with_header_timeout
from .model import ModelNotFound, choose_version
from .routes import create_app
from .state import ServerState

log = logging.getLogger("kubetrain.trainer.server")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState, shutdown_delay: float) -> None:
        super().__init__(config)
        self.state = state
        self.shutdown_delay = shutdown_delay
        self.stop_at: float | None = None
        self.exit_code = 0

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn re-raises the signal after shutting down, which would make a clean drain
        # look like a kill to the kubelet; here the process exits with our own code instead.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.stop_at is not None:
            self.should_exit = True
            self.force_exit = True
            return
        self.state.begin_drain()
        self.stop_at = time.monotonic() + self.shutdown_delay
        if self.shutdown_delay <= 0:
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.stop_at is not None and time.monotonic() >= self.stop_at:
            self.should_exit = True
        return await super().on_tick(counter)

    def fail(self) -> None:
        """The model could not be loaded: exit non-zero so the pod restarts and says why."""
        self.exit_code = 1
        self.should_exit = True


def run(settings: ServerSettings) -> int:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        version = choose_version(settings.model_dir, settings.model_version)
    except ModelNotFound as error:
        log.error("%s", error)
        return 2
    state = ServerState(settings=settings, version=version)
    config = uvicorn.Config(
        create_app(state),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=settings.drain_timeout,
        http=with_header_timeout(settings.header_timeout),
        limit_concurrency=settings.max_connections,
        lifespan="on",
    )
    server = DrainingServer(config, state, settings.shutdown_delay)
    state.on_load_failure = server.fail
    log.info(
        "serving %s version %d from %s on %s:%d",
        settings.model_name,
        version,
        settings.model_dir,
        settings.host,
        settings.port,
    )
    server.run()
    return server.exit_code
