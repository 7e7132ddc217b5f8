"""Leader election's decisions on a Lease, without a cluster."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

from kubetrain.operator.kube import ApiError
from kubetrain.operator.leader import Elector, Timing, claimed, may_take, micro_time, released

T0 = datetime(2025, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)


def held_by(holder: str | None, duration: int = 15, transitions: int = 0) -> dict:
    return {
        "holderIdentity": holder,
        "leaseDurationSeconds": duration,
        "acquireTime": micro_time(T0),
        "renewTime": micro_time(T0),
        "leaseTransitions": transitions,
    }


def test_a_lease_held_by_another_is_taken_only_once_unrenewed_for_its_duration():
    lease = held_by("a", duration=15)
    assert not may_take(lease, "b", unchanged_for=14.9, duration=15)
    assert may_take(lease, "b", unchanged_for=15.1, duration=15)
    # The holder's own duration counts, not the one this replica would write.
    assert not may_take(held_by("a", duration=60), "b", unchanged_for=30, duration=15)


def test_a_free_or_own_lease_may_be_taken_at_once():
    assert may_take({}, "b", 0, 15)
    assert may_take(held_by(None), "b", 0, 15)
    assert may_take(held_by("b"), "b", 0, 15)


def test_taking_a_lease_records_the_holder_and_counts_the_transition():
    spec = claimed(held_by("a", transitions=2), "b", T0, 15)
    assert spec["holderIdentity"] == "b"
    assert spec["acquireTime"] == spec["renewTime"] == "2025-01-01T12:00:00.123456Z"
    assert spec["leaseTransitions"] == 3
    assert claimed({}, "b", T0, 15)["leaseTransitions"] == 0  # nobody held it before


def test_renewing_keeps_the_acquire_time_and_moves_the_renew_time():
    later = T0.replace(second=10)
    spec = claimed(held_by("b", transitions=1), "b", later, 15)
    assert spec["acquireTime"] == micro_time(T0)
    assert spec["renewTime"] == micro_time(later)
    assert spec["leaseTransitions"] == 1


def test_a_released_lease_is_free_for_the_next_replica():
    spec = released(held_by("a"), T0)
    assert spec["holderIdentity"] is None
    assert may_take(spec, "b", 0, 15)


def test_the_leader_stops_acting_before_a_standby_may_start():
    for duration in (15, 6):
        timing = Timing.scaled(duration)
        assert timing.retry < timing.renew_deadline < timing.duration
    assert Timing.scaled(15) == Timing()


class FakeApi:
    """One Lease, with the API server's optimistic concurrency (resourceVersion, 409)."""

    def __init__(self) -> None:
        self.lease: dict | None = None
        self.version = 0

    def get(self, path: str, timeout: object = None) -> dict | None:
        return copy.deepcopy(self.lease)

    def request(self, method: str, path: str, body: dict, timeout: object = None) -> dict:
        if method == "POST" and self.lease is not None:
            raise ApiError(409, "AlreadyExists", "exists")
        if method == "PUT" and body["metadata"].get("resourceVersion") != str(self.version):
            raise ApiError(409, "Conflict", "the object has been modified")
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)


def test_a_standby_takes_over_only_after_the_leader_stopped_renewing_for_the_duration():
    api, clock = FakeApi(), [0.0]
    lost: list[str] = []
    timing = Timing.scaled(15)

    def elector(identity: str) -> Elector:
        return Elector(
            api,  # type: ignore[arg-type]
            "ns",
            identity,
            timing,
            lambda: lost.append(identity),
            clock=lambda: clock[0],
        )

    a, b = elector("a"), elector("b")
    assert a._attempt()  # creates the Lease
    assert not b._attempt()
    for _ in range(10):  # a renews every 2 s; b never gets it
        clock[0] += 2
        assert a._attempt()
        assert not b._attempt()
    # a stops renewing (killed): b waits the whole duration from when it last saw a change.
    seen = clock[0]
    while clock[0] - seen <= timing.duration:
        assert not b._attempt()
        clock[0] += 1
    assert b._attempt()
    assert api.lease["spec"]["holderIdentity"] == "b"
    assert api.lease["spec"]["leaseTransitions"] == 1
    assert not a._attempt()  # a, back from a pause, finds the Lease taken
