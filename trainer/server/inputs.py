"""Turning a predict request's JSON tensor into a validated float32 batch.

Everything a client can get wrong is caught here, before the request joins a batch, so one
bad request can never fail the batch it would have shared with good ones.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import numpy as np
import orjson

from .errors import BadRequest

PIXEL_MIN = 0.0
PIXEL_MAX = 255.0


NUMBER_BYTES = b"0123456789+-.eE \t\r\n"
LAYOUT_BYTES = b"[],"
BARE_TENSOR_HEAD = re.compile(rb'\s*\{\s*"(instances|inputs)"\s*:\s*\Z')
"""What precedes the array in `{"instances": [...]}` or `{"inputs": [...]}`, the usual body."""


@functools.lru_cache(maxsize=16)
def _layout(shape: tuple[int, ...]) -> bytes:
    """The brackets and commas of a rectangular array of `shape`, without its numbers."""
    if not shape:
        return b""
    return b"[" + b",".join([_layout(shape[1:])] * shape[0]) + b"]"


def read_bare_tensor(
    body: bytes, instance_shapes: list[tuple[int, ...]]
) -> tuple[Any, bool] | None:
    """(the array of a `{"instances"|"inputs": <numbers>}` body, whether it came as
    `instances`), or None for any other body, which the general path then explains.

    Parsed the ordinary way, a 28x28x1 instance becomes some 800 nested Python lists, and
    turning them into an array costs twice the parsing. Here the nesting is read from the
    brackets alone and must be exactly that of a rectangular batch of one of
    `instance_shapes`; the numbers are then parsed as one flat JSON array, so JSON's number
    syntax still applies. Strings, literals, objects and other keys all leave characters that
    fall out of this path.
    """
    start, end = body.find(b"["), body.rfind(b"]")
    head = BARE_TENSOR_HEAD.match(body, 0, max(start, 0))
    if head is None or end < start or body[end + 1 :].strip() != b"}":
        return None
    text = body[start : end + 1]
    layout = text.translate(None, NUMBER_BYTES)
    if layout.translate(None, LAYOUT_BYTES):
        return None
    try:
        numbers = orjson.loads(b"[" + text.translate(None, b"[]") + b"]")
        values = np.array(numbers, dtype=np.float64)
    except (orjson.JSONDecodeError, OverflowError, TypeError, ValueError):
        return None
    for shape in instance_shapes:
        size = math.prod(shape)
        rows = len(values) // size if size else 0
        if rows and layout == b"[" + b",".join([_layout(shape)] * rows) + b"]":
            return values.reshape(rows, *shape), head.group(1) == b"instances"
    return None


def parse_json(body: bytes) -> Any:
    """The request body as JSON, whatever Content-Type the client declared (TF Serving's way)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:  # also invalid UTF-8 and nesting deeper than 1024
        raise BadRequest(f"the body is not valid JSON: {error}") from None


def predict_tensor(document: Any, input_name: str) -> tuple[Any, bool]:
    """(the tensor of a TF Serving predict body, whether it came as `instances`).

    Checked by hand rather than by a pydantic model: validating every number of every
    instance cost more than the rest of the request, for the same verdicts.
    """
    if not isinstance(document, dict):
        raise BadRequest(
            f"a predict request is a JSON object with 'instances' or 'inputs', "
            f"not {type(document).__name__}"
        )
    instances, inputs = document.get("instances"), document.get("inputs")
    if (instances is None) == (inputs is None):
        raise BadRequest("a predict request has exactly one of 'instances' or 'inputs'")
    if instances is None:
        return unwrap_named(inputs, input_name, "inputs"), False
    if not isinstance(instances, list):
        raise BadRequest("instances: must be a list, one tensor (or named object) per instance")
    return instances_to_tensor(instances, input_name), True


def unwrap_named(value: Any, input_name: str, where: str) -> Any:
    """`{"images": x}` -> `x`; the model has one input, so no other key is meaningful."""
    if isinstance(value, dict):
        if set(value) != {input_name}:
            raise BadRequest(
                f"{where} names inputs {sorted(value)}; this model's only input is {input_name!r}"
            )
        return value[input_name]
    return value


def instances_to_tensor(instances: list[Any], input_name: str) -> Any:
    """Row format: a list of tensors, or of `{"images": tensor}` objects."""
    if instances and all(isinstance(item, dict) for item in instances):
        return [unwrap_named(item, input_name, "an instance") for item in instances]
    if any(isinstance(item, dict) for item in instances):
        raise BadRequest("instances mix named objects and bare tensors")
    return instances


def to_batch(value: Any, input_shape: tuple[int, ...], max_rows: int) -> np.ndarray:
    """Validate a nested list (or an array) as a batch of at most `max_rows` `input_shape`
    pixel arrays, as float32.

    A batch of single-channel images may leave the channel axis out (MNIST's 28x28), which
    is how such images are usually written down. Like TensorFlow Serving, one request may not
    be larger than a batch: it would hold the model for every request queued behind it.
    """
    if not isinstance(value, list) and not (isinstance(value, np.ndarray) and value.ndim):
        raise BadRequest(f"expected a list of instances of shape {list(input_shape)}")
    if not len(value):
        raise BadRequest("no instances: the batch is empty")
    if len(value) > max_rows:
        raise BadRequest(
            f"{len(value)} instances in one request; this server takes at most {max_rows} "
            "(--max-batch-size): split the request"
        )
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, RecursionError) as error:
        raise BadRequest(f"instances are not a rectangular numeric array: {error}") from None
    if array.dtype.kind not in "iuf":
        kind = {"b": "booleans", "U": "strings", "O": "mixed or ragged values"}.get(
            array.dtype.kind, f"values of type {array.dtype}"
        )
        raise BadRequest(f"instances must be numbers; got {kind}")
    shape = array.shape[1:]
    if shape != input_shape:
        if input_shape[-1] == 1 and shape == input_shape[:-1]:
            array = array[..., np.newaxis]
        else:
            raise BadRequest(
                f"each instance must have shape {list(input_shape)}; got {list(shape)}"
            )
    with np.errstate(over="ignore", invalid="ignore"):
        batch = array.astype(np.float32)
    if not np.isfinite(batch).all():
        raise BadRequest("instances contain NaN or infinite values (or overflow float32)")
    if batch.min() < PIXEL_MIN or batch.max() > PIXEL_MAX:
        raise BadRequest(f"pixel values must lie in [{PIXEL_MIN:g}, {PIXEL_MAX:g}]")
    return batch
