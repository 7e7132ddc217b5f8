"""A work queue of object keys with the semantics of client-go's rate-limited delaying queue.

Events only say *which* job to look at; the reconcile reads it fresh. So the queue holds keys,
each at most once: a key added again while it waits is one entry; a key added while a worker
reconciles it is reconciled again once that worker is done (never by two workers at once);
`add_after` keeps only the earliest deadline of a key. Workers are threads, because the
reconcile talks to the API server through a blocking client.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

BACKOFF_BASE = 1.0
BACKOFF_MAX = 60.0


class WorkQueue:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._ready: deque[Hashable] = deque()
        self._dirty: set[Hashable] = set()
        """Keys that need a reconcile: queued in `_ready`, or waiting for their worker."""
        self._processing: set[Hashable] = set()
        self._waiting: dict[Hashable, float] = {}
        """Key -> the earliest deadline of its delayed add."""
        self._heap: list[tuple[float, int, Hashable]] = []
        self._sequence = 0
        self._failures: dict[Hashable, int] = {}
        self._closed = False
        self._timing = False
        """A worker waits for the earliest deadline; the others wait untimed, so that a
        deadline wakes one thread, not all of them."""

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._dirty | set(self._waiting))

    def depth(self) -> int:
        """Keys due for a reconcile that no worker has taken yet (client-go's depth): one
        that stays high says the workers cannot keep up. Keys delayed to later are not due."""
        with self._cond:
            now = self._clock()
            due = {key for key, deadline in self._waiting.items() if deadline <= now}
            return len((self._dirty | due) - self._processing)

    def add(self, key: Hashable) -> None:
        """Reconcile `key` as soon as a worker is free (and its current reconcile is done)."""
        with self._cond:
            self._add(key)

    def _add(self, key: Hashable) -> None:
        if self._closed or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._ready.append(key)
            self._cond.notify()

    def add_after(self, key: Hashable, seconds: float) -> None:
        """Reconcile `key` in `seconds`, unless an earlier deadline for it is already set."""
        if seconds <= 0:
            self.add(key)
            return
        with self._cond:
            if self._closed:
                return
            deadline = self._clock() + seconds
            if self._waiting.get(key, float("inf")) <= deadline:
                return
            earliest = not self._heap or deadline < self._heap[0][0]
            self._waiting[key] = deadline
            self._sequence += 1
            heapq.heappush(self._heap, (deadline, self._sequence, key))
            if earliest:  # the timing worker sleeps too long now; any may take over
                self._cond.notify_all()

    def retry(self, key: Hashable) -> float:
        """Reconcile a key that failed again later, doubling the wait per failure in a row."""
        with self._cond:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
        delay = min(BACKOFF_BASE * 2**failures, BACKOFF_MAX)
        self.add_after(key, delay)
        return delay

    def forget(self, key: Hashable) -> None:
        """A key that succeeded (or is gone): its failures and pending deadline are dropped."""
        with self._cond:
            self._failures.pop(key, None)
            self._waiting.pop(key, None)  # its heap entry is skipped when it comes up

    def _promote_due(self) -> float | None:
        """Move due delayed keys to the ready queue; seconds until the next one, if any."""
        now = self._clock()
        while self._heap:
            deadline, _, key = self._heap[0]
            if self._waiting.get(key) != deadline:  # superseded by an earlier one, or forgotten
                heapq.heappop(self._heap)
                continue
            if deadline > now:
                return deadline - now
            heapq.heappop(self._heap)
            del self._waiting[key]
            self._add(key)
        return None

    def pop_ready(self) -> Hashable | None:
        """A key to reconcile now, marked as being processed; None if none is due."""
        with self._cond:
            self._promote_due()
            return self._pop()

    def _pop(self) -> Hashable | None:
        if not self._ready:
            return None
        key = self._ready.popleft()
        self._processing.add(key)
        self._dirty.discard(key)
        return key

    def get(self) -> Hashable | None:
        """Block until a key is due; None once the queue is shut down."""
        with self._cond:
            while not self._closed:
                wait = self._promote_due()
                key = self._pop()
                if key is not None:
                    if self._heap or self._ready:
                        self._cond.notify()  # someone else waits for what is left
                    return key
                if wait is not None and not self._timing:
                    self._timing = True
                    try:
                        self._cond.wait(wait)
                    finally:
                        self._timing = False
                else:
                    self._cond.wait()
            return None

    def done(self, key: Hashable) -> None:
        """The worker finished `key`; if it was added meanwhile, it is queued again."""
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._ready.append(key)
                self._cond.notify()

    def shut_down(self) -> None:
        """Wake every worker; `get` returns None from now on."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
