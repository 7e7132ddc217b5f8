"""JSON responses serialised straight from numpy, bypassing FastAPI's response validation.

FastAPI would validate a returned pydantic model and re-encode it number by number; a
prediction's arrays go to orjson as they are. The routes still declare the response models,
so the OpenAPI document describes the same bodies.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

JSON = "application/json"


def json_response(content: Any, status_code: int = 200) -> Response:
    """`content` (dicts, lists, numbers, numpy arrays) as a JSON response."""
    body = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status_code=status_code, media_type=JSON)


def error_response(status_code: int, message: str) -> Response:
    """The API's error shape, TensorFlow Serving's: `{"error": "..."}`."""
    return json_response({"error": message}, status_code)
