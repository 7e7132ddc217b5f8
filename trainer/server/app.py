"""The FastAPI application: TensorFlow Serving's REST routes plus classify, probes and metrics.

The model loads in the background after the server starts listening, so the liveness probe
answers at once while the readiness probe stays 503 until the model is loaded and warmed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from .batching import Batcher, Unbatched
from .config import ServerSettings
from .errors import ApiError, BadRequest, NotFound, Unavailable, UnsupportedMediaType
from .images import decode_image
from .inputs import instances_to_tensor, parse_json, to_batch, unwrap_named
from .metrics import ServerMetrics
from .middleware import BodySizeLimit, ObserveRequests
from .model import SIGNATURE_NAME, ServedModel, TensorInfo, load_model
from .schemas import (
    ClassifyResponse,
    ColumnarPredictResponse,
    Dim,
    ErrorResponse,
    ExportInfo,
    Health,
    Metadata,
    ModelMetadataResponse,
    ModelSpec,
    ModelStatusResponse,
    ModelVersionStatus,
    PredictRequest,
    PredictResponse,
    SignatureDef,
    SignatureDefMap,
    Status,
    TensorShape,
)
from .schemas import TensorInfo as TensorInfoBody

log = logging.getLogger(__name__)

IMAGE_TYPES = ("image/png", "image/jpeg", "application/octet-stream")
EXPORT_KEYS = {"classNames", "inputShape", "metrics", "metric"}


@dataclass
class ServerState:
    """What the routes share; mutated only on the event loop, except `draining` (a flag)."""

    settings: ServerSettings
    version: int
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    model: ServedModel | None = None
    batcher: Batcher | Unbatched | None = None
    warmed: bool = False
    draining: bool = False
    load_error: str | None = None
    on_load_failure: Callable[[], None] | None = None

    @property
    def ready(self) -> bool:
        return self.warmed and not self.draining

    def begin_drain(self) -> None:
        """Safe to call from a signal handler: it only flips a flag."""
        self.draining = True


async def _load(state: ServerState) -> None:
    settings = state.settings
    try:
        model = await asyncio.to_thread(
            load_model, settings.model_name, settings.model_dir, state.version
        )
        await asyncio.to_thread(model.warm_up)
    except Exception as error:
        log.exception("cannot load %s version %d", settings.model_name, state.version)
        state.load_error = f"{type(error).__name__}: {error}"
        if state.on_load_failure is not None:
            state.on_load_failure()
        return
    if settings.enable_batching:
        state.batcher = Batcher(
            model.predict,
            max_batch_size=settings.max_batch_size,
            max_wait=settings.batch_timeout_micros / 1e6,
            threads=settings.batch_threads,
            on_batch=state.metrics.observe_batch,
        )
    else:
        state.batcher = Unbatched(model.predict, on_batch=state.metrics.observe_batch)
    state.batcher.start()
    metric = str(model.metadata.get("metric") or "")
    value = (model.metadata.get("metrics") or {}).get(metric)
    state.metrics.model.info(
        {
            "name": model.name,
            "version": str(model.version),
            "metric": metric,
            "metric_value": "" if value is None else f"{value:g}",
        }
    )
    state.model = model
    state.warmed = True
    log.info("ready: %s version %d", model.name, model.version)


def _error(status_code: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status_code)


def _describe_validation(error: ValidationError | RequestValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    message = str(first.get("msg", "invalid request"))
    return f"{where}: {message}" if where else message


def _tensor_body(info: TensorInfo) -> TensorInfoBody:
    dims = [Dim(size=str(-1 if d is None else d)) for d in info.shape]
    return TensorInfoBody(
        dtype=info.dtype,
        tensor_shape=TensorShape(dim=dims),
        name=f"{SIGNATURE_NAME}_{info.name}:0",
    )


async def _image_bytes(request: Request) -> bytes:
    """The uploaded image: a raw PNG/JPEG body, or the (first) file of a multipart form."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=16)
        except Exception as error:  # malformed multipart bodies raise several types
            raise BadRequest(f"cannot parse the multipart form: {error}") from None
        try:
            files = [v for v in form.values() if isinstance(v, UploadFile)]
            if not files:
                raise BadRequest("the multipart form has no file; send the image as a file field")
            return await files[0].read()
        finally:
            await form.close()
    if content_type and content_type not in IMAGE_TYPES:
        raise UnsupportedMediaType(
            f"send a PNG/JPEG body ({', '.join(IMAGE_TYPES)}) or multipart/form-data, "
            f"not {content_type}"
        )
    return await request.body()


PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
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
    code: {"model": ErrorResponse} for code in (400, 404, 413, 415, 503)
}

ModelName = Annotated[str, Path(description="the served model's name")]
Version = Annotated[str, Path(description="an integer model version")]


def create_app(state: ServerState) -> FastAPI:
    """The application for one model directory; `state` is shared with the process runner."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(_load(state))
        try:
            yield
        finally:
            loader.cancel()
            if state.batcher is not None:
                await state.batcher.close()

    app = FastAPI(
        title="kubetrain model server",
        summary="TensorFlow-Serving-compatible REST API for models exported by kubetrain.",
        version="1",
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, max_bytes=state.settings.max_body_bytes)
    app.add_middleware(ObserveRequests, metrics=state.metrics, draining=lambda: state.draining)
    state.metrics.ready.set_function(lambda: float(state.ready))

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        return _error(error.status_code, error.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def internal_error(_: Request, error: Exception) -> JSONResponse:
        # Logged by uvicorn with its traceback; the client still gets the API's error shape.
        return _error(500, f"internal error: {type(error).__name__}")

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        return _error(400, _describe_validation(error))

    def check_served(name: str, version: str | None) -> None:
        """404 unless the URL names this server's model and (if given) its loaded version."""
        expected = state.settings.model_name
        if name != expected:
            raise NotFound(f"model {name!r} is not served here; this server serves {expected!r}")
        if version is not None and (not version.isdigit() or int(version) != state.version):
            raise NotFound(
                f"version {version!r} of {name!r} is not loaded; serving version {state.version}"
            )

    def served(name: str, version: str | None = None) -> ServedModel:
        check_served(name, version)
        if state.model is None:
            raise Unavailable(state.load_error or "the model is still loading")
        return state.model

    def spec(model: ServedModel) -> ModelSpec:
        return ModelSpec(name=model.name, version=str(model.version))

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

    def status(name: str, version: str | None) -> ModelStatusResponse:
        check_served(name, version)
        if state.load_error is not None:
            entry = ModelVersionStatus(
                version=str(state.version),
                state="END",
                status=Status(error_code="UNKNOWN", error_message=state.load_error),
            )
        else:
            entry = ModelVersionStatus(
                version=str(state.version), state="AVAILABLE" if state.warmed else "LOADING"
            )
        return ModelStatusResponse(model_version_status=[entry])

    @app.get("/v1/models/{name}", tags=["models"], responses=ERRORS, summary="Model status")
    async def model_status(name: ModelName) -> ModelStatusResponse:
        return status(name, None)

    @app.get(
        "/v1/models/{name}/versions/{version}",
        tags=["models"],
        responses=ERRORS,
        summary="Status of one model version",
    )
    async def model_version_status(name: ModelName, version: Version) -> ModelStatusResponse:
        return status(name, version)

    def metadata(name: str, version: str | None) -> ModelMetadataResponse:
        model = served(name, version)
        record = model.metadata
        return ModelMetadataResponse(
            model_spec=spec(model),
            metadata=Metadata(
                signature_def=SignatureDefMap(
                    signature_def={
                        SIGNATURE_NAME: SignatureDef(
                            inputs={model.input.name: _tensor_body(model.input)},
                            outputs={model.output.name: _tensor_body(model.output)},
                        )
                    }
                )
            ),
            export=ExportInfo(
                class_names=model.class_names,
                input_shape=list(model.input_shape),
                metrics={
                    k: float(v)
                    for k, v in (record.get("metrics") or {}).items()
                    if isinstance(v, int | float)
                },
                metric=record.get("metric"),
                details={k: v for k, v in record.items() if k not in EXPORT_KEYS},
            ),
        )

    @app.get(
        "/v1/models/{name}/metadata",
        tags=["models"],
        responses=ERRORS,
        summary="Signature (input shape and dtype), class names and metrics",
        response_model_by_alias=True,
    )
    async def model_metadata(name: ModelName) -> ModelMetadataResponse:
        return metadata(name, None)

    @app.get(
        "/v1/models/{name}/versions/{version}/metadata",
        tags=["models"],
        responses=ERRORS,
        summary="Metadata of one model version",
        response_model_by_alias=True,
    )
    async def model_version_metadata(name: ModelName, version: Version) -> ModelMetadataResponse:
        return metadata(name, version)

    # Predict (TensorFlow Serving's format) and classify (an image upload).

    async def predict(
        name: str, version: str | None, request: Request
    ) -> PredictResponse | ColumnarPredictResponse:
        model = served(name, version)
        document = parse_json(await request.body())
        try:
            payload = PredictRequest.model_validate(document)
        except ValidationError as error:
            raise BadRequest(_describe_validation(error)) from None
        if payload.signature_name not in (None, "", SIGNATURE_NAME):
            raise BadRequest(
                f"signature {payload.signature_name!r} not found; the only one is "
                f"{SIGNATURE_NAME!r}"
            )
        if payload.instances is not None:
            tensor = instances_to_tensor(payload.instances, model.input.name)
        else:
            tensor = unwrap_named(payload.inputs, model.input.name, "inputs")
        batch = to_batch(tensor, model.input_shape)
        assert state.batcher is not None
        rows = (await state.batcher.predict(batch)).tolist()
        if payload.instances is not None:
            return PredictResponse(predictions=rows)
        return ColumnarPredictResponse(outputs=rows)

    @app.post(
        "/v1/models/{name}:predict",
        tags=["predict"],
        responses=ERRORS,
        openapi_extra=PREDICT_BODY,
        summary="Predict with the served version (TensorFlow Serving's request format)",
    )
    async def predict_latest(
        name: ModelName, request: Request
    ) -> PredictResponse | ColumnarPredictResponse:
        return await predict(name, None, request)

    @app.post(
        "/v1/models/{name}/versions/{version}:predict",
        tags=["predict"],
        responses=ERRORS,
        openapi_extra=PREDICT_BODY,
        summary="Predict with a specific version (404 unless it is the one served)",
    )
    async def predict_version(
        name: ModelName, version: Version, request: Request
    ) -> PredictResponse | ColumnarPredictResponse:
        return await predict(name, version, request)

    async def classify(name: str, version: str | None, request: Request) -> ClassifyResponse:
        model = served(name, version)
        pixels = decode_image(await _image_bytes(request), model.input_shape)
        assert state.batcher is not None
        probabilities = (await state.batcher.predict(pixels[np.newaxis]))[0]
        names = model.class_names
        best = int(np.argmax(probabilities))
        return ClassifyResponse(
            model_spec=spec(model),
            label=names[best],
            class_index=best,
            probabilities={n: float(p) for n, p in zip(names, probabilities, strict=True)},
        )

    @app.post(
        "/v1/models/{name}:classify",
        tags=["classify"],
        responses=ERRORS,
        openapi_extra=CLASSIFY_BODY,
        summary="Classify one PNG/JPEG image (raw body or multipart file)",
    )
    async def classify_latest(name: ModelName, request: Request) -> ClassifyResponse:
        return await classify(name, None, request)

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
        return await classify(name, version, request)

    return app
