"""The Open Inference Protocol (KServe v2) over REST for the one served model.

Beside TensorFlow Serving's REST API, so clients written for KServe, Triton or MLServer work
unchanged: tensors travel as `{name, shape, datatype, data}`, `data` flattened in row-major
order (nested lists are accepted too). Requests go through the same validation and the same
batcher as `:predict`. The binary tensor data extension (Triton's and its clients' default) is
served too: input bytes after a JSON header, and outputs likewise when asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from fastapi import Request
from starlette.responses import Response

from .errors import BadRequest
from .inputs import parse_json, to_batch
from .model import ServedModel, SignatureTensor
from .offload import off_loop_if_large
from .protocol import check_served, served
from .responses import json_response
from .state import ServerState

PLATFORM = "tensorflow_savedmodel"
SERVER_NAME = "kubetrain"
SERVER_VERSION = "1"
NUMERIC_DATATYPES = {
    **{f"UINT{bits}": f"<u{bits // 8}" for bits in (8, 16, 32, 64)},
    **{f"INT{bits}": f"<i{bits // 8}" for bits in (8, 16, 32, 64)},
    **{f"FP{bits}": f"<f{bits // 8}" for bits in (16, 32, 64)},
}
"""The protocol's tensor data types the model can take, as numpy's (BOOL, BYTES: the rest)."""
HEADER_LENGTH = "inference-header-content-length"
"""Binary tensor data extension: the length of the JSON part before the tensors' bytes."""
TF_DATATYPES = {"DT_FLOAT": "FP32", "DT_DOUBLE": "FP64", "DT_HALF": "FP16", "DT_INT32": "INT32"}
"""TensorFlow's names of the data types a signature may have here, and the protocol's."""


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": []}


def _tensor_metadata(tensor: SignatureTensor) -> dict[str, Any]:
    return {
        "name": tensor.name,
        "datatype": TF_DATATYPES.get(tensor.dtype, tensor.dtype),
        "shape": [-1 if d is None else d for d in tensor.shape],
    }


def model_metadata(state: ServerState, name: str, version: str | None) -> dict[str, Any]:
    model = served(state, name, version)
    return {
        "name": model.name,
        "versions": [str(model.version)],
        "platform": PLATFORM,
        "inputs": [_tensor_metadata(model.input)],
        "outputs": [_tensor_metadata(model.output)],
    }


def model_ready(state: ServerState, name: str, version: str | None) -> Response:
    """200 once the model is loaded and warmed up and the server is not draining, else 503."""
    check_served(state, name, version)
    return json_response({"name": name, "ready": state.ready}, 200 if state.ready else 503)


@dataclass
class InferCall:
    """What an inference request asks for, its lists dropped: `batch` is all of its data."""

    batch: np.ndarray
    request_id: str | None
    binary_output: bool


def _parameter(holder: dict[str, Any], key: str) -> bool:
    """Whether `holder`'s `parameters` set `key` to true (how binary outputs are asked for)."""
    parameters = holder.get("parameters")
    return isinstance(parameters, dict) and parameters.get(key) is True


def _input_tensor(tensor: dict[str, Any], binary: bytes, model: ServedModel) -> np.ndarray:
    """The one input tensor as an array, from JSON `data` or the binary part of the body."""
    if tensor.get("name") != model.input.name:
        raise BadRequest(
            f"input {tensor.get('name')!r} not found; this model's only input is "
            f"{model.input.name!r}"
        )
    datatype = tensor.get("datatype")
    if datatype not in NUMERIC_DATATYPES:
        raise BadRequest(
            f"datatype {datatype!r} is not a numeric one ({', '.join(NUMERIC_DATATYPES)}); "
            "this model takes pixel values"
        )
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise BadRequest("'shape' must be a list of non-negative integers")
    if not shape:
        raise BadRequest(
            f"'shape' needs a batch axis: [rows, {', '.join(map(str, model.input_shape))}]"
        )
    size = math.prod(shape)
    parameters = tensor.get("parameters")
    if isinstance(parameters, dict) and "binary_data_size" in parameters:
        dtype = np.dtype(NUMERIC_DATATYPES[datatype])
        if parameters["binary_data_size"] != len(binary) or len(binary) != size * dtype.itemsize:
            raise BadRequest(
                f"binary_data_size {parameters['binary_data_size']!r}: the body carries "
                f"{len(binary)} bytes after the JSON, shape {shape} of {datatype} needs "
                f"{size * dtype.itemsize}"
            )
        return np.frombuffer(binary, dtype=dtype).reshape(shape)
    data = tensor.get("data")
    if not isinstance(data, list):
        raise BadRequest("'data' must be a list of numbers (row-major, may be nested)")
    try:
        values = np.asarray(data)  # its dtype is checked with the rest, by `to_batch`
    except (ValueError, TypeError, OverflowError, RecursionError) as error:
        raise BadRequest(f"'data' is not a rectangular numeric array: {error}") from None
    if values.size != size:
        raise BadRequest(f"'data' has {values.size} values; shape {shape} needs {size}")
    return values.reshape(shape)


def _infer_call(
    body: bytes, header_length: str | None, model: ServedModel, max_rows: int
) -> InferCall:
    """Parse and validate an inference request: JSON, or a JSON header of `header_length`
    bytes followed by the input's bytes (the binary tensor data extension)."""
    binary = b""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise BadRequest(
                f"Inference-Header-Content-Length {header_length!r} does not fit the body"
            )
        body, binary = body[: int(header_length)], body[int(header_length) :]
    document = parse_json(body)
    if not isinstance(document, dict):
        raise BadRequest("an inference request is a JSON object with 'inputs'")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(f"'inputs' must list exactly one tensor, {model.input.name!r}")
    requested = document.get("outputs")
    if requested is not None:
        if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
            raise BadRequest("'outputs' must be a list of {'name': ...} objects")
        for output in requested:
            if output.get("name") != model.output.name:
                raise BadRequest(
                    f"output {output.get('name')!r} not found; this model's only output is "
                    f"{model.output.name!r}"
                )
    values = _input_tensor(inputs[0], binary, model)
    request_id = document.get("id")
    return InferCall(
        to_batch(values, model.input_shape, max_rows),
        request_id if isinstance(request_id, str) else None,
        _parameter(document, "binary_data_output")
        or any(_parameter(output, "binary_data") for output in requested or ()),
    )


async def infer(state: ServerState, name: str, version: str | None, request: Request) -> Response:
    model = served(state, name, version)
    body = await request.body()
    call = await off_loop_if_large(
        len(body),
        _infer_call,
        body,
        request.headers.get(HEADER_LENGTH),
        model,
        state.settings.max_batch_size,
    )
    assert state.batcher is not None
    rows = await state.batcher.predict(call.batch)
    output: dict[str, Any] = {
        "name": model.output.name,
        "shape": list(rows.shape),
        "datatype": _tensor_metadata(model.output)["datatype"],
    }
    answer: dict[str, Any] = {
        "model_name": model.name,
        "model_version": str(model.version),
        "outputs": [output],
    }
    if call.request_id is not None:
        answer["id"] = call.request_id
    if not call.binary_output:
        output["data"] = rows.ravel()
        return json_response(answer)
    data = np.ascontiguousarray(rows, dtype=NUMERIC_DATATYPES[output["datatype"]]).tobytes()
    output["parameters"] = {"binary_data_size": len(data)}
    header = orjson.dumps(answer)
    return Response(
        header + data,
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )
