"""Errors that become TensorFlow-Serving-style JSON answers: `{"error": "..."}` and a status."""

from __future__ import annotations


class ServingError(Exception):
    status_code = 400

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class BadRequest(ServingError):
    status_code = 400


class NotFound(ServingError):
    status_code = 404


class UnsupportedMediaType(ServingError):
    status_code = 415


class Unavailable(ServingError):
    status_code = 503
