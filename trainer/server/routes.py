"""The FastAPI application: TensorFlow Serving's REST routes plus classify, probes and metrics.

Only routing lives here (paths, OpenAPI descriptions, error handlers, middleware); what each
route answers is `protocol.py`'s, and the model's loading is `state.py`'s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import open_inference, protocol
from .errors import ServingError
from .fast_path import PredictFastPath
from .middleware import BodyLimits, ConcurrencyLimit, ObserveRequests
from .responses import error_response, json_response
from .schemas import (
    ClassifyResponse,
    ColumnarPredictResponse,
    ErrorResponse,
    Health,
    InferRequest,
    InferResponse,
    Liveness,
    ModelMetadataResponse,
    ModelMetadataV2,
    ModelReadiness,
    ModelStatusResponse,
    PredictRequest,
    PredictResponse,
    Readiness,
    ServerMetadataV2,
)
from .state import ServerState, load

log = logging.getLogger(__name__)


PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
    }
}
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": InferRequest.model_json_schema()}},
    }
}
CLASSIFY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "string", "format": "binary"}},
                    "required": ["image"],
                }
            },
        },
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 408, 413, 415, 503)
}

ModelName = Annotated[str, Path(description="the served model's name")]
Version = Annotated[str, Path(description="an integer model version")]


def create_app(state: ServerState) -> FastAPI:
    """The application for one model directory; `state` is shared with the process runner."""

    grpc_servers: list[Any] = []

    async def load_and_serve_grpc() -> None:
        await load(state)
        if state.model is None or not state.settings.grpc_port:
            return
        try:
            from .grpc_api import start_grpc  # imports TensorFlow, which `load` has imported
        except ImportError as error:  # an image without it still serves REST
            log.error(
                "no gRPC API: %s; install tensorflow-serving-api with --no-deps "
                "(or pass --grpc-port 0 to say it is not wanted)",
                error,
            )
            return
        try:
            grpc_servers.append(await start_grpc(state))
        except Exception:
            log.exception("cannot serve gRPC on port %d", state.settings.grpc_port)
            if state.on_load_failure is not None:
                state.on_load_failure()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(load_and_serve_grpc())
        try:
            yield
        finally:
            loader.cancel()
            for server in grpc_servers:
                await server.stop(state.settings.drain_timeout)
            if state.batcher is not None:
                await state.batcher.close()

    app = FastAPI(
        title="kubetrain model server",
        summary="TensorFlow-Serving-compatible REST API for models exported by kubetrain.",
        version="1",
        lifespan=lifespan,
    )
    # Outermost last: every request is observed, then counted against the limit, then its
    # body is read within its size and time limits, then a predict request is answered.
    settings = state.settings
    app.add_middleware(PredictFastPath, state=state)
    app.add_middleware(BodyLimits, max_bytes=settings.max_body_bytes, timeout=settings.body_timeout)
    app.add_middleware(ConcurrencyLimit, limit=settings.max_concurrent_requests)
    app.add_middleware(ObserveRequests, metrics=state.metrics, draining=lambda: state.draining)
    state.metrics.ready.set_function(lambda: float(state.ready))

    @app.exception_handler(ServingError)
    async def api_error(_: Request, error: ServingError) -> Response:
        return error_response(error.status_code, error.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> Response:
        return error_response(error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def internal_error(_: Request, error: Exception) -> Response:
        # Logged by uvicorn with its traceback; the client still gets the API's error shape.
        return error_response(500, f"internal error: {type(error).__name__}")

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> Response:
        return error_response(400, protocol.describe_validation(error))

    # Probes and metrics.

    @app.get("/healthz", tags=["probes"], summary="Liveness: the process answers")
    async def healthz() -> Health:
        return Health(status="alive")

    @app.get(
        "/readyz",
        tags=["probes"],
        summary="Readiness: model loaded and warmed, not shutting down",
        responses={503: {"model": Health}},
    )
    async def readyz() -> JSONResponse:
        if state.ready:
            return JSONResponse({"status": "ready"})
        reason = "draining" if state.draining else ("failed" if state.load_error else "loading")
        return JSONResponse({"status": reason}, status_code=503)

    @app.get("/metrics", tags=["probes"], summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    # Model status and metadata.

    @app.get("/v1/models/{name}", tags=["models"], responses=ERRORS, summary="Model status")
    async def model_status(name: ModelName) -> ModelStatusResponse:
        return protocol.status(state, name, None)

    @app.get(
        "/v1/models/{name}/versions/{version}",
        tags=["models"],
        responses=ERRORS,
        summary="Status of one model version",
    )
    async def model_version_status(name: ModelName, version: Version) -> ModelStatusResponse:
        return protocol.status(state, name, version)

    @app.get(
        "/v1/models/{name}/metadata",
        tags=["models"],
        responses=ERRORS,
        summary="Signature (input shape and dtype), class names and metrics",
        response_model_by_alias=True,
    )
    async def model_metadata(name: ModelName) -> ModelMetadataResponse:
        return protocol.metadata(state, name, None)

    @app.get(
        "/v1/models/{name}/versions/{version}/metadata",
        tags=["models"],
        responses=ERRORS,
        summary="Metadata of one model version",
        response_model_by_alias=True,
    )
    async def model_version_metadata(name: ModelName, version: Version) -> ModelMetadataResponse:
        return protocol.metadata(state, name, version)

    # Predict (TensorFlow Serving's format) and classify (an image upload). POST predict is
    # answered by fast_path.PredictFastPath before routing; its routes describe it here.

    @app.post(
        "/v1/models/{name}:predict",
        tags=["predict"],
        responses=ERRORS,
        openapi_extra=PREDICT_BODY,
        response_model=PredictResponse | ColumnarPredictResponse,
        summary="Predict with the served version (TensorFlow Serving's request format)",
    )
    async def predict_latest(name: ModelName, request: Request) -> Response:
        return await protocol.predict(state, name, None, await request.body())

    @app.post(
        "/v1/models/{name}/versions/{version}:predict",
        tags=["predict"],
        responses=ERRORS,
        openapi_extra=PREDICT_BODY,
        response_model=PredictResponse | ColumnarPredictResponse,
        summary="Predict with a specific version (404 unless it is the one served)",
    )
    async def predict_version(name: ModelName, version: Version, request: Request) -> Response:
        return await protocol.predict(state, name, version, await request.body())

    @app.post(
        "/v1/models/{name}:classify",
        tags=["classify"],
        responses=ERRORS,
        openapi_extra=CLASSIFY_BODY,
        summary="Classify one PNG/JPEG image (raw body or multipart file)",
    )
    async def classify_latest(name: ModelName, request: Request) -> ClassifyResponse:
        return await protocol.classify(state, name, None, request)

    @app.post(
        "/v1/models/{name}/versions/{version}:classify",
        tags=["classify"],
        responses=ERRORS,
        openapi_extra=CLASSIFY_BODY,
        summary="Classify an image with a specific version",
    )
    async def classify_version(
        name: ModelName, version: Version, request: Request
    ) -> ClassifyResponse:
        return await protocol.classify(state, name, version, request)

    # The Open Inference Protocol (KServe v2).

    @app.get("/v2", tags=["v2"], summary="Server metadata")
    async def v2_server() -> ServerMetadataV2:
        return ServerMetadataV2(**open_inference.server_metadata())

    @app.get("/v2/health/live", tags=["v2"], summary="Liveness: the process answers")
    async def v2_live() -> Liveness:
        return Liveness(live=True)

    @app.get(
        "/v2/health/ready",
        tags=["v2"],
        summary="Readiness: as /readyz",
        responses={503: {"model": Readiness}},
    )
    async def v2_ready() -> Response:
        return json_response({"ready": state.ready}, 200 if state.ready else 503)

    @app.get("/v2/models/{name}", tags=["v2"], responses=ERRORS, summary="Model metadata")
    async def v2_model(name: ModelName) -> ModelMetadataV2:
        return ModelMetadataV2(**open_inference.model_metadata(state, name, None))

    @app.get(
        "/v2/models/{name}/versions/{version}",
        tags=["v2"],
        responses=ERRORS,
        summary="Metadata of one model version",
    )
    async def v2_model_version(name: ModelName, version: Version) -> ModelMetadataV2:
        return ModelMetadataV2(**open_inference.model_metadata(state, name, version))

    @app.get(
        "/v2/models/{name}/ready",
        tags=["v2"],
        responses={**ERRORS, 503: {"model": ModelReadiness}},
        response_model=ModelReadiness,
        summary="Model readiness: 200 once loaded and warmed, else 503",
    )
    async def v2_model_ready(name: ModelName) -> Response:
        return open_inference.model_ready(state, name, None)

    @app.get(
        "/v2/models/{name}/versions/{version}/ready",
        tags=["v2"],
        responses={**ERRORS, 503: {"model": ModelReadiness}},
        response_model=ModelReadiness,
        summary="Readiness of one model version",
    )
    async def v2_model_version_ready(name: ModelName, version: Version) -> Response:
        return open_inference.model_ready(state, name, version)

    @app.post(
        "/v2/models/{name}/infer",
        tags=["v2"],
        responses=ERRORS,
        openapi_extra=INFER_BODY,
        response_model=InferResponse,
        summary="Inference with the served version (JSON tensors)",
    )
    async def v2_infer(name: ModelName, request: Request) -> Response:
        return await open_inference.infer(state, name, None, request)

    @app.post(
        "/v2/models/{name}/versions/{version}/infer",
        tags=["v2"],
        responses=ERRORS,
        openapi_extra=INFER_BODY,
        response_model=InferResponse,
        summary="Inference with a specific version (404 unless it is the one served)",
    )
    async def v2_infer_version(name: ModelName, version: Version, request: Request) -> Response:
        return await open_inference.infer(state, name, version, request)

    return app
