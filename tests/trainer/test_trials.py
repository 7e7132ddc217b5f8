"""spec.trials: candidates drawn from a search space, the median stopping rule, and
`kubetrain run` training several candidates and exporting the best."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasets import tiny_job
from kubetrain.trainer.api.spec import MedianStop, SpecError, load_job, parse_job
from kubetrain.trainer.trials import (
    TrialOutcome,
    TrialState,
    best_trial,
    candidates,
    median_stop,
    refit,
    sample,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mnist-trials.yaml"


def with_trials(trials: dict) -> dict:
    document = tiny_job(Path("data/mnist"), epochs=2, replicas=1)
    document["spec"]["trials"] = trials
    return document


def trials_job(trials: dict):
    return parse_job(with_trials(trials))


SPACE = {
    "training.learningRate": {"logUniform": [1e-4, 1e-2]},
    "training.batchSize": {"values": [64, 128, 256]},
    "model.architecture": {"values": ["mnist-dense", "mnist-cnn"]},
}


# Sampling


def test_random_sampling_is_reproducible_with_its_seed_and_changes_with_it():
    job = trials_job({"count": 5, "seed": 7, "parameters": SPACE})
    first, again = sample(job), sample(job)
    assert first == again
    assert len(first) == 5
    other = sample(trials_job({"count": 5, "seed": 8, "parameters": SPACE}))
    assert other != first


def test_log_uniform_values_stay_in_range_and_spread_over_the_decades():
    job = trials_job(
        {"count": 200, "parameters": {"training.learningRate": {"logUniform": [1e-4, 1e-2]}}}
    )
    rates = [p["training.learningRate"] for p in sample(job)]
    assert all(isinstance(r, float) and 1e-4 <= r <= 1e-2 for r in rates)
    below = sum(r < 1e-3 for r in rates)  # log-uniform: half below the geometric middle
    assert 70 < below < 130


def test_uniform_and_values_draw_from_their_own_space():
    job = trials_job(
        {
            "count": 50,
            "parameters": {
                "dataset.limit": {"values": [100, 200]},
                "training.learningRate": {"uniform": [0.001, 0.002]},
            },
        }
    )
    drawn = sample(job)
    assert {p["dataset.limit"] for p in drawn} == {100, 200}
    assert all(0.001 <= p["training.learningRate"] <= 0.002 for p in drawn)
    assert list(drawn[0]) == ["dataset.limit", "training.learningRate"]  # the spec's order


def test_grid_goes_through_every_combination_once():
    job = trials_job(
        {
            "count": 6,
            "algorithm": "grid",
            "parameters": {k: v for k, v in SPACE.items() if "values" in v},
        }
    )
    drawn = [(p["training.batchSize"], p["model.architecture"]) for p in sample(job)]
    assert sorted(drawn) == sorted(
        (b, a) for b in (64, 128, 256) for a in ("mnist-dense", "mnist-cnn")
    )


def test_each_candidate_is_the_spec_with_its_parameters_and_without_trials():
    job = trials_job({"count": 3, "seed": 1, "parameters": SPACE})
    for candidate, parameters in zip(candidates(job), sample(job), strict=True):
        spec = candidate.job.spec
        assert spec.trials is None
        assert spec.training.learning_rate == parameters["training.learningRate"]
        assert spec.training.batch_size == parameters["training.batchSize"]
        assert spec.model.architecture == parameters["model.architecture"]
        assert spec.training.epochs == 2 and spec.dataset.source == "data/mnist"  # the rest kept
        assert candidate.job.metadata.name == job.metadata.name


def test_the_refit_is_the_winners_candidate_trained_on_the_validation_split_too():
    job = trials_job({"count": 3, "seed": 1, "parameters": SPACE, "refit": True})
    winner = candidates(job)[2]
    spec = refit(job, winner.parameters).spec
    assert spec.dataset.train_on_validation
    assert (
        spec.model_copy(
            update={"dataset": spec.dataset.model_copy(update={"train_on_validation": False})}
        )
        == winner.job.spec
    )


# What the spec refuses


def test_trials_cannot_train_on_the_split_they_are_compared_on():
    document = with_trials({"count": 2, "parameters": SPACE})
    document["spec"]["dataset"]["trainOnValidation"] = True
    with pytest.raises(SpecError, match=r"trainOnValidation cannot be set with spec.trials.*refit"):
        parse_job(document)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"training.learningRat": {"values": [0.1]}}, "training has no field 'learningRat'"),
        ({"training": {"values": [{}]}}, "parameters.training: names an object"),
        ({"workers.replicas": {"values": [1, 2]}}, "only fields of spec.model, spec.training"),
        ({"trials.count": {"values": [1, 2]}}, "parameters.trials.count: only fields of"),
        ({"training.metric": {"values": ["val_loss"]}}, "trials are compared by it"),
        ({"model.name": {"values": ["a", "b"]}}, "the best trial is exported under it"),
        ({"training.seed": {"values": [1, 2]}}, "it draws the validation split"),
        ({"dataset.trainOnValidation": {"values": [True]}}, "a validation split none learns"),
        ({"training.epochs.x": {"values": [1]}}, "epochs is not an object"),
    ],
)
def test_a_parameter_must_name_a_field_a_trial_may_vary(parameters: dict, message: str):
    with pytest.raises(SpecError, match=r"spec\.trials") as err:
        trials_job({"count": 1, "parameters": parameters})
    assert message in str(err.value)


def test_grid_takes_only_values_and_says_so():
    with pytest.raises(SpecError) as err:
        trials_job({"count": 2, "algorithm": "grid", "parameters": SPACE})
    assert "parameters.training.learningRate: grid takes only `values`" in str(err.value)


def test_count_must_fit_the_combinations_of_values():
    values_only = {"training.batchSize": {"values": [64, 128]}}
    with pytest.raises(SpecError, match="count 3 is more than the 2 combinations"):
        trials_job({"count": 3, "algorithm": "grid", "parameters": values_only})
    with pytest.raises(SpecError, match="count 3 is more than the 2 combinations"):
        trials_job({"count": 3, "algorithm": "random", "parameters": values_only})
    with pytest.raises(SpecError, match=r"spec\.trials\.count"):
        trials_job({"count": 0, "parameters": values_only})


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"values": [1], "uniform": [0.1, 0.2]}, "exactly one of values, uniform or logUniform"),
        ({"logUniform": [0, 0.1]}, "logUniform: low must be above 0"),
        ({"uniform": [0.2, 0.1]}, "uniform: low must be below high"),
    ],
)
def test_a_space_is_one_kind_with_sound_bounds(space: dict, message: str):
    with pytest.raises(SpecError) as err:
        trials_job({"count": 1, "parameters": {"training.learningRate": space}})
    assert "spec.trials.parameters.training.learningRate" in str(err.value)
    assert message in str(err.value)


def test_a_candidate_that_makes_an_invalid_spec_names_the_trial_and_the_field():
    job = trials_job({"count": 3, "parameters": {"training.batchSize": {"uniform": [32, 256]}}})
    with pytest.raises(SpecError) as err:
        candidates(job)  # a batch size of 100.37... is not an integer
    message = str(err.value)
    assert message.startswith("spec.trials: trial 0 (training.batchSize=")
    assert "spec.training.batchSize: Input should be a valid integer" in message


def test_an_architecture_for_another_dataset_is_refused_before_training():
    architectures = {"model.architecture": {"values": ["mnist-dense", "planesnet-cnn"]}}
    job = trials_job({"count": 2, "algorithm": "grid", "parameters": architectures})
    with pytest.raises(SpecError, match=r"trial 1 \(model\.architecture=planesnet-cnn\)"):
        candidates(job)


def test_the_example_is_six_valid_candidates_that_stop_at_the_median():
    job = load_job(EXAMPLE)
    assert job.spec.trials is not None and job.spec.trials.early_stopping.median_stop
    drawn = candidates(job)
    assert len(drawn) == 6
    assert len({c.parameters["training.learningRate"] for c in drawn}) == 6


# The median stopping rule

RULE = MedianStop(min_trials=3, start_epoch=1)


def test_a_trial_worse_than_the_median_of_the_others_stops():
    others = [[0.90, 0.95], [0.85, 0.93], [0.80, 0.91]]
    decision = median_stop("val_accuracy", RULE, [0.70], others)
    assert decision is not None
    assert (decision.epoch, decision.best, decision.median, decision.others) == (1, 0.70, 0.85, 3)
    assert median_stop("val_accuracy", RULE, [0.86], others) is None  # above the median


def test_nothing_stops_before_min_trials_have_reached_the_epoch():
    two = [[0.90, 0.95], [0.85, 0.93]]
    assert median_stop("val_accuracy", RULE, [0.10], two) is None
    # A third trial that has not reached epoch 2 does not count for epoch 2.
    three = [*two, [0.99]]
    assert median_stop("val_accuracy", RULE, [0.10], three) is not None
    assert median_stop("val_accuracy", RULE, [0.10, 0.20], three) is None


def test_nothing_stops_before_the_start_epoch():
    others = [[0.9, 0.9, 0.9]] * 3
    late = MedianStop(min_trials=3, start_epoch=2)
    assert median_stop("val_accuracy", late, [0.1], others) is None
    assert median_stop("val_accuracy", late, [0.1, 0.1], others) is not None


def test_the_best_so_far_is_compared_not_the_last_epoch():
    others = [[0.80, 0.70]] * 3  # their best by epoch 2 is 0.80
    assert median_stop("val_accuracy", RULE, [0.85, 0.60], others) is None
    assert median_stop("val_accuracy", RULE, [0.75, 0.79], others) is not None


def test_for_a_loss_lower_is_better():
    others = [[0.30], [0.40], [0.50]]
    assert median_stop("val_loss", RULE, [0.45], others) is not None
    assert median_stop("val_loss", RULE, [0.35], others) is None
    # The same numbers as accuracies: the direction flips.
    assert median_stop("val_accuracy", RULE, [0.45], others) is None
    assert median_stop("val_accuracy", RULE, [0.35], others) is not None


def test_the_best_trial_is_the_best_that_succeeded_by_the_jobs_metric():
    def outcome(index: int, value: float | None, state: TrialState) -> TrialOutcome:
        return TrialOutcome(
            index=index, parameters={}, state=state, epochs=2, best_metric=value, workdir="w"
        )

    outcomes = [
        outcome(0, 0.40, TrialState.SUCCEEDED),
        outcome(1, 0.20, TrialState.SUCCEEDED),
        outcome(2, 0.10, TrialState.FAILED),
        outcome(3, None, TrialState.FAILED),
    ]
    assert best_trial("val_loss", outcomes).index == 1  # type: ignore[union-attr]
    assert best_trial("val_accuracy", outcomes).index == 0  # type: ignore[union-attr]
    assert best_trial("val_loss", outcomes[2:]) is None


# `kubetrain run` with trials


def kubetrain_run(document: dict, tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """`kubetrain run` of the job, which must succeed; what it printed, and its workdir."""
    path = tmp_path / "trials.yaml"
    path.write_text(yaml.safe_dump(document))
    workdir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "kubetrain.trainer", "run", str(path), "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    return done, workdir


@pytest.mark.slow
def test_run_trains_each_trial_stops_the_hopeless_one_and_exports_the_best(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    """Three learning rates on the tiny MNIST, two trials at a time: 1e-5 learns next to
    nothing in an epoch, so the median of the two others stops it; the better of those two
    (0.003, not the first trial, as it happens) is exported."""
    document = tiny_job(tiny_mnist, epochs=2, replicas=1)
    document["spec"]["trials"] = {
        "count": 3,
        "parallelism": 2,
        "algorithm": "grid",
        "parameters": {"training.learningRate": {"values": [1e-4, 0.003, 1e-5]}},
        "earlyStopping": {"medianStop": {"minTrials": 2}},
    }
    done, workdir = kubetrain_run(document, tmp_path)

    study = json.loads((workdir / "trials.json").read_text())
    trials = {t["index"]: t for t in study["trials"]}
    assert study["metric"] == "val_accuracy"
    assert [trials[i]["parameters"]["training.learningRate"] for i in range(3)] == [
        1e-4,
        0.003,
        1e-5,
    ]
    # Stopped on reading epoch 1's record (its workers may have finished epoch 2 meanwhile).
    assert trials[2]["state"] == "EarlyStopped"
    assert trials[2]["message"].startswith("stopped after epoch 1: best val_accuracy")
    assert "worse than the median" in trials[2]["message"]
    assert (workdir / "trials/2/checkpoints/epoch-0001/metrics.json").is_file()  # kept
    assert [trials[i]["state"] for i in (0, 1)] == ["Succeeded", "Succeeded"]
    assert all(trials[i]["epochs"] == 2 for i in (0, 1))

    def best_on_disk(index: int) -> tuple[float, int]:
        """A trial's best validation accuracy and epoch, read from its own checkpoints."""
        saved = [
            json.loads(p.read_text())
            for p in (workdir / f"trials/{index}/checkpoints").glob("epoch-*/metrics.json")
        ]
        best = max(saved, key=lambda s: (s["metrics"]["val_accuracy"], -s["epoch"]))
        return best["metrics"]["val_accuracy"], best["epoch"]

    best = max((0, 1), key=lambda i: (best_on_disk(i)[0], -i))
    assert study["best"] == best
    for index in (0, 1, 2):
        assert trials[index]["bestMetric"] == pytest.approx(best_on_disk(index)[0])

    # The job's model is the best trial's, exported as a run without trials exports it.
    result = json.loads((workdir / "result.json").read_text())
    assert result == json.loads(done.stdout)
    assert result["model"] == {
        "name": "mnist",
        "version": 1,
        "path": str(workdir / "models" / "mnist" / "1"),
    }
    assert result["bestEpoch"] == best_on_disk(best)[1]
    assert result["checkpoint"].startswith(str(workdir / "trials" / str(best) / "checkpoints"))
    metadata = json.loads((workdir / "models/mnist/1/metadata.json").read_text())
    assert (metadata["trial"], metadata["version"], metadata["epoch"]) == (
        best,
        1,
        result["bestEpoch"],
    )
    assert metadata["parameters"] == trials[best]["parameters"]
    assert metadata["metrics"]["val_accuracy"] == pytest.approx(best_on_disk(best)[0])
    assert (workdir / "models/mnist/1/saved_model.pb").is_file()

    # The leaderboard: best first, the exported trial marked, the stopped one last.
    board = done.stderr[done.stderr.index("  trial  state") :].splitlines()
    assert board[1].startswith(f"* {best:>5}  Succeeded")
    assert board[3].startswith(f"  {2:>5}  EarlyStopped")
    assert "training.learningRate=1e-05" in board[3]
    assert f"best trial {best}, best epoch {result['bestEpoch']}" in done.stderr
    assert not math.isnan(result["testAccuracy"])


@pytest.mark.slow
def test_run_with_refit_trains_the_winner_on_the_validation_split_too_and_exports_it(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    """Two learning rates, then the better one's parameters once more on the training and
    validation splits together: that model, from its last epoch, is the job's, while the
    validation metric it carries is the search's."""
    document = tiny_job(tiny_mnist, epochs=2, replicas=1)
    document["spec"]["trials"] = {
        "count": 2,
        "parallelism": 2,
        "algorithm": "grid",
        "parameters": {"training.learningRate": {"values": [1e-4, 0.003]}},
        "refit": True,
    }
    done, workdir = kubetrain_run(document, tmp_path)

    study = json.loads((workdir / "trials.json").read_text())
    winner = next(t for t in study["trials"] if t["index"] == study["best"])
    assert study["refit"]["trial"] == study["best"]
    assert study["refit"]["state"] == "Succeeded"

    def examples(label: str) -> int:
        line = next(x for x in done.stderr.splitlines() if x.startswith(f"{label}: training on"))
        return int(line.split(": ")[2].split()[0])

    trained, refitted = examples(f"trial {study['best']}"), examples("refit")
    assert refitted > trained  # the validation split's examples, on top

    result = json.loads((workdir / "result.json").read_text())
    assert result["checkpoint"].startswith(str(workdir / "trials" / "refit" / "checkpoints"))
    assert result["bestEpoch"] == 2  # the last: a validation metric it trained on chooses nothing
    assert result["validation"]["val_accuracy"] == pytest.approx(winner["bestMetric"])
    assert result["testAccuracy"] == pytest.approx(study["refit"]["testAccuracy"])
    metadata = json.loads((workdir / "models/mnist/1/metadata.json").read_text())
    assert metadata["refit"] is True and metadata["trial"] == study["best"]
    assert metadata["metrics"]["val_accuracy"] == pytest.approx(winner["bestMetric"])
    assert metadata["metrics"]["test_accuracy"] == pytest.approx(result["testAccuracy"])
    assert f"refit of trial {study['best']}: Succeeded" in done.stderr
    assert f"best trial {study['best']}, val_accuracy" in done.stderr
    assert "refitted on training + validation for 2 epochs, test accuracy" in done.stderr
