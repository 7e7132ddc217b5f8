"""`python -m kubetrain.trainer.server`: the same server as `kubetrain serve`."""

import argparse
import sys

from . import add_serve_arguments, serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kubetrain.trainer.server", description="Serve an exported model."
    )
    add_serve_arguments(parser)
    return serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
