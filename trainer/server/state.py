"""What the routes share: the settings, the loaded model, its batcher and the server's state.

The model loads in the background after the server starts listening, so the liveness probe
answers at once while the readiness probe stays 503 until the model is loaded and warmed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from .batching import Batcher, Unbatched
from .config import ServerSettings, default_intra_op_threads
from .metrics import ServerMetrics
from .model import ServedModel, limit_intra_op_threads, load_model

log = logging.getLogger(__name__)


@dataclass
class ServerState:
    """What the routes share; mutated only on the event loop, except `draining` (a flag)."""

    settings: ServerSettings
    version: int
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    model: ServedModel | None = None
    batcher: Batcher | Unbatched | None = None
    warmed: bool = False
    draining: bool = False
    load_error: str | None = None
    on_load_failure: Callable[[], None] | None = None

    @property
    def ready(self) -> bool:
        return self.warmed and not self.draining

    def begin_drain(self) -> None:
        """Safe to call from a signal handler: it only flips a flag."""
        self.draining = True


def freeze_heap() -> None:
    """Move every object alive now out of the garbage collector's generations.

    A loaded TensorFlow model keeps some 330,000 Python objects alive for good, and each full
    collection scans all of them (about 280 ms on 2 cores). Parsed requests allocate enough to
    set one off every half second under load, stalling every request in flight; frozen, the
    long-lived heap is never scanned again and a full collection covers only what came since.
    """
    gc.collect()
    gc.freeze()


async def load(state: ServerState) -> None:
    settings = state.settings
    try:
        threads = settings.intra_op_threads or default_intra_op_threads()
        await asyncio.to_thread(limit_intra_op_threads, threads)
        model = await asyncio.to_thread(
            load_model, settings.model_name, settings.model_dir, state.version
        )
        await asyncio.to_thread(model.warm_up)
    except Exception as error:
        log.exception("cannot load %s version %d", settings.model_name, state.version)
        state.load_error = f"{type(error).__name__}: {error}"
        if state.on_load_failure is not None:
            state.on_load_failure()
        return
    if settings.enable_batching:
        state.batcher = Batcher(
            model.predict,
            max_batch_size=settings.max_batch_size,
            max_wait=settings.batch_timeout_micros / 1e6,
            threads=settings.batch_threads,
            on_batch=state.metrics.observe_batch,
        )
    else:
        state.batcher = Unbatched(model.predict, on_batch=state.metrics.observe_batch)
    state.batcher.start()
    metric = str(model.metadata.get("metric") or "")
    value = (model.metadata.get("metrics") or {}).get(metric)
    state.metrics.model.info(
        {
            "name": model.name,
            "version": str(model.version),
            "metric": metric,
            "metric_value": "" if value is None else f"{value:g}",
        }
    )
    state.model = model
    freeze_heap()
    state.warmed = True
    log.info("ready: %s version %d", model.name, model.version)
