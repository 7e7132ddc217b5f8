"""Running request parsing on the event loop or in a worker thread, by the body's size.

Parsing holds the GIL either way, so a thread buys no parallelism: it only keeps a large body
(a 4096x4096 image, a thousand-instance batch) from stalling the probes behind it. For the
small bodies that make up most traffic the hop costs more than the parsing, and worse, a
worker thread holding the GIL makes the event loop wait for it to be switched out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool

INLINE_BYTES = 64 * 1024
"""Bodies up to this size are parsed on the loop: well under a millisecond of work."""

P = ParamSpec("P")
T = TypeVar("T")


async def off_loop_if_large(
    size: int, work: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
) -> T:
    """`work(*args)`, in a worker thread if its input is larger than `INLINE_BYTES`."""
    if size <= INLINE_BYTES:
        return work(*args, **kwargs)
    return await run_in_threadpool(work, *args, **kwargs)
