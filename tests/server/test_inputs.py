"""The fast reading of bare numeric tensors agrees with the general JSON path, or stands aside."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubetrain.trainer.server.errors import BadRequest
from kubetrain.trainer.server.inputs import parse_json, predict_tensor, read_bare_tensor, to_batch
from kubetrain.trainer.server.protocol import _predict_batch, check_signature

SHAPE = (4, 3, 1)
MODEL = SimpleNamespace(
    input=SimpleNamespace(name="images"), input_shape=SHAPE, instance_shapes=[SHAPE, SHAPE[:-1]]
)


def general(body: bytes) -> tuple[np.ndarray, bool] | str:
    """What the parse-everything path makes of a body: (batch, as instances), or the error."""
    try:
        document = parse_json(body)
        check_signature(document.get("signature_name") if isinstance(document, dict) else None)
        tensor, as_instances = predict_tensor(document, "images")
        return to_batch(tensor, SHAPE, 8), as_instances
    except BadRequest as error:
        return f"error: {error.message}"


def served(body: bytes) -> tuple[np.ndarray, bool] | str:
    try:
        return _predict_batch(body, MODEL, 8)
    except BadRequest as error:
        return f"error: {error.message}"


def assert_same(body: bytes) -> None:
    want, got = general(body), served(body)
    if isinstance(want, str) or isinstance(got, str):
        assert isinstance(want, str) and isinstance(got, str), (body, want, got)
        return
    np.testing.assert_array_equal(got[0], want[0])
    assert got[0].dtype == want[0].dtype == np.float32 and got[1] == want[1]


numbers = st.integers(-3, 300) | st.floats(-1, 300, allow_nan=False) | st.sampled_from([1e39, 0.5])


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(0, 9),
    channel=st.booleans(),
    key=st.sampled_from(["instances", "inputs"]),
    values=st.lists(numbers, min_size=12 * 9, max_size=12 * 9),
    spacing=st.sampled_from([(", ", ": "), (",", ":"), (" ,\n ", " :\t")]),
)
def test_well_formed_bodies_give_what_the_general_path_gives(rows, channel, key, values, spacing):
    shape = (rows, *SHAPE) if channel else (rows, *SHAPE[:-1])
    array = np.array(values[: rows * 12], dtype=object).reshape(shape).tolist()
    body = json.dumps({key: array}, separators=spacing).encode()
    assert_same(body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 2]]]}',  # ragged
        b'{"instances": [[[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 2, 3, 4]]]}',
        b'{"instances": [[[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 2, [3]]]]}',
        b'{"instances": [[[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 2, 3]]], "extra": 1}',
        b'{"instances": [[[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 2, 3]]]} trailing',
        b'{"instances": [[[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 2, 1e]]]}',  # not a number
        b'{"instances": [[[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 2, 3.]]]}',
        b'{"instances": [[[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 2, +3]]]}',
        b'{"instances": [[[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 2, true]]]}',
        b'{"instances": [[[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 2, 1' + b"0" * 400 + b"]]]}",
        b'{"instances": [[[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 2, 3]],]}',
        b'{"instances": [[[1 2 3], [4, 5, 6], [7, 8, 9], [1, 2, 3]]]}',
        b'{"instances": []}',
        b'{"instances": [[]]}',
        b'{"inputs": [1], "instances": [2]}',
        b'{"signature_name": "x", "instances": [[[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 2, 3]]]}',
        b'{"instances": {"images": [[[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 2, 3]]]}}',
        b'{"instances": [[[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 2, 3]]]',
        b'["instances", [1]]',
    ],
)
def test_anything_else_is_answered_as_the_general_path_answers_it(body: bytes):
    assert_same(body)


def test_only_the_usual_body_takes_the_fast_path():
    body = b'{"instances": [[[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 2, 3]]]}'
    array, as_instances = read_bare_tensor(body, MODEL.instance_shapes)
    assert array.shape == (1, 4, 3) and as_instances
    assert read_bare_tensor(body.replace(b"3]]]", b"3]], 1]"), MODEL.instance_shapes) is None
