"""TensorFlow Serving's predict, answered beneath FastAPI's routing.

Predict is the server's hot path, and FastAPI's work per request (trying each route's pattern
in turn, building a Request, solving the handler's dependencies, validating path parameters)
cost the event loop about as much CPU as parsing the request, batching it and answering it.
This ASGI layer recognises the two predict paths with one pattern and calls the same
`protocol.predict` the routes do. It sits inside the body, concurrency and metrics
middleware, so limits, draining and per-route metrics apply as before. The routes stay
declared in `routes.py`, where they describe predict in the OpenAPI document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from . import protocol
from .errors import ServingError
from .responses import error_response
from .state import ServerState

PREDICT_PATH = re.compile(r"/v1/models/(?P<name>[^/]+?)(?:/versions/(?P<version>[^/]+))?:predict")


@dataclass(frozen=True)
class RouteTemplate:
    """What the metrics middleware reads from `scope["route"]`, as from a FastAPI route."""

    path: str


LATEST = RouteTemplate("/v1/models/{name}:predict")
VERSIONED = RouteTemplate("/v1/models/{name}/versions/{version}:predict")


class PredictFastPath:
    """Answers POST predict requests itself; passes every other request on to FastAPI."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = (
            PREDICT_PATH.fullmatch(scope["path"])
            if scope["type"] == "http" and scope["method"] == "POST"
            else None
        )
        if match is None:
            await self.app(scope, receive, send)
            return
        name, version = match["name"], match["version"]
        scope["route"] = LATEST if version is None else VERSIONED
        try:
            # BodyLimits, outside this layer, has read the whole body and replays it as one
            # message.
            body = (await receive()).get("body", b"")
            response = await protocol.predict(self.state, name, version, body)
        except ServingError as error:
            response = error_response(error.status_code, error.message)
        await response(scope, receive, send)
