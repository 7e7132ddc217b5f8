"""TensorFlow Serving's REST protocol for the one served model: what each request is answered.

Free of routing: the routes (`routes.py`) hand over the URL's model name and version and the
request; these functions check them against the server's state, call the model (through its
batcher) and build the response bodies of `schemas.py`, raising `ServingError`s for the rest.
"""

from __future__ import annotations

import numpy as np
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.responses import Response

from ..api.layout import SIGNATURE_NAME
from .errors import BadRequest, NotFound, Unavailable, UnsupportedMediaType
from .images import decode_image
from .inputs import parse_json, predict_tensor, read_bare_tensor, to_batch
from .model import ServedModel, SignatureTensor
from .offload import off_loop_if_large
from .responses import json_response
from .schemas import (
    ClassifyResponse,
    Dim,
    ExportInfo,
    Metadata,
    ModelMetadataResponse,
    ModelSpec,
    ModelStatusResponse,
    ModelVersionStatus,
    SignatureDef,
    SignatureDefMap,
    Status,
    TensorInfo,
    TensorShape,
)
from .state import ServerState

IMAGE_TYPES = ("image/png", "image/jpeg", "application/octet-stream")
EXPORT_KEYS = {"classNames", "inputShape", "metrics", "metric"}


def describe_validation(error: ValidationError | RequestValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    message = str(first.get("msg", "invalid request"))
    return f"{where}: {message}" if where else message


def check_served(state: ServerState, name: str, version: str | None) -> None:
    """404 unless the URL names this server's model and (if given) its loaded version."""
    expected = state.settings.model_name
    if name != expected:
        raise NotFound(f"model {name!r} is not served here; this server serves {expected!r}")
    if version is not None and (not version.isdigit() or int(version) != state.version):
        raise NotFound(
            f"version {version!r} of {name!r} is not loaded; serving version {state.version}"
        )


def served(state: ServerState, name: str, version: str | None = None) -> ServedModel:
    check_served(state, name, version)
    if state.model is None:
        raise Unavailable(state.load_error or "the model is still loading")
    return state.model


def _model_spec(model: ServedModel) -> ModelSpec:
    return ModelSpec(name=model.name, version=str(model.version))


def _tensor_info(tensor: SignatureTensor) -> TensorInfo:
    dims = [Dim(size=str(-1 if d is None else d)) for d in tensor.shape]
    return TensorInfo(
        dtype=tensor.dtype,
        tensor_shape=TensorShape(dim=dims),
        name=f"{SIGNATURE_NAME}_{tensor.name}:0",
    )


def status(state: ServerState, name: str, version: str | None) -> ModelStatusResponse:
    check_served(state, name, version)
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


def metadata(state: ServerState, name: str, version: str | None) -> ModelMetadataResponse:
    model = served(state, name, version)
    record = model.metadata
    return ModelMetadataResponse(
        model_spec=_model_spec(model),
        metadata=Metadata(
            signature_def=SignatureDefMap(
                signature_def={
                    SIGNATURE_NAME: SignatureDef(
                        inputs={model.input.name: _tensor_info(model.input)},
                        outputs={model.output.name: _tensor_info(model.output)},
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


def check_signature(name: object) -> None:
    if name not in (None, "", SIGNATURE_NAME):
        raise BadRequest(f"signature {name!r} not found; the only one is {SIGNATURE_NAME!r}")


def _predict_batch(body: bytes, model: ServedModel, max_rows: int) -> tuple[np.ndarray, bool]:
    """(the request's validated batch, whether it came as `instances`).

    Only the array leaves: the parsed JSON (some 1,600 Python objects per 28x28 instance)
    is garbage by the time the request waits for its batch, so concurrent requests do not
    keep it alive for the collector to scan.
    """
    bare = read_bare_tensor(body, model.instance_shapes)
    if bare is not None:
        tensor, as_instances = bare
    else:
        document = parse_json(body)
        check_signature(document.get("signature_name") if isinstance(document, dict) else None)
        tensor, as_instances = predict_tensor(document, model.input.name)
    return to_batch(tensor, model.input_shape, max_rows), as_instances


async def predict(state: ServerState, name: str, version: str | None, body: bytes) -> Response:
    model = served(state, name, version)
    batch, as_instances = await off_loop_if_large(
        len(body), _predict_batch, body, model, state.settings.max_batch_size
    )
    assert state.batcher is not None
    rows = await state.batcher.predict(batch)
    return json_response({"predictions" if as_instances else "outputs": rows})


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


async def classify(
    state: ServerState, name: str, version: str | None, request: Request
) -> ClassifyResponse:
    model = served(state, name, version)
    # Decoding a large image takes long enough to stall probes on the loop.
    pixels = await run_in_threadpool(decode_image, await _image_bytes(request), model.input_shape)
    assert state.batcher is not None
    probabilities = (await state.batcher.predict(pixels[np.newaxis]))[0]
    names = model.class_names
    best = int(np.argmax(probabilities))
    return ClassifyResponse(
        model_spec=_model_spec(model),
        label=names[best],
        class_index=best,
        probabilities={n: float(p) for n, p in zip(names, probabilities, strict=True)},
    )
