"""Fencing: the chief of an attempt that was given up on must not publish anything.

The operator starts attempt N+1 once attempt N's pods are gone from the API server, but a pod
on a node cut off from the cluster is only gone from the API: its process may still run. Each
chief therefore records its attempt in the job's state (`FENCE_FILE`) when it starts, and reads
the record back before each thing it publishes (a checkpoint, the backup, the model version,
the result). A higher attempt there means it was replaced: it stops, publishing nothing, so two
chiefs never both publish the same model version.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .api.entrypoints import ATTEMPT_ENV
from .api.layout import FENCE_FILE
from .storage import Store


class Superseded(RuntimeError):
    """A later attempt of the job has started: this worker must stop without publishing."""


def attempt_from_env() -> int:
    """This worker's attempt, as the operator (or the local runner) numbers them."""
    return int(os.environ.get(ATTEMPT_ENV) or 0)


@dataclass(frozen=True)
class Fence:
    state: Store
    """The job's working directory (or prefix), shared by every attempt."""
    attempt: int

    def recorded(self) -> int | None:
        text = (self.state.read_text(FENCE_FILE) or "").strip()
        return int(text) if text.isdigit() else None

    def claim(self, resuming: bool) -> None:
        """Record this attempt. A fresh start (no backup to resume) begins a new run of the
        job's name and takes the record over; a resumed one must be the latest attempt."""
        if resuming:
            self.check()
        self.state.write_text(FENCE_FILE, f"{self.attempt}\n")

    def check(self) -> None:
        recorded = self.recorded()
        if recorded is not None and recorded > self.attempt:
            raise Superseded(
                f"attempt {recorded} of this job has started since attempt {self.attempt} "
                "(this one) did: its chief stops without publishing"
            )
