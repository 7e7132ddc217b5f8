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

    settings = ServerSettings.from_args(args)
    if settings.check_only:
        from .model import check

        return check(settings.model_dir, settings.model_version)
    from .lifecycle import run

    return run(settings)


__all__ = ["add_serve_arguments", "serve"]
