"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

Several operator replicas may run (for availability); only the one holding the Lease
reconciles. The others watch and index like the leader, so one of them takes over warm, but
act on nothing. A holder renews the Lease every `retry` seconds and stops acting once it has
not renewed for `renew_deadline`; a standby takes the Lease once it has seen the same record,
unrenewed, for `duration` (by its own clock: the holder's clock is never compared with it).
`renew_deadline` < `duration`, so the old leader has stopped before a new one may start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubetrain.operator.kube import ApiError, Kube, lease_path

LEASE_NAME = "kubetrain-operator"
LEASE_REQUEST_TIMEOUT = (2.0, 3.0)
"""(connect, read) seconds: a renewal that hangs must not outlast the renew deadline."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    duration: float = 15.0
    """How long a standby waits on an unrenewed Lease before taking it."""
    renew_deadline: float = 10.0
    """How long a leader goes without renewing before it stops acting."""
    retry: float = 2.0
    """Seconds between two attempts to take or renew the Lease."""

    @classmethod
    def scaled(cls, duration: float) -> Timing:
        """client-go's defaults (15, 10, 2 s) scaled to another lease duration."""
        return cls(duration, duration * 2 / 3, duration * 2 / 15)


def micro_time(now: datetime) -> str:
    """A Kubernetes MicroTime."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def may_take(spec: dict[str, Any], identity: str, unchanged_for: float, duration: float) -> bool:
    """Whether `identity` may write itself into a Lease whose spec is `spec`.

    Its own Lease, a released one (no holder), or one whose record has not changed for
    longer than the holder's lease duration, as seen by this replica's clock.
    """
    holder = spec.get("holderIdentity")
    if not holder or holder == identity:
        return True
    return unchanged_for > float(spec.get("leaseDurationSeconds") or duration)


def claimed(spec: dict[str, Any], identity: str, now: datetime, duration: float) -> dict[str, Any]:
    """The Lease spec that takes it for `identity`, or renews it if it already holds it."""
    stamp = micro_time(now)
    transitions = int(spec.get("leaseTransitions") or 0)
    holder = spec.get("holderIdentity")
    if holder == identity:
        return {**spec, "renewTime": stamp, "leaseDurationSeconds": round(duration)}
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": max(1, round(duration)),
        "acquireTime": stamp,
        "renewTime": stamp,
        "leaseTransitions": transitions + 1 if holder else transitions,
    }


def released(spec: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The spec a leader that shuts down writes, so that a standby need not wait it out."""
    return {**spec, "holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": micro_time(now)}


class Elector:
    """Takes the Lease, keeps it in a background thread, and calls `lost` when it cannot."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        identity: str,
        timing: Timing,
        lost: Callable[[], None],
        name: str = LEASE_NAME,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube, self.path, self.identity = kube, lease_path(namespace, name), identity
        self.namespace, self.name = namespace, name
        self.timing, self.lost, self.clock = timing, lost, clock
        self.leading = threading.Event()
        self._renewed_at: float | None = None
        self._seen: tuple[Any, ...] | None = None
        self._seen_at = clock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def is_leader(self) -> bool:
        """Renewed within the renew deadline: only then may this replica act."""
        renewed = self._renewed_at
        return renewed is not None and self.clock() - renewed < self.timing.renew_deadline

    def _attempt(self) -> bool:
        """One round: read the Lease and take or renew it if allowed. True if held now."""
        try:
            return self._take_or_renew()
        except ApiError as err:
            if err.status != 409:  # a 409: another replica wrote first
                log.warning("lease %s/%s: %s", self.namespace, self.name, err)
        except Exception as err:  # unreachable or slow (urllib3's errors): the next round retries
            log.warning("lease %s/%s: %s", self.namespace, self.name, err)
        return False

    def _take_or_renew(self) -> bool:
        lease = self.kube.get(self.path, timeout=LEASE_REQUEST_TIMEOUT)
        now = datetime.now(UTC)
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": claimed({}, self.identity, now, self.timing.duration),
            }
            collection = self.path.rsplit("/", 1)[0]
            self.kube.request("POST", collection, body, timeout=LEASE_REQUEST_TIMEOUT)
            return True
        spec = lease.get("spec") or {}
        record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("acquireTime"))
        if record != self._seen:
            self._seen, self._seen_at = record, self.clock()
        if not may_take(spec, self.identity, self.clock() - self._seen_at, self.timing.duration):
            return False
        # The resourceVersion makes this a compare-and-swap: of two replicas taking an expired
        # Lease at once, one gets a 409.
        lease["spec"] = claimed(spec, self.identity, now, self.timing.duration)
        self.kube.request("PUT", self.path, lease, timeout=LEASE_REQUEST_TIMEOUT)
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._attempt():
                if not self.leading.is_set():
                    log.info("became the leader (Lease %s/%s)", self.namespace, self.name)
                self._renewed_at = self.clock()
                self.leading.set()
            elif self.leading.is_set() and not self.is_leader():
                log.error(
                    "lost the Lease %s/%s (not renewed for %.0fs); exiting",
                    self.namespace,
                    self.name,
                    self.timing.renew_deadline,
                )
                self.leading.clear()
                self.lost()
                return
            self._stop.wait(self.timing.retry)

    def release(self) -> None:
        """Stop renewing and hand the Lease over at once (on a clean shutdown)."""
        self._stop.set()
        self._thread.join(timeout=self.timing.retry + sum(LEASE_REQUEST_TIMEOUT))
        if not self.is_leader():
            return
        self._renewed_at = None
        self.leading.clear()
        try:
            lease = self.kube.get(self.path, timeout=LEASE_REQUEST_TIMEOUT)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"] = released(lease["spec"], datetime.now(UTC))
                self.kube.request("PUT", self.path, lease, timeout=LEASE_REQUEST_TIMEOUT)
        except Exception as err:  # the standby then waits the Lease out
            log.warning("releasing lease %s/%s: %s", self.namespace, self.name, err)
