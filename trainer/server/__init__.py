"""kubetrain model server: a TensorFlow-Serving-compatible REST API with dynamic batching.

Only the two CLI entry points live here and they import nothing heavy, so `kubetrain --help`
stays fast; FastAPI, uvicorn and TensorFlow are imported when the server actually starts.
"""

from __future__ import annotations

import argparse

from .config import add_serve_arguments


def serve(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit code."""
    from .config import ServerSettings
    from .lifecycle import run

    return run(ServerSettings.from_args(args))


__all__ = ["add_serve_arguments", "serve"]
