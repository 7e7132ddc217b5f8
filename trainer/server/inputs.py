"""Turning a predict request's JSON tensor into a validated float32 batch.

Everything a client can get wrong is caught here, before the request joins a batch, so one
bad request can never fail the batch it would have shared with good ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from .errors import BadRequest

PIXEL_MIN = 0.0
PIXEL_MAX = 255.0


def parse_json(body: bytes) -> Any:
    """The request body as JSON, whatever Content-Type the client declared (TF Serving's way)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:  # also invalid UTF-8 and nesting deeper than 1024
        raise BadRequest(f"the body is not valid JSON: {error}") from None


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
    """Validate a nested list as a batch of at most `max_rows` `input_shape` pixel arrays,
    as float32.

    A batch of single-channel images may leave the channel axis out (MNIST's 28x28), which
    is how such images are usually written down. Like TensorFlow Serving, one request may not
    be larger than a batch: it would hold the model for every request queued behind it.
    """
    if not isinstance(value, list):
        raise BadRequest(f"expected a list of instances of shape {list(input_shape)}")
    if not value:
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
