"""uvicorn's HTTP protocol with a deadline for each request's headers.

uvicorn times out idle keep-alive connections, but a connection that is opened and never
sends, or sends half a header line and stalls, is held for as long as the client likes: a
few hundred of them exhaust the connection limit. Here every request's headers must arrive
within `header_timeout` seconds of the connection opening or of the request's first byte,
as nginx's `client_header_timeout` has it; the body has its own deadline (`BodyLimits`).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def with_header_timeout(header_timeout: float) -> type[HttpToolsProtocol]:
    """An `HttpToolsProtocol` class that closes connections slow to send their headers."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        header_deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self.header_deadline = self.loop.call_later(header_timeout, self._expire)

        def _disarm(self) -> None:
            if self.header_deadline is not None:
                self.header_deadline.cancel()
                self.header_deadline = None

        def _expire(self) -> None:
            self.header_deadline = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

    return HeaderTimeoutProtocol
