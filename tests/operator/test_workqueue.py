"""The work queue's semantics: one entry per key, never two workers on one key, earliest
deadline wins, failures back off."""

from __future__ import annotations

import threading
import time

from kubetrain.operator.workqueue import BACKOFF_MAX, WorkQueue


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_key_added_twice_is_reconciled_once():
    q = WorkQueue(Clock())
    q.add("a")
    q.add("b")
    q.add("a")
    assert [q.pop_ready(), q.pop_ready(), q.pop_ready()] == ["a", "b", None]


def test_a_key_added_while_in_progress_is_reconciled_again_after_and_not_before():
    q = WorkQueue(Clock())
    q.add("a")
    assert q.pop_ready() == "a"
    q.add("a")
    q.add("a")
    assert q.pop_ready() is None  # never by a second worker while the first has it
    q.done("a")
    assert q.pop_ready() == "a"
    q.done("a")
    assert q.pop_ready() is None


def test_add_after_keeps_the_earliest_deadline():
    clock = Clock()
    q = WorkQueue(clock)
    q.add_after("a", 30)
    q.add_after("a", 10)
    q.add_after("a", 20)
    clock.now += 9.9
    assert q.pop_ready() is None
    clock.now += 0.1
    assert q.pop_ready() == "a"
    q.done("a")
    clock.now += 30
    assert q.pop_ready() is None  # the later deadlines were the same look, not more


def test_a_due_key_already_queued_is_not_queued_twice():
    clock = Clock()
    q = WorkQueue(clock)
    q.add_after("a", 5)
    q.add("a")
    clock.now += 5
    assert q.pop_ready() == "a"
    assert q.pop_ready() is None


def test_forget_drops_a_pending_deadline():
    clock = Clock()
    q = WorkQueue(clock)
    q.add_after("a", 5)
    q.forget("a")
    clock.now += 10
    assert q.pop_ready() is None
    assert len(q) == 0


def test_failures_back_off_exponentially_up_to_a_limit_and_success_resets_them():
    q = WorkQueue(Clock())
    delays = [q.retry("a") for _ in range(10)]
    assert delays[:4] == [1, 2, 4, 8]
    assert delays[-1] == BACKOFF_MAX
    q.forget("a")
    assert q.retry("a") == 1


def test_get_blocks_until_a_deadline_and_shut_down_releases_every_worker():
    q = WorkQueue()
    started = time.monotonic()
    q.add_after("a", 0.2)
    assert q.get() == "a"
    assert time.monotonic() - started >= 0.19
    got: list[object] = []
    workers = [threading.Thread(target=lambda: got.append(q.get())) for _ in range(3)]
    for w in workers:
        w.start()
    q.shut_down()
    for w in workers:
        w.join(timeout=5)
    assert got == [None, None, None]
    q.add("b")
    assert q.get() is None


def test_a_key_is_never_reconciled_by_two_threads_at_once():
    q = WorkQueue()
    active: set[str] = set()
    overlaps: list[str] = []
    runs: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while (key := q.get()) is not None:
            with lock:
                if key in active:
                    overlaps.append(key)
                active.add(key)
            time.sleep(0.002)
            with lock:
                active.discard(key)
                runs.append(key)
            q.done(key)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for i in range(300):
        q.add(f"k{i % 5}")
        if i % 50 == 0:
            time.sleep(0.01)
    deadline = time.monotonic() + 5
    while len(q) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    q.shut_down()
    for t in threads:
        t.join(timeout=5)
    assert not overlaps
    assert set(runs) == {f"k{i}" for i in range(5)}


def test_an_earlier_deadline_added_later_is_not_overslept():
    q = WorkQueue()
    got: list[tuple[str, float]] = []
    started = time.monotonic()

    def worker() -> None:
        while (key := q.get()) is not None:
            got.append((key, time.monotonic() - started))
            q.done(key)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    q.add_after("late", 0.6)
    time.sleep(0.05)  # a worker now sleeps until "late"
    q.add_after("early", 0.1)
    time.sleep(0.8)
    q.shut_down()
    for t in threads:
        t.join(timeout=5)
    when = dict(got)
    assert set(when) == {"early", "late"}
    assert when["early"] < 0.4, when
    assert when["late"] >= 0.6, when


def test_depth_counts_the_keys_due_that_no_worker_has_taken():
    clock = Clock()
    q = WorkQueue(clock)
    q.add("a")
    q.add("b")
    q.add_after("c", 5)
    assert q.depth() == 2  # "c" is not due yet
    clock.now += 5
    assert q.depth() == 3
    assert q.pop_ready() == "a"
    assert q.depth() == 2
    q.add("a")  # changed while a worker has it: due again once that worker is done
    assert q.depth() == 2
    q.done("a")
    assert q.depth() == 3
