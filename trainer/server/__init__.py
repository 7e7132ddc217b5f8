"""kubetrain model server: a TensorFlow-Serving-compatible REST API with dynamic batching.

Only the two CLI entry points live here and they import nothing heavy, so `kubetrain --help`
stays fast; FastAPI, uvicorn and TensorFlow are imported when the server actually starts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..api.entrypoints import MODEL_DIR_FLAG
from .config import add_model_version_argument, add_serve_arguments


def serve(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit code."""
    from .config import ServerSettings

    settings = ServerSettings.from_args(args)
    if settings.check_only:
        from .model import check

        return check(args.model_dir, settings.model_version)  # a path or an object-store URI
    from .lifecycle import run

    return run(settings)


def pull(args: argparse.Namespace) -> int:
    """`kubetrain pull`: copy one complete version out of a model store (an init container's
    job, as KServe's storage initializer does); 2 naming what is missing if it is not there."""
    from .model import pull_version

    return pull_version(args.model_dir, args.model_version, Path(args.into))


def add_pull_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        MODEL_DIR_FLAG, required=True, help="the model's directory in the store (s3://... or path)"
    )
    add_model_version_argument(parser, "the version to copy")
    parser.add_argument(
        "--into", required=True, help="local model directory; the version lands in INTO/VERSION"
    )


__all__ = ["add_pull_arguments", "add_serve_arguments", "pull", "serve"]
