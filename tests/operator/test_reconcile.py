"""The reconciler's decisions, from status and worker pods to actions and a new status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kubetrain.operator.reconcile import (
    Plan,
    Problem,
    creation_problem,
    node_lost,
    node_suspects,
    owned_pods,
    plan,
    reject,
    requeue_after,
    scheduler_keeps_off,
)
from kubetrain.operator.status import get_condition, now_iso
from trainingjobs import body, job, pod

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def run(
    status: dict,
    pods: list[dict],
    now: datetime = T0,
    problem: Problem | None = None,
    lost: frozenset[str] = frozenset(),
    settling: frozenset[str] = frozenset(),
    **spec_overrides,
) -> tuple[Plan, dict]:
    """One reconcile; returns the plan and the status after its patch is applied."""
    spec = job(body(**spec_overrides)).spec
    p = plan(spec, "mnist", status, pods, now, problem, lost_nodes=lost, settling_nodes=settling)
    return p, {**status, **p.status}


def started(**spec_overrides) -> dict:
    """Status after the first reconcile of a fresh job."""
    return run({}, [], **spec_overrides)[1]


def running(**spec_overrides) -> dict:
    status = started(**spec_overrides)
    return run(status, [pod(0), pod(1)], **spec_overrides)[1]


def test_a_new_job_creates_every_worker_and_is_pending():
    p, status = run({}, [])
    assert p.create == [0, 1]
    assert status["phase"] == "Pending"
    assert status["restarts"] == 0
    assert status["startTime"] == now_iso(T0)
    assert status["epochProgress"] == "0/3"
    assert get_condition(status["conditions"], "Valid")["status"] == "True"
    assert ("Normal", "Started", "Starting 2 worker pod(s)") in p.events


def test_reconciling_again_creates_nothing_and_changes_nothing():
    status = running()
    p, after = run(status, [pod(0), pod(1)])
    assert p.create == [] and p.delete == [] and p.events == []
    assert p.status == {}
    assert after == status


def test_pods_not_yet_seen_are_created_again_which_the_api_turns_into_409():
    status = started()
    p, _ = run(status, [pod(0, "Pending")])
    assert p.create == [1]


def test_all_workers_running_means_running_and_progress_is_read():
    status = started()
    p, status = run(status, [pod(0), pod(1)])
    assert status["phase"] == "Running"
    assert status["launchedAttempt"] == 0
    assert status["workersReady"] == "2/2"
    assert get_condition(status["conditions"], "Running")["status"] == "True"
    assert p.read_progress
    assert ("Normal", "Running", "All 2 worker pod(s) running") in p.events


def test_a_killed_worker_restarts_the_whole_job():
    p, status = run(running(), [pod(0), pod(1, "Failed", exit_code=137, reason="OOMKilled")])
    assert status["phase"] == "Restarting"
    assert status["restarts"] == 1
    assert "mnist-worker-1 exited with code 137 (OOMKilled)" in status["lastFailure"]
    assert sorted(name for name, _ in p.delete) == ["mnist-worker-0", "mnist-worker-1"]
    assert p.create == []
    assert p.events[0][:2] == ("Warning", "Restarting")


def test_a_restart_waits_for_the_old_pods_then_creates_the_next_attempt():
    _, status = run(running(), [pod(0), pod(1, "Failed", exit_code=1)])
    old = [pod(0, deleting=now_iso(T0)), pod(1, "Failed", exit_code=1)]
    p, status = run(status, old, T0 + timedelta(seconds=2))
    assert p.create == []
    assert p.delete == [("mnist-worker-1", 1)]  # the one not yet being deleted
    p, status = run(status, [], T0 + timedelta(seconds=4))
    assert p.create == [0, 1]
    p, status = run(status, [pod(0, attempt=1), pod(1, attempt=1)], T0 + timedelta(seconds=6))
    assert status["phase"] == "Running"
    assert status["launchedAttempt"] == 1


def test_a_pod_stuck_terminating_on_a_lost_node_is_force_deleted():
    _, status = run(running(), [pod(0), pod(1, "Failed", exit_code=1)])
    stuck = [pod(0, deleting=now_iso(T0))]
    p, _ = run(status, stuck, T0 + timedelta(seconds=5))
    assert p.delete == []
    p, _ = run(status, stuck, T0 + timedelta(seconds=60))
    assert p.delete == [("mnist-worker-0", 0)]


def test_a_worker_pod_that_disappears_is_a_failure():
    _, status = run(running(), [pod(0)])
    assert status["restarts"] == 1
    assert "mnist-worker-1 disappeared" in status["lastFailure"]


def test_a_worker_pod_being_deleted_is_a_failure():
    _, status = run(running(), [pod(0), pod(1, deleting=now_iso(T0))])
    assert status["phase"] == "Restarting"
    assert "mnist-worker-1 was deleted" in status["lastFailure"]


def test_backoff_exhausted_fails_the_job_and_stops_survivors():
    status = {**running(runPolicy={"backoffLimit": 1}), "restarts": 1, "launchedAttempt": 1}
    p, status = run(
        status,
        [pod(0, attempt=1), pod(1, "Failed", 1, exit_code=137)],
        runPolicy={"backoffLimit": 1},
    )
    assert status["phase"] == "Failed"
    failed = get_condition(status["conditions"], "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert "backoffLimit is 1" in failed["message"]
    assert p.delete == [("mnist-worker-0", 1)]  # cleanPodPolicy Running: the survivor


def test_a_permanent_error_fails_at_once_with_the_workers_message():
    p, status = run(
        running(),
        [
            pod(0, "Failed", exit_code=3, message="data/mnist: train-images: wrong magic number"),
            pod(1),
        ],
    )
    assert status["phase"] == "Failed"
    assert status["restarts"] == 0
    failed = get_condition(status["conditions"], "Failed")
    assert failed["reason"] == "PermanentError"
    assert failed["message"].endswith("wrong magic number")
    assert p.create == []


def test_the_chief_succeeding_succeeds_the_job_and_starts_promotion():
    p, status = run(running(), [pod(0, "Succeeded", exit_code=0), pod(1)])
    assert status["phase"] == "Succeeded"
    assert status["completionTime"] == now_iso(T0)
    assert get_condition(status["conditions"], "Succeeded")["status"] == "True"
    assert p.promote
    assert p.read_progress  # the chief's last epochs, read before cleanup deletes its log
    assert p.delete == [("mnist-worker-1", 1)]


def test_promotion_disabled_means_nothing_to_promote():
    p, _ = run(
        running(promotion={"enabled": False}),
        [pod(0, "Succeeded", exit_code=0), pod(1, "Succeeded", exit_code=0)],
        promotion={"enabled": False},
    )
    assert not p.promote


def test_clean_pod_policy_decides_which_pods_go():
    pods = [pod(0, "Succeeded", exit_code=0), pod(1)]
    for policy, expected in (
        ("All", ["mnist-worker-0", "mnist-worker-1"]),
        ("Running", ["mnist-worker-1"]),
        ("None", []),
    ):
        p, _ = run(
            running(runPolicy={"cleanPodPolicy": policy}),
            pods,
            runPolicy={"cleanPodPolicy": policy},
        )
        assert sorted(n for n, _ in p.delete) == expected, policy


def test_a_succeeded_worker_deleted_by_someone_is_not_recreated():
    _, status = run(running(), [pod(0), pod(1, "Succeeded", exit_code=0)])
    assert status["workers"]["completedIndexes"] == [1]
    p, status = run(status, [pod(0)])
    assert p.create == []
    assert status["phase"] == "Running"
    assert status["restarts"] == 0


def test_the_active_deadline_fails_the_job_and_kills_running_workers_whatever_the_policy():
    spec = {"runPolicy": {"activeDeadlineSeconds": 60, "cleanPodPolicy": "None"}}
    status = running(**spec)
    p, after = run(status, [pod(0), pod(1)], T0 + timedelta(seconds=59), **spec)
    assert after["phase"] == "Running"
    p, after = run(status, [pod(0), pod(1)], T0 + timedelta(seconds=60), **spec)
    assert after["phase"] == "Failed"
    assert get_condition(after["conditions"], "Failed")["reason"] == "DeadlineExceeded"
    assert sorted(n for n, _ in p.delete) == ["mnist-worker-0", "mnist-worker-1"]


def test_a_finished_job_is_deleted_once_its_ttl_has_passed():
    spec = {"runPolicy": {"ttlSecondsAfterFinished": 30}, "promotion": {"enabled": False}}
    _, status = run(running(**spec), [pod(0, "Succeeded", exit_code=0)], **spec)
    p, _ = run(status, [], T0 + timedelta(seconds=29), **spec)
    assert not p.delete_job
    p, _ = run(status, [], T0 + timedelta(seconds=30), **spec)
    assert p.delete_job


def test_a_job_waiting_for_promotion_is_not_deleted_by_its_ttl():
    spec = {"runPolicy": {"ttlSecondsAfterFinished": 0}}
    _, status = run(running(**spec), [pod(0, "Succeeded", exit_code=0)], **spec)
    p, _ = run(status, [], T0 + timedelta(hours=1), **spec)
    assert p.promote and not p.delete_job


def test_a_missing_claim_keeps_the_job_pending_without_pods():
    problem = Problem("ClaimNotFound", "spec.storage.claimName: 'models' does not exist", False)
    p, status = run({}, [], problem=problem)
    assert p.create == []
    assert status["phase"] == "Pending"
    valid = get_condition(status["conditions"], "Valid")
    assert (valid["status"], valid["reason"]) == ("False", "ClaimNotFound")
    assert p.events == [("Warning", "ClaimNotFound", problem.message)]
    p, status = run(status, [], T0 + timedelta(seconds=2), problem=problem)
    assert p.events == []  # reported once, not every tick
    p, status = run(status, [], T0 + timedelta(seconds=4))
    assert p.create == [0, 1]
    assert get_condition(status["conditions"], "Valid")["status"] == "True"


def test_forbidden_worker_pods_are_reported_and_the_deadline_still_runs():
    # A quota, Pod Security admission or a webhook answers 403 to the pod's creation.
    spec = {"runPolicy": {"activeDeadlineSeconds": 60}}
    problem = creation_problem(403, 'pods "mnist-worker-0" is forbidden: exceeded quota')
    assert problem is not None and not problem.permanent
    p, status = run(started(**spec), [], problem=problem, **spec)
    valid = get_condition(status["conditions"], "Valid")
    assert (valid["status"], valid["reason"]) == ("False", "PodForbidden")
    assert "exceeded quota" in valid["message"]
    assert p.events == [("Warning", "PodForbidden", problem.message)]
    p, status = run(status, [], T0 + timedelta(seconds=60), problem=problem, **spec)
    assert status["phase"] == "Failed"
    assert get_condition(status["conditions"], "Failed")["reason"] == "DeadlineExceeded"


def test_api_errors_on_creating_pods_are_sorted_by_what_can_help():
    assert creation_problem(422, "Invalid").permanent
    assert creation_problem(403, "forbidden").reason == "PodForbidden"
    assert creation_problem(500, "etcd timeout") is None  # passing: retried soon


def test_a_pod_the_api_server_refuses_fails_the_job_as_invalid():
    problem = Problem("PodRejected", "spec.containers[0].resources.requests: Invalid", True)
    _, status = run(started(), [], problem=problem)
    assert status["phase"] == "Failed"
    assert get_condition(status["conditions"], "Valid")["reason"] == "PodRejected"


def test_conditions_keep_their_transition_time_while_unchanged():
    status = running()
    since = get_condition(status["conditions"], "Running")["lastTransitionTime"]
    _, status = run(status, [pod(0), pod(1)], T0 + timedelta(minutes=5))
    assert get_condition(status["conditions"], "Running")["lastTransitionTime"] == since


def test_an_unparsable_spec_fails_the_job_as_invalid_once():
    p = reject({}, "InvalidSpec", "spec.workers: bad", T0)
    assert get_condition(p.status["conditions"], "Valid")["status"] == "False"
    assert [e[1] for e in p.events] == ["InvalidSpec"]
    assert reject({**p.status}, "InvalidSpec", "spec.workers: bad", T0).events == []


def test_pods_of_another_job_with_the_same_name_count_for_nothing():
    # Left by a deleted job of the same name, or forged: Succeeded, with a result message.
    leftovers = [
        pod(i, "Succeeded", exit_code=0, message='{"status": "Succeeded"}', owner="uid-old")
        for i in (0, 1)
    ]
    pods = owned_pods([*leftovers, pod(0, attempt=0)], "uid-1234")
    assert [p["owner"] for p in pods] == ["uid-1234"]
    p, status = run(started(), owned_pods(leftovers, "uid-1234"))
    assert status["phase"] == "Pending"
    assert not p.promote


# --- nodes -----------------------------------------------------------------------------------


def test_the_status_names_the_node_of_each_worker():
    _, status = run(started(), [pod(0, node="node-a"), pod(1, "Pending")])
    assert status["workers"]["nodes"] == ["node-a", ""]
    _, status = run(status, [pod(0, node="node-a"), pod(1, node="node-b")])
    assert status["workers"]["nodes"] == ["node-a", "node-b"]


def test_a_worker_on_a_lost_node_restarts_the_job_at_once_and_is_removed_by_force():
    pods = [pod(0, node="node-a"), pod(1, node="node-b", ready=False)]
    p, status = run(running(), pods, lost=frozenset({"node-b"}))
    assert status["phase"] == "Restarting"
    assert "mnist-worker-1 was lost with its node node-b (not Ready)" in status["lastFailure"]
    # No kubelet will confirm the lost pod stopped: it goes from the API at once.
    assert sorted(p.delete) == [("mnist-worker-0", 1), ("mnist-worker-1", 0)]
    assert ("Warning", "NodeLost", "node node-b is not Ready: its workers are lost") in p.events


def test_the_next_attempt_waits_until_the_scheduler_keeps_off_the_lost_node():
    pods = [pod(0, node="node-a"), pod(1, node="node-b", ready=False)]
    _, status = run(running(), pods, lost=frozenset({"node-b"}))
    assert status["lostNodes"] == ["node-b"]
    # Not Ready but not yet tainted: a worker placed there now would never start.
    later = T0 + timedelta(seconds=2)
    p, waiting = run(status, [], later, settling=frozenset({"node-b"}))
    assert p.create == []
    assert waiting["phase"] == "Pending"
    condition = get_condition(waiting["conditions"], "Running")
    assert condition["reason"] == "LostNodesSchedulable"
    assert "lost node(s) node-b" in condition["message"]
    assert look_again(waiting, [], later) == 2
    # Tainted (or gone, or back): the new attempt is placed.
    p, _ = run(waiting, [], later + timedelta(seconds=2))
    assert p.create == [0, 1]


def test_a_lost_node_that_is_never_tainted_holds_the_restart_back_for_a_minute_at_most():
    pods = [pod(0, node="node-a"), pod(1, node="node-b", ready=False)]
    _, status = run(running(), pods, lost=frozenset({"node-b"}))
    p, _ = run(status, [], T0 + timedelta(seconds=59), settling=frozenset({"node-b"}))
    assert p.create == []
    p, _ = run(status, [], T0 + timedelta(seconds=60), settling=frozenset({"node-b"}))
    assert p.create == [0, 1]


def test_a_restart_without_a_lost_node_forgets_the_nodes_of_the_one_before():
    pods = [pod(0, node="node-a"), pod(1, node="node-b", ready=False)]
    _, status = run(running(), pods, lost=frozenset({"node-b"}))
    _, status = run(status, [pod(0, attempt=1), pod(1, attempt=1)])
    _, status = run(status, [pod(0, attempt=1), pod(1, "Failed", exit_code=1, attempt=1)])
    assert status["restarts"] == 2 and status["lostNodes"] == []
    # A job that never lost a node has no such field at all.
    _, status = run(running(), [pod(0), pod(1, "Failed", exit_code=1)])
    assert "lostNodes" not in status


def test_the_scheduler_keeps_off_a_lost_node_once_the_node_controller_taints_it():
    def node(ready: str, *taints: tuple[str, str], cordoned: bool = False) -> dict:
        return {
            "spec": {
                "unschedulable": cordoned,
                "taints": [{"key": key, "effect": effect} for key, effect in taints],
            },
            "status": {"conditions": [{"type": "Ready", "status": ready}]},
        }

    unreachable = "node.kubernetes.io/unreachable"
    assert not scheduler_keeps_off(node("Unknown"))  # the moment before the taint
    assert scheduler_keeps_off(node("Unknown", (unreachable, "NoSchedule")))
    assert scheduler_keeps_off(node("False", ("node.kubernetes.io/not-ready", "NoSchedule")))
    # Pods tolerate NoExecute for unreachable nodes for 300 s by default: it does not keep
    # the scheduler off.
    assert not scheduler_keeps_off(node("Unknown", (unreachable, "NoExecute")))
    assert scheduler_keeps_off(node("Unknown", cordoned=True))
    assert scheduler_keeps_off(node("True"))  # back: a fair place for a worker
    assert scheduler_keeps_off(None)  # deleted


def test_the_lost_nodes_pods_of_an_old_attempt_go_at_once_too():
    _, status = run(running(), [pod(0, node="node-a"), pod(1, "Failed", exit_code=1)])
    stale = [pod(0, node="node-a", deleting=now_iso(T0), ready=False)]
    p, _ = run(status, stale, T0 + timedelta(seconds=2), lost=frozenset({"node-a"}))
    assert p.delete == [("mnist-worker-0", 0)]


def test_a_pod_on_a_node_that_came_back_is_left_alone():
    status = running()
    p, after = run(status, [pod(0, node="node-a"), pod(1, node="node-b")])
    assert p.delete == [] and after["phase"] == "Running"


def test_only_the_nodes_of_unready_running_pods_are_asked_about():
    pods = [
        pod(0, node="node-a"),
        pod(1, node="node-b", ready=False),
        pod(2, "Failed", node="node-c", ready=False),
        pod(3, "Pending"),
    ]
    assert node_suspects(pods) == {"node-b"}


def test_a_node_is_lost_when_gone_or_its_ready_condition_is_not_true():
    def node(ready: str) -> dict:
        return {"status": {"conditions": [{"type": "Ready", "status": ready}]}}

    assert not node_lost(node("True"))
    assert node_lost(node("Unknown"))  # no heartbeat within the grace period
    assert node_lost(node("False"))
    assert node_lost(None)  # deleted


# --- when to look again ----------------------------------------------------------------------


def look_again(status: dict, pods: list[dict], now=T0, lost=frozenset(), **spec_overrides):
    spec = job(body(**spec_overrides)).spec
    return requeue_after(spec, status, pods, now, lost, progress_every=10, follow_every=2)


def test_a_pending_job_waits_for_events_only():
    status = started()
    assert look_again(status, [pod(0, "Pending"), pod(1, "Pending")]) is None


def test_a_running_job_is_looked_at_for_progress_at_the_progress_interval():
    status = running()
    assert look_again(status, [pod(0), pod(1)]) == 10
    # A chief that is not running has no progress to read.
    assert look_again(status, [pod(0, "Succeeded", exit_code=0), pod(1)]) is None


def test_the_active_deadline_is_looked_at_exactly_when_it_passes():
    spec = {"runPolicy": {"activeDeadlineSeconds": 60}}
    status = started(**spec)
    pending = [pod(0, "Pending"), pod(1, "Pending")]
    assert look_again(status, pending, T0 + timedelta(seconds=15), **spec) == 45
    # Running: the earlier of the deadline and the next progress read.
    status = running(**spec)
    assert look_again(status, [pod(0), pod(1)], T0 + timedelta(seconds=55), **spec) == 5


def test_a_finished_job_is_looked_at_when_its_ttl_passes_and_never_again():
    spec = {"runPolicy": {"ttlSecondsAfterFinished": 30}, "promotion": {"enabled": False}}
    _, status = run(running(**spec), [pod(0, "Succeeded", exit_code=0)], **spec)
    assert look_again(status, [], T0 + timedelta(seconds=12), **spec) == 18
    no_ttl = {"promotion": {"enabled": False}}
    _, status = run(running(**no_ttl), [pod(0, "Succeeded", exit_code=0)], **no_ttl)
    assert look_again(status, [], T0 + timedelta(hours=1), **no_ttl) is None


def test_a_promotion_under_way_is_followed_at_the_follow_interval():
    _, status = run(running(), [pod(0, "Succeeded", exit_code=0), pod(1)])
    assert status["phase"] == "Succeeded"
    assert look_again(status, []) == 2
    assert look_again({**status, "phase": "Promoting"}, []) == 2


def test_a_pod_stuck_terminating_is_looked_at_when_it_is_due_for_force_deletion():
    _, status = run(running(), [pod(0), pod(1, "Failed", exit_code=1)])
    stuck = [pod(0, deleting=now_iso(T0))]
    assert look_again(status, stuck, T0 + timedelta(seconds=5)) == 15


def test_a_worker_not_ready_on_a_node_not_yet_lost_is_followed_until_decided():
    pods = [pod(0, node="node-a"), pod(1, node="node-b", ready=False)]
    status = running()
    assert look_again(status, pods) == 2
    assert look_again({**status, "phase": "Pending"}, pods, lost=frozenset({"node-b"})) is None


def test_a_job_waiting_for_a_missing_claim_looks_again_at_the_progress_interval():
    problem = Problem("ClaimNotFound", "spec.storage.claimName: 'models' does not exist", False)
    _, status = run({}, [], problem=problem)
    assert look_again(status, []) == 10


def test_a_moment_already_past_does_not_spin():
    spec = {"runPolicy": {"activeDeadlineSeconds": 60}}
    status = started(**spec)
    assert look_again(status, [], T0 + timedelta(seconds=61), **spec) == 1.0
